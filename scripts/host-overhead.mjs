#!/usr/bin/env node
// What launching from JavaScript costs the host: each op of a DeepSeek-V3 decode step (N-API
// crossing, argument validation, the launcher's host code), the whole eager step, the same step
// replayed as one CUDA graph, and MlaAttention.forward vs DecodeGraph.step (which add the cache
// plan and the index uploads). Medians of per-call wall times, in microseconds.
//
//   npm run build && node scripts/host-overhead.mjs [--json FILE]
//
// With a GPU the times are enqueue costs while the GPU runs. Without one, run it on the
// emulated device with the kernels skipped (MLA_EMU_SKIP_KERNELS=1; results are garbage, the
// host path is the real one); the script sets that up itself when no GPU is usable.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const { cuda, DeviceTensor, LatentCache, loadMlaConfig, loadMlaWeights, MlaAttention, Stream } = await import('../dist/index.js');

if (!cuda.deviceStatus().ok && process.env.MLA_EMU_SKIP_KERNELS === undefined) {
  // No GPU: rerun on the emulated device with the kernels skipped (the addon is chosen at load).
  const r = spawnSync(process.execPath, process.argv.slice(1), {
    stdio: 'inherit', env: { ...process.env, MLA_CUDA_DEVICE: 'emulator', MLA_EMU_SKIP_KERNELS: '1' },
  });
  process.exit(r.status ?? 1);
}
const { LayerStep, LAYER_STAGES } = await import('../dist/bench/layer.js');

// Warm-up long enough for V8's optimizing compiler (a served model calls each op per layer per
// step, so steady state is what matters); forward() / DecodeGraph.step append a token per call,
// so they run fewer calls (their cache grows with them).
const WARMUP = 2000;
const CALLS = 2000;
const STEP_WARMUP = 300;
const STEP_CALLS = 300;
const BATCHES = [1, 8, 64];
const CTX = 4096;

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

// Per-call wall time of fn (µs); the stream is drained every 50 calls so a GPU's launch queue
// never fills (a full queue would make the host wait for the GPU and time the GPU instead).
function time(fn, stream, warmup = WARMUP, calls = CALLS) {
  for (let i = 0; i < warmup; i++) fn(i);
  stream.synchronize();
  const t = [];
  for (let i = 0; i < calls; i++) {
    const t0 = performance.now();
    fn(warmup + i);
    t.push((performance.now() - t0) * 1000);
    if (i % 50 === 49) stream.synchronize();
  }
  stream.synchronize();
  return median(t);
}

const info = cuda.info();
const device = info.build.emulated ? `emulated device, kernels skipped (${info.devices[0]?.name})` : info.devices[0]?.name;
const results = { device, node: process.version, calls: CALLS, stepCalls: STEP_CALLS, ctx: CTX, ops: {}, steps: [] };
console.log(`host cost per call (median of ${CALLS}, µs) on ${device}, Node ${process.version}`);

// Ops of the V3 layer step, at batch 1 (the host cost hardly depends on the sizes).
{
  const owned = [];
  const s = new Stream();
  owned.push(s);
  const step = new LayerStep({ b: 1, ctx: CTX }, owned);
  for (const stage of LAYER_STAGES) {
    if (stage === 'step' || stage === 'graph') continue;
    results.ops[stage] = time(() => step.run[stage](s), s);
  }
  for (const x of owned.reverse()) x.dispose();
  const w = Math.max(...Object.keys(results.ops).map((k) => k.length));
  for (const [k, v] of Object.entries(results.ops)) console.log(`  ${k.padEnd(w)}  ${v.toFixed(1)}`);
}

// The whole step: eager ops vs one graph launch; MlaAttention.forward vs DecodeGraph.step.
const fixture = join(root, 'test', 'fixtures', 'mla-v3slim.safetensors');
const config = loadMlaConfig(fixture);
const weights = loadMlaWeights(fixture, config, { prefix: 'weights.' });
console.log(`\n  batch  eager step  graph launch   forward()  forward({out})  DecodeGraph.step   (V3 ops, ctx ${CTX}; forward/step: the v3slim layer)`);
for (const b of BATCHES) {
  const owned = [];
  const s = new Stream();
  owned.push(s);
  const step = new LayerStep({ b, ctx: CTX }, owned);
  step.run.step(s);
  const graph = s.capture(() => step.run.step(s));
  owned.push(graph);
  const eager = time(() => step.run.step(s), s);
  const replay = time(() => graph.launch(s), s);
  for (const x of owned.reverse()) x.dispose();

  const steps = 2 * (STEP_WARMUP + STEP_CALLS) + 2;
  const cache = new LatentCache({ config, numLayers: 1, numPages: b * Math.ceil((2 * steps + 8) / 64), pageSize: 64, backend: 'gpu' });
  const stream = new Stream();
  const attn = MlaAttention.create({ config, weights, cache, layer: 0, backend: 'gpu', stream });
  const ids = Array.from({ length: b }, (_, i) => i);
  for (const id of ids) cache.addSequence(id);
  const prompt = DeviceTensor.zeros([b * 4, config.hiddenSize], 'bf16');
  attn.forward(prompt, ids.map((seqId) => ({ seqId, numTokens: 4 }))).dispose();
  const x = DeviceTensor.zeros([b, config.hiddenSize], 'bf16');
  const batch = ids.map((seqId) => ({ seqId, numTokens: 1 }));
  // A new output per call (disposed: cudaFree, which waits for the GPU) vs one reused buffer.
  const forward = time(() => attn.forward(x, batch).dispose(), stream, STEP_WARMUP, STEP_CALLS);
  const y = DeviceTensor.empty([b, config.hiddenSize], 'bf16');
  const forwardOut = time(() => attn.forward(x, batch, { out: y }), stream, STEP_WARMUP, STEP_CALLS);
  const dg = attn.captureDecode({ batch: b, maxSeqLen: 2 * steps + 8 });
  const graphStep = time(() => dg.step(x, ids), stream, STEP_WARMUP, STEP_CALLS);
  dg.dispose();
  for (const t of [x, y, prompt, attn, stream, cache]) t.dispose();

  results.steps.push({ batch: b, eagerStep: eager, graphLaunch: replay, forward, forwardOut, decodeGraphStep: graphStep });
  console.log(`  ${String(b).padStart(5)}  ${eager.toFixed(1).padStart(10)}  ${replay.toFixed(1).padStart(12)}  ${forward.toFixed(1).padStart(10)}  ${forwardOut.toFixed(1).padStart(14)}  ${graphStep.toFixed(1).padStart(16)}`);
}

const jsonAt = process.argv.indexOf('--json');
if (jsonAt > 0 && process.argv[jsonAt + 1]) writeFileSync(process.argv[jsonAt + 1], `${JSON.stringify(results, null, 2)}\n`);
