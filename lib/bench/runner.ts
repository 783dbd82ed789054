// Times benchmark cases: warm-up, then `repeats` runs each bracketed by CUDA events on one
// stream, cycling through enough independent instances that their inputs do not fit in L2
// together (otherwise repeated runs would measure the cache, not device memory).
import { MlaError } from '../errors.js';
import { Event } from '../runtime/stream.js';
import type { Stream } from '../runtime/stream.js';
import { metricsFor } from './metrics.js';
import type { Ceilings, TimingResult } from './metrics.js';
import type { CheckLedger } from './check.js';
import { arithmeticIntensity } from './formulas.js';
import { scaleSummary, summarize } from './stats.js';
import type { Summary } from './stats.js';
import type { BenchCase, BenchInstance, BenchParams } from './types.js';

/** How a batch of runs was timed (see eventTimer). */
export type HoldOutcome = 'held' | 'expired' | 'unheld';

export interface TimedRuns {
  /** Device time of each run, ms. */
  ms: number[];
  /** Host time of each body(i) call (queuing the run), ms. */
  hostMs: number[];
  /**
   * 'held': every run was queued under a stream hold, so ms is device time alone; 'expired': a
   * hold's timeout ended it while runs were still being queued (the device may have waited for
   * the host in between); 'unheld': timed as queued (no hold asked for, or the device cannot
   * hold: the emulated one).
   */
  hold: HoldOutcome;
}

/** Device and host time of consecutive runs; the real one uses CUDA events, tests use a fake. */
export interface Timer {
  /** Enqueues body(0..n-1) in order and times each. */
  each(n: number, body: (i: number) => void): TimedRuns;
}

/** Runs queued under one hold: bounded so the launch queue never fills (that blocks the host). */
const HOLD_BATCH = 32;
const HOLD_TIMEOUT_MS = 1000;

/**
 * Runs are queued in batches behind a stream hold (Stream.hold), with an event between
 * consecutive runs; released, they run back to back, so run i's time (event i to i + 1) is
 * the device's alone even for kernels shorter than their host call (otherwise a 2 µs kernel
 * measures the ~20 µs the host takes to launch it). The host time of each call is kept apart.
 * Without `hold` (profilers that serialize launches would wait for the hold's timeout), runs
 * are timed as they are queued and the outcome is 'unheld'.
 */
export function eventTimer(stream: Stream, opts: { hold: boolean } = { hold: true }): Timer {
  return {
    each(n, body) {
      const ms: number[] = [];
      const hostMs: number[] = [];
      let hold: HoldOutcome = 'held';
      for (let start = 0; start < n; start += HOLD_BATCH) {
        const m = Math.min(HOLD_BATCH, n - start);
        const events: Event[] = [];
        try {
          for (let i = 0; i <= m; i++) events.push(new Event());
          const held = opts.hold && stream.hold({ timeoutMs: HOLD_TIMEOUT_MS });
          if (!held) hold = 'unheld';
          try {
            events[0]!.record(stream);
            for (let i = 0; i < m; i++) {
              const t0 = performance.now();
              body(start + i);
              hostMs.push(performance.now() - t0);
              events[i + 1]!.record(stream);
            }
          } finally {
            if (held && !stream.release()) hold = 'expired';
          }
          for (let i = 0; i < m; i++) ms.push(events[i]!.elapsedMs(events[i + 1]!));
        } finally {
          for (const e of events) e.dispose();
        }
      }
      return { ms, hostMs, hold };
    },
  };
}

export interface RunnerEnv {
  stream: Stream;
  timer: Timer;
  /** Free device memory now, in bytes. */
  freeBytes(): number;
  /** L2 cache size of the device (deviceInfo().l2CacheBytes). */
  l2Bytes: number;
}

export interface RunnerOptions {
  /** Warm-up length in milliseconds of device time (at least one run is made). */
  warmupMs: number;
  /** Timed runs per measured function. */
  repeats: number;
  /** Most instances one case may allocate (bounds setup time for tiny cases). */
  maxInstances?: number | undefined;
}

export const DEFAULT_MAX_INSTANCES = 256;
/** Share of free memory the rotation may use; the rest is left for workspaces. */
const MEMORY_SHARE = 0.8;
const MAX_WARMUP_RUNS = 100_000;
/** Runs per warm-up batch (each batch holds one event per run). */
const MAX_WARMUP_BATCH = 1024;

/**
 * Instances to rotate through: enough that k · footprint ≥ 2 · L2 and k ≥ 2, but no more than
 * fit in MEMORY_SHARE of free memory (at least 1) or `maxInstances`.
 */
export function rotationCount(footprintBytes: number, l2Bytes: number, freeBytes: number, maxInstances = DEFAULT_MAX_INSTANCES): number {
  const fp = Math.max(1, footprintBytes);
  const want = Math.max(2, Math.ceil((2 * l2Bytes) / fp));
  const fit = Math.floor((freeBytes * MEMORY_SHARE) / fp);
  return Math.max(1, Math.min(want, fit, maxInstances));
}

export interface CaseTiming {
  instances: number;
  /** instances · footprintBytes. */
  rotatedBytes: number;
  /** rotatedBytes ≥ 2 · L2: the timings are not cache hits. */
  pastL2: boolean;
  warmupRuns: number;
  /** How the runs were timed (the worse of run's and runMain's). */
  hold: HoldOutcome;
  /** Per-run device time of run(), microseconds. */
  run: Summary;
  /** Host time of each run() call, microseconds: what queuing it costs JavaScript. */
  host: Summary;
  /** Per-run device time of runMain(), microseconds, when the case has one. */
  main?: Summary | undefined;
}

function setupInstances(c: BenchCase, k: number): BenchInstance[] {
  const out: BenchInstance[] = [];
  try {
    for (let i = 0; i < k; i++) out.push(c.setup());
  } catch (err) {
    // Running out of memory part-way still leaves a usable (if smaller) rotation.
    if (out.length > 0 && err instanceof MlaError && err.code === 'ERR_OOM') return out;
    for (const inst of out) inst.dispose();
    throw err;
  }
  return out;
}

function warmUp(timer: Timer, warmupMs: number, body: (i: number) => void): number {
  let runs = 0;
  let spent = 0;
  let batch = 1;
  do {
    const { ms } = timer.each(batch, (i) => body(runs + i));
    runs += batch;
    spent += ms.reduce((a, b) => a + b, 0);
    batch = Math.min(batch * 2, MAX_WARMUP_BATCH, MAX_WARMUP_RUNS - runs);
  } while (spent < warmupMs && batch > 0);
  return runs;
}

/** Sets up the rotation, warms up, times run() (and runMain()), and always frees everything. */
export function runCase(c: BenchCase, env: RunnerEnv, opts: RunnerOptions): CaseTiming {
  if (!Number.isInteger(opts.repeats) || opts.repeats < 1) throw new RangeError(`repeats must be a positive integer, got ${opts.repeats}`);
  const k = rotationCount(c.footprintBytes, env.l2Bytes, env.freeBytes(), opts.maxInstances);
  const instances = setupInstances(c, k);
  const n = instances.length;
  try {
    const pick = (i: number): BenchInstance => instances[i % n]!;
    const warmupRuns = warmUp(env.timer, opts.warmupMs, (i) => pick(i).run(env.stream));
    const run = env.timer.each(opts.repeats, (i) => pick(i).run(env.stream));
    let main: TimedRuns | undefined;
    if (instances[0]!.runMain) {
      const runMain = (i: number): void => pick(i).runMain!(env.stream);
      // A shorter warm-up: the kernels are already loaded and the clocks are up.
      warmUp(env.timer, opts.warmupMs / 4, runMain);
      main = env.timer.each(opts.repeats, runMain);
    }
    const rotatedBytes = n * c.footprintBytes;
    const us = (ms: number[]): Summary => scaleSummary(summarize(ms), 1000);
    const hold = run.hold === 'held' && main && main.hold !== 'held' ? main.hold : run.hold;
    return {
      instances: n, rotatedBytes, pastL2: rotatedBytes >= 2 * env.l2Bytes, warmupRuns, hold,
      run: us(run.ms), host: us(run.hostMs), main: main && us(main.ms),
    };
  } finally {
    for (const inst of instances) inst.dispose();
  }
}

export interface CaseResult {
  suite: string;
  name: string;
  params: BenchParams;
  flops: number;
  bytes: number;
  /** FLOP per byte. */
  intensity: number;
  footprintBytes: number;
  instances?: number | undefined;
  pastL2?: boolean | undefined;
  run?: TimingResult | undefined;
  main?: TimingResult | undefined;
  /** Host time of each run() call, microseconds. */
  hostUs?: Summary | undefined;
  /** How the runs were timed (TimedRuns.hold). */
  hold?: HoldOutcome | undefined;
  /** Why the case could not be measured (its check failed, setup failed, unsupported...). */
  error?: string | undefined;
  /** Names of the kernel checks that passed before the case was timed. */
  checked?: string[] | undefined;
}

/**
 * Checks the case's kernels against the reference (once per check, through `checks`), then
 * times it and turns the timings into rates against the ceilings; never throws. A case whose
 * check fails is not timed: its result carries the check's message as the error.
 */
export function measureCase(suite: string, c: BenchCase, env: RunnerEnv, opts: RunnerOptions, ceilings: Ceilings, checks: CheckLedger): CaseResult {
  const base: CaseResult = {
    suite, name: c.name, params: c.params, flops: c.flops, bytes: c.bytes,
    intensity: arithmeticIntensity(c.flops, c.bytes), footprintBytes: c.footprintBytes,
  };
  const failed = checks.firstFailure(c.checks);
  if (failed) return { ...base, error: `not timed, ${failed.message}` };
  base.checked = c.checks.map((k) => k.name);
  try {
    const t = runCase(c, env, opts);
    return {
      ...base,
      instances: t.instances,
      pastL2: t.pastL2,
      run: metricsFor(c.flops, c.bytes, t.run, ceilings),
      main: t.main ? metricsFor(c.flops, c.bytes, t.main, ceilings) : undefined,
      hostUs: t.host,
      hold: t.hold,
    };
  } catch (err) {
    const why = err instanceof MlaError ? `${err.code}: ${err.message}` : err instanceof Error ? err.message : String(err);
    return { ...base, error: why };
  }
}
