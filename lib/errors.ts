/** Error codes of every failure mla-cuda reports. */
export type MlaErrorCode =
  | 'ERR_NO_ADDON' // the native addon is not built or cannot load
  | 'ERR_NO_CUDA' // the addon was built without CUDA
  | 'ERR_NO_DEVICE' // no driver or no GPU
  | 'ERR_CUDA' // any other CUDA error; `cudaError` names it
  | 'ERR_OOM'
  | 'ERR_SHAPE'
  | 'ERR_DTYPE'
  | 'ERR_RANGE'
  | 'ERR_DISPOSED'
  | 'ERR_ARGUMENT'
  | 'ERR_FORMAT' // a malformed file (safetensors, config.json)
  | 'ERR_CAPACITY'; // a paged cache has too few free pages for a request

/**
 * The one error class of the package. `code` says what kind of failure it is; the message
 * names the argument at fault. Native code throws instances of this class too.
 */
export class MlaError extends Error {
  readonly code: MlaErrorCode;
  /** CUDA's error name (e.g. `cudaErrorIllegalAddress`) when `code` is ERR_CUDA / ERR_OOM / ERR_NO_DEVICE. */
  cudaError?: string;

  constructor(code: MlaErrorCode, message: string) {
    super(message);
    this.name = 'MlaError';
    this.code = code;
  }
}
