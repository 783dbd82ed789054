// FLOP and byte counts of one call, shared by the suites so every number in a report is
// counted the same way. Decode follows FlashMLA exactly (tests/test_flash_mla.py and
// benchmark/bench_flash_mla.py): K and V are one buffer and are counted once, and for
// causal s_q > 1 the masked-out work is NOT subtracted, so our numbers compare with theirs.

/** Latent + RoPE width of a key (kv_lora_rank 512 + qk_rope_head_dim 64). */
export const MLA_DK = 576;
/** Latent width of a value (kv_lora_rank). */
export const MLA_DV = 512;

export interface MlaDecodeShape {
  /** Batch size. */
  b: number;
  /** Query tokens per sequence (1 for plain decode, 2+ for MTP / speculative). */
  sQ: number;
  /** Query heads. */
  hQ: number;
  /** Latent KV heads (1 for MLA). */
  hKv?: number | undefined;
  /** Σ over the batch of cached KV lengths (b · s_k for equal lengths). */
  sumSeqlen: number;
  dK?: number | undefined;
  dV?: number | undefined;
  /** Bytes per element of q, the cache and the output (2 for bf16/f16). */
  elemBytes?: number | undefined;
  /** Bytes per cached token when the cache is not d_k elements (the FP8 layout: 656). */
  cacheRowBytes?: number | undefined;
}

/** FlashMLA: s_q · Σseqlen · h_q · (d_k + d_v) · 2. */
export function mlaDecodeFlops(s: MlaDecodeShape): number {
  return s.sQ * s.sumSeqlen * s.hQ * ((s.dK ?? MLA_DK) + (s.dV ?? MLA_DV)) * 2;
}

/**
 * FlashMLA: (Σseqlen · h_kv · d_k + b · s_q · h_q · d_k + b · s_q · h_q · d_v) · elemBytes; with
 * `cacheRowBytes` (FP8 cache) the first term is Σseqlen · h_kv · cacheRowBytes.
 */
export function mlaDecodeBytes(s: MlaDecodeShape): number {
  const dK = s.dK ?? MLA_DK;
  const dV = s.dV ?? MLA_DV;
  const e = s.elemBytes ?? 2;
  const rows = s.b * s.sQ * s.hQ;
  const cacheBytes = s.sumSeqlen * (s.hKv ?? 1) * (s.cacheRowBytes ?? dK * e);
  return cacheBytes + (rows * dK + rows * dV) * e;
}

/** C[m, n] = A[m, k] · B[k, n]: one multiply-add (2 FLOP) per (m, n, k). */
export function gemmFlops(m: number, n: number, k: number): number {
  return 2 * m * n * k;
}

/** A and B read once, C written once (plus read once more when accumulating into C). */
export function gemmBytes(m: number, n: number, k: number, elemBytes = 2, outBytes = elemBytes, accumulate = false): number {
  return (m * k + k * n) * elemBytes + m * n * outBytes * (accumulate ? 2 : 1);
}

/** A device-to-device copy reads and writes every byte. */
export function copyBytes(bytes: number): number {
  return 2 * bytes;
}

/**
 * (query, key) pairs attention evaluates. Causal masking is bottom-right aligned (the last
 * query sees every key, as in decode with s_q new tokens): query i of s_q sees
 * s_k − s_q + i + 1 keys.
 */
export function attentionPairs(sQ: number, sK: number, causal: boolean): number {
  if (!causal) return sQ * sK;
  let pairs = 0;
  for (let i = 0; i < sQ; i++) pairs += Math.max(0, Math.min(sK, sK - sQ + i + 1));
  return pairs;
}

export interface AttentionShape {
  b: number;
  hQ: number;
  hKv?: number | undefined;
  sQ: number;
  sK: number;
  dQK: number;
  dV: number;
  causal: boolean;
  elemBytes?: number | undefined;
}

/** 2 FLOP per multiply-add for Q·Kᵀ (d_qk) and P·V (d_v), over unmasked pairs only. */
export function attentionFlops(s: AttentionShape): number {
  return 2 * s.b * s.hQ * attentionPairs(s.sQ, s.sK, s.causal) * (s.dQK + s.dV);
}

/** Q, K, V read once, O written once. */
export function attentionBytes(s: AttentionShape): number {
  const hKv = s.hKv ?? s.hQ;
  const q = s.b * s.sQ * s.hQ * s.dQK;
  const kv = s.b * s.sK * hKv * (s.dQK + s.dV);
  const o = s.b * s.sQ * s.hQ * s.dV;
  return (q + kv + o) * (s.elemBytes ?? 2);
}

/** FLOP per byte of device memory traffic. */
export function arithmeticIntensity(flops: number, bytes: number): number {
  return bytes > 0 ? flops / bytes : 0;
}

/** FlashMLA's sparse attention: 2 · h_q · attended · (d_k + d_v), attended = Σ over query tokens of topk. */
export function mlaSparseFlops(s: { hQ: number; attended: number; dK?: number; dV?: number }): number {
  return 2 * s.hQ * s.attended * ((s.dK ?? MLA_DK) + (s.dV ?? MLA_DV));
}

/** FlashMLA's sparse attention: unique retrieved tokens × bytes per cached token (656 FP8, 1,152 bf16). */
export function mlaSparseBytes(s: { uniqueTokens: number; cacheRowBytes: number }): number {
  return s.uniqueTokens * s.cacheRowBytes;
}
