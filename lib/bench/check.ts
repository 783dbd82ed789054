// Benchmarks check before they time (llm.c's rule): every case names the kernel checks that
// cover its code path, each a small case of the same kernel compared with the float64
// reference (lib/reference). A fast wrong kernel is worse than a slow right one, so the runner
// refuses to time a case whose check fails and reports why instead.
import type { DType } from '../dtype.js';
import { MlaError } from '../errors.js';
import { mulberry32, randnArray, relError } from '../reference/util.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { CheckOutput, KernelCheck } from './types.js';

export interface CheckResult {
  /** KernelCheck.name. */
  check: string;
  ok: boolean;
  tolerance: number;
  /** Relative Frobenius error of each output (NaN when it holds non-finite values). */
  errors: Record<string, number>;
  /** One line: what was compared and, on failure, which output was off and by how much. */
  message: string;
}

function describeError(e: number): string {
  return Number.isFinite(e) ? e.toExponential(2) : String(e);
}

/** Compares each output with the reference's; pure, so a corrupted output can be fed in directly. */
export function compareOutputs(check: Pick<KernelCheck, 'name' | 'tolerance'>, outputs: readonly CheckOutput[]): CheckResult {
  const errors: Record<string, number> = {};
  const bad: string[] = [];
  if (outputs.length === 0) bad.push('the check compared nothing');
  for (const o of outputs) {
    if (o.got.length !== o.want.length) {
      errors[o.name] = NaN;
      bad.push(`${o.name} has ${o.got.length} values, the reference ${o.want.length}`);
      continue;
    }
    // relError sums squares: one NaN or Inf in `got` makes it non-finite, so it fails below.
    const e = relError(o.got, o.want);
    errors[o.name] = e;
    if (!(e <= check.tolerance)) bad.push(`${o.name} rel err ${describeError(e)} > ${check.tolerance}`);
  }
  const ok = bad.length === 0;
  const summary = Object.entries(errors).map(([k, e]) => `${k} ${describeError(e)}`).join(', ');
  return {
    check: check.name, ok, tolerance: check.tolerance, errors,
    message: ok ? `${check.name}: matches the float64 reference (${summary} ≤ ${check.tolerance})` : `${check.name}: wrong result vs the float64 reference: ${bad.join('; ')}`,
  };
}

/**
 * Runs a check on the current device; never throws (a check that cannot run counts as failed).
 * `corrupt` edits the outputs before the comparison: tests use it to show a wrong kernel is caught.
 */
export function runCheck(check: KernelCheck, opts: { corrupt?: (outputs: CheckOutput[]) => void } = {}): CheckResult {
  let outputs: CheckOutput[];
  try {
    outputs = check.run();
  } catch (err) {
    const why = err instanceof MlaError ? `${err.code}: ${err.message}` : err instanceof Error ? err.message : String(err);
    return { check: check.name, ok: false, tolerance: check.tolerance, errors: {}, message: `${check.name}: the check could not run (${why})` };
  }
  opts.corrupt?.(outputs);
  return compareOutputs(check, outputs);
}

/** Runs each check once per process (many cases share a kernel path) and remembers the verdict. */
export class CheckLedger {
  readonly #results = new Map<string, CheckResult>();
  readonly #run: (check: KernelCheck) => CheckResult;
  readonly #onResult: ((r: CheckResult) => void) | undefined;

  /** `run` replaces runCheck (tests); `onResult` hears each verdict once, e.g. to log it. */
  constructor(opts: { run?: (check: KernelCheck) => CheckResult; onResult?: (r: CheckResult) => void } = {}) {
    this.#run = opts.run ?? ((c) => runCheck(c));
    this.#onResult = opts.onResult;
  }

  /** The first failed check of `checks`, or undefined when all pass. */
  firstFailure(checks: readonly KernelCheck[]): CheckResult | undefined {
    for (const c of checks) {
      let r = this.#results.get(c.name);
      if (!r) {
        r = this.#run(c);
        this.#results.set(c.name, r);
        this.#onResult?.(r);
      }
      if (!r.ok) return r;
    }
    return undefined;
  }

  get results(): CheckResult[] {
    return [...this.#results.values()];
  }
}

/** Thrown where a case is timed outside measureCase (the ceilings) and its check failed. */
export class CheckFailedError extends Error {
  readonly result: CheckResult;
  constructor(result: CheckResult) {
    super(`not timed: ${result.message}`);
    this.name = 'CheckFailedError';
    this.result = result;
  }
}

/** Device tensors of one check run, freed together however the run ends. */
export class CheckScope {
  readonly #owned: Array<{ dispose(): void }> = [];

  own<T extends { dispose(): void }>(x: T): T {
    this.#owned.push(x);
    return x;
  }

  /**
   * Random N(0, std²) values on the device and, for the reference, exactly the values the
   * device holds (read back, so bf16/f16 rounding is the device's own).
   */
  random(shape: readonly number[], dtype: DType, seed: number, std = 1): { t: DeviceTensor; host: Float64Array } {
    const n = shape.reduce((a, b) => a * b, 1);
    const t = this.own(DeviceTensor.fromArray(randnArray(n, mulberry32(seed), std), shape, dtype));
    return { t, host: Float64Array.from(t.toFloat32Sync()) };
  }

  dispose(): void {
    for (let i = this.#owned.length - 1; i >= 0; i--) this.#owned[i]!.dispose();
  }
}

/** Runs `body` with a fresh scope and frees everything it allocated. */
export function withScope<T>(body: (s: CheckScope) => T): T {
  const s = new CheckScope();
  try {
    return body(s);
  } finally {
    s.dispose();
  }
}

/** The tolerance for half-precision kernels (bf16 has 8 mantissa bits), as in the op tests. */
export const HALF_TOLERANCE = 1e-2;
