// mla-cuda: CUDA kernels for DeepSeek Multi-head Latent Attention, with a typed wrapper.
export { MlaError } from './errors.js';
export type { MlaErrorCode } from './errors.js';
export { DTYPES, DTYPE_SIZE } from './dtype.js';
export type { DType, HostArray } from './dtype.js';
export { DeviceTensor } from './runtime/tensor.js';
export type { TensorMeta, StreamOption } from './runtime/tensor.js';
export { Stream, Event } from './runtime/stream.js';
export * as cuda from './runtime/cuda.js';
export type { BuildInfo, DeviceStatus, DeviceInfo } from './runtime/cuda.js';
