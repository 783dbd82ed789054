// The two ceilings of the roofline: device memory bandwidth and matmul rate, measured on the
// device itself (datasheet numbers are only leads), supplied by flags, or reused from a file.
import { readFileSync } from 'node:fs';
import { copyCase } from './copy.js';
import { arithmeticIntensity } from './formulas.js';
import type { CaseTiming } from './runner.js';
import type { Ceilings } from './metrics.js';
import type { Summary } from './stats.js';
import type { BenchCase, BenchSuite } from './types.js';

export { metricsFor, rooflineBound } from './metrics.js';
export type { Ceilings, TimingResult } from './metrics.js';

function positive(x: unknown, what: string, source: string): number | undefined {
  if (x === undefined || x === null) return undefined;
  if (typeof x !== 'number' || !Number.isFinite(x) || x <= 0) throw new Error(`${source}: "${what}" must be a positive number, got ${JSON.stringify(x)}`);
  return x;
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

export interface CeilingValues {
  bandwidthTBs?: number | undefined;
  matmulTFlops?: number | undefined;
}

/**
 * Reads ceilings from JSON: either { bandwidthTBs, matmulTFlops } (what bench/torch_ceilings.py
 * prints) or a whole `mla-cuda bench --json` report (its `ceilings` field).
 */
export function parseCeilings(text: string, source: string): CeilingValues {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new Error(`${source}: not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  const obj = isRecord(data) && isRecord(data['ceilings']) ? data['ceilings'] : data;
  if (!isRecord(obj)) throw new Error(`${source}: expected an object with bandwidthTBs and/or matmulTFlops`);
  const out = { bandwidthTBs: positive(obj['bandwidthTBs'], 'bandwidthTBs', source), matmulTFlops: positive(obj['matmulTFlops'], 'matmulTFlops', source) };
  if (out.bandwidthTBs === undefined && out.matmulTFlops === undefined) throw new Error(`${source}: has neither bandwidthTBs nor matmulTFlops`);
  return out;
}

export function loadCeilingsFile(path: string): CeilingValues {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`--ceilings-file ${path}: cannot read (${err instanceof Error ? err.message : String(err)})`);
  }
  return parseCeilings(text, `--ceilings-file ${path}`);
}

const GiB = 1024 ** 3;

/** Per-buffer size of the bandwidth copy: 1 GiB, or a quarter of free memory when that is less. */
export function ceilingCopyBytes(freeBytes: number): number {
  return Math.max(1, Math.min(GiB, Math.floor(freeBytes / 4)));
}

/** Linear cases tried for the matmul ceiling: the most FLOP per byte is the most square-ish and large. */
export function matmulCandidates(cases: readonly BenchCase[], count = 3): BenchCase[] {
  return cases
    .filter((c) => c.flops > 0 && c.bytes > 0)
    .sort((a, b) => arithmeticIntensity(b.flops, b.bytes) - arithmeticIntensity(a.flops, a.bytes) || b.flops - a.flops)
    .slice(0, count);
}

/** Large-token shapes of the linear suite (T = 4096 fills the GPU), else its default grid. */
export function linearCeilingCases(linear: BenchSuite): BenchCase[] {
  for (const grid of [{ t: [4096] }, undefined]) {
    try {
      const cases = linear.cases({ quick: false, grid });
      if (matmulCandidates(cases).length > 0) return cases;
    } catch {
      // That suite does not know the key; try its defaults.
    }
  }
  return [];
}

export interface CeilingDeps {
  /** Times a case with the runner (warm-up, rotation, repeats). */
  time(c: BenchCase): CaseTiming;
  freeBytes: number;
  /** Our linear suite, when this build has one. */
  linear?: BenchSuite | undefined;
  log(message: string): void;
}

function fmtSummary(s: Summary): string {
  return `median ${s.median.toFixed(1)} µs over ${s.n} runs`;
}

/** Fills in every ceiling that `given` (flags) and `file` leave open by measuring it. */
export function resolveCeilings(given: CeilingValues, file: { path: string; values: CeilingValues } | undefined, deps: CeilingDeps): Ceilings {
  const out: Ceilings = { bandwidthTBs: null, matmulTFlops: null, bandwidthSource: '', matmulSource: '' };
  if (given.bandwidthTBs !== undefined) [out.bandwidthTBs, out.bandwidthSource] = [given.bandwidthTBs, '--bandwidth-tbs'];
  else if (file?.values.bandwidthTBs !== undefined) [out.bandwidthTBs, out.bandwidthSource] = [file.values.bandwidthTBs, `file ${file.path}`];
  else {
    const c = copyCase(ceilingCopyBytes(deps.freeBytes));
    deps.log(`measuring memory bandwidth: ${c.name} device-to-device copy`);
    const t = deps.time(c);
    out.bandwidthTBs = c.bytes / t.run.median / 1e6;
    out.bandwidthSource = `measured: ${c.name} copy, (read + write bytes) / ${fmtSummary(t.run)}`;
  }
  if (given.matmulTFlops !== undefined) [out.matmulTFlops, out.matmulSource] = [given.matmulTFlops, '--matmul-tflops'];
  else if (file?.values.matmulTFlops !== undefined) [out.matmulTFlops, out.matmulSource] = [file.values.matmulTFlops, `file ${file.path}`];
  else if (deps.linear) {
    let best: { tflops: number; name: string; t: CaseTiming } | undefined;
    for (const c of matmulCandidates(linearCeilingCases(deps.linear))) {
      deps.log(`measuring matmul rate: linear ${c.name}`);
      try {
        const t = deps.time(c);
        const tflops = c.flops / t.run.median / 1e6;
        if (!best || tflops > best.tflops) best = { tflops, name: c.name, t };
      } catch (err) {
        deps.log(`  linear ${c.name} failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (best) [out.matmulTFlops, out.matmulSource] = [best.tflops, `measured: best of our linear suite, ${best.name}, ${fmtSummary(best.t.run)}`];
  }
  if (out.matmulTFlops === null) {
    const why = deps.linear ? 'the linear suite could not be timed' : 'no linear suite in this build';
    out.matmulSource = `unknown: ${why}; pass --matmul-tflops N (bench/torch_ceilings.py prints one)`;
  }
  return out;
}
