// Naive (non-absorbed) MLA prefill: expand the cached latent back to per-head
// keys and values, then ordinary multi-head attention with d_qk = nope + rope
// and d_v = v. This is the compute-friendly form serving engines use for
// prefill; it must agree with the absorbed form in decode.ts.

import { linear } from './linear.js';
import type { AttentionResult } from './decode.js';
import { allocHost, argError, checkArray, checkFiniteNumber, checkLength, checkNonNegInt, checkObject, checkPosInt, sizeProduct } from '../check.js';
import { perRequest } from './util.js';

export interface MhaVarlenReferenceArgs {
  /** [Σ qSeqLens, H, dQk] */
  q: Float64Array;
  /** [Σ kvSeqLens, Hkv, dQk] */
  k: Float64Array;
  /** [Σ kvSeqLens, Hkv, dV] */
  v: Float64Array;
  qSeqLens: ArrayLike<number>;
  kvSeqLens: ArrayLike<number>;
  numHeads: number;
  /** Heads h·Hkv/H share KV head; default numHeads. */
  numKvHeads?: number;
  headDimQk: number;
  headDimV: number;
  scale: number;
  causal: boolean;
}

// Ragged multi-head attention, requests packed back to back (cu_seqlens style).
// Query i of a request with s_q queries and L keys sees keys 0 .. L − s_q + i when
// causal (queries aligned to the end of the sequence, the cached prefix first).
//   out = softmax(scale · q·Kᵀ) · V,  lse = ln Σ exp(scale · q·K)
export function mhaVarlen(args: MhaVarlenReferenceArgs): AttentionResult {
  const fn = 'mha';
  checkObject(fn, 'args', args);
  const { q, k, v, numHeads: H, headDimQk: Dq, headDimV: Dv, scale, causal } = args;
  const B = checkArray(fn, 'qSeqLens', args.qSeqLens).length;
  const qLens = perRequest(fn, 'qSeqLens', args.qSeqLens, B);
  const kLens = perRequest(fn, 'kvSeqLens', args.kvSeqLens, B);
  const Hk = args.numKvHeads ?? H;
  checkPosInt(fn, 'numHeads', H);
  checkPosInt(fn, 'numKvHeads', Hk);
  if (H % Hk !== 0) throw argError('ERR_SHAPE', fn, 'numKvHeads', `= ${Hk} does not divide numHeads ${H}`);
  checkPosInt(fn, 'headDimQk', Dq);
  checkPosInt(fn, 'headDimV', Dv);
  checkFiniteNumber(fn, 'scale', scale);
  if (typeof causal !== 'boolean') throw argError('ERR_ARGUMENT', fn, 'causal', `must be a boolean, got ${String(causal)}`);
  let Tq = 0;
  let Tk = 0;
  let maxL = 0;
  for (let b = 0; b < B; b++) {
    Tq += qLens[b]!;
    Tk += kLens[b]!;
    maxL = Math.max(maxL, kLens[b]!);
  }
  checkLength(fn, 'q', q, sizeProduct(fn, 'qSeqLens', Tq, H, Dq));
  checkLength(fn, 'k', k, sizeProduct(fn, 'kvSeqLens', Tk, Hk, Dq));
  checkLength(fn, 'v', v, sizeProduct(fn, 'kvSeqLens', Tk, Hk, Dv));
  const out = allocHost(fn, 'qSeqLens', Float64Array, sizeProduct(fn, 'qSeqLens', Tq, H, Dv));
  const lse = allocHost(fn, 'qSeqLens', Float64Array, Tq * H);
  const p = allocHost(fn, 'kvSeqLens', Float64Array, maxL);
  const group = H / Hk;
  let q0 = 0;
  let k0 = 0;
  for (let b = 0; b < B; b++) {
    const sq = qLens[b]!;
    const L = kLens[b]!;
    for (let i = 0; i < sq; i++) {
      const visible = Math.min(L, causal ? L - sq + i + 1 : L);
      const tq = q0 + i;
      for (let h = 0; h < H; h++) {
        const hk = Math.floor(h / group);
        if (visible <= 0) {
          // −inf like the prefill kernel (out 0): its chunks merge through mergeAttnStates, whose
          // "both sides empty" result is −inf, so −inf is what a chunked prefill ends with too.
          lse[tq * H + h] = -Infinity;
          continue;
        }
        const qo = (tq * H + h) * Dq;
        let m = -Infinity;
        for (let t = 0; t < visible; t++) {
          const ko = ((k0 + t) * Hk + hk) * Dq;
          let s = 0;
          for (let d = 0; d < Dq; d++) s += q[qo + d]! * k[ko + d]!;
          s *= scale;
          p[t] = s;
          if (s > m) m = s;
        }
        let l = 0;
        for (let t = 0; t < visible; t++) {
          p[t] = Math.exp(p[t]! - m);
          l += p[t]!;
        }
        const oo = (tq * H + h) * Dv;
        for (let t = 0; t < visible; t++) {
          const w = p[t]! / l;
          const vo = ((k0 + t) * Hk + hk) * Dv;
          for (let d = 0; d < Dv; d++) out[oo + d] += w * v[vo + d]!;
        }
        lse[tq * H + h] = m + Math.log(l);
      }
    }
    q0 += sq;
    k0 += L;
  }
  return { out, lse };
}

export interface ExpandDims {
  numHeads: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  kvLoraRank: number;
}

// From cache rows [c ; k_rope] (width kvLora + rope):
//   [K_nope | V][t, h] = c_t · kv_b_projᵀ (per head nope then v rows)
//   K[t, h] = [K_nope[t, h] ; k_rope[t]]   (the rope key is shared by all heads)
export function expandLatentKv(
  kv: Float64Array,
  tokens: number,
  kvBProj: Float64Array,
  dims: ExpandDims,
): { k: Float64Array; v: Float64Array } {
  const fn = 'expandLatentKv';
  checkObject(fn, 'dims', dims);
  const H = checkPosInt(fn, 'dims.numHeads', dims.numHeads);
  const N = checkPosInt(fn, 'dims.qkNopeHeadDim', dims.qkNopeHeadDim);
  const R = checkPosInt(fn, 'dims.qkRopeHeadDim', dims.qkRopeHeadDim);
  const V = checkPosInt(fn, 'dims.vHeadDim', dims.vHeadDim);
  const C = checkPosInt(fn, 'dims.kvLoraRank', dims.kvLoraRank);
  const W = C + R;
  checkNonNegInt(fn, 'tokens', tokens);
  checkLength(fn, 'kv', kv, sizeProduct(fn, 'tokens', tokens, W), { f64: true });
  checkLength(fn, 'kvBProj', kvBProj, sizeProduct(fn, 'dims', H, N + V, C));
  const latent = new Float64Array(tokens * C);
  for (let t = 0; t < tokens; t++) latent.set(kv.subarray(t * W, t * W + C), t * C);
  const up = linear(latent, tokens, C, kvBProj, H * (N + V));
  const k = allocHost(fn, 'tokens', Float64Array, sizeProduct(fn, 'tokens', tokens, H, N + R));
  const v = allocHost(fn, 'tokens', Float64Array, sizeProduct(fn, 'tokens', tokens, H, V));
  for (let t = 0; t < tokens; t++) {
    const rope = kv.subarray(t * W + C, (t + 1) * W);
    for (let h = 0; h < H; h++) {
      const uo = (t * H + h) * (N + V);
      const ko = (t * H + h) * (N + R);
      k.set(up.subarray(uo, uo + N), ko);
      k.set(rope, ko + N);
      v.set(up.subarray(uo + N, uo + N + V), (t * H + h) * V);
    }
  }
  return { k, v };
}

export interface PrefillReferenceArgs extends ExpandDims {
  /** [Σ qSeqLens, H, nope + rope]: rope part already rotated. */
  q: Float64Array;
  /** [Σ kvSeqLens, kvLora + rope]: cache rows (normalised latent, rotated rope key), each request's cached prefix then its new tokens. */
  kv: Float64Array;
  /** [H·(nope + v), kvLora] */
  kvBProj: Float64Array;
  qSeqLens: ArrayLike<number>;
  /** Keys per request, prefix included; ≥ qSeqLens for a causal prefill. */
  kvSeqLens: ArrayLike<number>;
  scale: number;
  /** Default true. */
  causal?: boolean;
}

// Naive MLA prefill over ragged requests: expandLatentKv then mhaVarlen.
// Output [Σ qSeqLens, H, v] and LSE [Σ qSeqLens, H].
export function prefill(args: PrefillReferenceArgs): AttentionResult {
  const fn = 'prefill';
  checkObject(fn, 'args', args);
  const kvLens = checkArray(fn, 'kvSeqLens', args.kvSeqLens);
  let Tk = 0;
  for (let b = 0; b < kvLens.length; b++) Tk += checkNonNegInt(fn, `kvSeqLens[${b}]`, kvLens[b]);
  if (args.causal !== undefined && typeof args.causal !== 'boolean') throw argError('ERR_ARGUMENT', fn, 'causal', `must be a boolean, got ${String(args.causal)}`);
  const { k, v } = expandLatentKv(args.kv, Tk, args.kvBProj, args);
  return mhaVarlen({
    q: args.q,
    k,
    v,
    qSeqLens: args.qSeqLens,
    kvSeqLens: args.kvSeqLens,
    numHeads: args.numHeads,
    headDimQk: args.qkNopeHeadDim + args.qkRopeHeadDim,
    headDimV: args.vHeadDim,
    scale: args.scale,
    causal: args.causal ?? true,
  });
}

export interface MergeAttnStatesReferenceArgs {
  /** [R, H, D] running result, updated in place. */
  out: Float64Array;
  /** [R, H] its natural-log LSE, updated in place. */
  lse: Float64Array;
  /** [R, H, D] partial result over other keys. */
  part: Float64Array;
  /** [R, H] */
  partLse: ArrayLike<number>;
  /** D */
  dim: number;
}

// The float64 twin of the mergeAttnStates kernel, with its "no keys" rule: a side whose LSE is
// ±inf is empty (weight 0, its output never read). Prefill writes −inf for a query without keys,
// decode and sparse +inf (output 0); both must merge as nothing. Both sides empty: out 0 and
// lse −inf. A NaN LSE propagates.
export function mergeAttnStates(args: MergeAttnStatesReferenceArgs): void {
  const fn = 'mergeAttnStates';
  checkObject(fn, 'args', args);
  const { out, lse, part, partLse, dim: D } = args;
  checkPosInt(fn, 'dim', D);
  const rows = lse.length;
  checkLength(fn, 'partLse', partLse, rows);
  checkLength(fn, 'out', out, rows * D);
  checkLength(fn, 'part', part, rows * D);
  for (let i = 0; i < rows; i++) {
    const l1 = lse[i]!, l2 = partLse[i]!;
    const e1 = Math.abs(l1) === Infinity, e2 = Math.abs(l2) === Infinity;
    const o = i * D;
    if (e1 && e2) {
      out.fill(0, o, o + D);
      lse[i] = -Infinity;
      continue;
    }
    const m = e1 ? l2 : e2 ? l1 : Math.max(l1, l2);
    const w1 = e1 ? 0 : Math.exp(l1 - m);
    const w2 = e2 ? 0 : Math.exp(l2 - m);
    const s = w1 + w2;
    for (let d = 0; d < D; d++) out[o + d] = ((w1 > 0 ? out[o + d]! * w1 : 0) + (w2 > 0 ? part[o + d]! * w2 : 0)) / s;
    lse[i] = m + Math.log(s);
  }
}
