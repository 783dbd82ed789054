// rmsNorm: validation on TensorMeta stand-ins (CI, no GPU), then the kernel against the float64
// reference (GPU only).
import t from 'tap';
import type { Test } from 'tap';
import { rmsNorm, validateRmsNorm } from '../lib/ops/rmsnorm.js';
import { DeviceTensor } from '../lib/runtime/tensor.js';
import type { TensorMeta } from '../lib/runtime/tensor.js';
import { gpuSkip, poison, randn, relError, roundTo } from './helpers/gpu.js';
import { meta, throwsNaming } from './helpers/validation.js';
import * as reference from '../lib/reference/index.js';


t.test('validateRmsNorm', async (t) => {
  const x = meta([4, 1536]);
  t.same(validateRmsNorm(x, meta([1536]), 1e-6), { rows: 4, dim: 1536, outDtype: 'bf16' });
  t.same(validateRmsNorm(x, meta([1536], 'f32'), 0), { rows: 4, dim: 1536, outDtype: 'bf16' }, 'f32 weight, eps 0');
  t.equal(validateRmsNorm(meta([4, 512], 'bf16', [576, 1]), meta([512]), 1e-6, { out: meta([4, 512], 'f32', [600, 1]) }).outDtype, 'f32', 'strided in and out');

  throwsNaming(t, () => validateRmsNorm(x, meta([1024]), 1e-6), 'ERR_SHAPE', 'weight', 'weight length');
  t.equal(validateRmsNorm(meta([4, 1536], 'f32'), meta([1536], 'bf16'), 1e-6).outDtype, 'f32', 'bf16 weight on f32 activations');
  throwsNaming(t, () => validateRmsNorm(x, meta([1536], 'i32'), 1e-6), 'ERR_DTYPE', 'weight', 'weight dtype');
  throwsNaming(t, () => validateRmsNorm(x, meta([1536], 'bf16', [2]), 1e-6), 'ERR_SHAPE', 'weight', 'strided weight');
  throwsNaming(t, () => validateRmsNorm(meta([4, 1536], 'i32'), meta([1536], 'f32'), 1e-6), 'ERR_DTYPE', 'x', 'int x');
  throwsNaming(t, () => validateRmsNorm(meta([4, 1536], 'bf16', [1, 4]), meta([1536]), 1e-6), 'ERR_SHAPE', 'x', 'column-major x');
  throwsNaming(t, () => validateRmsNorm(meta([1536]), meta([1536]), 1e-6), 'ERR_SHAPE', 'x', 'rank 1');
  throwsNaming(t, () => validateRmsNorm(meta([4, 1536], 'bf16', undefined, { disposed: true }), meta([1536]), 1e-6), 'ERR_DISPOSED', 'x', 'disposed x');
  throwsNaming(t, () => validateRmsNorm(x, meta([1536], 'bf16', undefined, { disposed: true }), 1e-6), 'ERR_DISPOSED', 'weight', 'disposed weight');
  throwsNaming(t, () => validateRmsNorm(x, meta([1536]), -1), 'ERR_RANGE', 'eps', 'negative eps');
  throwsNaming(t, () => validateRmsNorm(x, meta([1536]), Number.NaN), 'ERR_ARGUMENT', 'eps', 'NaN eps');
  throwsNaming(t, () => validateRmsNorm(x, meta([1536]), 1e-6, { out: meta([4, 1535]) }), 'ERR_SHAPE', 'out', 'out shape');
  throwsNaming(t, () => validateRmsNorm(x, meta([1536]), 1e-6, { out: meta([4, 1536], 'u8') }), 'ERR_DTYPE', 'out', 'out dtype');
  throwsNaming(t, () => validateRmsNorm(x, meta([1536]), 1e-6, { out: meta([4, 1536], 'bf16', undefined, { disposed: true }) }), 'ERR_DISPOSED', 'out', 'disposed out');
  // The public function validates before it touches the addon.
  throwsNaming(t, () => rmsNorm(x as unknown as DeviceTensor, meta([1024]) as unknown as DeviceTensor, 1e-6), 'ERR_SHAPE', 'weight', 'rmsNorm(): weight length');
});

interface NormCase {
  rows: number;
  dim: number;
  dtype: 'bf16' | 'f16' | 'f32';
  wDtype?: 'bf16' | 'f16' | 'f32';
  outDtype?: 'bf16' | 'f16' | 'f32';
  /** x is a column slice [0, dim) of a [rows, xStride] buffer; out likewise with outStride. */
  xStride?: number;
  outStride?: number;
  inPlace?: boolean;
  seed: number;
}

function checkNorm(tt: Test, c: NormCase): void {
  const { rows, dim, dtype, seed } = c;
  const wDtype = c.wDtype ?? dtype;
  const outDtype = c.inPlace ? dtype : c.outDtype ?? dtype;
  const xs = c.xStride ?? dim;
  const os = c.inPlace ? xs : c.outStride ?? dim;
  const label = `rows=${rows} dim=${dim} ${dtype}/${wDtype}->${outDtype}${xs !== dim ? ` xStride=${xs}` : ''}${c.inPlace ? ' in place' : ''}`;
  // Rows of different scales: the normalisation must be per row.
  const xHost = randn(rows * xs, seed);
  for (let r = 0; r < rows; r++) for (let i = 0; i < xs; i++) xHost[r * xs + i]! *= 0.1 + (r % 7);
  const wHost = randn(dim, seed + 1, 0.5);
  const xBuf = DeviceTensor.fromArray(xHost, [rows, xs], dtype);
  const w = DeviceTensor.fromArray(wHost, [dim], wDtype);
  const outBuf = c.inPlace ? xBuf : poison(DeviceTensor.empty([rows, os], outDtype));
  try {
    const x = xBuf.slice(1, 0, dim);
    const out = c.inPlace ? x : outBuf.slice(1, 0, dim);
    const y = rmsNorm(x, w, 1e-6, { out });
    tt.equal(y, out, `${label}: returns out`);
    const got = outBuf.toFloat32Sync();
    const ref = reference.rmsNorm(roundTo(xHost, dtype), rows, dim, roundTo(wHost, wDtype), 1e-6, { inStride: xs });
    const mine = new Float64Array(rows * dim);
    let tailUntouched = true;
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < dim; i++) mine[r * dim + i] = got[r * os + i]!;
      if (!c.inPlace) for (let i = dim; i < os; i++) tailUntouched &&= Number.isNaN(got[r * os + i]!);
    }
    const tol = outDtype === 'f32' && dtype === 'f32' && wDtype === 'f32' ? 1e-5 : outDtype === 'f16' ? 2e-3 : 1e-2;
    const err = relError(mine, ref);
    tt.ok(err < tol, `${label}: rel err ${err.toExponential(2)} < ${tol}`);
    tt.ok(tailUntouched, `${label}: columns past dim untouched`);
  } finally {
    xBuf.dispose();
    w.dispose();
    outBuf.dispose();
  }
}

t.test('rmsNorm vs reference (GPU)', { skip: gpuSkip }, async (t) => {
  let seed = 1;
  for (const rows of [1, 3, 17, 1000]) {
    checkNorm(t, { rows, dim: 1536, dtype: 'bf16', seed: seed++ });
    checkNorm(t, { rows, dim: 512, dtype: 'bf16', wDtype: 'f32', seed: seed++ });
  }
  checkNorm(t, { rows: 9, dim: 7, dtype: 'f32', seed: seed++ });
  checkNorm(t, { rows: 33, dim: 1536, dtype: 'f32', wDtype: 'bf16', outDtype: 'bf16', seed: seed++ });
  checkNorm(t, { rows: 33, dim: 1536, dtype: 'f16', outDtype: 'f32', seed: seed++ });
  checkNorm(t, { rows: 5, dim: 7168, dtype: 'bf16', wDtype: 'f32', outDtype: 'f32', seed: seed++ });
  checkNorm(t, { rows: 20, dim: 512, dtype: 'bf16', xStride: 576, outStride: 520, seed: seed++ });
  checkNorm(t, { rows: 20, dim: 512, dtype: 'bf16', xStride: 576, inPlace: true, seed: seed++ });
  checkNorm(t, { rows: 64, dim: 1536, dtype: 'f16', wDtype: 'f32', inPlace: true, seed: seed++ });
});
