// Name → benchmark suite. Imported statically: every suite ships in this package, so a suite
// that fails to load is a build error caught by tsc and the tests, not something to report at
// run time.
import { suite as copy } from './copy.js';
import { suite as decode } from './decode.js';
import { suite as layer } from './layer.js';
import { suite as linear } from './linear.js';
import { suite as prefill } from './prefill.js';
import { suite as rope } from './rope.js';
import { suite as sparse } from './sparse.js';
import type { BenchSuite } from './types.js';

/** A suite the CLI cannot run: an unknown name (or, with injected deps in tests, a missing one). */
export class SuiteUnavailableError extends Error {
  readonly suite: string;
  constructor(suite: string, why: string) {
    super(`suite "${suite}" is not available in this build: ${why}`);
    this.name = 'SuiteUnavailableError';
    this.suite = suite;
  }
}

/** Every suite the CLI knows, in the order `bench` runs them by default. */
export const SUITES: Readonly<Record<string, BenchSuite>> = { decode, sparse, prefill, rope, linear, layer, copy };

export const SUITE_NAMES: readonly string[] = Object.keys(SUITES);

export function isSuiteName(name: string): boolean {
  return Object.hasOwn(SUITES, name);
}

/** The suite called `name`; rejects with SuiteUnavailableError for unknown names. */
export async function loadSuite(name: string): Promise<BenchSuite> {
  const suite = isSuiteName(name) ? SUITES[name] : undefined;
  if (!suite) throw new SuiteUnavailableError(name, `unknown suite (known: ${SUITE_NAMES.join(', ')})`);
  return suite;
}
