// MlaAttention on the float64 reference ops, reading and writing the
// LatentCache's host storage. Exact and slow: the CI oracle and the CPU fallback.

import type { MlaConfig } from '../config.js';
import type { CacheStep, LatentCache } from '../latent-cache.js';
import { absorbOutput, absorbQuery, splitKvBProj, type AbsorbedWeights } from '../reference/absorb.js';
import { gatherPagedCache, type PagedCacheView } from '../reference/cache.js';
import { dequantizeFp8Row, FP8_ROW_BYTES, quantizeFp8Row } from '../reference/fp8.js';
import { naiveAttention, projectQuery, type MlaLayerWeights } from '../reference/layer.js';
import { linear } from '../reference/linear.js';
import { applyRope, ropeLayoutOf, ropeTable, type RopeLayout, type RopeTable } from '../reference/rope.js';
import { sparseSlots, tokenRows, type AttentionBackend, type AttentionPath, type SparseSelection } from './types.js';
import * as reference from '../reference/index.js';

function gatherRows(src: Float64Array, width: number, rows: Int32Array): Float64Array {
  const out = new Float64Array(rows.length * width);
  for (let i = 0; i < rows.length; i++) out.set(src.subarray(rows[i]! * width, (rows[i]! + 1) * width), i * width);
  return out;
}

function scatterRows(dst: Float64Array, src: Float64Array, width: number, rows: Int32Array): void {
  for (let i = 0; i < rows.length; i++) dst.set(src.subarray(i * width, (i + 1) * width), rows[i]! * width);
}

export class ReferenceBackend implements AttentionBackend {
  readonly #cfg: MlaConfig;
  readonly #w: MlaLayerWeights;
  readonly #absorbed: AbsorbedWeights;
  readonly #cache: LatentCache;
  readonly #layer: number;
  readonly #layout: RopeLayout;
  #table: RopeTable | null = null;

  constructor(cfg: MlaConfig, weights: MlaLayerWeights, cache: LatentCache, layer: number) {
    this.#cfg = cfg;
    this.#w = weights;
    this.#absorbed = splitKvBProj(weights.kvBProj, cfg);
    this.#cache = cache;
    this.#layer = layer;
    this.#layout = ropeLayoutOf(cfg);
  }

  // Table rows are independent of its size, so growing it never changes a result.
  #rope(maxPos: number): RopeTable {
    if (this.#table === null || this.#table.maxPos < maxPos) {
      this.#table = ropeTable(this.#cfg, Math.max(maxPos, 2 * (this.#table?.maxPos ?? 0), 256));
    }
    return this.#table;
  }

  forward(hidden: Float64Array, step: CacheStep, paths: readonly AttentionPath[], sparse?: SparseSelection): Float64Array {
    const cfg = this.#cfg;
    const w = this.#w;
    const { hiddenSize: hid, numHeads: H, kvLoraRank: C, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V } = cfg;
    const QK = N + R;
    const D = C + R;
    const T = step.numTokens;
    let maxPos = 0;
    for (const p of step.positions) maxPos = Math.max(maxPos, p + 1);
    const table = this.#rope(maxPos);

    const q = projectQuery(cfg, w, hidden, T);
    const rowPos = new Int32Array(T * H);
    for (let t = 0; t < T; t++) rowPos.fill(step.positions[t]!, t * H, (t + 1) * H);
    applyRope(q, T * H, QK, N, R, rowPos, table, this.#layout);

    const storage = this.#cache.hostLayer(this.#layer);
    const pageSize = this.#cache.pageSize;
    reference.appendLatent({
      kvDown: linear(hidden, T, hid, w.kvAProjWithMqa, D),
      normWeight: w.kvALayernorm,
      eps: cfg.rmsNormEps,
      positions: step.positions,
      slotMapping: step.slotMapping,
      cache: storage,
      pageSize,
      ropeTable: table,
      layout: this.#layout,
    });
    if (this.#cache.kvCacheFormat === 'fp8_e4m3') {
      // The FP8 cache holds the quantized rows: attention reads what they stand for.
      const bytes = new Uint8Array(FP8_ROW_BYTES);
      for (const slot of step.slotMapping) {
        if (slot < 0) continue;
        quantizeFp8Row(storage, slot * D, bytes, 0);
        dequantizeFp8Row(bytes, 0, storage, slot * D);
      }
    }

    // q_latent = q_nope·W_UK per head, then [q_latent ; q_rope]: the absorbed query of `rows`.
    const absorbed = (rows: Int32Array): Float64Array => {
      const Td = rows.length;
      const qd = gatherRows(q, H * QK, rows);
      const qLatent = absorbQuery(qd, Td, this.#absorbed, { stride: QK });
      const qAbs = new Float64Array(Td * H * D);
      for (let r = 0; r < Td * H; r++) {
        qAbs.set(qLatent.subarray(r * C, (r + 1) * C), r * D);
        qAbs.set(qd.subarray(r * QK + N, (r + 1) * QK), r * D + C);
      }
      return qAbs;
    };

    if (sparse !== undefined) {
      const att = reference.sparse({
        q: absorbed(Int32Array.from({ length: T }, (_, t) => t)),
        cache: storage,
        indices: sparseSlots(step, sparse, pageSize),
        topk: sparse.topk,
        topkLength: sparse.topkLength,
        numHeads: H,
        dimLatent: C,
        headDim: D,
        scale: cfg.softmaxScale,
      });
      return linear(absorbOutput(att.out, T, this.#absorbed), T, H * V, w.oProj, hid);
    }

    const o = new Float64Array(T * H * V);
    const group = (path: AttentionPath): number[] => paths.flatMap((p, b) => (p === path ? [b] : []));
    const view = (idx: number[]): PagedCacheView => {
      const { table: blockTable, maxPages } = this.#cache.blockTable(idx.map((b) => step.entries[b]!.seqId));
      return { cache: storage, pageSize, dim: D, blockTable, maxPages };
    };
    const lens = (idx: number[], of: Int32Array): Int32Array => Int32Array.from(idx, (b) => of[b]!);

    const pre = group('prefill');
    if (pre.length > 0) {
      const rows = tokenRows(step, pre);
      const seqLens = lens(pre, step.seqLens);
      const att = naiveAttention(cfg, w.kvBProj, gatherRows(q, H * QK, rows), gatherPagedCache(view(pre), seqLens), lens(pre, step.qSeqLens), seqLens);
      scatterRows(o, att.out, H * V, rows);
    }

    const dec = group('decode');
    if (dec.length > 0) {
      const rows = tokenRows(step, dec);
      const Td = rows.length;
      const v = view(dec);
      const att = reference.decode({
        q: absorbed(rows),
        cache: storage,
        pageSize,
        blockTable: v.blockTable,
        seqLens: lens(dec, step.seqLens),
        qSeqLens: lens(dec, step.qSeqLens),
        numHeads: H,
        dimLatent: C,
        headDim: D,
        scale: cfg.softmaxScale,
        causal: true,
      });
      scatterRows(o, absorbOutput(att.out, Td, this.#absorbed), H * V, rows);
    }
    return linear(o, T, H * V, w.oProj, hid);
  }

  dispose(): void {
    this.#table = null;
  }
}
