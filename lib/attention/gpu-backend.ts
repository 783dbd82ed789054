// MlaAttention on the CUDA ops of lib/ops: linear / rmsNorm for the projections,
// ropeQuery and the fused appendLatent for RoPE and the cache write, the naive
// prefill kernel for prompts, absorbQuery → decode → absorbOutput for decodes, o_proj.
//
// The attention kernels are built for DeepSeek's head geometry (kv_lora 512, rope 64,
// nope 128, v 128); create() rejects anything else with ERR_SHAPE.

import type { MlaConfig } from '../config.js';
import { MlaError } from '../errors.js';
import type { CacheDType, CacheStep, DeviceCacheStep, LatentCache } from '../latent-cache.js';
import { decode, DecodeWorkspace } from '../ops/decode.js';
import { nativeLimits } from '../native.js';
import { absorbOutput, absorbQuery, linear, prepareAbsorbWeights, type AbsorbWeights } from '../ops/linear.js';
import { PREFILL_KV_LORA, PREFILL_NOPE_DIM, PREFILL_ROPE_DIM, PREFILL_V_DIM, prefill, preparePrefillWeights } from '../ops/prefill.js';
import { rmsNorm } from '../ops/rmsnorm.js';
import { appendLatent, ROPE_MAX_POSITIONS, ropeConfigFrom, ropeQuery, RopeTable } from '../ops/rope.js';
import type { MlaLayerWeights } from '../reference/layer.js';
import type { Stream } from '../runtime/stream.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { isPowerOfTwo } from '../ops/validate.js';
import { isHostWeights, type MlaWeights } from '../weights.js';
import { sparse as sparseAttention } from '../ops/sparse.js';
import { sparseSlots, type AttentionBackend, type AttentionPath, type SparseSelection } from './types.js';

export interface GpuBackendOptions {
  config: MlaConfig;
  weights: MlaWeights | MlaLayerWeights;
  cache: LatentCache;
  layer: number;
  dtype: CacheDType;
  stream?: Stream | undefined;
}

/**
 * The buffers of a step that is captured as a CUDA graph (DecodeGraph): the index tensors are
 * persistent and rewritten before each replay, and take() hands out the same tensor for the
 * same name on every call, so the captured kernels keep pointing at live memory.
 */
export interface StepArena {
  readonly dev: DeviceCacheStep;
  take(name: string, shape: readonly number[], dtype: CacheDType | 'f32'): DeviceTensor;
}

/** A run of consecutive requests that take the same path: one attention launch. */
interface Segment {
  path: AttentionPath;
  b0: number;
  b1: number;
  t0: number;
  t1: number;
}

function segmentsOf(step: CacheStep, paths: readonly AttentionPath[]): Segment[] {
  const out: Segment[] = [];
  step.entries.forEach((e, b) => {
    const last = out[out.length - 1];
    if (last !== undefined && last.path === paths[b]) {
      last.b1 = b + 1;
      last.t1 = e.tokenStart + e.numTokens;
    } else {
      out.push({ path: paths[b]!, b0: b, b1: b + 1, t0: e.tokenStart, t1: e.tokenStart + e.numTokens });
    }
  });
  return out;
}

/** Throws ERR_SHAPE unless the kernels support this geometry and page size. */
export function checkGpuGeometry(cfg: MlaConfig, pageSize: number): void {
  const bad: string[] = [];
  if (cfg.kvLoraRank !== PREFILL_KV_LORA) bad.push(`kv_lora_rank ${cfg.kvLoraRank} (needs ${PREFILL_KV_LORA})`);
  if (cfg.qkRopeHeadDim !== PREFILL_ROPE_DIM) bad.push(`qk_rope_head_dim ${cfg.qkRopeHeadDim} (needs ${PREFILL_ROPE_DIM})`);
  if (cfg.qkNopeHeadDim !== PREFILL_NOPE_DIM) bad.push(`qk_nope_head_dim ${cfg.qkNopeHeadDim} (needs ${PREFILL_NOPE_DIM})`);
  if (cfg.vHeadDim !== PREFILL_V_DIM) bad.push(`v_head_dim ${cfg.vHeadDim} (needs ${PREFILL_V_DIM})`);
  const lim = nativeLimits().decode;
  if (cfg.numHeads > lim.maxHeads) bad.push(`${cfg.numHeads} heads (at most ${lim.maxHeads})`);
  if (cfg.hiddenSize % 8 !== 0) bad.push(`hidden_size ${cfg.hiddenSize} (a multiple of 8)`);
  if (cfg.qLoraRank !== null && cfg.qLoraRank % 8 !== 0) bad.push(`q_lora_rank ${cfg.qLoraRank} (a multiple of 8)`);
  if (!isPowerOfTwo(pageSize) || pageSize < lim.minPageSize || pageSize > lim.maxPageSize) {
    bad.push(`cache page size ${pageSize} (a power of two in [${lim.minPageSize}, ${lim.maxPageSize}])`);
  }
  if (bad.length > 0) throw new MlaError('ERR_SHAPE', `MlaAttention (gpu backend): the CUDA kernels do not support ${bad.join(', ')}`);
}

interface DeviceWeights {
  qAProj: DeviceTensor | null;
  qALayernorm: DeviceTensor | null;
  qBProj: DeviceTensor | null;
  qProj: DeviceTensor | null;
  kvAProjWithMqa: DeviceTensor;
  kvALayernorm: DeviceTensor;
  oProj: DeviceTensor;
  absorb: AbsorbWeights;
  /** [H·128, 512] W_UK rows for the prefill up-projection (W_UV is absorb.wUV reshaped). */
  prefillWUK: DeviceTensor;
}

// Uploads everything, freeing what was uploaded if any step fails.
function uploadWeights(cfg: MlaConfig, w: MlaWeights | MlaLayerWeights, dtype: CacheDType, stream: Stream | undefined): DeviceWeights {
  const made: DeviceTensor[] = [];
  const host = isHostWeights(w);
  const data = (k: keyof MlaLayerWeights): Float32Array | null => {
    if (host) return w[k]?.data ?? null;
    const v = w[k];
    return v === null ? null : Float32Array.from(v);
  };
  const up = (k: keyof MlaLayerWeights, shape: readonly number[], dt: CacheDType | 'f32' = dtype): DeviceTensor | null => {
    const d = data(k);
    if (d === null) return null;
    const t = DeviceTensor.fromArray(d, shape, dt);
    made.push(t);
    return t;
  };
  let absorb: AbsorbWeights | undefined;
  try {
    const { hiddenSize: hid, numHeads: H, qLoraRank: q, kvLoraRank: C, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V } = cfg;
    const kvB = up('kvBProj', [H * (N + V), C])!;
    const sopts = { stream };
    absorb = prepareAbsorbWeights(kvB, { numHeads: H, qkNopeHeadDim: N, vHeadDim: V, kvLoraRank: C }, sopts);
    const pw = preparePrefillWeights(kvB, { numHeads: H }, sopts);
    pw.wUV.dispose();
    made.push(pw.wUK);
    const dw: DeviceWeights = {
      qAProj: q === null ? null : up('qAProj', [q, hid]),
      // Norm weights stay f32: the kernels accept them and it saves a rounding.
      qALayernorm: q === null ? null : up('qALayernorm', [q], 'f32'),
      qBProj: q === null ? null : up('qBProj', [H * (N + R), q]),
      qProj: q === null ? up('qProj', [H * (N + R), hid]) : null,
      kvAProjWithMqa: up('kvAProjWithMqa', [C + R, hid])!,
      kvALayernorm: up('kvALayernorm', [C], 'f32')!,
      oProj: up('oProj', [hid, H * V])!,
      absorb,
      prefillWUK: pw.wUK,
    };
    // kv_b_proj itself is not needed once split.
    kvB.dispose();
    return dw;
  } catch (e) {
    for (const t of made) t.dispose();
    absorb?.dispose();
    throw e;
  }
}

/**
 * A decode workspace shared by the layers of a model that decode on one stream (every GpuBackend
 * on the same cache and stream): the first layer to decode a step's requests plans the split,
 * the others run on that plan (decode's plan 'reuse'; FlashMLA's metadata once per step). The
 * stream orders it: a layer's kernels read the plan and the partial buffers after the previous
 * layer's are done with them, so layers on other streams get a plan of their own. Captured steps
 * (DecodeGraph) keep each layer's own workspace and plan.
 */
class SharedDecodePlan {
  ws: DecodeWorkspace | null = null;
  refs = 0;
  /** What the workspace's plan was made for: the step, its request range, the head count. */
  step: CacheStep | null = null;
  b0 = 0;
  b1 = 0;
  heads = 0;
  /** Plans computed and reused (tests and diagnostics). */
  planned = 0;
  reused = 0;

  workspace(batch: number, heads: number, maxQ: number): DecodeWorkspace {
    const ws = this.ws;
    if (ws !== null && ws.fits(batch, heads, maxQ)) return ws;
    // Freeing the outgrown one (cudaFree) waits for the kernels still using it; none is held
    // while the new one is allocated, so a failed allocation leaves no freed workspace behind.
    ws?.dispose();
    this.ws = null;
    this.step = null;
    this.ws = grownWorkspace(ws, batch, heads, maxQ);
    return this.ws;
  }
}

/** A workspace for this call that also fits every call the outgrown one `had` fitted. */
function grownWorkspace(had: DecodeWorkspace | null, batch: number, heads: number, maxQ: number): DecodeWorkspace {
  return new DecodeWorkspace({ maxBatch: Math.max(batch, had?.maxBatch ?? 0), maxHeads: heads, maxQSeqLen: Math.max(maxQ, had?.maxQSeqLen ?? 1) });
}
const sharedPlans = new WeakMap<LatentCache, Map<Stream | undefined, SharedDecodePlan>>();

function acquireSharedPlan(cache: LatentCache, stream: Stream | undefined): SharedDecodePlan {
  let byStream = sharedPlans.get(cache);
  if (byStream === undefined) sharedPlans.set(cache, (byStream = new Map()));
  let sp = byStream.get(stream);
  if (sp === undefined) byStream.set(stream, (sp = new SharedDecodePlan()));
  sp.refs++;
  return sp;
}

function releaseSharedPlan(cache: LatentCache, stream: Stream | undefined, sp: SharedDecodePlan): void {
  if (--sp.refs > 0) return;
  sp.ws?.dispose();
  sp.ws = null;
  sharedPlans.get(cache)?.delete(stream);
}

/** @internal How many decode plans the layers on (cache, stream) computed and reused (tests). */
export function sharedPlanCounts(cache: LatentCache, stream?: Stream): { planned: number; reused: number } {
  const sp = sharedPlans.get(cache)?.get(stream);
  return { planned: sp?.planned ?? 0, reused: sp?.reused ?? 0 };
}

export class GpuBackend implements AttentionBackend {
  readonly #cfg: MlaConfig;
  readonly #cache: LatentCache;
  readonly #layer: number;
  readonly #dtype: CacheDType;
  readonly #stream: Stream | undefined;
  #w: DeviceWeights | null;
  #rope: RopeTable | null = null;
  #workspace: DecodeWorkspace | null = null;
  readonly #sharedPlan: SharedDecodePlan;
  // Eager steps reuse their intermediates: a decode loop of one batch shape allocates nothing
  // after its first step (each cudaFree would also wait for the GPU). Stream order makes the
  // reuse safe: a step's kernels run after the previous step's on the layer's stream.
  readonly #scratch = new Map<string, DeviceTensor>();
  // A captured DecodeGraph keeps pointers to the RoPE table and the decode workspace: while one
  // is alive, a table or workspace outgrown by an eager step is kept here instead of freed (a
  // replay would read freed memory and fault, losing the context), until the last graph goes.
  #graphs = 0;
  readonly #retired: Disposable[] = [];

  private constructor(opts: GpuBackendOptions, w: DeviceWeights) {
    this.#cfg = opts.config;
    this.#cache = opts.cache;
    this.#layer = opts.layer;
    this.#dtype = opts.dtype;
    this.#stream = opts.stream;
    this.#w = w;
    this.#sharedPlan = acquireSharedPlan(opts.cache, opts.stream);
  }

  static create(opts: GpuBackendOptions): GpuBackend {
    checkGpuGeometry(opts.config, opts.cache.pageSize);
    return new GpuBackend(opts, uploadWeights(opts.config, opts.weights, opts.dtype, opts.stream));
  }

  // Grows geometrically so a long generation rebuilds the table O(log n) times.
  #ropeTable(maxPos: number): RopeTable {
    if (this.#rope === null || this.#rope.maxPositions < maxPos) {
      const size = Math.min(ROPE_MAX_POSITIONS, Math.max(maxPos, 2 * (this.#rope?.maxPositions ?? 0), 4096));
      if (size < maxPos) throw new MlaError('ERR_RANGE', `MlaAttention: position ${maxPos - 1} exceeds the largest RoPE table (${ROPE_MAX_POSITIONS} positions)`);
      if (this.#rope !== null) this.#retire(this.#rope);
      this.#rope = null;
      this.#rope = RopeTable.create(ropeConfigFrom(this.#cfg), size, { stream: this.#stream });
    }
    return this.#rope;
  }

  #decodeWorkspace(batch: number, maxQ: number): DecodeWorkspace {
    const H = this.#cfg.numHeads;
    const ws = this.#workspace;
    if (ws !== null && ws.fits(batch, H, maxQ)) return ws;
    const next = grownWorkspace(ws, batch, H, maxQ);
    if (ws !== null) this.#retire(ws);
    this.#workspace = next;
    return next;
  }

  #retire(x: Disposable): void {
    if (this.#graphs > 0) this.#retired.push(x);
    else x[Symbol.dispose]();
  }

  get disposed(): boolean {
    return this.#w === null;
  }

  /** A DecodeGraph captured over this backend's table and workspace: they stay alive until detachGraph(). */
  attachGraph(): void {
    this.#graphs++;
  }

  detachGraph(): void {
    this.#graphs = Math.max(0, this.#graphs - 1);
    if (this.#graphs === 0) for (const x of this.#retired.splice(0)) x[Symbol.dispose]();
  }

  /** Sizes the RoPE table and the decode workspace up front: a captured step cannot grow them. */
  reserveForCapture(maxPositions: number, batch: number): void {
    this.#ropeTable(maxPositions);
    this.#decodeWorkspace(batch, 1);
  }

  /**
   * With `arena`, every intermediate and the output come from it and the step's indices from
   * arena.dev (nothing is allocated, uploaded or freed: what a graph capture needs); the
   * kernels and their arguments are otherwise the same as without, so both give the same bits.
   */
  forward(hidden: DeviceTensor, step: CacheStep, paths: readonly AttentionPath[], sparse?: SparseSelection, out?: DeviceTensor, arena?: StepArena): DeviceTensor {
    const w = this.#w;
    if (w === null) throw new MlaError('ERR_DISPOSED', 'MlaAttention was disposed');
    const cfg = this.#cfg;
    const { numHeads: H, qkNopeHeadDim: N, qkRopeHeadDim: R, kvLoraRank: C, vHeadDim: V } = cfg;
    const T = step.numTokens;
    const stream = this.#stream;
    const so = { stream };
    let maxPos = 0;
    for (const p of step.positions) maxPos = Math.max(maxPos, p + 1);
    const table = this.#ropeTable(maxPos);
    const dev: DeviceCacheStep = arena?.dev ?? this.#cache.uploadStep(step);
    const cache = this.#cache.deviceLayer(this.#layer);
    const temps: DeviceTensor[] = [];
    const keep = <X extends DeviceTensor>(t: X): X => {
      temps.push(t);
      return t;
    };
    // An intermediate: the arena's, or this backend's scratch buffer of that name and shape.
    const tmp = (name: string, shape: readonly number[], dtype: CacheDType | 'f32' = this.#dtype): DeviceTensor =>
      arena ? arena.take(name, shape, dtype) : this.#scratchTensor(name, shape, dtype);
    try {
      // Query: q = W_qb·RMSNorm(W_qa·x) (or W_q·x), rope part rotated in place.
      let q: DeviceTensor;
      if (w.qAProj !== null) {
        const qa = linear(hidden, w.qAProj, { stream, out: tmp('qa', [T, w.qAProj.shape[0]!]) });
        rmsNorm(qa, w.qALayernorm!, cfg.rmsNormEps, { out: qa, stream });
        q = linear(qa, w.qBProj!, { stream, out: tmp('q', [T, H * (N + R)]) });
      } else {
        q = linear(hidden, w.qProj!, { stream, out: tmp('q', [T, H * (N + R)]) });
      }
      const q3 = q.reshape([T, H, N + R]);
      // Positions come from the cache's own plan and the table covers them: no host check.
      ropeQuery(q3, dev.positions, table, { nopeDim: N, stream, checkIndices: false });

      // Latent: [RMSNorm(c) ; RoPE(k_rope)] into this step's cache slots.
      const kvDown = linear(hidden, w.kvAProjWithMqa, { stream, out: tmp('kvDown', [T, C + R]) });
      appendLatent({ kvDown, normWeight: w.kvALayernorm, eps: cfg.rmsNormEps, positions: dev.positions, slotMapping: dev.slotMapping, cache, table, stream, checkIndices: false });

      const o = tmp('o', [T, H, V]);
      // [q_nope·W_UK ; q_rope] per head for the tokens [t0, t1): the absorbed query.
      const absorbedQuery = (t0: number, t1: number): DeviceTensor => {
        const qs = q3.slice(0, t0, t1);
        const qAbs = tmp('qAbs', [t1 - t0, H, C + R]);
        absorbQuery(qs.slice(2, 0, N), w.absorb, { out: qAbs.slice(2, 0, C), stream });
        qAbs.slice(2, C, C + R).copyFrom(qs.slice(2, N, N + R), so);
        return qAbs;
      };
      if (sparse !== undefined) {
        const oLat = tmp('oLat', [T, H, C]);
        sparseAttention({
          q: absorbedQuery(0, T),
          cache,
          indices: keep(DeviceTensor.fromArray(sparseSlots(step, sparse, this.#cache.pageSize), [T, sparse.topk], 'i32')),
          topkLength: sparse.topkLength && keep(DeviceTensor.fromArray(sparse.topkLength, [T], 'i32')),
          scale: cfg.softmaxScale,
          out: oLat,
          lse: tmp('lse', [T, H], 'f32'),
          workspace: this.#decodeWorkspace(T, 1),
          checkIndices: false,
          stream,
        });
        absorbOutput(oLat, w.absorb, { out: o, stream });
      }
      for (const s of sparse === undefined ? segmentsOf(step, paths) : []) {
        const qs = q3.slice(0, s.t0, s.t1);
        const bt = dev.blockTable.slice(0, s.b0, s.b1);
        if (s.path === 'prefill') {
          const r = prefill({
            q: qs,
            cache,
            blockTable: bt,
            seqLens: step.seqLens.subarray(s.b0, s.b1),
            qSeqLens: step.qSeqLens.subarray(s.b0, s.b1),
            blockTableHost: step.blockTable.subarray(s.b0 * step.maxPages, s.b1 * step.maxPages),
            weights: { wUK: w.prefillWUK, wUV: w.absorb.wUV.reshape([H * V, C]) },
            scale: cfg.softmaxScale,
            out: o.slice(0, s.t0, s.t1),
            stream,
          });
          keep(r.lse);
        } else {
          const Td = s.t1 - s.t0;
          const qAbs = absorbedQuery(s.t0, s.t1);
          let maxQ = 0;
          let uniform = true;
          for (let b = s.b0; b < s.b1; b++) {
            maxQ = Math.max(maxQ, step.qSeqLens[b]!);
            if (step.qSeqLens[b] !== step.qSeqLens[s.b0]) uniform = false;
          }
          const oLat = tmp('oLat', [Td, H, C]);
          // Eager steps share one plan per step across the layers on this stream; a captured one
          // plans with the layer's own workspace.
          const sp = arena ? null : this.#sharedPlan;
          const workspace = sp ? sp.workspace(s.b1 - s.b0, H, maxQ) : this.#decodeWorkspace(s.b1 - s.b0, maxQ);
          // (MlaAttention.forward refuses a step that is not the cache's current one.)
          const reuse = sp !== null && sp.step === step && sp.b0 === s.b0 && sp.b1 === s.b1 && sp.heads === H;
          decode({
            q: qAbs,
            cache,
            blockTable: bt,
            seqLens: dev.seqLens.slice(0, s.b0, s.b1),
            qSeqLens: uniform ? undefined : dev.qSeqLens.slice(0, s.b0, s.b1),
            maxQSeqLen: maxQ,
            scale: cfg.softmaxScale,
            causal: true,
            out: oLat,
            lse: tmp('lse', [Td, H], 'f32'),
            workspace,
            plan: reuse ? 'reuse' : 'compute',
            checkIndices: false,
            stream,
          });
          if (sp !== null && reuse) {
            sp.reused++;
          } else if (sp !== null) {
            sp.step = step;
            sp.b0 = s.b0;
            sp.b1 = s.b1;
            sp.heads = H;
            sp.planned++;
          }
          absorbOutput(oLat, w.absorb, { out: o.slice(0, s.t0, s.t1), stream });
        }
      }
      return linear(o.reshape([T, H * V]), w.oProj, { stream, out: out ?? arena?.take('y', [T, cfg.hiddenSize], this.#dtype) });
    } finally {
      // cudaFree waits for the kernels still reading these.
      for (const t of temps) t.dispose();
    }
  }

  #scratchTensor(name: string, shape: readonly number[], dtype: CacheDType | 'f32'): DeviceTensor {
    const have = this.#scratch.get(name);
    if (have !== undefined && have.dtype === dtype && have.shape.length === shape.length && have.shape.every((d, i) => d === shape[i])) return have;
    have?.dispose();
    this.#scratch.delete(name);
    const t = DeviceTensor.empty(shape, dtype);
    this.#scratch.set(name, t);
    return t;
  }

  dispose(): void {
    const w = this.#w;
    if (w === null) return;
    this.#w = null;
    for (const t of this.#scratch.values()) t.dispose();
    this.#scratch.clear();
    for (const t of [w.qAProj, w.qALayernorm, w.qBProj, w.qProj, w.kvAProjWithMqa, w.kvALayernorm, w.oProj, w.prefillWUK]) t?.dispose();
    w.absorb.dispose();
    this.#rope?.dispose();
    this.#rope = null;
    this.#workspace?.dispose();
    this.#workspace = null;
    releaseSharedPlan(this.#cache, this.#stream, this.#sharedPlan);
    for (const x of this.#retired.splice(0)) x[Symbol.dispose]();
  }
}
