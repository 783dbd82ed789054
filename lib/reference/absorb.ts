// Weight absorption: kv_b_proj maps the latent c to per-head K_nope and V;
// instead of expanding every cached c, fold W_UK into the query and W_UV into
// the output so attention runs on the latent directly.

import { checkLength, checkNonNegInt, checkPosInt } from './util.js';

export interface AbsorbDims {
  numHeads: number;
  qkNopeHeadDim: number;
  vHeadDim: number;
  kvLoraRank: number;
}

export interface AbsorbedWeights extends AbsorbDims {
  /** [H, nope, kvLora] */
  wUK: Float64Array;
  /** [H, v, kvLora] */
  wUV: Float64Array;
}

// kv_b_proj is [H·(nope + v), kvLora]; per head the first nope rows are W_UK,
// the next v rows W_UV.
export function splitKvBProj(kvBProj: Float64Array, dims: AbsorbDims): AbsorbedWeights {
  const { numHeads: H, qkNopeHeadDim: N, vHeadDim: V, kvLoraRank: C } = dims;
  checkPosInt('splitKvBProj numHeads', H);
  checkPosInt('splitKvBProj qkNopeHeadDim', N);
  checkPosInt('splitKvBProj vHeadDim', V);
  checkPosInt('splitKvBProj kvLoraRank', C);
  checkLength('splitKvBProj kvBProj', kvBProj, H * (N + V) * C);
  const wUK = new Float64Array(H * N * C);
  const wUV = new Float64Array(H * V * C);
  for (let h = 0; h < H; h++) {
    const base = h * (N + V) * C;
    wUK.set(kvBProj.subarray(base, base + N * C), h * N * C);
    wUV.set(kvBProj.subarray(base + N * C, base + (N + V) * C), h * V * C);
  }
  return { numHeads: H, qkNopeHeadDim: N, vHeadDim: V, kvLoraRank: C, wUK, wUV };
}

// q_lat[t, h, c] = Σ_n q_nope[t, h, n] · W_UK[h, n, c]
// qNope rows (t, h) start at (t·H + h)·stride + offset; stride defaults to nope, so a
// full query [T, H, nope + rope] can be passed with stride nope + rope.
export function absorbQuery(
  qNope: Float64Array,
  tokens: number,
  w: AbsorbedWeights,
  layout: { stride?: number; offset?: number } = {},
): Float64Array {
  const { numHeads: H, qkNopeHeadDim: N, kvLoraRank: C, wUK } = w;
  checkNonNegInt('absorbQuery tokens', tokens);
  const stride = layout.stride ?? N;
  const offset = layout.offset ?? 0;
  if (stride < offset + N) throw new RangeError(`absorbQuery: stride ${stride} < offset ${offset} + nope ${N}`);
  checkLength('absorbQuery qNope', qNope, tokens * H * stride);
  const out = new Float64Array(tokens * H * C);
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < H; h++) {
      const qo = (t * H + h) * stride + offset;
      const oo = (t * H + h) * C;
      const wh = h * N * C;
      for (let n = 0; n < N; n++) {
        const a = qNope[qo + n]!;
        const wr = wh + n * C;
        for (let c = 0; c < C; c++) out[oo + c] += a * wUK[wr + c]!;
      }
    }
  }
  return out;
}

// o[t, h, d] = Σ_c o_lat[t, h, c] · W_UV[h, d, c]
export function absorbOutput(oLatent: Float64Array, tokens: number, w: AbsorbedWeights): Float64Array {
  const { numHeads: H, vHeadDim: V, kvLoraRank: C, wUV } = w;
  checkNonNegInt('absorbOutput tokens', tokens);
  checkLength('absorbOutput oLatent', oLatent, tokens * H * C);
  const out = new Float64Array(tokens * H * V);
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < H; h++) {
      const io = (t * H + h) * C;
      for (let d = 0; d < V; d++) {
        const wr = (h * V + d) * C;
        let s = 0;
        for (let c = 0; c < C; c++) s += oLatent[io + c]! * wUV[wr + c]!;
        out[(t * H + h) * V + d] = s;
      }
    }
  }
  return out;
}
