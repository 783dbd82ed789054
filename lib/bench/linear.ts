// Matrix kernels over DeepSeek-V3 layer shapes: the four projections around attention
// (q_a_proj, q_b_proj, kv_a_proj_with_mqa, o_proj) and the absorbed per-head products, for
// decode-sized T (memory-bound: watch GB/s) up to prefill-sized T (compute-bound: TFLOP/s).
//   flops = 2·T·N·K (per head, times H for the absorbed products)
//   bytes = (T·K + N·K + T·N)·elemsize (x, W, y each moved once)
import { DTYPE_SIZE } from '../dtype.js';
import { absorbOutput, absorbQuery, linear, prepareAbsorbWeights } from '../ops/linear.js';
import type { AbsorbWeights } from '../ops/linear.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { gemmFlops } from './formulas.js';
import type { BenchCase, BenchInstance, BenchSuite, BenchSuiteOptions } from './types.js';
import { disposeAll, randomTensor } from './suite-util.js';

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

type Dtype = 'bf16' | 'f16';

export function linearCase(name: string, T: number, N: number, K: number, dtype: Dtype = 'bf16'): BenchCase {
  const e = DTYPE_SIZE[dtype];
  return {
    name: `${name} T${T} [${N}x${K}] ${dtype}`,
    params: { op: 'linear', shape: name, T, N, K, dtype },
    flops: gemmFlops(T, N, K),
    bytes: (T * K + N * K + T * N) * e,
    footprintBytes: (T * K + N * K + T * N) * e,
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

function numbers(grid: BenchSuiteOptions['grid'], key: string): number[] | undefined {
  const v = grid?.[key];
  if (v === undefined) return undefined;
  const out = v.map(Number);
  for (const n of out) if (!Number.isInteger(n) || n < 1) throw new RangeError(`linear: grid ${key} must be positive integers, got ${String(n)}`);
  return out;
}

export const suite: BenchSuite = {
  name: 'linear',
  description:
    'tensor-core GEMM over DeepSeek-V3 projection shapes and the absorbed per-head products ' +
    '(grid keys: t, shape = q_a_proj|q_b_proj|kv_a_proj|o_proj|absorbQuery|absorbOutput, dtype = bf16|f16)',
  cases(opts) {
    const tokens = numbers(opts.grid, 't') ?? (opts.quick ? QUICK_TOKENS : TOKENS);
    const all = [...Object.keys(LINEAR_SHAPES), 'absorbQuery', 'absorbOutput'];
    const shapes = (opts.grid?.['shape'] ?? all).map(String);
    for (const s of shapes) if (!all.includes(s)) throw new RangeError(`linear: unknown shape ${s} (known: ${all.join(', ')})`);
    const dtypes = (opts.grid?.['dtype'] ?? ['bf16']).map((d): Dtype => {
      if (d !== 'bf16' && d !== 'f16') throw new RangeError(`linear: dtype must be bf16 or f16, got ${String(d)}`);
      return d;
    });
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
