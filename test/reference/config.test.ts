import t from 'tap';
import {
  ConfigError,
  MLA_PRESETS,
  mlaConfigFromHuggingFace,
  softmaxScale,
  validateMlaConfig,
  yarnAttentionFactor,
  yarnGetMscale,
} from '../../lib/config.js';

const V3_JSON = {
  architectures: ['DeepseekV3ForCausalLM'],
  hidden_size: 7168,
  num_attention_heads: 128,
  num_key_value_heads: 128,
  q_lora_rank: 1536,
  kv_lora_rank: 512,
  qk_nope_head_dim: 128,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
  rope_theta: 10000,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 163840,
  rope_scaling: {
    beta_fast: 32,
    beta_slow: 1,
    factor: 40,
    mscale: 1.0,
    mscale_all_dim: 1.0,
    original_max_position_embeddings: 4096,
    type: 'yarn',
  },
};

const V2_LITE_JSON = {
  ...V3_JSON,
  hidden_size: 2048,
  num_attention_heads: 16,
  q_lora_rank: null,
  rope_scaling: { ...V3_JSON.rope_scaling, mscale: 0.707, mscale_all_dim: 0.707 },
};

t.test('softmax scale of released configs', async (t) => {
  const v3 = mlaConfigFromHuggingFace(V3_JSON);
  t.ok(Math.abs(v3.softmaxScale - 0.1352337788608801) < 1e-15, `V3 scale ${v3.softmaxScale}`);
  t.equal(v3.softmaxScale.toFixed(7), '0.1352338');
  const lite = mlaConfigFromHuggingFace(V2_LITE_JSON);
  t.equal(lite.softmaxScale.toFixed(7), '0.1147214', `V2-Lite scale ${lite.softmaxScale}`);
  t.equal(lite.qLoraRank, null);
  t.equal(yarnGetMscale(40, 1).toFixed(6), '1.368888');
  t.equal(yarnGetMscale(1, 1), 1, 'no correction at factor 1');
  t.equal(yarnGetMscale(0.5, 1), 1);
  t.equal(yarnAttentionFactor(v3.ropeScaling), 1, 'cos/sin attention factor is 1 for V3');
  t.equal(yarnAttentionFactor(lite.ropeScaling), 1, 'and for V2-Lite');
  const plain = mlaConfigFromHuggingFace({ ...V3_JSON, rope_scaling: null });
  t.equal(plain.softmaxScale, 192 ** -0.5, 'no YaRN: (nope + rope)^-0.5, not 576^-0.5');
  t.equal(plain.maxPositionEmbeddings, 163840);
  t.equal(softmaxScale({ qkNopeHeadDim: 24, qkRopeHeadDim: 16, ropeScaling: null }), 40 ** -0.5);
  // HF: a missing mscale_all_dim means no softmax correction.
  const noAll = mlaConfigFromHuggingFace({ ...V3_JSON, rope_scaling: { type: 'yarn', factor: 40, original_max_position_embeddings: 4096 } });
  t.equal(noAll.softmaxScale, 192 ** -0.5);
  t.equal(noAll.ropeScaling?.betaFast, 32, 'beta defaults');
  t.equal(noAll.ropeScaling?.betaSlow, 1);
  const ropeType = mlaConfigFromHuggingFace({ ...V3_JSON, rope_scaling: { ...V3_JSON.rope_scaling, type: undefined, rope_type: 'yarn' } });
  t.equal(ropeType.softmaxScale, v3.softmaxScale, 'rope_type spelling accepted');
});

t.test('presets', async (t) => {
  const v3 = MLA_PRESETS['deepseek-v3'];
  t.match(v3, {
    hiddenSize: 7168,
    numHeads: 128,
    qLoraRank: 1536,
    kvLoraRank: 512,
    qkNopeHeadDim: 128,
    qkRopeHeadDim: 64,
    vHeadDim: 128,
    ropeTheta: 10000,
    rmsNormEps: 1e-6,
    maxPositionEmbeddings: 163840,
    ropeInterleaved: true,
    ropeScaling: { type: 'yarn', factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscale: 1, mscaleAllDim: 1 },
  });
  t.equal(v3.softmaxScale.toFixed(7), '0.1352338');
  const lite = MLA_PRESETS['deepseek-v2-lite'];
  t.match(lite, {
    hiddenSize: 2048,
    numHeads: 16,
    qLoraRank: null,
    kvLoraRank: 512,
    maxPositionEmbeddings: 163840,
    ropeScaling: { factor: 40, mscale: 0.707, mscaleAllDim: 0.707 },
  });
  t.equal(lite.softmaxScale.toFixed(7), '0.1147214');
  t.ok(Object.isFrozen(v3) && Object.isFrozen(v3.ropeScaling), 'presets are frozen');
  t.equal(validateMlaConfig(v3), v3);
});

t.test('fixture-style config', async (t) => {
  const cfg = mlaConfigFromHuggingFace({
    hidden_size: 96,
    num_attention_heads: 3,
    q_lora_rank: 40,
    kv_lora_rank: 32,
    qk_nope_head_dim: 24,
    qk_rope_head_dim: 16,
    v_head_dim: 20,
    rms_norm_eps: 1e-6,
    rope_theta: 10000.0,
    rope_interleaved: false,
    rope_scaling: null,
    softmax_scale: 0.25,
  });
  t.equal(cfg.softmaxScale, 0.25, 'explicit softmax_scale wins');
  t.equal(cfg.ropeInterleaved, false);
  t.equal(cfg.maxPositionEmbeddings, 4096, 'default when absent');
  t.equal(mlaConfigFromHuggingFace({ ...V3_JSON, q_lora_rank: 0 }).qLoraRank, null, "DeepSeek's 0 means no compression");
});

t.test('invalid fields are named', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['missing hidden_size', { ...V3_JSON, hidden_size: undefined }, /'hidden_size': missing/],
    ['string heads', { ...V3_JSON, num_attention_heads: '128' }, /'num_attention_heads': must be a positive integer/],
    ['fractional kv', { ...V3_JSON, kv_lora_rank: 511.5 }, /'kv_lora_rank'/],
    ['negative q lora', { ...V3_JSON, q_lora_rank: -1 }, /'q_lora_rank'/],
    ['odd rope', { ...V3_JSON, qk_rope_head_dim: 63 }, /'qk_rope_head_dim': must be even/],
    ['zero eps', { ...V3_JSON, rms_norm_eps: 0 }, /'rms_norm_eps'/],
    ['bad theta', { ...V3_JSON, rope_theta: 'big' }, /'rope_theta'/],
    ['linear scaling', { ...V3_JSON, rope_scaling: { type: 'linear', factor: 2 } }, /'rope_scaling.type': only 'yarn'/],
    ['yarn without factor', { ...V3_JSON, rope_scaling: { type: 'yarn', original_max_position_embeddings: 4096 } }, /'rope_scaling.factor': missing/],
    ['yarn without original', { ...V3_JSON, rope_scaling: { type: 'yarn', factor: 4 } }, /'rope_scaling.original_max_position_embeddings'/],
    ['betas swapped', { ...V3_JSON, rope_scaling: { ...V3_JSON.rope_scaling, beta_fast: 1, beta_slow: 32 } }, /'rope_scaling.beta_fast'/],
    ['negative mscale', { ...V3_JSON, rope_scaling: { ...V3_JSON.rope_scaling, mscale: -1 } }, /'rope_scaling.mscale'/],
    ['scaling not object', { ...V3_JSON, rope_scaling: 40 }, /'rope_scaling'/],
    ['interleave not bool', { ...V3_JSON, rope_interleaved: 'yes' }, /'rope_interleaved'/],
    ['bad softmax_scale', { ...V3_JSON, softmax_scale: -0.1 }, /'softmax_scale'/],
    ['bad max pos', { ...V3_JSON, max_position_embeddings: 0 }, /'max_position_embeddings'/],
    ['not an object', [1, 2], /config must be a JSON object/],
  ];
  for (const [name, json, re] of cases) {
    try {
      mlaConfigFromHuggingFace(json);
      t.fail(`${name}: accepted`);
    } catch (e) {
      t.ok(e instanceof ConfigError && re.test(e.message), `${name}: ${(e as Error).message}`);
    }
  }
  t.throws(() => validateMlaConfig({ ...MLA_PRESETS['deepseek-v3'], numHeads: 0 }), /'numHeads'/);
  t.throws(() => validateMlaConfig({ ...MLA_PRESETS['deepseek-v3'], qLoraRank: 1.5 }), /'qLoraRank'/);
  t.throws(() => validateMlaConfig({ ...MLA_PRESETS['deepseek-v3'], softmaxScale: NaN }), /'softmaxScale'/);
});
