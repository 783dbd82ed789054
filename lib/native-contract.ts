// The contract between lib/ and the addon's ops, in one place: what each `ops.<name>` reads
// (csrc/binding/op_*.cc reads exactly these keys with ArgReader) and what it returns, and the
// limits the addon exports from the kernel headers. The bindings only convert these values;
// lib/ops/*.ts validates them first (user-facing messages); the launchers re-check only what
// memory safety needs (csrc/core/check.h). A key added here must be read in op_<name>.cc.
import type { NativeStream, NativeTensorRef } from './native.js';

/** Every op takes an optional stream (undefined: the default stream). */
export interface NativeStreamArg {
  stream?: NativeStream | undefined;
}

/** fill({ dst, value }): DeviceTensor.fill (csrc/binding/op_elementwise.cc). */
export interface NativeFillArgs extends NativeStreamArg {
  dst: NativeTensorRef;
  value: number;
}

/** copy({ dst, src }): same shape; float dtypes convert, integer dtypes must match. */
export interface NativeCopyArgs extends NativeStreamArg {
  dst: NativeTensorRef;
  src: NativeTensorRef;
}

/** Where a DecodeWorkspace's parts lie (the native side reads its sizes, not this layout). */
export interface NativeDecodeWorkspaceArgs {
  workspace: NativeTensorRef;
  wsMaxBatch: number;
  wsPartialRows: number;
  wsMaxParts: number;
}

/** Which of the plan / main / combine launches run (all by default; benchmarks and tests run one alone). */
export interface NativePhaseArgs {
  runPlan?: boolean | undefined;
  runMain?: boolean | undefined;
  runCombine?: boolean | undefined;
  /** Programmatic dependent launch of main and combine (sm_90+; ignored before). */
  pdl?: boolean | undefined;
}

export interface NativeDecodeArgs extends NativeStreamArg, NativeDecodeWorkspaceArgs, NativePhaseArgs {
  q: NativeTensorRef;
  cache: NativeTensorRef;
  blockTable: NativeTensorRef;
  seqLens: NativeTensorRef;
  qSeqLens?: NativeTensorRef | undefined;
  out: NativeTensorRef;
  lse: NativeTensorRef;
  scale: number;
  causal?: boolean | undefined;
  /** Queries per request when `qSeqLens` is absent (tokens = B · uniformQSeqLen). */
  uniformQSeqLen?: number | undefined;
  /** Bound on every qSeqLens[b]: sizes the grid. */
  maxQSeqLen?: number | undefined;
  /** csrc/kernels/decode.h DecodeKernel: 0 auto, 1 portable, 2 hopper, 3 hopper-wide (its 64-row kernel). */
  kernel?: number | undefined;
}

export interface NativeDecodeWorkspaceBytesArgs {
  maxBatch: number;
  partialRows: number;
  maxParts: number;
}

/** Byte offsets of a decode workspace's parts (csrc/kernels/decode.h DecodeWorkspaceLayout). */
export interface NativeDecodeWorkspaceLayout {
  totalBytes: number;
  partMetaOffset: number;
  reqInfoOffset: number;
  lseOffset: number;
  oOffset: number;
}

export interface NativeDecodeConfigArgs {
  numHeads: number;
  maxQSeqLen: number;
  maxParts: number;
  kernel?: number | undefined;
  fp8Cache?: boolean | undefined;
}

/** The tile config a decode call would use on the current device. */
export interface NativeDecodeConfig {
  blockM: number;
  blockN: number;
  stages: number;
  smemBytes: number;
  numParts: number;
  rowTiles: number;
  ctasPerSm: number;
  /** The main kernel: the sm_90a wgmma + TMA path or the portable mma.sync one. */
  kernel: 'hopper' | 'portable';
}

export interface NativeSparseArgs extends NativeStreamArg, NativeDecodeWorkspaceArgs, NativePhaseArgs {
  q: NativeTensorRef;
  cache: NativeTensorRef;
  indices: NativeTensorRef;
  topkLength?: NativeTensorRef | undefined;
  attnSink?: NativeTensorRef | undefined;
  out: NativeTensorRef;
  lse: NativeTensorRef;
  scale: number;
}

/** out = x·weightᵀ (linear, absorbQuery, absorbOutput). */
export interface NativeLinearArgs extends NativeStreamArg {
  x: NativeTensorRef;
  weight: NativeTensorRef;
  out: NativeTensorRef;
}

export interface NativeRmsNormArgs extends NativeStreamArg {
  x: NativeTensorRef;
  weight: NativeTensorRef;
  out: NativeTensorRef;
  eps: number;
}

export interface NativePrefillGatherArgs extends NativeStreamArg {
  cache: NativeTensorRef;
  blockTable: NativeTensorRef;
  plan: NativeTensorRef;
  dst: NativeTensorRef;
  g0: number;
  g1: number;
}

export interface NativePrefillAttentionArgs extends NativeStreamArg {
  q: NativeTensorRef;
  kNope: NativeTensorRef;
  kRope: NativeTensorRef;
  v: NativeTensorRef;
  out: NativeTensorRef;
  lse: NativeTensorRef;
  plan: NativeTensorRef;
  g0: number;
  g1: number;
  reqBegin: number;
  reqCount: number;
  outRowBase?: number | undefined;
  maxQLen: number;
  scale: number;
}

export interface NativeMergeAttnStatesArgs extends NativeStreamArg {
  out: NativeTensorRef;
  lse: NativeTensorRef;
  part: NativeTensorRef;
  partLse: NativeTensorRef;
}

export interface NativeRopeTableArgs extends NativeStreamArg {
  table: NativeTensorRef;
  invFreq: NativeTensorRef;
  attentionFactor?: number | undefined;
}

/** 0: interleaved pairs, 1: neox halves. */
export type NativeRopeLayout = 0 | 1;

export interface NativeRopeArgs extends NativeStreamArg {
  x: NativeTensorRef;
  positions: NativeTensorRef;
  table: NativeTensorRef;
  layout?: NativeRopeLayout | undefined;
}

export interface NativeAppendLatentArgs extends NativeStreamArg {
  kvDown: NativeTensorRef;
  normWeight: NativeTensorRef;
  positions: NativeTensorRef;
  slotMapping: NativeTensorRef;
  cache: NativeTensorRef;
  table: NativeTensorRef;
  eps: number;
  layout?: NativeRopeLayout | undefined;
}

/** The tensors of the PTX conformance kernels (csrc/kernels/primitives.h), by primitive. */
export const NATIVE_PRIMITIVE_TENSORS = [
  'a', 'b', 'c', 'd', // mma
  'matrix', 'perm', 'frag', // ldmatrix
  'src', 'pred', 'early', 'out', // cp.async
  'values', 'cases', 'shfl', // shuffle
  'preds', 'votes', // vote
  'coords', // TMA (with src, out); wgmma uses a, b, c, d
  'tile', 'waits', // mbarrier (with src)
] as const;
export type NativePrimitiveTensor = (typeof NATIVE_PRIMITIVE_TENSORS)[number];

export function isNativePrimitiveTensor(name: string): name is NativePrimitiveTensor {
  return (NATIVE_PRIMITIVE_TENSORS as readonly string[]).includes(name);
}

export interface NativePrimitivesArgs extends NativeStreamArg, Partial<Record<NativePrimitiveTensor, NativeTensorRef>> {
  /** 0 mma, 1 ldmatrix, 2 cp.async, 3 shuffle, 4 vote, 5 wgmma, 6 TMA, 7 mbarrier. */
  which: number;
  num?: number | undefined;
  trans?: boolean | undefined;
  // wgmma
  n?: number | undefined;
  k?: number | undefined;
  swizzleA?: number | undefined;
  swizzleB?: number | undefined;
  tnspA?: number | undefined;
  tnspB?: number | undefined;
  lboRows?: number | undefined;
  rs?: boolean | undefined;
  scaleD?: boolean | undefined;
  // TMA
  box0?: number | undefined;
  box1?: number | undefined;
  box2?: number | undefined;
  swizzle?: number | undefined;
  /** Fault variants of the sm_90a kernels for emulator tests (primitives.h); 0 = none. */
  mode?: number | undefined;
  /** mbarrier: 0 named-barrier hand-over, 1 mbarrier hand-over. */
  handover?: number | undefined;
}

/** Every op of the addon (`ops` of csrc/binding/module.cc; each registers itself). */
export interface NativeOps {
  fill(args: NativeFillArgs): void;
  copy(args: NativeCopyArgs): void;
  decode(args: NativeDecodeArgs): void;
  decodeWorkspaceBytes(args: NativeDecodeWorkspaceBytesArgs): NativeDecodeWorkspaceLayout;
  decodeConfig(args: NativeDecodeConfigArgs): NativeDecodeConfig;
  sparse(args: NativeSparseArgs): void;
  linear(args: NativeLinearArgs): void;
  rmsNorm(args: NativeRmsNormArgs): void;
  prefillGather(args: NativePrefillGatherArgs): void;
  prefillAttention(args: NativePrefillAttentionArgs): void;
  mergeAttnStates(args: NativeMergeAttnStatesArgs): void;
  ropeTable(args: NativeRopeTableArgs): void;
  rope(args: NativeRopeArgs): void;
  appendLatent(args: NativeAppendLatentArgs): void;
  primitives(args: NativePrimitivesArgs): void;
}

export type NativeOpName = keyof NativeOps;

/** Sticky bits the decode kernels OR into the workspace's error word. */
export interface NativeDecodeErrorBits {
  seqLens: number;
  blockTable: number;
  qSeqLens: number;
}

/** The launchers' limits, from the kernel headers (csrc/kernels/decode.h via module.cc limits()). */
export interface NativeLimits {
  /** Most dimensions of a tensor argument (csrc/core/tensor.h kMaxDims). */
  maxDims: number;
  decode: {
    dimQK: number;
    dimV: number;
    maxHeads: number;
    minPageSize: number;
    maxPageSize: number;
    maxParts: number;
    errorBits: NativeDecodeErrorBits;
  };
}

/**
 * The same values for when no addon can be loaded (the reference backend and validation run
 * without one); test/native-contract.test.ts checks they equal the addon's.
 */
export const FALLBACK_LIMITS: NativeLimits = Object.freeze({
  maxDims: 8,
  decode: Object.freeze({
    dimQK: 576,
    dimV: 512,
    maxHeads: 128,
    minPageSize: 16,
    maxPageSize: 256,
    maxParts: 65535,
    errorBits: Object.freeze({ seqLens: 1, blockTable: 2, qSeqLens: 4 }),
  }),
});
