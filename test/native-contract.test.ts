// The native contract (lib/native-contract.ts): the addon's limits equal the fallback copy the
// TS side uses without an addon, and each memory-safety guard the launchers keep answers a
// direct native call with bad arguments with an MlaError, never a crash (emulated device).
import t from 'tap';
import { DeviceTensor, MlaError } from '../lib/index.js';
import { native, nativeLimits } from '../lib/native.js';
import { FALLBACK_LIMITS, type NativeDecodeArgs, type NativeSparseArgs } from '../lib/native-contract.js';
import { DecodeWorkspace } from '../lib/ops/decode.js';
import { gpuSkip } from './helpers/gpu.js';

t.test('the addon exports the limits the fallback restates', { skip: gpuSkip }, (t) => {
  t.same(native().limits?.(), FALLBACK_LIMITS);
  t.same(nativeLimits(), FALLBACK_LIMITS);
  t.end();
});

t.test('launcher guards answer direct native calls with an MlaError', { skip: gpuSkip }, (t) => {
  const owned: DeviceTensor[] = [];
  const T = (shape: number[], dtype: 'bf16' | 'f16' | 'f32' | 'i32' | 'u8'): DeviceTensor => {
    const x = DeviceTensor.empty(shape, dtype);
    owned.push(x);
    return x;
  };
  const ws = new DecodeWorkspace({ maxBatch: 2, maxHeads: 16, maxParts: 4 });
  try {
    const good = (): NativeDecodeArgs => ({
      q: T([2, 16, 576], 'bf16').nativeRef(), cache: T([4, 16, 576], 'bf16').nativeRef(),
      blockTable: T([2, 4], 'i32').nativeRef(), seqLens: T([2], 'i32').nativeRef(),
      out: T([2, 16, 512], 'bf16').nativeRef(), lse: T([2, 16], 'f32').nativeRef(),
      ...ws.nativeArgs(), scale: 0.1, uniformQSeqLen: 1, maxQSeqLen: 1,
    });
    const bad: Array<[string, Partial<NativeDecodeArgs>, RegExp]> = [
      ['q dtype', { q: T([2, 16, 576], 'f32').nativeRef() }, /`q`/],
      ['q width', { q: T([2, 16, 512], 'bf16').nativeRef() }, /`q`/],
      ['cache dtype', { cache: T([4, 16, 576], 'f16').nativeRef() }, /`cache`/],
      ['head count', { q: T([2, 129, 576], 'bf16').nativeRef() }, /head count/],
      ['page size', { cache: T([4, 24, 576], 'bf16').nativeRef() }, /page size/],
      ['out shape', { out: T([2, 16, 576], 'bf16').nativeRef() }, /`out`/],
      ['lse dtype', { lse: T([2, 16], 'bf16').nativeRef() }, /`lse`/],
      ['blockTable rows', { blockTable: T([3, 4], 'i32').nativeRef() }, /`blockTable`/],
      ['tokens vs batch', { uniformQSeqLen: 2 }, /tokens/],
      ['workspace size', { wsMaxBatch: 1 << 20 }, /workspace/],
      ['workspace layout', { wsMaxParts: 0 }, /workspace/],
    ];
    for (const [what, over, message] of bad) {
      t.throws(() => native().ops.decode?.({ ...good(), ...over }), MlaError, what);
      t.throws(() => native().ops.decode?.({ ...good(), ...over }), { message }, what);
    }
    const sparseGood = (): NativeSparseArgs => ({
      q: T([2, 16, 576], 'bf16').nativeRef(), cache: T([4, 16, 576], 'bf16').nativeRef(),
      indices: T([2, 8], 'i32').nativeRef(), out: T([2, 16, 512], 'bf16').nativeRef(), lse: T([2, 16], 'f32').nativeRef(),
      ...ws.nativeArgs(), scale: 0.1,
    });
    const sparseBad: Array<[string, Partial<NativeSparseArgs>, RegExp]> = [
      ['indices dtype', { indices: T([2, 8], 'f32').nativeRef() }, /`indices`/],
      ['indices rows', { indices: T([3, 8], 'i32').nativeRef() }, /`indices`/],
      ['attnSink shape', { attnSink: T([3], 'f32').nativeRef() }, /`attnSink`/],
      ['workspace layout', { wsMaxParts: 0 }, /workspace/],
    ];
    for (const [what, over, message] of sparseBad) t.throws(() => native().ops.sparse?.({ ...sparseGood(), ...over }), { name: 'MlaError', message }, what);
  } finally {
    ws.dispose();
    for (const x of owned) x.dispose();
  }
  t.end();
});
