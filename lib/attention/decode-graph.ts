// A whole decode step of one MlaAttention layer as one CUDA graph: the ~10 launches of the
// absorbed path (projections, RMSNorm, RoPE, the cache write, absorb, split-KV decode and its
// combine, o_proj) replay with one call and no JavaScript or validation in between.
//
// The graph is captured once for a fixed batch size and a maximum sequence length, over
// persistent buffers: before each replay step() writes the step's positions, slots, lengths and
// block table into them and copies the hidden states in. The split plan of decode is computed
// on the device from the lengths, so one graph serves every mix of lengths up to the maximum.
import type { MlaConfig } from '../config.js';
import { MlaError } from '../errors.js';
import { packStepIndices, stepIndexLayout, stepIndexViews, type CacheDType, type CacheStep, type DeviceCacheStep, type LatentCache, type SequenceId, type StepIndexLayout } from '../latent-cache.js';
import type { CudaGraph, Stream } from '../runtime/stream.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { GpuBackend, StepArena } from './gpu-backend.js';

export interface DecodeGraphOptions {
  /** Sequences per step: the graph's fixed batch (one new token each). */
  batch: number;
  /**
   * The longest a sequence may grow (cached tokens plus the new one) and the largest RoPE
   * position + 1 a step may use; sizes the block table and the RoPE table.
   */
  maxSeqLen: number;
}

interface Parts {
  config: MlaConfig;
  cache: LatentCache;
  dtype: CacheDType;
  stream: Stream;
  backend: GpuBackend;
}

const OP = 'DecodeGraph';

export class DecodeGraph implements Disposable {
  readonly batch: number;
  readonly maxSeqLen: number;
  /** Block-table width the graph was captured with: ceil(maxSeqLen / pageSize). */
  readonly maxPages: number;
  readonly #p: Parts;
  readonly #buffers = new Map<string, DeviceTensor>();
  readonly #dev: DeviceCacheStep;
  // The step's indices packed in one i32 allocation that #dev views: one stream-ordered
  // host-to-device copy per step (lib/latent-cache.ts stepIndexLayout).
  readonly #layout: StepIndexLayout;
  readonly #indices: DeviceTensor;
  readonly #host: Int32Array;
  readonly #input: DeviceTensor;
  #output: DeviceTensor | null = null;
  #graph: CudaGraph | null = null;

  /** @internal MlaAttention.captureDecode() makes it. */
  constructor(parts: Parts, opts: DecodeGraphOptions) {
    const { batch: B, maxSeqLen } = opts;
    if (!Number.isSafeInteger(B) || B < 1 || B > 65535) throw new MlaError('ERR_ARGUMENT', `${OP}: \`batch\` must be an integer in [1, 65535], got ${String(B)}`);
    if (!Number.isSafeInteger(maxSeqLen) || maxSeqLen < 2) throw new MlaError('ERR_ARGUMENT', `${OP}: \`maxSeqLen\` must be an integer >= 2, got ${String(maxSeqLen)}`);
    this.batch = B;
    this.maxSeqLen = maxSeqLen;
    this.maxPages = Math.ceil(maxSeqLen / parts.cache.pageSize);
    this.#p = parts;
    const layout = (this.#layout = stepIndexLayout(B, B, this.maxPages));
    const { at } = layout;
    const host = (this.#host = new Int32Array(layout.total));
    // Until the first step: indices that read page 0 and write nothing (slot -1), so the
    // warm-up and the capture below cannot touch a sequence's cache rows.
    host.fill(-1, at.slotMapping, at.slotMapping + B);
    host.fill(1, at.seqLens, at.seqLens + B);
    host.fill(1, at.qSeqLens, at.qSeqLens + B);
    for (let i = 0; i <= B; i++) host[at.cuSeqLens + i] = i;
    const made: DeviceTensor[] = [];
    try {
      this.#indices = DeviceTensor.fromArray(host, [layout.total], 'i32');
      made.push(this.#indices);
      this.#dev = stepIndexViews(this.#indices, layout);
      this.#input = DeviceTensor.empty([B, parts.config.hiddenSize], parts.dtype);
      made.push(this.#input);
      this.#capture();
    } catch (e) {
      for (const t of made) t.dispose();
      this.#disposeBuffers();
      throw e;
    }
  }

  // The shape forward() sees: B requests of one token each, on the decode path.
  #stepShape(): CacheStep {
    const B = this.batch;
    return {
      entries: Array.from({ length: B }, (_, i) => ({ seqId: i, numTokens: 1, contextLen: 1, seqLen: 2, tokenStart: i })),
      numTokens: B,
      positions: new Int32Array(B),
      slotMapping: new Int32Array(B).fill(-1),
      seqLens: new Int32Array(B).fill(2),
      contextLens: new Int32Array(B).fill(1),
      qSeqLens: new Int32Array(B).fill(1),
      cuSeqLens: Int32Array.from({ length: B + 1 }, (_, i) => i),
      blockTable: new Int32Array(B * this.maxPages),
      maxPages: this.maxPages,
    };
  }

  #capture(): void {
    const { backend, stream } = this.#p;
    backend.reserveForCapture(this.maxSeqLen, this.batch);
    const arena: StepArena = {
      dev: this.#dev,
      take: (name, shape, dtype) => {
        const have = this.#buffers.get(name);
        if (have !== undefined) {
          if (have.dtype !== dtype || have.shape.length !== shape.length || have.shape.some((d, i) => d !== shape[i])) {
            throw new MlaError('ERR_SHAPE', `${OP}: step buffer ${name} changed shape between warm-up and capture`);
          }
          return have;
        }
        const t = DeviceTensor.empty(shape, dtype); // refused (ERR_ARGUMENT) if a capture is active
        this.#buffers.set(name, t);
        return t;
      },
    };
    const shape = this.#stepShape();
    const paths = shape.entries.map(() => 'decode' as const);
    // The warm-up run sizes every buffer (allocation is impossible during the capture) and
    // does the one-time kernel setup; its slots are all -1, so it writes no cache row.
    this.#output = backend.forward(this.#input, shape, paths, undefined, undefined, arena);
    stream.synchronize();
    this.#graph = stream.capture(() => {
      backend.forward(this.#input, shape, paths, undefined, undefined, arena);
    });
    backend.attachGraph();
  }

  get disposed(): boolean {
    return this.#graph === null;
  }

  /** [batch, hidden_size] where the graph writes the step's output (valid until the next step). */
  get output(): DeviceTensor {
    if (this.#output === null || this.#graph === null) throw new MlaError('ERR_DISPOSED', `${OP}: this graph was disposed`);
    return this.#output;
  }

  /**
   * One decode step: a new token for each of `batch` sequences (`seqIds`, each with at least one
   * cached token), or a step already planned with cache.planStep() for every layer of a model
   * (one token per sequence). `hidden` is [batch, hidden_size]. Reserves the cache slots,
   * writes the indices, replays the graph on the layer's stream and returns `output`. On a
   * throw before the replay, the reserved slots are given back.
   */
  step(hidden: DeviceTensor, batch: readonly SequenceId[] | CacheStep): DeviceTensor {
    const graph = this.#graph;
    if (graph === null) throw new MlaError('ERR_DISPOSED', `${OP}.step: this graph was disposed`);
    const { cache, config, dtype, stream, backend } = this.#p;
    // The graph replays the layer's weights: once they are freed a replay would fault.
    if (backend.disposed) throw new MlaError('ERR_DISPOSED', `${OP}.step: its MlaAttention was disposed; dispose the graph first, or capture again on a live layer`);
    if (cache.disposed) throw new MlaError('ERR_DISPOSED', `${OP}.step: its \`cache\` (LatentCache) was disposed`);
    const B = this.batch;
    if (!(hidden instanceof DeviceTensor)) throw new MlaError('ERR_ARGUMENT', `${OP}.step: \`hidden\` must be a DeviceTensor`);
    hidden.assertAlive(`${OP}.step: \`hidden\``);
    if (hidden.shape.length !== 2 || hidden.shape[0] !== B || hidden.shape[1] !== config.hiddenSize) {
      throw new MlaError('ERR_SHAPE', `${OP}.step: \`hidden\` must have shape [${B}, ${config.hiddenSize}], got [${hidden.shape.join(', ')}]`);
    }
    if (hidden.dtype !== dtype) throw new MlaError('ERR_DTYPE', `${OP}.step: \`hidden\` must be ${dtype}, got ${hidden.dtype}`);
    let planned: CacheStep | null = null;
    let st: CacheStep;
    if (Array.isArray(batch)) {
      const ids = batch as readonly SequenceId[];
      if (ids.length !== B) throw new MlaError('ERR_SHAPE', `${OP}.step: \`batch\` names ${ids.length} sequences; the graph was captured for ${B}`);
      ids.forEach((id, i) => {
        if (cache.hasSequence(id) && cache.length(id) === 0) {
          throw new MlaError('ERR_ARGUMENT', `${OP}.step: batch[${i}] (sequence ${String(id)}) has nothing cached; run its prompt through MlaAttention.forward() first`);
        }
      });
      planned = cache.planStep(ids.map((seqId) => ({ seqId, numTokens: 1 })));
      st = planned;
    } else {
      st = batch as CacheStep;
      if (typeof st !== 'object' || st === null || !Array.isArray(st.entries)) throw new MlaError('ERR_ARGUMENT', `${OP}.step: \`batch\` must be sequence ids or a CacheStep`);
      if (!cache.isCurrentStep(st)) throw new MlaError('ERR_ARGUMENT', `${OP}.step: \`batch\` is a CacheStep that is not the cache's latest plan`);
      if (st.entries.length !== B || st.numTokens !== B || st.entries.some((e) => e.numTokens !== 1 || e.contextLen === 0)) {
        throw new MlaError('ERR_SHAPE', `${OP}.step: \`batch\` must plan one token for each of ${B} sequences that have a cached prefix`);
      }
    }
    try {
      if (st.maxPages > this.maxPages) {
        throw new MlaError('ERR_CAPACITY', `${OP}.step: a sequence needs ${st.maxPages} pages; the graph was captured for maxSeqLen ${this.maxSeqLen} (${this.maxPages} pages)`);
      }
      for (let i = 0; i < B; i++) {
        if (st.positions[i]! >= this.maxSeqLen) {
          throw new MlaError('ERR_RANGE', `${OP}.step: sequence ${String(st.entries[i]!.seqId)} reaches RoPE position ${st.positions[i]}; the graph was captured for maxSeqLen ${this.maxSeqLen}`);
        }
      }
      packStepIndices(st, this.#layout, this.#host);
      // In the graph's stream order: after the previous replay that reads these, without the host
      // waiting for it (a model steps each layer's graph in turn).
      this.#indices.write(this.#host, { stream });
      this.#input.copyFrom(hidden, { stream });
      graph.launch(stream);
    } catch (e) {
      // Exactly what the plan took (a copy-on-write page included): state() as before.
      if (planned && !cache.disposed) {
        if (cache.isCurrentStep(planned)) cache.undoStep(planned);
        else for (const en of planned.entries) if (cache.hasSequence(en.seqId)) cache.truncate(en.seqId, en.contextLen);
      }
      throw e;
    }
    return this.output;
  }

  #disposeBuffers(): void {
    for (const t of this.#buffers.values()) t.dispose();
    this.#buffers.clear();
  }

  dispose(): void {
    if (this.#graph === null) return;
    this.#graph.dispose();
    this.#graph = null;
    this.#p.backend.detachGraph();
    this.#output = null;
    this.#disposeBuffers();
    this.#indices.dispose();
    this.#input.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
