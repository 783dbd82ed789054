// `mla-cuda demo`: one bundled DeepSeek-shaped attention layer, its prefill and
// decode steps through MlaAttention + LatentCache, checked against the outputs of
// DeepSeek-V3's own reference implementation stored in the fixture, with timings
// and the cache size next to what MHA would need.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { MlaAttention, type AttentionBackendName } from '../attention.js';
import { checkGpuGeometry } from '../attention/gpu-backend.js';
import { MLA_PRESETS, type MlaConfig } from '../config.js';
import { MlaError } from '../errors.js';
import { compareKvCaches, formatBytes, kvCacheEstimate, kvGeometry } from '../kv-calculator.js';
import { LatentCache } from '../latent-cache.js';
import { packageRoot } from '../native.js';
import { relError } from '../reference/util.js';
import { deviceStatus } from '../runtime/cuda.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { SafetensorsFile } from '../safetensors.js';
import { loadMlaConfig, loadMlaWeights } from '../weights.js';
import { lastValue, parseFlags, UsageError } from './args.js';

export interface DemoIo {
  out(line: string): void;
  err(line: string): void;
}

const STDIO: DemoIo = {
  out: (l) => process.stdout.write(`${l}\n`),
  err: (l) => process.stderr.write(`${l}\n`),
};

const FIXTURES: Readonly<Record<string, string>> = { v3slim: 'mla-v3slim', tiny: 'mla-tiny' };
/** Relative Frobenius error the demo accepts: float64 reference vs bf16 kernels. */
const TOLERANCE: Readonly<Record<AttentionBackendName, number>> = { reference: 1e-5, gpu: 2e-2 };

const HELP = `usage: mla-cuda demo [--fixture v3slim|tiny|<file.safetensors>] [--backend gpu|reference]

Runs a bundled attention layer (random bf16 weights, DeepSeek-V3 head geometry for
v3slim) through MlaAttention and the paged latent cache, and compares every output
with DeepSeek's reference implementation. Without a GPU it uses the float64 reference backend.
`;

function fixtureFile(name: string): string {
  const bundled = FIXTURES[name];
  if (bundled !== undefined) return path.join(packageRoot, 'test', 'fixtures', `${bundled}.safetensors`);
  if (name.endsWith('.safetensors')) return path.resolve(name);
  throw new UsageError(`--fixture must be one of ${Object.keys(FIXTURES).join(', ')} or a .safetensors file, got "${name}"`);
}

const GPU_PAGE_SIZE = 64;

function pickBackend(forced: string | undefined, cfg: MlaConfig, io: DemoIo): AttentionBackendName {
  const status = deviceStatus();
  if (forced === 'reference') {
    io.out('backend: reference (float64 on the CPU), as asked');
    return 'reference';
  }
  if (forced === 'gpu') {
    if (!status.ok) throw new MlaError('ERR_NO_DEVICE', `--backend gpu: ${status.message}`);
    io.out('backend: gpu (bf16 CUDA kernels)');
    return 'gpu';
  }
  if (forced !== undefined) throw new UsageError(`--backend must be gpu or reference, got "${forced}"`);
  if (status.ok) {
    try {
      checkGpuGeometry(cfg, GPU_PAGE_SIZE);
    } catch (e) {
      io.out(`backend: reference: ${(e as Error).message}; running the float64 reference backend on the CPU`);
      return 'reference';
    }
    io.out('backend: gpu (bf16 CUDA kernels)');
    return 'gpu';
  }
  io.out(`backend: reference: no usable CUDA device (${status.code}), so running the float64 reference backend on the CPU`);
  return 'reference';
}

function metaInt(f: SafetensorsFile, key: string): number {
  const v = Number(f.metadata[key]);
  if (!Number.isSafeInteger(v) || v < 0) throw new MlaError('ERR_ARGUMENT', `demo: ${f.path} metadata lacks an integer \`${key}\``);
  return v;
}

/** Runs the demo; resolves to the exit code (0: every output within tolerance). */
export async function runDemo(argv: string[], io: DemoIo = STDIO): Promise<number> {
  try {
    const p = parseFlags(argv, { help: { type: 'boolean' }, fixture: { type: 'string' }, backend: { type: 'string' } });
    if (lastValue(p, 'help') === true) {
      io.out(HELP);
      return 0;
    }
    if (p.positionals.length > 0) throw new UsageError(`unexpected argument "${p.positionals[0]}"`);
    const file = fixtureFile(String(lastValue(p, 'fixture') ?? 'v3slim'));
    if (!fs.existsSync(file)) throw new UsageError(`fixture ${file} does not exist`);
    const forced = lastValue(p, 'backend');
    const cfg = loadMlaConfig(file);
    return run(file, cfg, pickBackend(forced === undefined ? undefined : String(forced), cfg, io), io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`mla-cuda demo: ${e.message}\n\n${HELP}`);
      return 1;
    }
    if (e instanceof MlaError) {
      io.err(`mla-cuda demo: ${e.code}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

function run(file: string, cfg: MlaConfig, backend: AttentionBackendName, io: DemoIo): number {
  const f = SafetensorsFile.open(file);
  let B: number;
  let P: number;
  let K: number;
  const data = new Map<string, Float64Array>();
  try {
    B = metaInt(f, 'batch');
    P = metaInt(f, 'prefill_len');
    K = metaInt(f, 'decode_steps');
    for (const n of ['x.prefill', 'y.prefill', ...Array.from({ length: K }, (_, k) => [`x.decode.${k}`, `y.decode.${k}`]).flat()]) {
      data.set(n, f.readFloat64(n).data);
    }
  } finally {
    f.close();
  }
  const get = (n: string): Float64Array => data.get(n)!;
  io.out(`fixture: ${path.basename(file)}: hidden ${cfg.hiddenSize}, ${cfg.numHeads} heads, q_lora ${cfg.qLoraRank ?? 'none'}, kv_lora ${cfg.kvLoraRank}, ` +
    `nope ${cfg.qkNopeHeadDim} + rope ${cfg.qkRopeHeadDim}, v ${cfg.vHeadDim}${cfg.ropeScaling ? ', YaRN' : ''}; batch ${B}, prefill ${P}, ${K} decode steps`);

  const weights = loadMlaWeights(file, cfg, { prefix: 'weights.' });
  const pageSize = backend === 'gpu' ? GPU_PAGE_SIZE : 16;
  const cache = new LatentCache({ config: cfg, numLayers: 1, numPages: B * Math.ceil((P + K) / pageSize), pageSize, backend });
  const layer = MlaAttention.create({ config: cfg, weights, cache, layer: 0, backend });
  const tol = TOLERANCE[backend];
  let worst = 0;
  try {
    for (let b = 0; b < B; b++) cache.addSequence(b);
    const step = (label: string, x: Float64Array, want: Float64Array, n: number): void => {
      const batch = Array.from({ length: B }, (_, b) => ({ seqId: b, numTokens: n }));
      let y: Float64Array | Float32Array;
      const t0 = performance.now();
      if (backend === 'gpu') {
        const h = DeviceTensor.fromArray(Float32Array.from(x), [B * n, cfg.hiddenSize], layer.dtype);
        const out = layer.forward(h, batch);
        y = out.toFloat32Sync();
        h.dispose();
        out.dispose();
      } else {
        y = layer.forward(x, batch);
      }
      const ms = performance.now() - t0;
      const err = relError(y, want);
      worst = Math.max(worst, Number.isNaN(err) ? Infinity : err);
      io.out(`${label.padEnd(9)} ${String(B * n).padStart(4)} tokens  rel err ${err.toExponential(2)}  ${ms.toFixed(1).padStart(8)} ms/step`);
    };
    step('prefill', get('x.prefill'), get('y.prefill'), P);
    for (let k = 0; k < K; k++) step(`decode ${k}`, get(`x.decode.${k}`), get(`y.decode.${k}`), 1);
  } finally {
    layer.dispose();
    cache.dispose();
  }

  const est = compareKvCaches(cfg, { dtype: 'bf16', numLayers: 1 });
  const mla = est.find((e) => e.kind === 'mla')!;
  const mha = est.find((e) => e.kind === 'mha')!;
  io.out(`cache per token per layer (bf16): MLA ${mla.valuesPerTokenPerLayer} values = ${formatBytes(mla.bytesPerTokenPerLayer)}; ` +
    `MHA (k ${cfg.qkNopeHeadDim + cfg.qkRopeHeadDim} + v ${cfg.vHeadDim} per head × ${cfg.numHeads}) ${formatBytes(mha.bytesPerTokenPerLayer)}`);
  const v3 = kvGeometry(MLA_PRESETS['deepseek-v3']);
  const v3mla = kvCacheEstimate('mla', v3, { dtype: 'bf16', numLayers: 61 });
  const v3mha = kvCacheEstimate('mha', v3, { dtype: 'bf16', numLayers: 61 });
  io.out(`DeepSeek-V3 (61 layers, bf16): MLA ${formatBytes(v3mla.bytesPerToken)} per token vs MHA ${formatBytes(v3mha.bytesPerToken)} (${(v3mha.bytesPerToken / v3mla.bytesPerToken).toFixed(1)}× less)`);
  const ok = worst < tol;
  io.out(ok ? `ok: every output within ${tol.toExponential(0)} of DeepSeek's reference (worst ${worst.toExponential(2)})`
    : `FAILED: worst rel err ${worst.toExponential(2)} exceeds ${tol.toExponential(0)}`);
  return ok ? 0 : 1;
}
