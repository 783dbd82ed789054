// The report of one `mla-cuda bench` run: what was measured, on what, with which build, and
// the results, as JSON for machines and as a table for people.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { packageRoot } from '../native.js';
import type { DeviceInfo } from '../runtime/cuda.js';
import type { Ceilings, TimingResult } from './metrics.js';
import type { CaseResult } from './runner.js';

export const REPORT_SCHEMA = 'mla-cuda-bench/1';

export interface DeviceMeta {
  index: number;
  name: string;
  computeCapability: string;
  smCount: number;
  /** null where the driver does not report it. */
  clockMHz: number | null;
  memoryClockMHz: number | null;
  memoryBusWidthBits: number | null;
  /** memory clock · bus width · 2 (DDR): a datasheet-style lead, not a measurement. */
  theoreticalBandwidthTBs: number | null;
  totalMemoryBytes: number;
  l2CacheBytes: number;
  pciBusId: string;
}

export interface RunMeta {
  package: { name: string; version: string };
  /** git commit of the package source, or MLA_CUDA_COMMIT, or null. */
  commit: string | null;
  /** Tracked files differed from the commit (null when not a git checkout). */
  dirty: boolean | null;
  date: string;
  command: string;
  node: string;
  platform: string;
  device: DeviceMeta | null;
  driverVersion: string;
  runtimeVersion: string;
  build: { cudaArchitectures: string; nvccVersion: string };
  settings: { warmupMs: number; repeats: number; quick: boolean; filters: string[]; timing: string };
}

export interface BenchReport {
  schema: typeof REPORT_SCHEMA;
  meta: RunMeta;
  ceilings: Ceilings;
  results: CaseResult[];
  /** Suites asked for (or defaulted to) that this build cannot run, and why. */
  unavailable: { suite: string; reason: string }[];
}

export function reportJson(r: BenchReport): string {
  return `${JSON.stringify(r, null, 2)}\n`;
}

/** "2026-11-23-nvidia-h100-80gb-hbm3": the stem of bench/results/<date>-<device>.{json,svg}. */
export function resultFileStem(meta: RunMeta): string {
  const device = (meta.device?.name ?? 'no-device').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  return `${meta.date.slice(0, 10)}-${device}`;
}

/** Three significant digits, without exponent notation for the ranges benchmarks produce. */
export function fmtNum(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '-';
  const a = Math.abs(x);
  if (a === 0) return '0';
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  if (a >= 0.01) return x.toFixed(3);
  return x.toExponential(1);
}

const HEAD = ['suite', 'case', 'median µs', 'p10–p90 µs', 'host µs', 'TB/s', '% BW', 'TFLOP/s', '% MM', 'FLOP/B', '% roof'];

function timingCells(t: TimingResult, hostUs: number | undefined): string[] {
  return [
    fmtNum(t.us.median), `${fmtNum(t.us.p10)}–${fmtNum(t.us.p90)}`, fmtNum(hostUs), fmtNum(t.tbps), fmtNum(t.pctBandwidth),
    fmtNum(t.tflops), fmtNum(t.pctMatmul),
  ];
}

/** Rows of cells for the table: a row per case, plus a "main" row when runMain was timed. */
export function tableRows(results: readonly CaseResult[]): string[][] {
  const rows: string[][] = [];
  for (const r of results) {
    if (r.error !== undefined || !r.run) {
      rows.push([r.suite, r.name, `error: ${r.error ?? 'not measured'}`]);
      continue;
    }
    const note = (r.pastL2 === false ? ' *' : '') + (r.hold === 'expired' ? ' †' : '');
    rows.push([r.suite, r.name + note, ...timingCells(r.run, r.hostUs?.median), fmtNum(r.intensity), fmtNum(r.run.pctRoofline)]);
    if (r.main) rows.push(['', '  main kernel', ...timingCells(r.main, undefined), fmtNum(r.intensity), fmtNum(r.main.pctRoofline)]);
  }
  return rows;
}

/** Pads columns: text left-aligned, numbers right-aligned; a lone error cell spans the rest. */
export function formatRows(head: readonly string[], rows: readonly string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.filter((r) => r.length === head.length).map((r) => r[i]!.length)));
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i < 2 || cells.length !== head.length ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function formatCeilings(c: Ceilings): string {
  return [
    `memory bandwidth: ${c.bandwidthTBs === null ? 'unknown' : `${fmtNum(c.bandwidthTBs)} TB/s`} (${c.bandwidthSource})`,
    `matmul rate:      ${c.matmulTFlops === null ? 'unknown' : `${fmtNum(c.matmulTFlops)} TFLOP/s`} (${c.matmulSource})`,
  ].join('\n');
}

/** The whole human-readable report. */
export function formatTable(r: BenchReport): string {
  const d = r.meta.device;
  const lines = [
    `mla-cuda ${r.meta.package.version} bench on ${d ? `${d.name} (sm_${d.computeCapability.replace('.', '')}, ${d.smCount} SMs)` : 'no device'}, ` +
      `driver ${r.meta.driverVersion}, runtime ${r.meta.runtimeVersion}, commit ${r.meta.commit?.slice(0, 12) ?? 'unknown'}${r.meta.dirty ? ' (modified)' : ''}`,
    formatCeilings(r.ceilings),
    '',
    formatRows(HEAD, tableRows(r.results)),
  ];
  if (r.results.some((x) => x.pastL2 === false)) lines.push('', '* inputs of the rotation fit in 2×L2 (memory or instance cap): times may be cache hits');
  if (r.results.some((x) => x.hold === 'expired')) lines.push('† a stream hold timed out while runs were being queued: times may include waits for the host');
  if (r.results.some((x) => x.hold === 'unheld')) lines.push('(runs timed as they were queued, without a stream hold: times include waits for the host)');
  for (const u of r.unavailable) lines.push(`(${u.reason})`);
  lines.push('', `median of ${r.meta.settings.repeats} runs after ${r.meta.settings.warmupMs} ms warm-up, ${r.meta.settings.timing}; ` +
    'host µs: the JavaScript call that queues a run; % BW / % MM: share of the measured ceilings; % roof: share of min(BW · FLOP/B, MM)');
  return `${lines.join('\n')}\n`;
}

// ---- metadata ----------------------------------------------------------------------------

export interface PackageInfo {
  name: string;
  version: string;
  /** package.json "engines.node". */
  nodeEngines: string;
}

/** name, version and engines of the package this code belongs to. */
export function packageInfo(root: string = packageRoot): PackageInfo {
  try {
    const pkg: unknown = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
    const rec = typeof pkg === 'object' && pkg !== null ? (pkg as Record<string, unknown>) : {};
    const engines = typeof rec['engines'] === 'object' && rec['engines'] !== null ? (rec['engines'] as Record<string, unknown>) : {};
    return { name: String(rec['name'] ?? 'mla-cuda'), version: String(rec['version'] ?? 'unknown'), nodeEngines: String(engines['node'] ?? '') };
  } catch {
    return { name: 'mla-cuda', version: 'unknown', nodeEngines: '' };
  }
}

/**
 * The commit the package was built from: `git rev-parse HEAD` when the package root is the top
 * of a git checkout (not when it merely sits inside someone else's repository, as under
 * node_modules), else $MLA_CUDA_COMMIT, else null.
 */
export function gitCommit(root: string = packageRoot, env: NodeJS.ProcessEnv = process.env): { commit: string | null; dirty: boolean | null } {
  const git = (...args: string[]): string | null => {
    const r = spawnSync('git', ['-C', root, ...args], { encoding: 'utf8', timeout: 5000 });
    return r.status === 0 ? r.stdout.trim() : null;
  };
  const top = git('rev-parse', '--show-toplevel');
  if (top && resolve(top) === resolve(root)) {
    const head = git('rev-parse', 'HEAD');
    if (head) return { commit: head, dirty: git('status', '--porcelain', '--untracked-files=no') !== '' };
  }
  return { commit: env['MLA_CUDA_COMMIT'] || null, dirty: null };
}

/** Device facts for a report; clocks the driver does not report (0) become null. */
export function deviceMeta(d: DeviceInfo): DeviceMeta {
  const known = (x: number): number | null => (x > 0 ? x : null);
  return {
    index: d.index, name: d.name, computeCapability: d.computeCapability, smCount: d.smCount,
    clockMHz: d.clockKHz > 0 ? d.clockKHz / 1000 : null,
    memoryClockMHz: d.memoryClockKHz > 0 ? d.memoryClockKHz / 1000 : null,
    memoryBusWidthBits: known(d.memoryBusWidth),
    theoreticalBandwidthTBs: d.memoryClockKHz > 0 && d.memoryBusWidth > 0 ? (d.memoryClockKHz * 1e3 * 2 * (d.memoryBusWidth / 8)) / 1e12 : null,
    totalMemoryBytes: d.totalMemory, l2CacheBytes: d.l2CacheBytes, pciBusId: d.pciBusId,
  };
}
