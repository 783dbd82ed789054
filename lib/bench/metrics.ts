// The roofline's two ceilings and the rates of one timing against them. Its own module so that
// the runner (which computes rates) and ceilings.ts (which times cases with the runner to
// measure the ceilings) do not import each other.
import { arithmeticIntensity } from './formulas.js';
import type { Summary } from './stats.js';

export interface Ceilings {
  /** Device memory bandwidth in TB/s (10¹² bytes/s, read + write). */
  bandwidthTBs: number | null;
  /** Dense bf16 matmul rate in TFLOP/s. */
  matmulTFlops: number | null;
  /** Where each number came from ("measured: ...", "--matmul-tflops", "file ..."). */
  bandwidthSource: string;
  matmulSource: string;
}

export interface TimingResult {
  /** Per-run device time, microseconds. */
  us: Summary;
  /** Achieved at the median time. */
  tbps: number;
  tflops: number;
  /** Percent of each ceiling (null when that ceiling is unknown). */
  pctBandwidth: number | null;
  pctMatmul: number | null;
  /** Percent of the roofline bound min(bandwidth · intensity, matmul) at this intensity. */
  pctRoofline: number | null;
}

/** Attainable TFLOP/s at `intensity` FLOP/byte, or null when a needed ceiling is unknown. */
export function rooflineBound(intensity: number, c: Ceilings): number | null {
  const memBound = c.bandwidthTBs === null ? null : c.bandwidthTBs * intensity;
  if (memBound === null) return c.matmulTFlops;
  return c.matmulTFlops === null ? memBound : Math.min(memBound, c.matmulTFlops);
}

/** Rates at the median time; bytes per µs / 10⁶ is TB/s, FLOP per µs / 10⁶ is TFLOP/s. */
export function metricsFor(flops: number, bytes: number, us: Summary, c: Ceilings): TimingResult {
  const tbps = bytes / us.median / 1e6;
  const tflops = flops / us.median / 1e6;
  const pct = (x: number, of: number | null): number | null => (of && of > 0 ? (100 * x) / of : null);
  const bound = flops > 0 ? rooflineBound(arithmeticIntensity(flops, bytes), c) : c.bandwidthTBs;
  return {
    us, tbps, tflops,
    pctBandwidth: pct(tbps, c.bandwidthTBs),
    pctMatmul: flops > 0 ? pct(tflops, c.matmulTFlops) : null,
    pctRoofline: pct(flops > 0 ? tflops : tbps, bound),
  };
}
