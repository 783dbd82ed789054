// Float64 reference implementation of every MLA op: the oracle the CUDA kernels
// are checked against and the CPU fallback where there is no GPU.
// Naming: a function named after a device op computes that op (decode, prefill, sparse, linear,
// rmsNorm, appendLatent, mergeAttnStates; decodeFp8 / sparseFp8 / appendLatentFp8 are the same
// ops on the FP8 cache), with no "Reference" suffix: callers reach them as reference.<op>. Their
// argument types are <Op>ReferenceArgs, apart from the ops' <Op>ArgsMeta and Native<Op>Args.

export { rmsNorm, type RmsNormStrides } from './rmsnorm.js';
export { linear } from './linear.js';
export {
  applyRope,
  ropeInvFreq,
  ropeLayoutOf,
  ropeTable,
  yarnFindCorrectionDim,
  yarnFindCorrectionRange,
  yarnLinearRamp,
  type RopeLayout,
  type RopeTable,
} from './rope.js';
export {
  appendLatent,
  gatherPagedCache,
  pagedSlot,
  type AppendLatentReferenceArgs,
  type PagedCacheView,
} from './cache.js';
export { decode, type AttentionResult, type DecodeReferenceArgs } from './decode.js';
export { sparseFp8, sparse, type SparseReferenceArgs, type SparseFp8ReferenceArgs } from './sparse.js';
export {
  expandLatentKv,
  mergeAttnStates,
  mhaVarlen,
  prefill,
  type ExpandDims,
  type MergeAttnStatesReferenceArgs,
  type MhaVarlenReferenceArgs,
  type PrefillReferenceArgs,
} from './prefill.js';
export { absorbOutput, absorbQuery, splitKvBProj, type AbsorbDims, type AbsorbedWeights } from './absorb.js';
export {
  loadLayerWeights,
  ReferenceMlaLayer,
  validateLayerWeights,
  type AttentionMode,
  type LayerForwardResult,
  type MlaLayerWeights,
  type ReferenceLayerOptions,
} from './layer.js';
export { denseAttendOne, makePagedCache, shuffledBlockTable, type PagedCache } from './testing.js';
export { maxAbsDiff, mulberry32, randn, randnArray, relError } from './util.js';
export {
  appendLatentFp8,
  bf16Decode,
  bf16Encode,
  decodeFp8,
  dequantizeFp8Cache,
  dequantizeFp8Row,
  e4m3Decode,
  e4m3Encode,
  fp8TileScale,
  gatherFp8Cache,
  quantizeFp8Cache,
  quantizeFp8Row,
  E4M3_MAX,
  FP8_LATENT_DIM,
  FP8_ROPE_DIM,
  FP8_ROW_BYTES,
  FP8_TILE,
  type AppendLatentFp8ReferenceArgs,
  type DecodeFp8ReferenceArgs,
  type Fp8CacheGeometry,
} from './fp8.js';
