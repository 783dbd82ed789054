// Float64 reference implementation of every MLA op: the oracle the CUDA kernels
// are checked against and the CPU fallback where there is no GPU.

export { rmsnorm, type RmsnormStrides } from './rmsnorm.js';
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
  appendLatentReference,
  gatherPagedCache,
  pagedSlot,
  type AppendLatentArgs,
  type PagedCacheView,
} from './cache.js';
export { decodeReference, type AttentionResult, type DecodeArgs } from './decode.js';
export { sparseFp8Reference, sparseReference, type SparseArgs, type SparseFp8Args } from './sparse.js';
export {
  expandLatentKv,
  mergeAttnStatesReference,
  mhaVarlenReference,
  prefillReference,
  type ExpandDims,
  type MergeAttnStatesArgs,
  type MhaVarlenArgs,
  type PrefillArgs,
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
  appendLatentFp8Reference,
  bf16Decode,
  bf16Encode,
  decodeFp8Reference,
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
  type AppendLatentFp8Args,
  type DecodeFp8Args,
  type Fp8CacheGeometry,
} from './fp8.js';
