// Command-line parsing for the subcommands: a small flag table per command, `--flag value`
// and `--flag=value`, and the bench shape grids (flags, --grid key=v1,v2, --grid-file).
import { readFileSync } from 'node:fs';

/** A mistake on the command line; the CLI prints the message and exits 1. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export type FlagType = 'boolean' | 'string' | 'number' | 'int' | 'optional-string';

export interface FlagDef {
  type: FlagType;
  /** May be given several times (values accumulate). */
  repeatable?: boolean;
}

export type FlagValue = string | number | boolean;

export interface ParsedFlags {
  values: Map<string, FlagValue[]>;
  positionals: string[];
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length]![b.length]!;
}

/** " (did you mean --x?)" for the closest known name within two edits, else "". */
export function suggest(name: string, known: readonly string[], prefix = '--'): string {
  let best: string | undefined;
  let bestD = 3;
  for (const k of known) {
    const dist = editDistance(name, k);
    if (dist < bestD) [best, bestD] = [k, dist];
  }
  return best ? ` (did you mean ${prefix}${best}?)` : '';
}

function convert(flag: string, type: FlagType, raw: string): FlagValue {
  if (type === 'number' || type === 'int') {
    const n = raw.trim() === '' ? Number.NaN : Number(raw);
    if (!Number.isFinite(n) || (type === 'int' && !Number.isInteger(n))) {
      throw new UsageError(`--${flag} needs ${type === 'int' ? 'an integer' : 'a number'}, got "${raw}"`);
    }
    return n;
  }
  return raw;
}

/**
 * Parses argv against `defs`. An 'optional-string' flag takes the next token as its value
 * only when `takesValue(token)` says so (e.g. `--json out.json` vs `--json decode`).
 */
export function parseFlags(argv: readonly string[], defs: Readonly<Record<string, FlagDef>>, takesValue: (token: string) => boolean = () => true): ParsedFlags {
  const values = new Map<string, FlagValue[]>();
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!tok.startsWith('--') || tok === '-') {
      if (tok.startsWith('-') && tok !== '-') throw new UsageError(`unknown option ${tok}; options are spelled with two dashes, e.g. --help`);
      positionals.push(tok);
      continue;
    }
    const eq = tok.indexOf('=');
    const name = tok.slice(2, eq < 0 ? undefined : eq);
    const def = Object.hasOwn(defs, name) ? defs[name] : undefined;
    if (!def) throw new UsageError(`unknown flag --${name}${suggest(name, Object.keys(defs))}`);
    let value: FlagValue;
    if (def.type === 'boolean') {
      if (eq >= 0) {
        const raw = tok.slice(eq + 1);
        if (!/^(true|false|1|0)$/.test(raw)) throw new UsageError(`--${name} is a switch; give it no value (or =true / =false), got "${raw}"`);
        value = raw === 'true' || raw === '1';
      } else value = true;
    } else if (eq >= 0) {
      value = convert(name, def.type, tok.slice(eq + 1));
    } else if (def.type === 'optional-string') {
      const next = argv[i + 1];
      value = next !== undefined && (next === '-' || !next.startsWith('-')) && takesValue(next) ? (i++, next) : '-';
    } else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith('--') && def.type === 'string')) throw new UsageError(`--${name} needs a value`);
      value = convert(name, def.type, next);
      i++;
    }
    const list = values.get(name) ?? [];
    if (list.length > 0 && !def.repeatable) throw new UsageError(`--${name} given more than once`);
    list.push(value);
    values.set(name, list);
  }
  return { values, positionals };
}

export function lastValue(p: ParsedFlags, name: string): FlagValue | undefined {
  const v = p.values.get(name);
  return v?.[v.length - 1];
}

// ---- shape grids -------------------------------------------------------------------------

export type GridValue = number | string | boolean;
export type Grid = Record<string, GridValue[]>;

/** A grid for every suite, plus per-suite overrides (`--grid decode.b=64`, file sections). */
export interface GridSpec {
  all: Grid;
  bySuite: Record<string, Grid>;
}

/** One value: numbers (with k = 1024 and m = 1024² suffixes: 4k = 4096), true/false, or a string. */
export function parseGridValue(raw: string): GridValue {
  const s = raw.trim();
  if (s === 'true' || s === 'false') return s === 'true';
  const suffixed = /^(\d+)([kKmM])$/.exec(s);
  if (suffixed) return Number(suffixed[1]) * (suffixed[2]!.toLowerCase() === 'k' ? 1024 : 1024 * 1024);
  if (/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(s)) return Number(s);
  return s;
}

export function parseGridList(key: string, raw: string): GridValue[] {
  const parts = raw.split(',').map((p) => p.trim());
  if (parts.some((p) => p === '')) throw new UsageError(`grid "${key}": empty value in "${raw}" (use comma-separated values, e.g. 16,128)`);
  return parts.map(parseGridValue);
}

const GRID_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** "key=v1,v2" or "suite.key=v1,v2". */
export function parseGridAssignment(arg: string, suiteNames: readonly string[]): { suite?: string | undefined; key: string; values: GridValue[] } {
  const eq = arg.indexOf('=');
  if (eq <= 0) throw new UsageError(`--grid expects key=v1,v2 (e.g. --grid sk=4096,8192), got "${arg}"`);
  let key = arg.slice(0, eq).trim();
  let suite: string | undefined;
  const dot = key.indexOf('.');
  if (dot > 0) {
    suite = key.slice(0, dot);
    key = key.slice(dot + 1);
    if (!suiteNames.includes(suite)) throw new UsageError(`--grid ${arg}: unknown suite "${suite}"${suggest(suite, suiteNames, '')}`);
  }
  if (!GRID_KEY.test(key)) throw new UsageError(`--grid ${arg}: "${key}" is not a valid grid key`);
  return { suite, key, values: parseGridList(key, arg.slice(eq + 1)) };
}

function gridFromJson(obj: Record<string, unknown>, where: string): Grid {
  const grid: Grid = {};
  for (const [key, v] of Object.entries(obj)) {
    if (!GRID_KEY.test(key)) throw new UsageError(`${where}: "${key}" is not a valid grid key`);
    const list = Array.isArray(v) ? v : [v];
    if (list.length === 0) throw new UsageError(`${where}: "${key}" has no values`);
    for (const x of list) {
      if (!(typeof x === 'number' && Number.isFinite(x)) && typeof x !== 'string' && typeof x !== 'boolean') {
        throw new UsageError(`${where}: "${key}" values must be numbers, strings or booleans, got ${JSON.stringify(x)}`);
      }
    }
    grid[key] = list as GridValue[];
  }
  return grid;
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/**
 * A grid file is JSON: { "b": [128], "h": [16, 128] } applies to every suite; a key that is a
 * suite name with an object value, { "decode": { "sk": [4096] } }, applies to that suite only.
 */
export function parseGridJson(text: string, where: string, suiteNames: readonly string[]): GridSpec {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${where}: not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (!isObject(data)) throw new UsageError(`${where}: expected a JSON object of grid keys, e.g. {"b": [128], "h": [16, 128]}`);
  const spec: GridSpec = { all: {}, bySuite: {} };
  const shared: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(data)) {
    if (suiteNames.includes(k) && isObject(v)) spec.bySuite[k] = gridFromJson(v, `${where} (${k})`);
    else shared[k] = v;
  }
  spec.all = gridFromJson(shared, where);
  return spec;
}

export function readGridFile(path: string, suiteNames: readonly string[]): GridSpec {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`--grid-file ${path}: cannot read (${err instanceof Error ? err.message : String(err)})`);
  }
  return parseGridJson(text, `--grid-file ${path}`, suiteNames);
}

/** The grid one suite sees: shared keys, then its own keys on top. */
export function gridFor(spec: GridSpec, suite: string): Grid | undefined {
  const g = { ...spec.all, ...(spec.bySuite[suite] ?? {}) };
  return Object.keys(g).length > 0 ? g : undefined;
}
