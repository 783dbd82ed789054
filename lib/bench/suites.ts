// Name → loader of every benchmark suite. Suites are imported lazily and by computed
// specifier, so a suite whose file is missing from this build (or fails to load) is reported
// as unavailable instead of breaking the CLI, and type-checking does not need every file.
import { fileURLToPath } from 'node:url';
import type { BenchSuite } from './types.js';

export class SuiteUnavailableError extends Error {
  readonly suite: string;
  constructor(suite: string, why: string) {
    super(`suite "${suite}" is not available in this build: ${why}`);
    this.name = 'SuiteUnavailableError';
    this.suite = suite;
  }
}

function isSuite(x: unknown): x is BenchSuite {
  if (typeof x !== 'object' || x === null) return false;
  const s = x as Partial<Record<keyof BenchSuite, unknown>>;
  return typeof s.name === 'string' && typeof s.cases === 'function';
}

/** Imports `lib/bench/<file>.js` and returns its exported `suite` (exported for tests). */
export async function importSuiteFile(name: string, file: string): Promise<BenchSuite> {
  const url = new URL(`./${file}.js`, import.meta.url);
  let mod: unknown;
  try {
    mod = await import(url.href);
  } catch (err) {
    // Only the suite file itself missing means "not written yet"; a missing import inside it
    // (or any other failure) is a real error and is reported as such.
    const message = err instanceof Error ? err.message : String(err);
    const missing = /Cannot find module/i.test(message) && message.includes(fileURLToPath(url));
    throw new SuiteUnavailableError(name, missing ? `lib/bench/${file}.ts is not part of it yet` : `loading lib/bench/${file} failed (${message})`);
  }
  const suite = typeof mod === 'object' && mod !== null && 'suite' in mod ? mod.suite : undefined;
  if (!isSuite(suite)) throw new SuiteUnavailableError(name, `lib/bench/${file} does not export a \`suite\` (BenchSuite)`);
  return suite;
}

/** Every suite name the CLI knows, in the order `bench` runs them by default. */
export const SUITES: Readonly<Record<string, () => Promise<BenchSuite>>> = {
  decode: () => importSuiteFile('decode', 'decode'),
  sparse: () => importSuiteFile('sparse', 'sparse'),
  prefill: () => importSuiteFile('prefill', 'prefill'),
  rope: () => importSuiteFile('rope', 'rope'),
  linear: () => importSuiteFile('linear', 'linear'),
  layer: () => importSuiteFile('layer', 'layer'),
  copy: () => importSuiteFile('copy', 'copy'),
};

export const SUITE_NAMES: readonly string[] = Object.keys(SUITES);

export function isSuiteName(name: string): boolean {
  return Object.hasOwn(SUITES, name);
}

/** Loads a suite; throws SuiteUnavailableError for unknown names and missing files. */
export async function loadSuite(name: string): Promise<BenchSuite> {
  const loader = isSuiteName(name) ? SUITES[name] : undefined;
  if (!loader) throw new SuiteUnavailableError(name, `unknown suite (known: ${SUITE_NAMES.join(', ')})`);
  return loader();
}
