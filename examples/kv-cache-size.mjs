// KV-cache size of released DeepSeek models: the MLA latent cache (kv_lora + rope values per
// token per layer, shared by all heads) against the MHA cache the same heads would need
// (k = nope + rope and v per head), in bf16. Run: node examples/kv-cache-size.mjs
import { compareKvCaches, formatBytes, MLA_PRESETS, mlaConfigFromHuggingFace } from 'mla-cuda';

// DeepSeek-V2 (236B) has no preset; these are its config.json's attention fields (the cache
// size depends only on the head geometry, so RoPE scaling is left out).
const deepseekV2 = mlaConfigFromHuggingFace({
  hidden_size: 5120,
  num_attention_heads: 128,
  q_lora_rank: 1536,
  kv_lora_rank: 512,
  qk_nope_head_dim: 128,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
});

// numLayers is not part of MlaConfig (it describes one attention layer).
const models = [
  { name: 'DeepSeek-V3 / R1', config: MLA_PRESETS['deepseek-v3'], numLayers: 61 },
  { name: 'DeepSeek-V2', config: deepseekV2, numLayers: 60 },
  { name: 'DeepSeek-V2-Lite', config: MLA_PRESETS['deepseek-v2-lite'], numLayers: 27 },
];
const context = 32 * 1024; // within every model's context window (V2-Lite: 32K)

const row = (cells) => console.log(cells.map((c, i) => (i === 0 ? c.padEnd(18) : c.padStart(12))).join(' '));
row(['bf16 cache', 'heads', 'MLA B/tok/L', 'MHA B/tok/L', 'MHA / MLA', 'MLA 32K seq', 'MHA 32K seq']);
for (const { name, config, numLayers } of models) {
  const est = compareKvCaches(config, { dtype: 'bf16', numLayers, contextLength: context });
  const mla = est.find((e) => e.kind === 'mla');
  const mha = est.find((e) => e.kind === 'mha');
  row([
    name,
    String(config.numHeads),
    String(mla.bytesPerTokenPerLayer),
    String(mha.bytesPerTokenPerLayer),
    `${(mha.bytesPerTokenPerLayer / mla.bytesPerTokenPerLayer).toFixed(1)}×`,
    formatBytes(mla.totalBytes),
    formatBytes(mha.totalBytes),
  ]);
}
console.log(`(B/tok/L: bytes per token per layer; 32K seq: one sequence of ${context} tokens, all layers)`);
