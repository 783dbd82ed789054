// Matrix kernels over DeepSeek-V3 layer shapes: the four projections around attention
// (q_a_proj, q_b_proj, kv_a_proj_with_mqa, o_proj) and the absorbed per-head products, for
// decode-sized T (memory-bound: watch GB/s) up to prefill-sized T (compute-bound: TFLOP/s).
//   flops = 2·T·N·K (per head, times H for the absorbed products)
//   bytes = (T·K + N·K + T·N)·elemsize (x, W, y each moved once)
import { DTYPE_SIZE } from '../dtype.js';
import { absorbOutput, absorbQuery, linear, prepareAbsorbWeights } from '../ops/linear.js';
import type { AbsorbWeights } from '../ops/linear.js';
import { absorbOutput as absorbOutputReference, absorbQuery as absorbQueryReference, splitKvBProj } from '../reference/absorb.js';
import { linear as linearReference } from '../reference/linear.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { HALF_TOLERANCE, withScope } from './check.js';
import { gemmFlops } from './formulas.js';
import type { BenchCase, BenchInstance, BenchSuite, KernelCheck } from './types.js';
import { type HalfDType, gridChoices, gridDTypes, gridNumbers, randomTensor } from './suite-util.js';
import { disposeAll } from '../runtime/dispose.js';

const V3 = { hidden: 7168, qLora: 1536, kvLora: 512, rope: 64, nope: 128, v: 128, heads: 128 };

/** [N, K] of each projection (weights as stored: [out, in]). */
const LINEAR_SHAPES: Readonly<Record<string, readonly [number, number]>> = {
  q_a_proj: [V3.qLora, V3.hidden],
  q_b_proj: [V3.heads * (V3.nope + V3.rope), V3.qLora],
  kv_a_proj: [V3.kvLora + V3.rope, V3.hidden],
  o_proj: [V3.hidden, V3.heads * V3.v],
};
const TOKENS = [1, 8, 64, 512, 4096, 16384];
const QUICK_TOKENS = [1, 512];

type Dtype = HalfDType;

/** The GEMM path: [37 × 264] · [520 × 264]ᵀ (edge tiles in every dim) against the float64 product. */
export function linearCheck(dtype: Dtype): KernelCheck {
  return {
    name: `linear ${dtype} (T37 [520x264])`,
    tolerance: HALF_TOLERANCE,
    run: () => withScope((sc) => {
      const T = 37, N = 520, K = 264;
      const x = sc.random([T, K], dtype, 51);
      const w = sc.random([N, K], dtype, 52, 1 / Math.sqrt(K));
      const y = sc.own(DeviceTensor.empty([T, N], dtype));
      linear(x.t, w.t, { out: y });
      return [{ name: 'y', got: y.toFloat32Sync(), want: linearReference(x.host, T, K, w.host, N) }];
    }),
  };
}

/** The absorbed products on 16 heads: absorbQuery from a strided [T, H, 192] query, and absorbOutput. */
export function absorbCheck(op: 'absorbQuery' | 'absorbOutput', dtype: Dtype): KernelCheck {
  return {
    name: `${op} ${dtype} (T5 H16)`,
    tolerance: HALF_TOLERANCE,
    run: () => withScope((sc) => {
      const T = 5, H = 16;
      const dims = { numHeads: H, qkNopeHeadDim: V3.nope, vHeadDim: V3.v, kvLoraRank: V3.kvLora };
      const kvB = sc.random([H * (V3.nope + V3.v), V3.kvLora], dtype, 53, 1 / Math.sqrt(V3.kvLora));
      const w = sc.own(prepareAbsorbWeights(kvB.t, dims));
      const ref = splitKvBProj(kvB.host, dims);
      if (op === 'absorbQuery') {
        const q = sc.random([T, H, V3.nope + V3.rope], dtype, 54);
        const out = sc.own(DeviceTensor.empty([T, H, V3.kvLora], dtype));
        absorbQuery(q.t.slice(2, 0, V3.nope), w, { out });
        return [{ name: 'out', got: out.toFloat32Sync(), want: absorbQueryReference(q.host, T, ref, { stride: V3.nope + V3.rope }) }];
      }
      const o = sc.random([T, H, V3.kvLora], dtype, 55);
      const out = sc.own(DeviceTensor.empty([T, H, V3.v], dtype));
      absorbOutput(o.t, w, { out });
      return [{ name: 'out', got: out.toFloat32Sync(), want: absorbOutputReference(o.host, T, ref) }];
    }),
  };
}

export function linearCase(name: string, T: number, N: number, K: number, dtype: Dtype = 'bf16'): BenchCase {
  const e = DTYPE_SIZE[dtype];
  return {
    name: `${name} T${T} [${N}x${K}] ${dtype}`,
    params: { op: 'linear', shape: name, T, N, K, dtype },
    flops: gemmFlops(T, N, K),
    bytes: (T * K + N * K + T * N) * e,
    footprintBytes: (T * K + N * K + T * N) * e,
    checks: [linearCheck(dtype)],
    setup(): BenchInstance {
      const made: DeviceTensor[] = [];
      try {
        const x = randomTensor([T, K], dtype, 1 + T, 1);
        made.push(x);
        const w = randomTensor([N, K], dtype, 7 + N, 1 / Math.sqrt(K));
        made.push(w);
        const y = DeviceTensor.empty([T, N], dtype);
        made.push(y);
        return {
          run: (stream) => void linear(x, w, { out: y, stream }),
          dispose: () => disposeAll(made),
        };
      } catch (err) {
        disposeAll(made);
        throw err;
      }
    },
  };
}

/** absorbQuery ([T,H,128] strided out of [T,H,192] into [T,H,512] of [T,H,576]) or absorbOutput. */
export function absorbCase(op: 'absorbQuery' | 'absorbOutput', T: number, H = V3.heads, dtype: Dtype = 'bf16'): BenchCase {
  const e = DTYPE_SIZE[dtype];
  const [K, N] = op === 'absorbQuery' ? [V3.nope, V3.kvLora] : [V3.kvLora, V3.v];
  const moved = (T * H * K + H * N * K + T * H * N) * e;
  return {
    name: `${op} T${T} H${H} ${dtype}`,
    params: { op, T, H, N, K, dtype },
    flops: H * gemmFlops(T, N, K),
    bytes: moved,
    footprintBytes: moved + H * (V3.nope + V3.v) * V3.kvLora * e,
    checks: [absorbCheck(op, dtype)],
    setup(): BenchInstance {
      const made: (DeviceTensor | AbsorbWeights)[] = [];
      try {
        const kvB = randomTensor([H * (V3.nope + V3.v), V3.kvLora], dtype, 11, 1 / Math.sqrt(V3.kvLora));
        made.push(kvB);
        const w = prepareAbsorbWeights(kvB, { numHeads: H, qkNopeHeadDim: V3.nope, vHeadDim: V3.v, kvLoraRank: V3.kvLora });
        made.push(w);
        if (op === 'absorbQuery') {
          const q = randomTensor([T, H, V3.nope + V3.rope], dtype, 13 + T, 1);
          made.push(q);
          const qBuf = DeviceTensor.empty([T, H, V3.kvLora + V3.rope], dtype);
          made.push(qBuf);
          const qNope = q.slice(2, 0, V3.nope);
          const out = qBuf.slice(2, 0, V3.kvLora);
          return { run: (stream) => void absorbQuery(qNope, w, { out, stream }), dispose: () => disposeAll(made) };
        }
        const o = randomTensor([T, H, V3.kvLora], dtype, 17 + T, 1);
        made.push(o);
        const y = DeviceTensor.empty([T, H, V3.v], dtype);
        made.push(y);
        return { run: (stream) => void absorbOutput(o, w, { out: y, stream }), dispose: () => disposeAll(made) };
      } catch (err) {
        disposeAll(made);
        throw err;
      }
    },
  };
}

export const suite: BenchSuite = {
  name: 'linear',
  description:
    'tensor-core GEMM over DeepSeek-V3 projection shapes and the absorbed per-head products ' +
    '(grid keys: t, shape = q_a_proj|q_b_proj|kv_a_proj|o_proj|absorbQuery|absorbOutput, dtype = bf16|f16)',
  cases(opts) {
    const tokens = gridNumbers('linear', opts, 't', opts.quick ? QUICK_TOKENS : TOKENS);
    const all = [...Object.keys(LINEAR_SHAPES), 'absorbQuery', 'absorbOutput'];
    const shapes = gridChoices('linear', opts, 'shape', all, all);
    const dtypes = gridDTypes('linear', opts);
    const cases: BenchCase[] = [];
    for (const dtype of dtypes) {
      for (const s of shapes) {
        for (const T of tokens) {
          if (s === 'absorbQuery' || s === 'absorbOutput') cases.push(absorbCase(s, T, V3.heads, dtype));
          else cases.push(linearCase(s, T, LINEAR_SHAPES[s]![0], LINEAR_SHAPES[s]![1], dtype));
        }
      }
    }
    return cases;
  },
};
