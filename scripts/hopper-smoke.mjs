#!/usr/bin/env node
// A few small decode calls per main kernel (portable, then the sm_90a ones: the 64-row kernel
// forced, then the Hopper path's own choice, which takes the few-rows kernel for s_q·H <= 32)
// against the float64 reference: the first thing scripts/gpu-check.sh runs on a Hopper GPU,
// under a short timeout, so that a Hopper kernel that faults or hangs there costs seconds, not
// the session's device time.
// A wrong result is localized (which requests, heads, output quarters, LSEs), since the session
// that sees it first has minutes to act on it: the quarter says which warpgroup's half of V
// (columns 0-255: warpgroup 0, 256-511: warpgroup 1), the heads which row tile.
// Exit 0: all match; 1: a kernel is wrong or failed (the last line names it); 2: no usable device /
// not compute capability 9.0. MLA_SMOKE_KERNELS=a,b runs only those (gpu-check's second try).
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

const D = 576, DV = 512, scale = 0.1352337788608801;
const KERNELS = (process.env['MLA_SMOKE_KERNELS'] ?? 'portable,hopper-wide,hopper').split(',');
let failed = '';
// decode.test.ts's patterns: shuffled pages, lengths off the tile grid; the first case is the
// gate (fast), the others add many tile pairs per part, 2 row tiles, small and large pages.
const CASES = [
  { H: 16, ps: 64, sQ: 2, seqLens: [300, 7, 130] },
  { H: 128, ps: 64, sQ: 1, seqLens: [2500, 64] },
  { H: 32, ps: 16, sQ: 1, seqLens: [700, 33, 0] },
  { H: 64, ps: 256, sQ: 2, seqLens: [1000, 1] },
];

// Relative error of `got` vs `want` per group (`groupOf(i)` of element i): the groups off by more
// than 1e-2 or holding NaN, worst first.
function worstGroups(got, want, count, groupOf, label) {
  const num = new Float64Array(count), den = new Float64Array(count), nan = new Int32Array(count);
  for (let i = 0; i < want.length; i++) {
    const g = groupOf(i);
    if (Number.isNaN(got[i])) nan[g]++;
    else num[g] += (got[i] - want[i]) ** 2;
    den[g] += want[i] ** 2;
  }
  const rows = [];
  for (let g = 0; g < count; g++) {
    const e = Math.sqrt(num[g] / Math.max(den[g], 1e-30));
    if (e > 1e-2 || nan[g] > 0) rows.push({ g, e, nan: nan[g] });
  }
  rows.sort((a, b) => b.nan - a.nan || b.e - a.e);
  if (rows.length === 0) return `${label}: all within 1e-2`;
  return `${label}: ${rows.length}/${count} off, worst ${rows.slice(0, 6).map((r) => `${r.g}: ${r.nan ? `${r.nan} NaN` : r.e.toExponential(1)}`).join(', ')}`;
}

let bad = 0, checked = 0;
for (const [ci, c] of CASES.entries()) {
  const { H, ps, sQ, seqLens } = c;
  const B = seqLens.length, tokens = B * sQ;
  const { table, maxPages, numPages } = shuffledBlockTable(seqLens, ps, mulberry32(5 + ci));
  const owned = [];
  const up = (data, shape, dtype) => {
    const t = DeviceTensor.fromArray(data, shape, dtype);
    owned.push(t);
    return t;
  };
  const q = up(Float32Array.from(randnArray(tokens * H * D, mulberry32(6 + ci), 0.5)), [tokens, H, D], 'bf16');
  const cache = up(Float32Array.from(randnArray(numPages * ps * D, mulberry32(7 + ci))), [numPages, ps, D], 'bf16');
  const seen = (t) => Float64Array.from(t.toFloat32Sync());
  const want = reference.decode({ q: seen(q), cache: seen(cache), pageSize: ps, blockTable: table, seqLens, qSeqLens: sQ, numHeads: H, dimLatent: DV, headDim: D, scale, causal: true });
  const blockTable = up(table, [B, maxPages], 'i32');
  const lens = up(Int32Array.from(seqLens), [B], 'i32');
  const name = `H ${H}, page ${ps}, s_q ${sQ}, lengths [${seqLens.join(', ')}]`;
  for (const kernel of KERNELS) {
    if (failed) break; // a fault loses the context: what runs after it says nothing
    checked++;
    const out = up(new Float32Array(tokens * H * DV).fill(Number.NaN), [tokens, H, DV], 'bf16');
    const lse = up(new Float32Array(tokens * H).fill(Number.NaN), [tokens, H], 'f32');
    const t0 = performance.now();
    try {
      decode({ q, cache, blockTable, seqLens: lens, scale, causal: true, out, lse, kernel });
      const o = out.toFloat32Sync(), l = lse.toFloat32Sync();
      // An empty request's LSE is +inf in both; relError would make that NaN.
      const finite = (a) => Float64Array.from(a, (x) => (x === Infinity ? 0 : x));
      const eo = relError(o, want.out);
      const el = relError(finite(l), finite(want.lse));
      const ok = eo < 1e-2 && el < 1e-3;
      console.log(`case ${ci} (${name}) ${kernel}: out rel err ${eo.toExponential(2)}, lse rel err ${el.toExponential(2)}${ok ? '' : ' WRONG'} (${(performance.now() - t0).toFixed(0)} ms)`);
      if (!ok) {
        bad++;
        failed = kernel;
        const t = (i) => Math.floor(i / (H * DV));
        console.log(`  ${worstGroups(o, want.out, tokens, t, 'by token (request = token / s_q)')}`);
        console.log(`  ${worstGroups(o, want.out, Math.ceil(H / 16), (i) => Math.floor((i / DV) % H / 16), 'by 16-head group')}`);
        console.log(`  ${worstGroups(o, want.out, 4, (i) => Math.floor((i % DV) / 128), 'by 128-column quarter of V')}`);
        console.log(`  ${worstGroups(finite(l), finite(want.lse), tokens, (i) => Math.floor(i / H), 'lse by token')}`);
      }
    } catch (err) {
      bad++;
      failed = kernel;
      console.log(`case ${ci} (${name}) ${kernel}: FAILED: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  for (const t of owned) t.dispose();
  if (bad) break; // the gate: a later phase's time is worth more than more evidence
}
console.log(`hopper-smoke: ${checked - bad} of ${checked} kernel runs match the float64 reference${bad ? ` (${bad} wrong or failed; failed kernel: ${failed})` : ''}`);
process.exit(bad ? 1 : 0);
