// One decode step of a DeepSeek-V3-shaped attention layer (hidden 7168, 128 heads,
// q_lora 1536, kv_lora 512, rope 64, random bf16 weights) for B sequences at context L,
// run as MlaAttention's GPU backend runs it, with preallocated buffers and no host
// round trips. The BenchInstance contract times one function per case, so the per-kernel
// breakdown is one case per stage: `stage=step` is the whole step (its runMain the
// attention kernel alone), `stage=graph` the same step captured once as a CUDA graph and
// replayed (step − graph is what launching from JavaScript costs), the other stages time each
// kernel of the step by itself.
import { MLA_PRESETS } from '../config.js';
import { decode, DecodeWorkspace } from '../ops/decode.js';
import { absorbOutput, absorbQuery, linear, prepareAbsorbWeights, type AbsorbWeights } from '../ops/linear.js';
import { rmsNorm } from '../ops/rmsnorm.js';
import { appendLatent, ropeConfigFrom, ropeQuery, RopeTable } from '../ops/rope.js';
import { mulberry32, randnArray } from '../reference/util.js';
import { Stream } from '../runtime/stream.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { HALF_TOLERANCE, withScope } from './check.js';
import { decodeCheck } from './decode.js';
import { gemmBytes, gemmFlops, mlaDecodeBytes, mlaDecodeFlops } from './formulas.js';
import { absorbCheck, linearCheck } from './linear.js';
import { appendLatentCheck, ropeQueryCheck } from './rope.js';
import type { BenchCase, BenchSuite, KernelCheck } from './types.js';
import { fillRandom, gridNumbers, shuffledPages, withOwned } from './suite-util.js';
import { disposeAll } from '../runtime/dispose.js';
import * as reference from '../reference/index.js';

const CFG = MLA_PRESETS['deepseek-v3'];
const PAGE_SIZE = 64;
const E = 2; // bf16

export const LAYER_STAGES = ['step', 'graph', 'q_a_proj', 'q_norm', 'q_b_proj', 'rope_q', 'kv_a_proj', 'append_latent', 'absorb_q', 'decode', 'absorb_o', 'o_proj'] as const;
export type LayerStage = (typeof LAYER_STAGES)[number];

function isStage(s: string): s is LayerStage {
  return (LAYER_STAGES as readonly string[]).includes(s);
}

/** The q_norm path: RMSNorm of bf16 rows [3, 1536] with an f32 weight, as the layer runs it. */
export function rmsNormCheck(): KernelCheck {
  return {
    name: 'rmsNorm bf16 f32 weight (3x1536)',
    tolerance: HALF_TOLERANCE,
    run: () => withScope((sc) => {
      const rows = 3, dim = 1536;
      const x = sc.random([rows, dim], 'bf16', 71);
      const w = sc.random([dim], 'f32', 72, 0.5);
      const y = sc.own(DeviceTensor.empty([rows, dim], 'bf16'));
      rmsNorm(x.t, w.t, CFG.rmsNormEps, { out: y });
      return [{ name: 'y', got: y.toFloat32Sync(), want: reference.rmsNorm(x.host, rows, dim, w.host, CFG.rmsNormEps) }];
    }),
  };
}

/** The kernels each stage launches, so each is checked before the stage is timed. */
function stageChecks(stage: LayerStage): KernelCheck[] {
  switch (stage) {
    case 'q_a_proj': case 'q_b_proj': case 'kv_a_proj': case 'o_proj':
      return [linearCheck('bf16')];
    case 'q_norm':
      return [rmsNormCheck()];
    case 'rope_q':
      return [ropeQueryCheck('bf16')];
    case 'append_latent':
      return [appendLatentCheck('bf16', 'f32')];
    case 'absorb_q':
      return [absorbCheck('absorbQuery', 'bf16')];
    case 'absorb_o':
      return [absorbCheck('absorbOutput', 'bf16')];
    case 'decode':
      return [decodeCheck('bf16')];
    case 'step': case 'graph': {
      const all = new Map<string, KernelCheck>();
      for (const s of LAYER_STAGES) if (s !== 'step' && s !== 'graph') for (const c of stageChecks(s)) all.set(c.name, c);
      return [...all.values()];
    }
  }
}

interface Dims {
  b: number;
  ctx: number;
}

const G = (() => {
  const { hiddenSize: hid, numHeads: H, qLoraRank, kvLoraRank: C, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V } = CFG;
  return { hid, H, q: qLoraRank!, C, N, R, V, QK: N + R, D: C + R };
})();

/** FLOPs and minimum bytes of one run of a stage (bf16 everywhere, f32 norm weights). */
export function stageCost(stage: LayerStage, d: Dims): { flops: number; bytes: number } {
  if (stage === 'graph') return stageCost('step', d);
  const B = d.b;
  const { hid, H, q, C, N, R, V, QK, D } = G;
  switch (stage) {
    case 'q_a_proj':
      return { flops: gemmFlops(B, q, hid), bytes: gemmBytes(B, q, hid) };
    case 'q_norm':
      return { flops: 4 * B * q, bytes: 2 * B * q * E + q * 4 };
    case 'q_b_proj':
      return { flops: gemmFlops(B, H * QK, q), bytes: gemmBytes(B, H * QK, q) };
    case 'rope_q':
      return { flops: 6 * B * H * R, bytes: 2 * B * H * R * E };
    case 'kv_a_proj':
      return { flops: gemmFlops(B, D, hid), bytes: gemmBytes(B, D, hid) };
    case 'append_latent':
      return { flops: 4 * B * D, bytes: 2 * B * D * E + C * 4 };
    case 'absorb_q':
      return { flops: H * gemmFlops(B, C, N), bytes: H * gemmBytes(B, C, N) };
    case 'decode': {
      const s = { b: B, sQ: 1, hQ: H, sumSeqlen: B * d.ctx, elemBytes: E };
      return { flops: mlaDecodeFlops(s), bytes: mlaDecodeBytes(s) };
    }
    case 'absorb_o':
      return { flops: H * gemmFlops(B, V, C), bytes: H * gemmBytes(B, V, C) };
    case 'o_proj':
      return { flops: gemmFlops(B, hid, H * V), bytes: gemmBytes(B, hid, H * V) };
    case 'step': {
      let flops = 0;
      let bytes = 0;
      for (const s of LAYER_STAGES) {
        if (s === 'step' || s === 'graph') continue;
        const c = stageCost(s, d);
        flops += c.flops;
        bytes += c.bytes;
      }
      return { flops, bytes };
    }
  }
}

function weightBytes(): number {
  const { hid, H, q, C, N, V, QK, D } = G;
  return (q * hid + H * QK * q + D * hid + 2 * H * (N + V) * C + hid * H * V) * E + (q + C) * 4;
}

function cacheBytes(d: Dims): number {
  return Math.ceil(d.ctx / PAGE_SIZE) * d.b * PAGE_SIZE * G.D * E;
}

// Everything one decode step touches, allocated once.
// `owned` is the caller's, so a constructor that throws halfway leaks nothing.
export class LayerStep {
  readonly owned: Array<{ dispose(): void }>;
  readonly run: Record<LayerStage, (stream?: Stream) => void>;

  constructor(d: Dims, owned: Array<{ dispose(): void }>) {
    this.owned = owned;
    const { hid, H, q: QL, C, N, V, QK, D } = G;
    const B = d.b;
    const t = (shape: number[], dtype: 'bf16' | 'f32' | 'i32' = 'bf16'): DeviceTensor => {
      const x = DeviceTensor.empty(shape, dtype);
      this.owned.push(x);
      return x;
    };
    let seed = 1;
    const rand = (shape: number[], std: number): DeviceTensor => {
      const x = t(shape);
      fillRandom(x, seed++, std);
      return x;
    };
    const norm = (n: number): DeviceTensor => {
      const x = DeviceTensor.fromArray(Float32Array.from(randnArray(n, mulberry32(seed++), 0.1), (v) => 1 + v), [n], 'f32');
      this.owned.push(x);
      return x;
    };
    const wqa = rand([QL, hid], hid ** -0.5);
    const qaNorm = norm(QL);
    const wqb = rand([H * QK, QL], QL ** -0.5);
    const wkva = rand([D, hid], hid ** -0.5);
    const kvaNorm = norm(C);
    const wkvb = rand([H * (N + V), C], C ** -0.5);
    const absorb: AbsorbWeights = prepareAbsorbWeights(wkvb, { numHeads: H, qkNopeHeadDim: N, vHeadDim: V, kvLoraRank: C });
    this.owned.push(absorb);
    const wo = rand([hid, H * V], (H * V) ** -0.5);

    // Each sequence holds ctx − 1 cached tokens plus this step's; pages shuffled.
    const pagesPer = Math.ceil(d.ctx / PAGE_SIZE);
    const numPages = pagesPer * B;
    const cache = t([numPages, PAGE_SIZE, D]);
    cache.fill(0.01);
    const perm = shuffledPages(numPages, seed++);
    const blockTable = DeviceTensor.fromArray(perm, [B, pagesPer], 'i32');
    this.owned.push(blockTable);
    const seqLens = DeviceTensor.fromArray(new Int32Array(B).fill(d.ctx), [B], 'i32');
    this.owned.push(seqLens);
    const positions = DeviceTensor.fromArray(new Int32Array(B).fill(d.ctx - 1), [B], 'i32');
    this.owned.push(positions);
    const slots = DeviceTensor.fromArray(Int32Array.from({ length: B }, (_, b) => perm[b * pagesPer + pagesPer - 1]! * PAGE_SIZE + ((d.ctx - 1) % PAGE_SIZE)), [B], 'i32');
    this.owned.push(slots);
    const table = RopeTable.create(ropeConfigFrom(CFG), Math.max(d.ctx, 4096));
    this.owned.push(table);
    const workspace = new DecodeWorkspace({ maxBatch: B, maxHeads: H });
    this.owned.push(workspace);

    const x = rand([B, hid], 1);
    const qa = t([B, QL]);
    const qFull = t([B, H, QK]);
    const kvDown = t([B, D]);
    const qAbs = t([B, H, D]);
    const oLat = t([B, H, C]);
    const lse = t([B, H], 'f32');
    const o = t([B, H, V]);
    const y = t([B, hid]);
    // Inputs of stages timed alone hold real data from one full step.
    const eps = CFG.rmsNormEps;
    const run: Record<LayerStage, (stream?: Stream) => void> = {
      q_a_proj: (stream) => void linear(x, wqa, { out: qa, stream }),
      q_norm: (stream) => void rmsNorm(qa, qaNorm, eps, { out: qa, stream }),
      q_b_proj: (stream) => void linear(qa, wqb, { out: qFull.reshape([B, H * QK]), stream }),
      rope_q: (stream) => ropeQuery(qFull, positions, table, { nopeDim: N, stream, checkIndices: false }),
      kv_a_proj: (stream) => void linear(x, wkva, { out: kvDown, stream }),
      append_latent: (stream) => appendLatent({ kvDown, normWeight: kvaNorm, eps, positions, slotMapping: slots, cache, table, stream, checkIndices: false }),
      absorb_q: (stream) => {
        absorbQuery(qFull.slice(2, 0, N), absorb, { out: qAbs.slice(2, 0, C), stream });
        qAbs.slice(2, C, D).copyFrom(qFull.slice(2, N, QK), { stream });
      },
      decode: (stream) => void decode({ q: qAbs, cache, blockTable, seqLens, scale: CFG.softmaxScale, causal: true, out: oLat, lse, workspace, checkIndices: false, stream }),
      absorb_o: (stream) => void absorbOutput(oLat, absorb, { out: o, stream }),
      o_proj: (stream) => void linear(o.reshape([B, H * V]), wo, { out: y, stream }),
      step: (stream) => {
        for (const s of LAYER_STAGES) if (s !== 'step' && s !== 'graph') run[s](stream);
      },
      graph: (stream) => run.step(stream), // replaced by the captured graph in layerCase

    };
    this.run = run;
  }

  dispose(): void {
    disposeAll(this.owned);
  }
}

export function layerCase(stage: LayerStage, d: Dims): BenchCase {
  const { flops, bytes } = stageCost(stage, d);
  const act = d.b * (G.hid * 2 + G.q + G.H * (G.QK + G.D + G.C + G.V) + G.D) * E;
  return {
    name: `${stage} b${d.b} ctx${d.ctx}`,
    params: { stage, b: d.b, ctx: d.ctx, h: G.H, hidden: G.hid, pageSize: PAGE_SIZE, dtype: 'bf16' },
    flops,
    bytes,
    footprintBytes: weightBytes() + cacheBytes(d) + act,
    checks: stageChecks(stage),
    setup: () => withOwned((owned) => {
      const s = new LayerStep(d, owned);
      // One full step first: the plan decode's runMain relies on, real data for every stage.
      s.run.step();
      if (stage === 'graph') {
        const captureStream = new Stream();
        owned.push(captureStream);
        const graph = captureStream.capture(() => s.run.step(captureStream));
        owned.push(graph);
        return { run: (stream) => graph.launch(stream) };
      }
      return {
        run: (stream) => s.run[stage](stream),
        ...(stage === 'step' ? { runMain: (stream: Stream) => s.run.decode(stream) } : {}),
      };
    }),
  };
}

export const suite: BenchSuite = {
  name: 'layer',
  description: 'one decode step of a DeepSeek-V3 attention layer (128 heads, hidden 7168), whole and per kernel (grid keys: b, ctx, stage)',
  cases(opts) {
    const bs = gridNumbers('layer', opts, 'b', opts.quick ? [1, 32] : [1, 8, 32, 64, 128]);
    const ctxs = gridNumbers('layer', opts, 'ctx', opts.quick ? [4096] : [4096, 32768]);
    const stages = (opts.grid?.['stage'] ?? (opts.quick ? ['step', 'graph', 'decode'] : [...LAYER_STAGES])).map((v) => {
      const s = String(v);
      if (!isStage(s)) throw new RangeError(`layer: unknown stage ${s} (known: ${LAYER_STAGES.join(', ')})`);
      return s;
    });
    const out: BenchCase[] = [];
    for (const ctx of ctxs) for (const b of bs) for (const stage of stages) out.push(layerCase(stage, { b, ctx }));
    return out;
  },
};
