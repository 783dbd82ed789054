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
}

export interface BenchSuiteOptions {
  /** Fewer, smaller shapes (smoke runs). */
  quick: boolean;
  /** Shape overrides from flags or a JSON file, e.g. { b: [128], h: [16, 128] }. */
  grid?: Record<string, readonly (number | string | boolean)[]> | undefined;
}

export interface BenchSuite {
  name: string;
  description: string;
  cases(opts: BenchSuiteOptions): BenchCase[];
}
