// The bundled DeepSeek layer fixture end to end: MlaAttention over a paged LatentCache runs the
// fixture's prefill and decode steps, and each output is compared with what DeepSeek-V3's own
// inference/model.py computed for the same inputs (stored in the fixture).
// Run: node examples/layer-fixture.mjs   (MLA_CUDA_DEVICE=emulator: the kernels on the CPU)
import { fileURLToPath } from 'node:url';
import { cuda, DeviceTensor, LatentCache, loadMlaConfig, loadMlaWeights, MlaAttention, reference, SafetensorsFile } from 'mla-cuda';

// One attention layer with DeepSeek-V3's head geometry (kv_lora 512, rope 64, nope 128, v 128;
// 8 heads, hidden 1024), shipped with the package under test/fixtures/.
const file = fileURLToPath(new URL('test/fixtures/mla-v3slim.safetensors', import.meta.resolve('mla-cuda/package.json')));
const config = loadMlaConfig(file); // from the file's `config` metadata (Hugging Face field names)
const weights = loadMlaWeights(file, config, { prefix: 'weights.' }); // weights.q_a_proj.weight, ...
// A real checkpoint instead (a directory with config.json and safetensors shards; FP8 is dequantized):
//   const config = loadMlaConfig('/models/DeepSeek-V3');
//   const weights = loadMlaWeights('/models/DeepSeek-V3', config, { layer: 0 });

// The CUDA kernels where a device is usable, otherwise the float64 reference backend.
const status = cuda.deviceStatus();
const backend = status.ok ? 'gpu' : 'reference';
const tolerance = backend === 'gpu' ? 2e-2 : 1e-5; // bf16 kernels vs float64
console.log(backend === 'gpu'
  ? `backend: gpu (${cuda.buildInfo().emulated ? 'emulated device, CPU' : cuda.deviceInfo().name})`
  : `backend: reference (float64 on the CPU; no usable GPU: ${status.code})`);

const f = SafetensorsFile.open(file);
try {
  // The fixture's shape, from its metadata: 2 sequences, a 70-token prefill, 2 decode steps.
  const meta = (key) => Number(f.metadata[key]);
  const [B, P, K] = [meta('batch'), meta('prefill_len'), meta('decode_steps')];
  const pageSize = 64;
  const cache = new LatentCache({ config, numLayers: 1, numPages: B * Math.ceil((P + K) / pageSize), pageSize, backend });
  let attn;
  try {
    attn = MlaAttention.create({ config, weights, cache, layer: 0, backend });
    for (let b = 0; b < B; b++) cache.addSequence(b);

    // hidden: [tokens, hidden_size], the requests' tokens back to back; returns the same shape.
    const forward = (hidden, numTokens) => {
      const batch = Array.from({ length: B }, (_, b) => ({ seqId: b, numTokens }));
      if (backend === 'reference') return attn.forward(hidden, batch);
      const x = DeviceTensor.fromArray(hidden, [B * numTokens, config.hiddenSize], attn.dtype);
      try {
        const y = attn.forward(x, batch);
        try {
          return y.toFloat32Sync();
        } finally {
          y.dispose();
        }
      } finally {
        x.dispose();
      }
    };

    // The prefill (P tokens per sequence), then K single-token decode steps.
    const steps = [['prefill', P]];
    for (let k = 0; k < K; k++) steps.push([`decode.${k}`, 1]);
    let worst = 0;
    for (const [step, n] of steps) {
      const y = forward(f.readFloat64(`x.${step}`).data, n);
      const err = reference.relError(y, f.readFloat64(`y.${step}`).data);
      worst = Math.max(worst, Number.isNaN(err) ? Infinity : err);
      console.log(`${step.padEnd(8)} ${String(B * n).padStart(4)} tokens  rel err vs DeepSeek ${err.toExponential(2)}`);
    }
    if (worst < tolerance) {
      console.log(`ok: every output within ${tolerance.toExponential(0)} of DeepSeek's (worst ${worst.toExponential(2)})`);
    } else {
      console.log(`FAILED: worst rel err ${worst.toExponential(2)} exceeds ${tolerance.toExponential(0)}`);
      process.exitCode = 1;
    }
  } finally {
    attn?.dispose();
    cache.dispose();
  }
} finally {
  f.close();
}
