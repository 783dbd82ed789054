// mla-cuda: CUDA kernels for DeepSeek Multi-head Latent Attention, with a typed wrapper.
export { MlaError } from './errors.js';
export type { MlaErrorCode } from './errors.js';
export { DTYPES, DTYPE_SIZE } from './dtype.js';
export type { DType, HostArray } from './dtype.js';
export { DeviceTensor } from './runtime/tensor.js';
export type { TensorMeta, StreamOption } from './runtime/tensor.js';
export { Stream, Event, CudaGraph } from './runtime/stream.js';
export * as cuda from './runtime/cuda.js';
export type { BuildInfo, DeviceStatus, DeviceInfo } from './runtime/cuda.js';

// Kernels (validated wrappers over the native ops).
export * from './ops/decode.js';
export * from './ops/linear.js';
export * from './ops/rmsnorm.js';
export * from './ops/rope.js';
export * from './ops/prefill.js';
export * from './ops/sparse.js';

// Models: configs, checkpoints, the paged latent cache and the attention layer.
export * from './config.js';
export { SafetensorsFile, SafetensorsError, writeSafetensors } from './safetensors.js';
export * from './weights.js';
export * from './latent-cache.js';
export * from './attention.js';
export * from './kv-calculator.js';

// The float64 reference of every op (also the CPU backend), as a namespace: a function named
// after a device op computes that op (reference.decode, reference.rmsNorm, ...), so a kernel
// and its oracle are found under one name; reference-only helpers have names of their own.
export * as reference from './reference/index.js';
