// The native contract (lib/native-contract.ts): the addon's limits equal the fallback copy the
// TS side uses without an addon, and each memory-safety guard the launchers keep answers a
// direct native call with bad arguments with an MlaError, never a crash (emulated device).
import t, { type Test } from 'tap';
import { DeviceTensor, MlaError } from '../lib/index.js';
import { native, nativeLimits } from '../lib/native.js';
import {
  FALLBACK_LIMITS, type NativeAppendLatentArgs, type NativeCopyArgs, type NativeDecodeArgs, type NativeLinearArgs, type NativeMergeAttnStatesArgs,
  type NativeOps, type NativePrefillAttentionArgs, type NativePrefillGatherArgs, type NativePrimitivesArgs, type NativeRmsNormArgs,
  type NativeRopeArgs, type NativeRopeTableArgs, type NativeSparseArgs,
} from '../lib/native-contract.js';
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
    const moreSparse: Array<[string, Partial<NativeSparseArgs>, RegExp]> = [
      ['q dtype', { q: T([2, 16, 576], 'f32').nativeRef() }, /`q`/],
      ['cache dtype', { cache: T([4, 16, 576], 'f16').nativeRef() }, /`cache`/],
      ['fp8 cache rows', { cache: T([4, 16, 576], 'u8').nativeRef() }, /FP8 `cache`/],
      ['page size', { cache: T([4, 24, 576], 'bf16').nativeRef() }, /page size/],
      ['head count', { q: T([2, 129, 576], 'bf16').nativeRef() }, /head count/],
      ['topkLength dtype', { topkLength: T([2], 'f32').nativeRef() }, /`topkLength`/],
      ['topkLength shape', { topkLength: T([3], 'i32').nativeRef() }, /`topkLength`/],
      ['out shape', { out: T([2, 16, 576], 'bf16').nativeRef() }, /`out`/],
      ['lse shape', { lse: T([2, 8], 'f32').nativeRef() }, /`lse`/],
      ['q alignment', { q: T([2, 16, 584], 'bf16').slice(2, 1, 577).nativeRef() }, /`q`/],
      ['workspace size', { wsMaxBatch: 1 << 20 }, /workspace/],
      ['workspace batch', { wsMaxBatch: 1 }, /maxBatch/],
    ];
    for (const [what, over, message] of moreSparse) t.throws(() => native().ops.sparse?.({ ...sparseGood(), ...over }), { name: 'MlaError', message }, what);
  } finally {
    ws.dispose();
    for (const x of owned) x.dispose();
  }
  t.end();
});

// One op's guards: each bad case (the good arguments with some replaced) must throw an MlaError
// whose message names what it guards; the good arguments themselves are never launched.
function guards<K extends keyof NativeOps>(t: Test, op: K, good: () => Parameters<NativeOps[K]>[0],
  bad: Array<[string, Partial<Parameters<NativeOps[K]>[0]>, RegExp]>): void {
  const fn = native().ops[op] as ((args: Parameters<NativeOps[K]>[0]) => unknown) | undefined;
  if (fn === undefined) throw new Error(`the addon has no ${op}`);
  for (const [what, over, message] of bad) t.throws(() => fn({ ...good(), ...over }), { name: 'MlaError', message }, `${op}: ${what}`);
}

t.test('every other launcher answers bad direct calls with an MlaError', { skip: gpuSkip }, (t) => {
  const owned: DeviceTensor[] = [];
  const T = (shape: number[], dtype: 'bf16' | 'f16' | 'f32' | 'i32' | 'u8'): DeviceTensor => {
    const x = DeviceTensor.empty(shape, dtype);
    owned.push(x);
    return x;
  };
  // A view one element past a 16-byte boundary: the launchers' alignment guards refuse it.
  const misaligned = (rows: number, cols: number, dtype: 'bf16' | 'f32'): DeviceTensor => T([rows, cols + 8], dtype).slice(1, 1, cols + 1);
  try {
    const linear = (): NativeLinearArgs => ({ x: T([4, 64], 'bf16').nativeRef(), weight: T([32, 64], 'bf16').nativeRef(), out: T([4, 32], 'bf16').nativeRef() });
    const x = T([4, 64], 'bf16');
    guards(t, 'linear', linear, [
      ['x dtype', { x: T([4, 64], 'f32').nativeRef() }, /`x`/],
      ['weight dtype', { weight: T([32, 64], 'f16').nativeRef() }, /`weight`/],
      ['out dtype', { out: T([4, 32], 'i32').nativeRef() }, /`out`/],
      ['x rank', { x: T([256], 'bf16').nativeRef() }, /`x`/],
      ['weight K', { weight: T([32, 56], 'bf16').nativeRef() }, /`weight`/],
      ['K multiple of 8', { x: T([4, 60], 'bf16').nativeRef(), weight: T([32, 60], 'bf16').nativeRef() }, /`x`/],
      ['N multiple of 8', { weight: T([30, 64], 'bf16').nativeRef(), out: T([4, 30], 'bf16').nativeRef() }, /`weight`/],
      ['out shape', { out: T([4, 24], 'bf16').nativeRef() }, /`out`/],
      ['x alignment', { x: misaligned(4, 64, 'bf16').nativeRef() }, /`x`/],
      ['out aliases x', { x: x.nativeRef(), weight: T([64, 64], 'bf16').nativeRef(), out: x.nativeRef() }, /alias/],
    ]);

    const rms = (): NativeRmsNormArgs => ({ x: T([4, 64], 'f32').nativeRef(), weight: T([64], 'f32').nativeRef(), out: T([4, 64], 'f32').nativeRef(), eps: 1e-6 });
    guards(t, 'rmsNorm', rms, [
      ['x dtype', { x: T([4, 64], 'i32').nativeRef() }, /`x`/],
      ['x rank', { x: T([256], 'f32').nativeRef() }, /`x`/],
      ['weight shape', { weight: T([65], 'f32').nativeRef() }, /`weight`/],
      ['out shape', { out: T([4, 32], 'f32').nativeRef() }, /`out`/],
      ['x strided last dim', { x: T([64, 4], 'f32').permute([1, 0]).nativeRef() }, /`x`/],
    ]);

    const gather = (): NativePrefillGatherArgs => ({
      cache: T([4, 16, 576], 'bf16').nativeRef(), blockTable: T([2, 4], 'i32').nativeRef(), plan: T([2, 4], 'i32').nativeRef(),
      dst: T([8, 576], 'bf16').nativeRef(), g0: 0, g1: 8,
    });
    guards(t, 'prefillGather', gather, [
      ['plan dtype', { plan: T([2, 4], 'f32').nativeRef() }, /`plan`/],
      ['plan shape', { plan: T([2, 3], 'i32').nativeRef() }, /`plan`/],
      ['blockTable rows', { blockTable: T([3, 4], 'i32').nativeRef() }, /`blockTable`/],
      ['dst dtype', { dst: T([8, 576], 'f16').nativeRef() }, /`dst`/],
      ['fp8 cache layout', { cache: T([4, 16, 576], 'u8').nativeRef() }, /FP8 `cache`/],
      ['cache width', { cache: T([4, 16, 512], 'bf16').nativeRef() }, /`cache`/],
      ['dst width', { dst: T([8, 512], 'bf16').nativeRef() }, /`dst`/],
      ['chunk past dst', { g1: 9 }, /chunk/],
      ['negative chunk', { g0: -1 }, /chunk/],
      ['dst alignment', { dst: misaligned(8, 576, 'bf16').nativeRef() }, /`dst`/],
    ]);

    const attn = (): NativePrefillAttentionArgs => ({
      q: T([8, 2, 192], 'bf16').nativeRef(), kNope: T([8, 2, 128], 'bf16').nativeRef(), kRope: T([8, 64], 'bf16').nativeRef(),
      v: T([8, 2, 128], 'bf16').nativeRef(), out: T([8, 2, 128], 'bf16').nativeRef(), lse: T([8, 2], 'f32').nativeRef(),
      plan: T([2, 4], 'i32').nativeRef(), g0: 0, g1: 8, reqBegin: 0, reqCount: 2, maxQLen: 4, scale: 0.1,
    });
    guards(t, 'prefillAttention', attn, [
      ['plan dtype', { plan: T([2, 4], 'f32').nativeRef() }, /`plan`/],
      ['q dtype', { q: T([8, 2, 192], 'f32').nativeRef() }, /`q`/],
      ['kNope dtype', { kNope: T([8, 2, 128], 'f16').nativeRef() }, /`kNope`/],
      ['lse dtype', { lse: T([8, 2], 'bf16').nativeRef() }, /`lse`/],
      ['q width', { q: T([8, 2, 128], 'bf16').nativeRef() }, /`q`/],
      ['kNope heads', { kNope: T([8, 3, 128], 'bf16').nativeRef() }, /`kNope`/],
      ['v rows', { v: T([7, 2, 128], 'bf16').nativeRef() }, /`v`/],
      ['kRope width', { kRope: T([8, 32], 'bf16').nativeRef() }, /`kRope`/],
      ['out heads', { out: T([8, 3, 128], 'bf16').nativeRef() }, /`out`/],
      ['lse rows', { lse: T([7, 2], 'f32').nativeRef() }, /`lse`/],
      ['request range', { reqCount: 3 }, /request range/],
      ['chunk past keys', { g1: 9 }, /chunk/],
      ['negative maxQLen', { maxQLen: -(2 ** 40) }, /`maxQLen`/],
    ]);

    const merge = (): NativeMergeAttnStatesArgs => ({
      out: T([4, 2, 64], 'bf16').nativeRef(), lse: T([4, 2], 'f32').nativeRef(), part: T([4, 2, 64], 'bf16').nativeRef(), partLse: T([4, 2], 'f32').nativeRef(),
    });
    guards(t, 'mergeAttnStates', merge, [
      ['part dtype', { part: T([4, 2, 64], 'f16').nativeRef() }, /`part`/],
      ['lse dtype', { lse: T([4, 2], 'bf16').nativeRef() }, /`lse`/],
      ['out rank', { out: T([4, 128], 'bf16').nativeRef() }, /`out`/],
      ['part shape', { part: T([5, 2, 64], 'bf16').nativeRef() }, /`part`/],
      ['partLse shape', { partLse: T([4, 3], 'f32').nativeRef() }, /`partLse`/],
    ]);

    const table = (): NativeRopeTableArgs => ({ table: T([16, 32, 2], 'f32').nativeRef(), invFreq: T([32], 'f32').nativeRef(), attentionFactor: 1 });
    guards(t, 'ropeTable', table, [
      ['invFreq dtype', { invFreq: T([32], 'bf16').nativeRef() }, /`invFreq`/],
      ['empty invFreq', { invFreq: T([0], 'f32').nativeRef() }, /`invFreq`/],
      ['table width', { table: T([16, 16, 2], 'f32').nativeRef() }, /`table`/],
    ]);

    const rope = (): NativeRopeArgs => ({ x: T([4, 2, 64], 'bf16').nativeRef(), positions: T([4], 'i32').nativeRef(), table: T([16, 32, 2], 'f32').nativeRef(), layout: 0 });
    guards(t, 'rope', rope, [
      ['x dtype', { x: T([4, 2, 64], 'i32').nativeRef() }, /`x`/],
      ['odd rotaryDim', { x: T([4, 2, 63], 'bf16').nativeRef() }, /`x`/],
      ['x strided last dim', { x: T([4, 64, 2], 'bf16').permute([0, 2, 1]).nativeRef() }, /`x`/],
      ['positions dtype', { positions: T([4], 'f32').nativeRef() }, /`positions`/],
      ['positions length', { positions: T([3], 'i32').nativeRef() }, /`positions`/],
      ['table width', { table: T([16, 16, 2], 'f32').nativeRef() }, /`table`/],
    ]);

    const append = (): NativeAppendLatentArgs => ({
      kvDown: T([4, 128], 'bf16').nativeRef(), normWeight: T([64], 'bf16').nativeRef(), positions: T([4], 'i32').nativeRef(),
      slotMapping: T([4], 'i32').nativeRef(), cache: T([2, 16, 128], 'bf16').nativeRef(), table: T([16, 32, 2], 'f32').nativeRef(), eps: 1e-6, layout: 0,
    });
    guards(t, 'appendLatent', append, [
      ['kvDown dtype', { kvDown: T([4, 128], 'i32').nativeRef() }, /`kvDown`/],
      ['cache dtype', { cache: T([2, 16, 128], 'i32').nativeRef() }, /`cache`/],
      ['kvLoraRank', { normWeight: T([60], 'bf16').nativeRef() }, /kvLoraRank/],
      ['kvLoraRank too large', { normWeight: T([1032], 'bf16').nativeRef(), kvDown: T([4, 1096], 'bf16').nativeRef() }, /kvLoraRank/],
      ['rotaryDim', { kvDown: T([4, 130], 'bf16').nativeRef() }, /rotaryDim/],
      ['cache width', { cache: T([2, 16, 120], 'bf16').nativeRef() }, /`cache`/],
      ['fp8 needs 512 + 64', { cache: T([2, 16, 656], 'u8').nativeRef() }, /FP8/],
      ['fp8 cache rows', { kvDown: T([4, 576], 'bf16').nativeRef(), normWeight: T([512], 'bf16').nativeRef(), cache: T([2, 16, 576], 'u8').nativeRef() }, /FP8 `cache`/],
      ['slotMapping length', { slotMapping: T([5], 'i32').nativeRef() }, /`slotMapping`/],
      ['table width', { table: T([16, 16, 2], 'f32').nativeRef() }, /`table`/],
    ]);

    const mma = (): NativePrimitivesArgs => ({
      which: 0, a: T([16, 16], 'bf16').nativeRef(), b: T([16, 8], 'bf16').nativeRef(), c: T([16, 8], 'f32').nativeRef(), d: T([16, 8], 'f32').nativeRef(),
    });
    guards(t, 'primitives', mma, [
      ['mma a dtype', { a: T([16, 16], 'f32').nativeRef() }, /`a`/],
      ['mma b shape', { b: T([8, 16], 'bf16').nativeRef() }, /`b`/],
      ['mma d strided', { d: T([16, 16], 'f32').slice(1, 0, 8).nativeRef() }, /`d`/],
      ['unknown which', { which: 99 }, /`which`/],
      ['which past int32', { which: 2 ** 32 }, /primitives/],
    ]);
    const ldmatrix = (): NativePrimitivesArgs => ({
      which: 1, matrix: T([32, 8], 'bf16').nativeRef(), perm: T([32], 'i32').nativeRef(), frag: T([32, 4], 'i32').nativeRef(), num: 4, trans: false,
    });
    guards(t, 'primitives', ldmatrix, [
      ['ldmatrix num', { num: 8 }, /`num`/],
      ['ldmatrix frag shape', { frag: T([32, 2], 'i32').nativeRef() }, /`frag`/],
    ]);
    const shuffle = (): NativePrimitivesArgs => ({ which: 3, values: T([32], 'i32').nativeRef(), cases: T([2, 3], 'i32').nativeRef(), shfl: T([2, 32], 'i32').nativeRef() });
    guards(t, 'primitives', shuffle, [
      ['shuffle rows', { cases: T([(1 << 16) + 1, 3], 'i32').nativeRef() }, /`cases`/],
      ['shuffle shfl rows', { shfl: T([3, 32], 'i32').nativeRef() }, /`shfl`/],
    ]);
    const vote = (): NativePrimitivesArgs => ({ which: 4, preds: T([2, 32], 'i32').nativeRef(), votes: T([2, 3, 32], 'i32').nativeRef() });
    guards(t, 'primitives', vote, [['vote votes shape', { votes: T([2, 2, 32], 'i32').nativeRef() }, /`votes`/]]);

    const copy = (): NativeCopyArgs => ({ dst: T([4, 4], 'f32').nativeRef(), src: T([4, 4], 'f32').nativeRef() });
    guards(t, 'copy', copy, [
      ['src shape', { src: T([4, 5], 'f32').nativeRef() }, /`src`/],
      ['src rank', { src: T([16], 'f32').nativeRef() }, /`src`/],
    ]);

    guards(t, 'decodeWorkspaceBytes', () => ({ maxBatch: 2, partialRows: 64, maxParts: 4 }), [
      ['negative maxBatch', { maxBatch: -1 }, /`maxBatch`/],
      ['huge partialRows', { partialRows: 2 ** 40 }, /`partialRows`/],
      ['no parts', { maxParts: 0 }, /`maxParts`/],
    ]);
    guards(t, 'decodeConfig', () => ({ numHeads: 16, maxQSeqLen: 1, maxParts: 4 }), [
      ['no heads', { numHeads: 0 }, /`numHeads`/],
      ['too many heads', { numHeads: 129 }, /`numHeads`/],
      ['huge maxQSeqLen', { maxQSeqLen: 2 ** 40 }, /`maxQSeqLen`/],
      ['too many parts', { maxParts: 1 << 20 }, /`maxParts`/],
    ]);
  } finally {
    for (const x of owned) x.dispose();
  }
  t.end();
});
