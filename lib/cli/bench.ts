// `mla-cuda bench [suite...] [flags]`: measures the device's ceilings, times the suites'
// cases and reports time, TB/s, TFLOP/s and the share of each ceiling, as a table, JSON and
// an SVG roofline. Everything that touches the device comes in through BenchDeps, so tests
// drive the command in-process without a GPU.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckFailedError, CheckLedger } from '../bench/check.js';
import { resolveCeilings, loadCeilingsFile } from '../bench/ceilings.js';
import type { CeilingValues } from '../bench/ceilings.js';
import type { Ceilings } from '../bench/metrics.js';
import { deviceMeta, formatCeilings, formatTable, gitCommit, packageInfo, REPORT_SCHEMA, reportJson, resultFileStem } from '../bench/report.js';
import type { BenchReport } from '../bench/report.js';
import { eventTimer, measureCase, runCase } from '../bench/runner.js';
import type { CaseResult, RunnerEnv, RunnerOptions } from '../bench/runner.js';
import { isSuiteName, loadSuite, SUITE_NAMES, SuiteUnavailableError } from '../bench/suites.js';
import { rooflineSvg } from '../bench/svg.js';
import type { BenchCase, BenchSuite } from '../bench/types.js';
import { buildInfo, deviceInfo, deviceStatus, setDevice, versionString } from '../runtime/cuda.js';
import type { BuildInfo, DeviceInfo, DeviceStatus } from '../runtime/cuda.js';
import { Stream } from '../runtime/stream.js';
import { gridFor, lastValue, parseFlags, parseGridAssignment, parseGridList, readGridFile, UsageError } from './args.js';
import type { FlagDef, GridSpec } from './args.js';

/** Shape flags that are shorthand for --grid key=...; suites read the keys they know. */
export const GRID_FLAGS = ['b', 'h', 'hkv', 'sq', 'sk', 'n', 't', 'm', 'k', 'd', 'tokens', 'chunk', 'op', 'shape', 'ctx', 'stage', 'causal', 'varlen', 'dtype', 'page', 'mib'] as const;

const FLAGS: Record<string, FlagDef> = {
  help: { type: 'boolean' },
  list: { type: 'boolean' },
  quick: { type: 'boolean' },
  warmup: { type: 'number' },
  repeats: { type: 'int' },
  filter: { type: 'string', repeatable: true },
  grid: { type: 'string', repeatable: true },
  'grid-file': { type: 'string' },
  json: { type: 'optional-string' },
  svg: { type: 'string' },
  'out-dir': { type: 'string' },
  'ceilings-file': { type: 'string' },
  'matmul-tflops': { type: 'number' },
  'bandwidth-tbs': { type: 'number' },
  device: { type: 'int' },
  'max-instances': { type: 'int' },
  'no-hold': { type: 'boolean' },
  ...Object.fromEntries(GRID_FLAGS.map((k): [string, FlagDef] => [k, { type: 'string', repeatable: true }])),
};

export const DEFAULTS = { warmupMs: 100, repeats: 50, quickWarmupMs: 20, quickRepeats: 10 } as const;

export interface BenchArgs {
  help: boolean;
  list: boolean;
  /** Suites named on the command line; empty means every suite this build has. */
  suites: string[];
  quick: boolean;
  warmupMs: number;
  repeats: number;
  filters: string[];
  grid: GridSpec;
  /** File for the JSON report; '-' is stdout. */
  json?: string | undefined;
  svg?: string | undefined;
  /** Directory for <date>-<device>.json and .svg (e.g. bench/results). */
  outDir?: string | undefined;
  ceilingsFile?: string | undefined;
  matmulTFlops?: number | undefined;
  bandwidthTBs?: number | undefined;
  device: number;
  maxInstances?: number | undefined;
  /** Queue runs without holding the stream (--no-hold). */
  noHold: boolean;
}

export const BENCH_USAGE = `usage: mla-cuda bench [suite...] [flags]

Suites: ${SUITE_NAMES.join(', ')} (default: every suite this build has).

Shapes (comma-separated values; 4k = 4096; each suite reads the keys it knows):
  --b 128 --h 16,128 --hkv 1 --sq 1,2 --sk 4096,8192    decode / prefill shapes
  --n, --t, --m, --k, --d, --tokens, --chunk, --op, --shape, --ctx, --stage, --causal, --varlen,
  --dtype, --page, --mib    (decode: b h sq sk varlen causal dtype; prefill: n h dtype chunk;
                            rope: op t h dtype; linear: t shape dtype; layer: b ctx stage; copy: mib dtype)
  --grid key=v1,v2          any key; --grid decode.sk=4k applies to one suite only
  --grid-file grid.json     {"b": [128], "decode": {"sk": [4096, 8192]}}; flags override it
  --quick                   fewer, smaller shapes, ${DEFAULTS.quickRepeats} repeats, ${DEFAULTS.quickWarmupMs} ms warm-up
  --filter TEXT             only cases whose "suite name" contains TEXT (repeatable: any matches)
  --list                    print the cases and exit (needs no GPU)

Timing:
  --warmup MS               warm-up per case in MILLISECONDS of device time (default ${DEFAULTS.warmupMs})
  --repeats N               timed runs per case; the median is reported (default ${DEFAULTS.repeats})
  --device N                CUDA device index (default 0)
  --max-instances N         cap on input sets rotated to get past L2 (default 256)
  --no-hold                 time runs as they are queued, host gaps included (by default the stream
                            is held while a batch is queued, so times are the device's alone;
                            profilers that serialize launches, such as ncu, need this flag)

Ceilings (measured on the device unless given):
  --matmul-tflops N         matmul rate, e.g. from bench/torch_ceilings.py (else our linear suite)
  --bandwidth-tbs N         memory bandwidth (else a 1 GiB device-to-device copy)
  --ceilings-file FILE      reuse ceilings from a JSON file or an earlier --json report

Output:
  --json [FILE]             JSON report to FILE, or to stdout with no FILE or "-" (the table then goes to stderr)
  --svg FILE                roofline chart (standalone SVG)
  --out-dir DIR             also write DIR/<date>-<device>.json and .svg (e.g. --out-dir bench/results)

Exit codes: 0 ok, 1 bad arguments or a failed case, 2 no usable GPU.`;

function positive(name: string, v: number | undefined, integer: boolean): number | undefined {
  if (v !== undefined && !(v > 0) && !(name === 'warmup' && v === 0)) {
    throw new UsageError(`--${name} must be ${name === 'warmup' ? 'zero or more' : 'positive'}${integer ? ' (an integer)' : ''}, got ${v}`);
  }
  return v;
}

/** Parses `bench` arguments; throws UsageError with a message fit for the user. */
export function parseBenchArgs(argv: readonly string[]): BenchArgs {
  // `--json decode` means JSON to stdout for the decode suite; `--json out.json` names a file.
  const p = parseFlags(argv, FLAGS, (tok) => !isSuiteName(tok));
  for (const s of p.positionals) {
    if (!isSuiteName(s)) {
      const near = SUITE_NAMES.find((n) => n.startsWith(s.slice(0, 3)));
      throw new UsageError(`unknown suite "${s}" (suites: ${SUITE_NAMES.join(', ')})${near ? `; did you mean ${near}?` : ''}`);
    }
  }
  const num = (name: string): number | undefined => {
    const v = lastValue(p, name);
    return typeof v === 'number' ? v : undefined;
  };
  const str = (name: string): string | undefined => {
    const v = lastValue(p, name);
    return typeof v === 'string' ? v : undefined;
  };
  const quick = lastValue(p, 'quick') === true;
  const gridFile = str('grid-file');
  const grid: GridSpec = gridFile ? readGridFile(gridFile, SUITE_NAMES) : { all: {}, bySuite: {} };
  for (const k of GRID_FLAGS) {
    const vals = p.values.get(k);
    if (vals) grid.all[k] = vals.flatMap((v) => parseGridList(k, String(v)));
  }
  for (const g of p.values.get('grid') ?? []) {
    const a = parseGridAssignment(String(g), SUITE_NAMES);
    if (a.suite) (grid.bySuite[a.suite] ??= {})[a.key] = a.values;
    else grid.all[a.key] = a.values;
  }
  const device = num('device') ?? 0;
  if (device < 0) throw new UsageError(`--device must be 0 or more, got ${device}`);
  return {
    help: lastValue(p, 'help') === true,
    list: lastValue(p, 'list') === true,
    suites: [...new Set(p.positionals)],
    quick,
    warmupMs: positive('warmup', num('warmup'), false) ?? (quick ? DEFAULTS.quickWarmupMs : DEFAULTS.warmupMs),
    repeats: positive('repeats', num('repeats'), true) ?? (quick ? DEFAULTS.quickRepeats : DEFAULTS.repeats),
    filters: (p.values.get('filter') ?? []).map(String),
    grid,
    json: str('json'),
    svg: str('svg'),
    outDir: str('out-dir'),
    ceilingsFile: str('ceilings-file'),
    matmulTFlops: positive('matmul-tflops', num('matmul-tflops'), false),
    bandwidthTBs: positive('bandwidth-tbs', num('bandwidth-tbs'), false),
    device,
    maxInstances: positive('max-instances', num('max-instances'), true),
    noHold: lastValue(p, 'no-hold') === true,
  };
}

/** A case is kept when no filter is given or any filter is a substring of "suite name". */
export function matchesFilters(suite: string, c: BenchCase, filters: readonly string[]): boolean {
  const label = `${suite} ${c.name}`;
  return filters.length === 0 || filters.some((f) => label.includes(f) || `${suite}/${c.name}`.includes(f));
}

/** The environment one bench run needs on a device; disposed at the end. */
export interface BenchDevice {
  info: DeviceInfo;
  env: RunnerEnv;
  dispose(): void;
}

export interface BenchDeps {
  stdout(text: string): void;
  stderr(text: string): void;
  /** Progress may redraw one line (stderr is a TTY and not CI). */
  interactive: boolean;
  status(): DeviceStatus;
  build(): BuildInfo;
  /** Selects the device and prepares a stream and timer on it (holding the stream unless told not to). */
  openDevice(index: number, opts: { hold: boolean }): BenchDevice;
  loadSuite(name: string): Promise<BenchSuite>;
  writeFile(path: string, text: string): void;
  now(): Date;
  commit(): { commit: string | null; dirty: boolean | null };
  /** The command line as typed, for the report. */
  commandLine: string;
}

function openDevice(index: number, opts: { hold: boolean }): BenchDevice {
  setDevice(index);
  const info = deviceInfo(index);
  const stream = new Stream();
  return {
    info,
    env: { stream, timer: eventTimer(stream, opts), l2Bytes: info.l2CacheBytes, freeBytes: () => deviceInfo(index).freeMemory },
    dispose: () => stream.dispose(),
  };
}

function shellQuote(a: string): string {
  return /^[\w./=:,@+-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

export function defaultBenchDeps(): BenchDeps {
  return {
    stdout: (t) => void process.stdout.write(t),
    stderr: (t) => void process.stderr.write(t),
    interactive: Boolean(process.stderr.isTTY) && !/^(1|true)$/i.test(process.env['CI'] ?? ''),
    status: deviceStatus,
    build: buildInfo,
    openDevice,
    loadSuite,
    writeFile: (path, text) => writeFileSync(path, text),
    now: () => new Date(),
    commit: () => gitCommit(),
    commandLine: ['mla-cuda', ...process.argv.slice(2)].map(shellQuote).join(' '),
  };
}

/** One line per case on a pipe; a redrawn status line on a terminal. */
class Progress {
  #done = 0;
  readonly deps: BenchDeps;
  readonly total: number;

  constructor(deps: BenchDeps, total: number) {
    this.deps = deps;
    this.total = total;
  }

  start(label: string): void {
    if (this.deps.interactive) this.deps.stderr(`\r\x1b[K[${this.#done + 1}/${this.total}] ${label} ...`);
  }

  finish(r: CaseResult): void {
    this.#done++;
    const what = r.run ? `${fmtUs(r.run.us.median)} µs` : `error: ${r.error ?? 'not measured'}`;
    const line = `[${this.#done}/${this.total}] ${r.suite} ${r.name}: ${what}`;
    // On a terminal the line is redrawn by the next case, except the last one and failures.
    const keep = !this.deps.interactive || this.#done === this.total || r.error !== undefined;
    this.deps.stderr(`${this.deps.interactive ? '\r\x1b[K' : ''}${line}${keep ? '\n' : ''}`);
  }
}

function fmtUs(us: number): string {
  return us >= 100 ? us.toFixed(0) : us.toFixed(2);
}

export const NO_GPU_EXIT = 2;

/** The message `bench` gives when no GPU can be used. */
export function noGpuMessage(s: DeviceStatus): string {
  // The addon's reason and fix without its own doctor pointer: the next line has one.
  const why = s.reason ? `${s.reason}. Fix: ${s.fix ?? ''}` : s.message;
  return `mla-cuda bench: no usable CUDA device (${s.code}${s.cudaError ? `, ${s.cudaError}` : ''}): ${why}\n` +
    'Benchmarks time kernels on an NVIDIA GPU and cannot run here. Run `npx mla-cuda doctor` to see what is missing and how to fix it;\n' +
    '`mla-cuda bench --list` shows the cases without a GPU.\n';
}

interface LoadedSuite {
  suite: BenchSuite;
  cases: BenchCase[];
}

/** The suite's cases for these arguments; a grid the suite rejects is a usage error. */
function makeCases(suite: BenchSuite, args: BenchArgs, smCount?: number): BenchCase[] {
  let cases: BenchCase[];
  try {
    cases = suite.cases({ quick: args.quick, grid: gridFor(args.grid, suite.name), smCount });
  } catch (err) {
    throw new UsageError(`suite ${suite.name}: cannot make its cases from the given grid: ${err instanceof Error ? err.message : String(err)}`);
  }
  return cases.filter((c) => matchesFilters(suite.name, c, args.filters));
}

/** Loads the suites to run; a missing suite is an error when named, a note when defaulted. */
async function loadSuites(args: BenchArgs, deps: BenchDeps, unavailable: BenchReport['unavailable']): Promise<LoadedSuite[]> {
  const names = args.suites.length > 0 ? args.suites : [...SUITE_NAMES];
  const out: LoadedSuite[] = [];
  for (const name of names) {
    let suite: BenchSuite;
    try {
      suite = await deps.loadSuite(name);
    } catch (err) {
      if (!(err instanceof SuiteUnavailableError) || args.suites.length > 0) throw err;
      unavailable.push({ suite: name, reason: err.message });
      continue;
    }
    out.push({ suite, cases: makeCases(suite, args) });
  }
  return out;
}

function listCases(loaded: readonly LoadedSuite[], unavailable: BenchReport['unavailable']): string {
  const lines: string[] = [];
  for (const { suite, cases } of loaded) {
    lines.push(`${suite.name}: ${suite.description} (${cases.length} case${cases.length === 1 ? '' : 's'})`);
    for (const c of cases) lines.push(`  ${c.name}   ${(c.footprintBytes / 2 ** 20).toFixed(1)} MiB, ${(c.flops / 1e9).toFixed(3)} GFLOP, ${(c.bytes / 1e6).toFixed(3)} MB`);
  }
  for (const u of unavailable) lines.push(`(${u.reason})`);
  return `${lines.join('\n')}\n`;
}

/** Runs `mla-cuda bench`; returns the exit code. */
export async function runBench(argv: readonly string[], deps: BenchDeps = defaultBenchDeps()): Promise<number> {
  let args: BenchArgs;
  const unavailable: BenchReport['unavailable'] = [];
  let loaded: LoadedSuite[];
  let ceilingFile: { path: string; values: CeilingValues } | undefined;
  try {
    args = parseBenchArgs(argv);
    if (args.help) {
      deps.stdout(`${BENCH_USAGE}\n`);
      return 0;
    }
    if (args.ceilingsFile) ceilingFile = { path: args.ceilingsFile, values: loadCeilingsFile(args.ceilingsFile) };
    loaded = await loadSuites(args, deps, unavailable);
  } catch (err) {
    deps.stderr(`mla-cuda bench: ${err instanceof Error ? err.message : String(err)}\n`);
    if (err instanceof UsageError) deps.stderr('Run `mla-cuda bench --help` for the flags.\n');
    return 1;
  }
  if (args.list) {
    deps.stdout(listCases(loaded, unavailable));
    return 0;
  }
  const status = deps.status();
  if (!status.ok) {
    deps.stderr(noGpuMessage(status));
    return NO_GPU_EXIT;
  }
  if (deps.build().emulated) {
    // The emulated device checks results; its times would only mislead.
    deps.stderr('mla-cuda bench: the emulated device is in use (MLA_CUDA_DEVICE): it runs the kernels on the CPU for ' +
      'correctness and its times mean nothing. Benchmark on an NVIDIA GPU with MLA_CUDA_DEVICE unset.\n');
    return NO_GPU_EXIT;
  }
  const total = loaded.reduce((n, l) => n + l.cases.length, 0);
  if (total === 0) {
    deps.stderr(`mla-cuda bench: no cases to run${args.filters.length ? ` (no case matches --filter ${args.filters.join(', ')})` : ''}\n`);
    return 1;
  }

  let dev: BenchDevice;
  try {
    dev = deps.openDevice(args.device, { hold: !args.noHold });
  } catch (err) {
    deps.stderr(`mla-cuda bench: cannot use device ${args.device} (${status.deviceCount} visible): ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  try {
    const opts: RunnerOptions = { warmupMs: args.warmupMs, repeats: args.repeats, maxInstances: args.maxInstances };
    const log = (m: string): void => deps.stderr(`${m}\n`);
    // Footprints count split-KV workspaces, which scale with this device's SM count.
    for (const l of loaded) l.cases = makeCases(l.suite, args, dev.info.smCount);
    // Check before timing: each kernel path is compared with the float64 reference once.
    const checks = new CheckLedger({ onResult: (r) => log(`${r.ok ? 'check ok' : 'CHECK FAILED'}: ${r.message}`) });
    let linear: BenchSuite | undefined = loaded.find((l) => l.suite.name === 'linear')?.suite;
    if (!linear && args.matmulTFlops === undefined && ceilingFile?.values.matmulTFlops === undefined) {
      linear = await deps.loadSuite('linear').catch(() => undefined);
    }
    let ceilings: Ceilings;
    try {
      ceilings = resolveCeilings(
        { bandwidthTBs: args.bandwidthTBs, matmulTFlops: args.matmulTFlops },
        ceilingFile,
        {
          time: (c) => {
            const failed = checks.firstFailure(c.checks);
            if (failed) throw new CheckFailedError(failed);
            return runCase(c, dev.env, opts);
          },
          freeBytes: dev.env.freeBytes(), linear, log,
        },
      );
    } catch (err) {
      deps.stderr(`mla-cuda bench: cannot measure the ceilings: ${err instanceof Error ? err.message : String(err)}\n`);
      return 1;
    }
    log(formatCeilings(ceilings));

    const progress = new Progress(deps, total);
    const results: CaseResult[] = [];
    for (const { suite, cases } of loaded) {
      for (const c of cases) {
        progress.start(`${suite.name} ${c.name}`);
        const r = measureCase(suite.name, c, dev.env, opts, ceilings, checks);
        progress.finish(r);
        results.push(r);
      }
    }

    const build = deps.build();
    const report: BenchReport = {
      schema: REPORT_SCHEMA,
      meta: {
        package: (({ name, version }) => ({ name, version }))(packageInfo()),
        ...deps.commit(),
        date: deps.now().toISOString(),
        command: deps.commandLine,
        node: process.version,
        platform: `${process.platform}-${process.arch}`,
        device: deviceMeta(dev.info),
        driverVersion: versionString(status.driverVersion),
        runtimeVersion: versionString(status.runtimeVersion),
        build: { cudaArchitectures: build.cudaArchitectures, nvccVersion: build.nvccVersion },
        settings: { warmupMs: args.warmupMs, repeats: args.repeats, quick: args.quick, filters: args.filters, timing: `CUDA events per run, ${args.noHold ? 'queued as they come (host gaps included)' : 'queued under a stream hold (device time alone)'}, inputs rotated past 2×L2` },
      },
      ceilings,
      results,
      unavailable,
    };
    const table = formatTable(report);
    let code = results.some((r) => r.error !== undefined) ? 1 : 0;
    const write = (path: string, text: string, what: string): void => {
      try {
        deps.writeFile(path, text);
        log(`wrote ${what} to ${path}`);
      } catch (err) {
        deps.stderr(`mla-cuda bench: cannot write ${what} to ${path}: ${err instanceof Error ? err.message : String(err)}\n`);
        code = 1;
      }
    };
    if (args.json === '-') {
      deps.stderr(table);
      deps.stdout(reportJson(report));
    } else {
      deps.stdout(table);
      if (args.json) write(args.json, reportJson(report), 'the JSON report');
    }
    if (args.svg) write(args.svg, rooflineSvg(report), 'the roofline');
    if (args.outDir) {
      const stem = join(args.outDir, resultFileStem(report.meta));
      write(`${stem}.json`, reportJson(report), 'the JSON report');
      write(`${stem}.svg`, rooflineSvg(report), 'the roofline');
    }
    return code;
  } finally {
    dev.dispose();
  }
}
