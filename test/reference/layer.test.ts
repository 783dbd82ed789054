// ReferenceMlaLayer against a textbook MLA written straight from DeepSeek's
// model.py (naive attention, dense per-sequence K/V, no paging, no shared code
// beyond the RoPE table), on random layers with and without query compression.

import t from 'tap';
import * as path from 'node:path';
import { mlaConfigFromHuggingFace, type MlaConfig } from '../../lib/config.js';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../../lib/safetensors.js';
import {
  loadLayerWeights,
  ReferenceMlaLayer,
  ropeTable,
  validateLayerWeights,
  type AttentionMode,
  type MlaLayerWeights,
  type RopeTable,
} from '../../lib/reference/index.js';
import { mulberry32, randnArray, relError } from '../../lib/reference/util.js';

function mat(x: Float64Array, rows: number, k: number, w: Float64Array, n: number): Float64Array {
  const y = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) {
    let s = 0;
    for (let i = 0; i < k; i++) s += x[r * k + i]! * w[j * k + i]!;
    y[r * n + j] = s;
  }
  return y;
}

function norm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  const ms = x.reduce((a, v) => a + v * v, 0) / x.length;
  return x.map((v, i) => (v / Math.sqrt(ms + eps)) * w[i]!);
}

function rope(x: Float64Array, pos: number, table: RopeTable, interleaved: boolean): Float64Array {
  const y = Float64Array.from(x);
  const h = table.half;
  for (let i = 0; i < h; i++) {
    const [a, b] = interleaved ? [2 * i, 2 * i + 1] : [i, i + h];
    const c = table.cos[pos * h + i]!;
    const s = table.sin[pos * h + i]!;
    y[a] = x[a]! * c - x[b]! * s;
    y[b] = x[a]! * s + x[b]! * c;
  }
  return y;
}

// State: per sequence, the full per-head K [L, H, nope+rope] and V [L, H, v].
class Textbook {
  k: number[][][] = [];
  v: number[][][] = [];
  constructor(
    readonly cfg: MlaConfig,
    readonly w: MlaLayerWeights,
    readonly table: RopeTable,
  ) {}

  forward(x: Float64Array, B: number, S: number, startPos: number): { y: Float64Array; lse: Float64Array } {
    const { hiddenSize: hid, numHeads: H, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V, kvLoraRank: C, rmsNormEps: eps } = this.cfg;
    const il = this.cfg.ropeInterleaved;
    const y = new Float64Array(B * S * hid);
    const lse = new Float64Array(B * S * H);
    for (let b = 0; b < B; b++) {
      this.k[b] ??= [];
      this.v[b] ??= [];
      const xb = x.subarray(b * S * hid, (b + 1) * S * hid);
      const q =
        this.cfg.qLoraRank === null
          ? mat(xb, S, hid, this.w.qProj!, H * (N + R))
          : (() => {
              const qa = mat(xb, S, hid, this.w.qAProj!, this.cfg.qLoraRank);
              const qn = new Float64Array(S * this.cfg.qLoraRank);
              for (let s = 0; s < S; s++) {
                const r = this.cfg.qLoraRank;
                qn.set(norm(qa.subarray(s * r, (s + 1) * r), this.w.qALayernorm!, eps), s * r);
              }
              return mat(qn, S, this.cfg.qLoraRank, this.w.qBProj!, H * (N + R));
            })();
      const kva = mat(xb, S, hid, this.w.kvAProjWithMqa, C + R);
      for (let s = 0; s < S; s++) {
        const pos = startPos + s;
        const c = norm(kva.subarray(s * (C + R), s * (C + R) + C), this.w.kvALayernorm, eps);
        const kr = rope(kva.subarray(s * (C + R) + C, (s + 1) * (C + R)), pos, this.table, il);
        const up = mat(c, 1, C, this.w.kvBProj, H * (N + V));
        const ks: number[] = [];
        const vs: number[] = [];
        for (let h = 0; h < H; h++) {
          ks.push(...up.subarray(h * (N + V), h * (N + V) + N), ...kr);
          vs.push(...up.subarray(h * (N + V) + N, (h + 1) * (N + V)));
        }
        this.k[b]!.push(ks);
        this.v[b]!.push(vs);
      }
      const L = this.k[b]!.length;
      const o = new Float64Array(S * H * V);
      for (let s = 0; s < S; s++) {
        for (let h = 0; h < H; h++) {
          const qh = q.subarray((s * H + h) * (N + R), (s * H + h + 1) * (N + R));
          const qr = rope(qh.subarray(N), startPos + s, this.table, il);
          const qf = [...qh.subarray(0, N), ...qr];
          // Keys 0 .. L − S + s: the prefix plus this chunk up to itself.
          const scores: number[] = [];
          for (let tk = 0; tk <= L - S + s; tk++) {
            const kk = this.k[b]![tk]!.slice(h * (N + R), (h + 1) * (N + R));
            scores.push(qf.reduce((a, v, i) => a + v * kk[i]!, 0) * this.cfg.softmaxScale);
          }
          const m = Math.max(...scores);
          const z = scores.reduce((a, v) => a + Math.exp(v - m), 0);
          lse[(b * S + s) * H + h] = m + Math.log(z);
          scores.forEach((sc, tk) => {
            const p = Math.exp(sc - m) / z;
            for (let d = 0; d < V; d++) o[(s * H + h) * V + d]! += p * this.v[b]![tk]![h * V + d]!;
          });
        }
      }
      y.set(mat(o, S, H * V, this.w.oProj, hid), b * S * hid);
    }
    return { y, lse };
  }
}

function randomLayer(cfg: MlaConfig, rng: () => number): MlaLayerWeights {
  const { hiddenSize: hid, numHeads: H, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V, kvLoraRank: C } = cfg;
  const q = cfg.qLoraRank;
  const ln = (n: number): Float64Array => randnArray(n, rng, 0.2).map((v) => 1 + v);
  return {
    qAProj: q === null ? null : randnArray(q * hid, rng, hid ** -0.5),
    qALayernorm: q === null ? null : ln(q),
    qBProj: q === null ? null : randnArray(H * (N + R) * q, rng, q ** -0.5),
    qProj: q === null ? randnArray(H * (N + R) * hid, rng, hid ** -0.5) : null,
    kvAProjWithMqa: randnArray((C + R) * hid, rng, hid ** -0.5),
    kvALayernorm: ln(C),
    kvBProj: randnArray(H * (N + V) * C, rng, C ** -0.5),
    oProj: randnArray(hid * H * V, rng, (H * V) ** -0.5),
  };
}

const CONFIGS: Array<[string, MlaConfig]> = [
  [
    'q_lora, interleaved, YaRN',
    mlaConfigFromHuggingFace({
      hidden_size: 40,
      num_attention_heads: 3,
      q_lora_rank: 24,
      kv_lora_rank: 20,
      qk_nope_head_dim: 12,
      qk_rope_head_dim: 8,
      v_head_dim: 10,
      rope_theta: 500,
      rope_scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 32, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1 },
    }),
  ],
  [
    'no query compression (q_proj, V2-Lite style), neox',
    mlaConfigFromHuggingFace({
      hidden_size: 36,
      num_attention_heads: 2,
      q_lora_rank: null,
      kv_lora_rank: 16,
      qk_nope_head_dim: 10,
      qk_rope_head_dim: 6,
      v_head_dim: 14,
      rope_interleaved: false,
    }),
  ],
];

for (const [name, cfg] of CONFIGS) {
  t.test(`layer matches the textbook MLA: ${name}`, async (t) => {
    const rng = mulberry32(name.length);
    const w = randomLayer(cfg, rng);
    const B = 2;
    // Prefill 6 at position 3, a 3-token chunk (MTP / chunked prefill), then 2 decode steps.
    const steps: Array<[number, number]> = [[3, 6], [9, 3], [12, 1], [13, 1]];
    const table = ropeTable(cfg, 64);
    for (const mode of ['absorb', 'naive'] as AttentionMode[]) {
      for (const pageSize of [4, 5]) {
        const layer = new ReferenceMlaLayer(cfg, w, { batch: B, maxSeqLen: 11, pageSize, mode });
        const ref = new Textbook(cfg, w, table);
        for (const [start, S] of steps) {
          const x = randnArray(B * S * cfg.hiddenSize, rng);
          const got = layer.forward(x, start);
          const want = ref.forward(x, B, S, start);
          const ey = relError(got.y, want.y);
          const el = relError(got.lse, want.lse);
          t.ok(ey < 1e-12 && el < 1e-12, `${mode} page ${pageSize} pos ${start} S ${S}: y rel err ${ey.toExponential(2)}, lse ${el.toExponential(2)}`);
          t.equal(got.qLatent === null, mode === 'naive', 'q_latent only in absorb mode', { diagnostic: false });
          t.equal(got.qRope.length, B * S * cfg.numHeads * cfg.qkRopeHeadDim);
        }
        t.equal(layer.cachedTokens, 11);
        t.equal(layer.startPosition, 3);
      }
    }
  });
}

t.test('layer state checks', async (t) => {
  const cfg = CONFIGS[0]![1];
  const rng = mulberry32(9);
  const w = randomLayer(cfg, rng);
  const layer = new ReferenceMlaLayer(cfg, w, { batch: 1, maxSeqLen: 4, pageSize: 3 });
  layer.forward(randnArray(2 * cfg.hiddenSize, rng), 0);
  t.throws(() => layer.forward(randnArray(cfg.hiddenSize, rng), 5), /does not continue/, 'a gap in positions is refused');
  t.throws(() => layer.forward(randnArray(3 * cfg.hiddenSize, rng), 2), /exceed maxSeqLen/);
  t.throws(() => layer.forward(randnArray(cfg.hiddenSize + 1, rng), 2), /not a positive multiple/);
  const c = layer.readCache();
  t.equal(c.length, 2);
  t.equal(c.latent.length, 2 * cfg.kvLoraRank);
  layer.reset();
  t.equal(layer.cachedTokens, 0);
  t.doesNotThrow(() => layer.forward(randnArray(cfg.hiddenSize, rng), 7), 'after reset any start position');
  // Pages of one sequence are not contiguous in the pool.
  const two = new ReferenceMlaLayer(cfg, w, { batch: 2, maxSeqLen: 9, pageSize: 3 });
  t.not(two.blockTable[1]! - two.blockTable[0]!, 1, 'block table is not the identity');
  t.throws(() => validateLayerWeights(cfg, { ...w, kvBProj: w.kvBProj.subarray(1) }), /kv_b_proj/);
  t.throws(() => validateLayerWeights(cfg, { ...w, qAProj: null }), /q_a_proj is missing/);
  t.throws(() => new ReferenceMlaLayer(cfg, w, { batch: 0, maxSeqLen: 4 }), /batch/);
});

t.test('loadLayerWeights reads either query path by name', async (t) => {
  const dir = t.testdir();
  const rng = mulberry32(10);
  for (const [name, cfg] of CONFIGS) {
    const w = randomLayer(cfg, rng);
    const file = path.join(dir, `${cfg.qLoraRank === null ? 'lite' : 'lora'}.safetensors`);
    const prefix = 'model.layers.3.self_attn.';
    const entries: Array<[string, Float64Array | null]> = [
      ['q_a_proj.weight', w.qAProj],
      ['q_a_layernorm.weight', w.qALayernorm],
      ['q_b_proj.weight', w.qBProj],
      ['q_proj.weight', w.qProj],
      ['kv_a_proj_with_mqa.weight', w.kvAProjWithMqa],
      ['kv_a_layernorm.weight', w.kvALayernorm],
      ['kv_b_proj.weight', w.kvBProj],
      ['o_proj.weight', w.oProj],
    ];
    writeSafetensors(
      file,
      entries
        .filter(([, a]) => a !== null)
        .map(([n, a]): [string, TensorToWrite] => [prefix + n, { dtype: 'F64', shape: [a!.length], data: a! }]),
    );
    using f = SafetensorsFile.open(file);
    const got = loadLayerWeights(f, prefix);
    t.equal(got.qProj === null, cfg.qLoraRank !== null, `${name}: q_proj present iff no compression`);
    t.equal(got.qAProj === null, cfg.qLoraRank === null);
    t.same([...got.kvBProj], [...w.kvBProj]);
    t.doesNotThrow(() => validateLayerWeights(cfg, got));
  }
});
