#!/usr/bin/env node
// One small decode call per main kernel (portable, then the sm_90a one) against the float64
// reference: the first thing scripts/gpu-check.sh runs on a Hopper GPU, under a short timeout,
// so that a Hopper kernel that faults or hangs there costs seconds, not the session's device time.
// Exit 0: both match; 1: a kernel is wrong or failed; 2: no usable device / not compute capability 9.0.
// Also runs on the emulated device (MLA_CUDA_DEVICE=emulator), to rehearse it.
import { cuda, decode, DeviceTensor, reference } from '../dist/index.js';
import { shuffledBlockTable } from '../dist/reference/testing.js';
import { mulberry32, randnArray, relError } from '../dist/reference/util.js';

const status = cuda.deviceStatus();
if (!status.ok) {
  console.log(`hopper-smoke: no usable device (${status.code}: ${status.message})`);
  process.exit(2);
}
const dev = cuda.deviceInfo(cuda.currentDevice());
if (dev.computeCapability !== '9.0') {
  console.log(`hopper-smoke: ${dev.name} is compute capability ${dev.computeCapability}, not 9.0`);
  process.exit(2);
}

// decode.test.ts's pattern: shuffled 64-row pages, s_q 2, causal, lengths off the tile grid.
const B = 3, H = 16, ps = 64, D = 576, DV = 512, sQ = 2, seqLens = [300, 7, 130];
const { table, maxPages, numPages } = shuffledBlockTable(seqLens, ps, mulberry32(5));
const tokens = B * sQ, scale = 0.1352337788608801;
const owned = [];
const up = (data, shape, dtype) => {
  const t = DeviceTensor.fromArray(data, shape, dtype);
  owned.push(t);
  return t;
};
const q = up(Float32Array.from(randnArray(tokens * H * D, mulberry32(6), 0.5)), [tokens, H, D], 'bf16');
const cache = up(Float32Array.from(randnArray(numPages * ps * D, mulberry32(7))), [numPages, ps, D], 'bf16');
const seen = (t) => Float64Array.from(t.toFloat32Sync());
const want = reference.decode({ q: seen(q), cache: seen(cache), pageSize: ps, blockTable: table, seqLens, qSeqLens: sQ, numHeads: H, dimLatent: DV, headDim: D, scale, causal: true });
const blockTable = up(table, [B, maxPages], 'i32');
const lens = up(Int32Array.from(seqLens), [B], 'i32');

let bad = 0;
for (const kernel of ['portable', 'hopper']) {
  const out = up(new Float32Array(tokens * H * DV).fill(Number.NaN), [tokens, H, DV], 'bf16');
  const lse = up(new Float32Array(tokens * H).fill(Number.NaN), [tokens, H], 'f32');
  const t0 = performance.now();
  try {
    decode({ q, cache, blockTable, seqLens: lens, scale, causal: true, out, lse, kernel });
    const eo = relError(out.toFloat32Sync(), want.out);
    const el = relError(lse.toFloat32Sync(), want.lse);
    const ok = eo < 1e-2 && el < 1e-3;
    if (!ok) bad++;
    console.log(`${kernel}: out rel err ${eo.toExponential(2)}, lse rel err ${el.toExponential(2)}${ok ? '' : ' WRONG'} (${(performance.now() - t0).toFixed(0)} ms)`);
  } catch (err) {
    bad++;
    console.log(`${kernel}: FAILED: ${err instanceof Error ? err.message : String(err)}`);
  }
}
for (const t of owned) t.dispose();
process.exit(bad ? 1 : 0);
