// The reference must reproduce every tensor of the golden fixtures (DeepSeek-V3's
// own inference/model.py in float64) to float32 storage precision.

import t from 'tap';
import { fileURLToPath } from 'node:url';
import { mlaConfigFromHuggingFace, type MlaConfig } from '../../lib/config.js';
import { SafetensorsFile } from '../../lib/safetensors.js';
import {
  applyRope,
  linear,
  loadLayerWeights,
  ReferenceMlaLayer,
  relError,
  ropeLayoutOf,
  ropeTable,
  type AttentionMode,
} from '../../lib/reference/index.js';

const TOL = 1e-5;

function fixturePath(name: string): string {
  return fileURLToPath(new URL(`../fixtures/${name}.safetensors`, import.meta.url));
}

function meta(f: SafetensorsFile, key: string): number {
  const v = f.metadata[key];
  if (v === undefined) throw new Error(`fixture metadata lacks ${key}`);
  return Number(v);
}

interface Replay {
  errors: Map<string, number>;
}

function replay(f: SafetensorsFile, cfg: MlaConfig, mode: AttentionMode, pageSize: number): Replay {
  const B = meta(f, 'batch');
  const P = meta(f, 'prefill_len');
  const K = meta(f, 'decode_steps');
  const start = meta(f, 'start_pos');
  const layer = new ReferenceMlaLayer(cfg, loadLayerWeights(f), { batch: B, maxSeqLen: P + K, pageSize, mode });
  const errors = new Map<string, number>();
  const cmp = (name: string, got: Float64Array | null): void => {
    if (got === null) return;
    errors.set(name, relError(got, f.readFloat64(name).data));
  };
  const pre = layer.forward(f.readFloat64('x.prefill').data, start);
  cmp('y.prefill', pre.y);
  for (let k = 0; k < K; k++) {
    const d = layer.forward(f.readFloat64(`x.decode.${k}`).data, start + P + k);
    cmp(`y.decode.${k}`, d.y);
    cmp(`q_latent.decode.${k}`, d.qLatent);
    cmp(`q_rope.decode.${k}`, d.qRope);
    cmp(`o_latent.decode.${k}`, d.oLatent);
    cmp(`lse.decode.${k}`, d.lse);
  }
  const cache = layer.readCache();
  cmp('cache.latent', cache.latent);
  cmp('cache.rope', cache.rope);
  return { errors };
}

for (const name of ['mla-tiny', 'mla-v3slim']) {
  t.test(`fixture ${name}`, async (t) => {
    const f = SafetensorsFile.open(fixturePath(name));
    t.teardown(() => f.close());
    const cfgJson = JSON.parse(f.metadata['config'] ?? 'null') as unknown;
    const cfg = mlaConfigFromHuggingFace(cfgJson);
    t.comment(`config: H=${cfg.numHeads} qLora=${cfg.qLoraRank} kvLora=${cfg.kvLoraRank} yarn=${cfg.ropeScaling !== null} scale=${cfg.softmaxScale}`);

    const absorb = replay(f, cfg, 'absorb', 16);
    // Every stored result tensor is checked: anything not an input or weight.
    const stored = f.names().filter((n) => !n.startsWith('weights.') && !n.startsWith('x.'));
    t.same([...absorb.errors.keys()].sort(), stored.sort(), 'absorb mode checks every stored result tensor');
    for (const [k, err] of absorb.errors) {
      t.ok(err < TOL, `absorb ${k}: rel err ${err.toExponential(2)}`);
    }

    // Naive mode and an odd page size (7 divides neither length) must match too.
    const naive = replay(f, cfg, 'naive', 7);
    for (const [k, err] of naive.errors) {
      t.ok(err < TOL, `naive pageSize 7 ${k}: rel err ${err.toExponential(2)}`);
    }

    // The rope key cache straight from x.prefill through kv_a_proj's rope rows
    // and RoPE; without YaRN (the negative control) it must miss, which shows
    // the v3slim fixture really exercises the YaRN frequencies.
    const ropeOnly = (c: MlaConfig): number => {
      const B = meta(f, 'batch');
      const P = meta(f, 'prefill_len');
      const K = meta(f, 'decode_steps');
      const start = meta(f, 'start_pos');
      const { hiddenSize: hid, kvLoraRank: C, qkRopeHeadDim: R } = c;
      const wRope = f.readFloat64('weights.kv_a_proj_with_mqa.weight').data.subarray(C * hid);
      const k = linear(f.readFloat64('x.prefill').data, B * P, hid, wRope, R);
      const pos = Int32Array.from({ length: B * P }, (_, i) => start + (i % P));
      applyRope(k, B * P, R, 0, R, pos, ropeTable(c, start + P), ropeLayoutOf(c));
      const ref = f.readFloat64('cache.rope').data;
      const want = new Float64Array(B * P * R);
      for (let b = 0; b < B; b++) want.set(ref.subarray(b * (P + K) * R, (b * (P + K) + P) * R), b * P * R);
      return relError(k, want);
    };
    const direct = ropeOnly(cfg);
    t.ok(direct < TOL, `cache.rope from x.prefill by linear + applyRope alone: rel err ${direct.toExponential(2)}`);
    if (cfg.ropeScaling !== null) {
      const off = ropeOnly({ ...cfg, ropeScaling: null });
      t.ok(off > 1e-3, `without YaRN the rope keys miss: rel err ${off.toExponential(2)}`);
    }
  });
}
