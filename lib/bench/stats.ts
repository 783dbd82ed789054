// Summary statistics of repeated timings. The median is the headline number (robust to the
// odd preempted run); the spread says how far to trust a difference between two versions.

export interface Summary {
  n: number;
  median: number;
  mean: number;
  min: number;
  p10: number;
  p90: number;
  max: number;
  /** Sample standard deviation (n − 1); 0 for a single sample. */
  stddev: number;
}

/** Percentile p ∈ [0, 100] of ascending `sorted`, linear between closest ranks (numpy's default). */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile: p must be in [0, 100], got ${p}`);
  const pos = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

export function median(values: readonly number[]): number {
  return percentile([...values].sort((a, b) => a - b), 50);
}

export function summarize(values: readonly number[]): Summary {
  if (values.length === 0) throw new RangeError('summarize: no samples');
  const s = [...values].sort((a, b) => a - b);
  const n = s.length;
  const mean = s.reduce((a, b) => a + b, 0) / n;
  const variance = n > 1 ? s.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1) : 0;
  return {
    n,
    median: percentile(s, 50),
    mean,
    min: s[0]!,
    p10: percentile(s, 10),
    p90: percentile(s, 90),
    max: s[n - 1]!,
    stddev: Math.sqrt(variance),
  };
}

/** Every field multiplied by `k` (ms → µs), except n. */
export function scaleSummary(s: Summary, k: number): Summary {
  return { n: s.n, median: s.median * k, mean: s.mean * k, min: s.min * k, p10: s.p10 * k, p90: s.p90 * k, max: s.max * k, stddev: s.stddev * k };
}
