// Weight absorption: kv_b_proj maps the latent c to per-head K_nope and V;
// instead of expanding every cached c, fold W_UK into the query and W_UV into
// the output so attention runs on the latent directly.

import { allocHost, argError, checkLength, checkNonNegInt, checkObject, checkPosInt, sizeProduct } from '../check.js';

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

// Validates the head geometry (and, for absorbed weights, that wUK / wUV match it).
function absorbDims(fn: string, name: string, d: AbsorbDims): { H: number; N: number; V: number; C: number } {
  checkObject(fn, name, d);
  const H = checkPosInt(fn, `${name}.numHeads`, d.numHeads);
  const N = checkPosInt(fn, `${name}.qkNopeHeadDim`, d.qkNopeHeadDim);
  const V = checkPosInt(fn, `${name}.vHeadDim`, d.vHeadDim);
  const C = checkPosInt(fn, `${name}.kvLoraRank`, d.kvLoraRank);
  return { H, N, V, C };
}

function absorbedWeights(fn: string, w: AbsorbedWeights): { H: number; N: number; V: number; C: number } {
  const dims = absorbDims(fn, 'w', w);
  checkLength(fn, 'w.wUK', w.wUK, sizeProduct(fn, 'w', dims.H, dims.N, dims.C));
  checkLength(fn, 'w.wUV', w.wUV, sizeProduct(fn, 'w', dims.H, dims.V, dims.C));
  return dims;
}

// kv_b_proj is [H·(nope + v), kvLora]; per head the first nope rows are W_UK,
// the next v rows W_UV.
export function splitKvBProj(kvBProj: Float64Array, dims: AbsorbDims): AbsorbedWeights {
  const fn = 'splitKvBProj';
  const { H, N, V, C } = absorbDims(fn, 'dims', dims);
  checkLength(fn, 'kvBProj', kvBProj, sizeProduct(fn, 'dims', H, N + V, C), { f64: true });
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
  const fn = 'absorbQuery';
  const { H, N, C } = absorbedWeights(fn, w);
  const wUK = w.wUK;
  checkNonNegInt(fn, 'tokens', tokens);
  checkObject(fn, 'layout', layout);
  const stride = checkNonNegInt(fn, 'layout.stride', layout.stride ?? N);
  const offset = checkNonNegInt(fn, 'layout.offset', layout.offset ?? 0);
  if (stride < offset + N) throw argError('ERR_SHAPE', fn, 'layout.stride', `= ${stride} < offset ${offset} + nope ${N}`);
  checkLength(fn, 'qNope', qNope, sizeProduct(fn, 'tokens', tokens, H, stride));
  const out = allocHost(fn, 'tokens', Float64Array, tokens * H * C);
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
  const fn = 'absorbOutput';
  const { H, V, C } = absorbedWeights(fn, w);
  const wUV = w.wUV;
  checkNonNegInt(fn, 'tokens', tokens);
  checkLength(fn, 'oLatent', oLatent, sizeProduct(fn, 'tokens', tokens, H, C));
  const out = allocHost(fn, 'tokens', Float64Array, sizeProduct(fn, 'tokens', tokens, H, V));
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
