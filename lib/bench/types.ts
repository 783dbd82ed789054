// The contract between benchmark suites (one per op, lib/bench/<op>.ts) and the runner
// (lib/bench/runner.ts, `mla-cuda bench`). FLOP and byte counts follow FlashMLA's formulas
// where FlashMLA has one; each suite documents its own.
import type { Stream } from '../runtime/stream.js';

export type BenchParams = Record<string, number | string | boolean>;

/** One prepared shape: device buffers allocated, inputs filled with random data. */
export interface BenchInstance {
  /** The whole user-facing call (all kernels of the op, e.g. split-KV main + combine). */
  run(stream: Stream): void;
  /** Only the main kernel, when the op has several launches (FlashMLA reports both). */
  runMain?(stream: Stream): void;
  /** Frees every device buffer of the instance. */
  dispose(): void;
}

/** One output of a kernel check next to the float64 reference's value of it. */
export interface CheckOutput {
  name: string;
  got: ArrayLike<number>;
  want: ArrayLike<number>;
}

/**
 * One small case of a kernel path run on the device and compared with lib/reference, so a
 * suite never times a kernel that computes the wrong thing (lib/bench/check.ts). Checks are
 * keyed by name: cases sharing a kernel path share one check, run once per process.
 */
export interface KernelCheck {
  /** Unique per kernel path and dtype, e.g. "decode bf16 (b2 h16 sq2 page 64)". */
  name: string;
  /** Largest relative Frobenius error accepted for each output. */
  tolerance: number;
  /** Runs the kernel on a small case and returns each output with the reference's. */
  run(): CheckOutput[];
}

export interface BenchCase {
  /** Short label, e.g. "b128 h128 sq1 sk8192". */
  name: string;
  params: BenchParams;
  /** Floating-point operations of one run(). */
  flops: number;
  /** Fewest bytes one run() must move through device memory. */
  bytes: number;
  /** Allocates and fills one instance (the runner makes several to rotate past L2). */
  setup(): BenchInstance;
  /** Bytes of device memory one instance holds (for choosing how many to rotate). */
  footprintBytes: number;
  /** The checks of every kernel run() and runMain() launch; all must pass before timing. */
  checks: readonly KernelCheck[];
}

export interface BenchSuiteOptions {
  /** Fewer, smaller shapes (smoke runs). */
  quick: boolean;
  /** Shape overrides from flags or a JSON file, e.g. { b: [128], h: [16, 128] }. */
  grid?: Record<string, readonly (number | string | boolean)[]> | undefined;
  /**
   * SMs of the device the cases will run on (it sizes split-KV workspaces, so footprints);
   * absent when no device is open (`--list`), and footprints then leave that workspace out.
   */
  smCount?: number | undefined;
}

export interface BenchSuite {
  name: string;
  description: string;
  cases(opts: BenchSuiteOptions): BenchCase[];
}
