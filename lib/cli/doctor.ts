// `mla-cuda doctor`: what a user runs when something is wrong. It gathers the facts (Node,
// package, addon build, driver, GPUs), checks each against what the package needs, and
// prints the exact command that fixes every problem found. `mla-cuda info` dumps the raw facts.
import { packageInfo } from '../bench/report.js';
import type { PackageInfo } from '../bench/report.js';
import { tryNative } from '../native.js';
import { archSupports, buildInfo, deviceStatus, devices, versionString } from '../runtime/cuda.js';
import type { BuildInfo, DeviceInfo, DeviceStatus } from '../runtime/cuda.js';
import { lastValue, parseFlags, UsageError } from './args.js';

export interface DoctorFacts {
  /** process.version, e.g. "v20.20.2". */
  node: string;
  package: PackageInfo;
  build: BuildInfo;
  napiVersion: number | null;
  status: DeviceStatus;
  devices: DeviceInfo[];
  env: Record<string, string>;
}

export type Severity = 'ok' | 'warning' | 'error' | 'info';

export interface Check {
  name: string;
  severity: Severity;
  detail: string;
  /** The command or step that fixes it. */
  fix?: string | undefined;
}

export interface DoctorReport {
  facts: DoctorFacts;
  checks: Check[];
  /** No check is an error. */
  ok: boolean;
  /** A GPU can run the kernels. */
  gpuUsable: boolean;
}

// ---- semver ranges (enough for package.json "engines") -------------------------------------

function parseVersion(v: string): [number, number, number] | null {
  const m = /^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2] ?? 0), Number(m[3] ?? 0)] : null;
}

function cmp(a: readonly number[], b: readonly number[]): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

/** Does `version` satisfy an npm range like "^20.17.0 || >=22.9.0"? null when it cannot tell. */
export function satisfiesRange(version: string, range: string): boolean | null {
  if (range.trim() === '' || range.trim() === '*') return true;
  const v = parseVersion(version);
  if (!v) return null;
  let understood = true;
  const sets = range.split('||').map((set) => set.trim().split(/\s+/).filter(Boolean).every((comp) => {
    const m = /^(\^|~|>=|<=|>|<|=)?(v?\d+(?:\.\d+){0,2})$/.exec(comp);
    if (!m) {
      understood = false;
      return false;
    }
    const op = m[1] ?? '=';
    const w = parseVersion(m[2]!)!;
    const c = cmp(v, w);
    switch (op) {
      case '^': return c >= 0 && (w[0] > 0 ? v[0] === w[0] : v[1] === w[1]);
      case '~': return c >= 0 && v[0] === w[0] && v[1] === w[1];
      case '>=': return c >= 0;
      case '<=': return c <= 0;
      case '>': return c > 0;
      case '<': return c < 0;
      default: return c === 0;
    }
  }));
  if (sets.some(Boolean)) return true;
  return understood ? false : null;
}

// ---- checks -------------------------------------------------------------------------------

/** Oldest Linux driver branch that runs a CUDA major version (NVIDIA's compatibility table; minDriverBranch in csrc/runtime/no_device.h is the same). */
export function minDriverFor(runtimeVersion: number): string {
  const major = Math.floor(runtimeVersion / 1000);
  if (major >= 13) return '580';
  if (major === 12) return '525';
  if (major === 11) return '450';
  return 'a current';
}

/** CUDA errors that mean the driver, not the GPU, is the problem. */
const DRIVER_ERRORS = new Set(['cudaErrorInsufficientDriver', 'cudaErrorSystemDriverMismatch']);

// Only for a status without the addon's explanation (an addon older than this code).
const NO_DEVICE_FALLBACK_FIX = 'check that `nvidia-smi -L` lists a GPU and that the driver supports the CUDA runtime above';

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

/** Every check, in the order a user should fix them. */
export function diagnose(f: DoctorFacts): Check[] {
  const checks: Check[] = [];
  const okNode = satisfiesRange(f.node, f.package.nodeEngines);
  checks.push(okNode === false
    ? { name: 'node', severity: 'error', detail: `Node ${f.node} does not satisfy ${f.package.name}'s engines "${f.package.nodeEngines}"`, fix: 'install Node.js 20.17 or newer in the 20 line, or 22.9 or newer (e.g. `nvm install 22`)' }
    : { name: 'node', severity: 'ok', detail: `Node ${f.node}${f.package.nodeEngines ? ` (package needs ${f.package.nodeEngines})` : ''}` });

  const b = f.build;
  if (!b.addonLoaded) {
    checks.push({
      name: 'addon', severity: 'error',
      detail: `${f.package.name} ${f.package.version}: the native addon is not built or cannot load: ${b.addonError ?? 'unknown error'}`,
      fix: '`npm rebuild mla-cuda` (needs CMake and a C++17 compiler, plus the CUDA toolkit for GPU support; pnpm/bun/--ignore-scripts installs must allow its install script)',
    });
    if (f.env['MLA_CUDA_ADDON']) checks.push({ name: 'addon path', severity: 'warning', detail: `MLA_CUDA_ADDON=${f.env['MLA_CUDA_ADDON']} overrides the addon location`, fix: 'unset MLA_CUDA_ADDON' });
    return checks;
  }
  checks.push({ name: 'addon', severity: 'ok', detail: `${f.package.name} ${f.package.version}, addon loaded${f.napiVersion ? ` (N-API ${f.napiVersion})` : ''}; ops: ${b.ops.join(', ') || 'none'}` });
  if (f.env['MLA_CUDA_ADDON']) checks.push({ name: 'addon path', severity: 'warning', detail: `using the addon at MLA_CUDA_ADDON=${f.env['MLA_CUDA_ADDON']}`, fix: 'unset MLA_CUDA_ADDON to use the package\'s own build' });

  if (!b.compiledWithCuda) {
    checks.push(b.cudaDisabled ? {
      name: 'cuda build', severity: 'error', detail: 'the addon was built without CUDA because MLA_CUDA_DISABLE was set: only the CPU reference backend works',
      fix: 'unset MLA_CUDA_DISABLE, then `npm rebuild mla-cuda`',
    } : {
      name: 'cuda build', severity: 'error', detail: 'the addon was built without CUDA (nvcc was not found when it was built): only the CPU reference backend works',
      fix: 'install the CUDA toolkit (12.x or 13.x), then `CUDACXX=/usr/local/cuda/bin/nvcc npm rebuild mla-cuda` (MLA_CUDA_REQUIRE=1 makes a missing nvcc fail the build instead)',
    });
    return checks;
  }
  if (b.emulated) {
    checks.push({
      name: 'device', severity: 'warning',
      detail: `emulated device (MLA_CUDA_DEVICE=${f.env['MLA_CUDA_DEVICE'] ?? ''}): the kernels run on the CPU, built with ${b.nvccVersion}; results are checked, times mean nothing`,
      fix: 'unset MLA_CUDA_DEVICE (or set it to `cuda`) on a machine with an NVIDIA GPU to use the GPU',
    });
    for (const d of f.devices) {
      checks.push({ name: `gpu ${d.index}`, severity: 'info', detail: `emulated device ${d.index}: ${d.name}, compute capability ${d.computeCapability}, ${gib(d.totalMemory)} limit` });
    }
    return checks;
  }
  checks.push({ name: 'cuda build', severity: 'ok', detail: `built with nvcc ${b.nvccVersion || 'unknown'} for architectures ${b.cudaArchitectures || 'unknown'}; CUDA runtime ${versionString(b.runtimeVersion)}` });

  const s = f.status;
  const rt = s.runtimeVersion || b.runtimeVersion;
  // Without a usable device the addon says why and what fixes it (csrc/runtime/no_device.h),
  // the words every GPU call throws; doctor prints the same, under the check they concern.
  const driverFault = !s.ok && (s.driverVersion === 0 || DRIVER_ERRORS.has(s.cudaError));
  if (driverFault) {
    checks.push({ name: 'driver', severity: 'error', detail: s.reason ?? s.message, fix: s.fix ?? NO_DEVICE_FALLBACK_FIX });
  } else if (s.driverVersion < rt) {
    // Same major, older minor: runs through minor-version compatibility.
    checks.push({
      name: 'driver', severity: 'warning',
      detail: `driver too old: it supports CUDA ${versionString(s.driverVersion)}, the addon uses CUDA runtime ${versionString(rt)} (runs through minor-version compatibility; PTX JIT may fail)`,
      fix: `update the NVIDIA driver to branch ${minDriverFor(rt)} or newer, or rebuild with a toolkit no newer than the driver: \`CUDACXX=/usr/local/cuda-${versionString(s.driverVersion)}/bin/nvcc npm rebuild mla-cuda\``,
    });
  } else {
    checks.push({ name: 'driver', severity: 'ok', detail: `driver supports CUDA ${versionString(s.driverVersion)} (runtime ${versionString(rt)})` });
  }

  if (!s.ok) {
    checks.push(driverFault
      ? { name: 'gpu', severity: 'info', detail: `no usable GPU (${s.code}): fix the driver first` }
      : { name: 'gpu', severity: 'error', detail: s.reason ?? `no usable GPU: ${s.message}`, fix: s.fix ?? NO_DEVICE_FALLBACK_FIX });
    return checks;
  }
  for (const d of f.devices) {
    const cc = `${d.major}${d.minor}`;
    const what = `GPU ${d.index}: ${d.name}, compute capability ${d.computeCapability}, ${gib(d.totalMemory)}, ${d.smCount} SMs`;
    if (d.major < 8) {
      checks.push({ name: `gpu ${d.index}`, severity: 'error', detail: `${what}: the kernels need compute capability 8.0 or newer (mma.sync, cp.async)`, fix: 'use an Ampere (sm_80) or newer GPU' });
    } else if (!archSupports(b.cudaArchitectures, d.major, d.minor)) {
      checks.push({ name: `gpu ${d.index}`, severity: 'error', detail: `${what}: architecture sm_${cc} is not in this build (${b.cudaArchitectures})`, fix: `\`CUDAARCHS=${cc} npm rebuild mla-cuda\`` });
    } else {
      checks.push({ name: `gpu ${d.index}`, severity: 'ok', detail: `${what}; sm_${cc} is in the build` });
      if (cc === '90' && !b.hopperDecode) {
        checks.push({ name: `gpu ${d.index}`, severity: 'warning', detail: 'this build has no sm_90a decode kernel (wgmma + TMA): decode runs the portable kernel', fix: '`CUDAARCHS=90 npm rebuild mla-cuda` (any architecture list with 90 builds it)' });
      }
    }
  }
  return checks;
}

export function doctorReport(facts: DoctorFacts): DoctorReport {
  const checks = diagnose(facts);
  return {
    facts, checks,
    ok: checks.every((c) => c.severity !== 'error'),
    gpuUsable: facts.status.ok && checks.every((c) => !(c.name.startsWith('gpu') && c.severity === 'error')),
  };
}

const MARK: Record<Severity, string> = { ok: '[ok]  ', warning: '[warn]', error: '[FAIL]', info: '[--]  ' };

export function formatDoctor(r: DoctorReport): string {
  const lines = ['mla-cuda doctor', ''];
  for (const c of r.checks) {
    lines.push(`${MARK[c.severity]} ${c.name}: ${c.detail}`);
    if (c.fix && c.severity !== 'ok') lines.push(`       fix: ${c.fix}`);
  }
  const problems = r.checks.filter((c) => c.severity === 'error').length;
  lines.push('');
  if (r.ok) lines.push('No problems found: GPU ops and `mla-cuda bench` can run.');
  else {
    lines.push(`${problems} problem${problems === 1 ? '' : 's'} found (fix them in the order above).`);
    if (!r.gpuUsable) lines.push('No usable GPU: the CPU reference backend still works; GPU ops, GPU tests and `mla-cuda bench` need one.');
  }
  return `${lines.join('\n')}\n`;
}

export interface DoctorDeps {
  stdout(text: string): void;
  stderr(text: string): void;
  facts(): DoctorFacts;
}

/** Collects the facts from this process; never throws. */
export function gatherFacts(): DoctorFacts {
  const status = deviceStatus();
  let list: DeviceInfo[] = [];
  try {
    list = status.ok ? devices() : [];
  } catch {
    list = [];
  }
  const env: Record<string, string> = {};
  for (const k of ['CUDA_VISIBLE_DEVICES', 'CUDAARCHS', 'CUDACXX', 'MLA_CUDA_ADDON']) {
    const v = process.env[k];
    if (v !== undefined) env[k] = v;
  }
  let napiVersion: number | null = null;
  try {
    napiVersion = tryNative()?.buildInfo().napiVersion ?? null;
  } catch {
    napiVersion = null;
  }
  return { node: process.version, package: packageInfo(), build: buildInfo(), napiVersion, status, devices: list, env };
}

export function defaultDoctorDeps(): DoctorDeps {
  return { stdout: (t) => void process.stdout.write(t), stderr: (t) => void process.stderr.write(t), facts: gatherFacts };
}

export const DOCTOR_USAGE = `usage: mla-cuda doctor [--json]

Checks Node, the native addon, its CUDA build, the NVIDIA driver and each GPU, and prints the
fix for every problem found.

Exit codes: 0 no problem (warnings only), 1 a problem ([FAIL]; also with --json),
2 bad arguments.`;

export const INFO_USAGE = `usage: mla-cuda info

Prints the package, addon build, device status and devices as JSON.`;

function simpleFlags(argv: readonly string[], withJson: boolean, cmd: string): { help: boolean; json: boolean } {
  const p = parseFlags(argv, withJson ? { help: { type: 'boolean' }, json: { type: 'boolean' } } : { help: { type: 'boolean' } });
  if (p.positionals.length > 0) throw new UsageError(`${cmd} takes no arguments, got "${p.positionals.join(' ')}"`);
  return { help: lastValue(p, 'help') === true, json: lastValue(p, 'json') === true };
}

export async function runDoctor(argv: readonly string[], deps: DoctorDeps = defaultDoctorDeps()): Promise<number> {
  let flags: { help: boolean; json: boolean };
  try {
    flags = simpleFlags(argv, true, 'doctor');
  } catch (err) {
    deps.stderr(`mla-cuda doctor: ${err instanceof Error ? err.message : String(err)}\n${DOCTOR_USAGE}\n`);
    // 2, not 1: scripts tell "doctor found a problem" from "doctor was called wrong".
    return 2;
  }
  if (flags.help) {
    deps.stdout(`${DOCTOR_USAGE}\n`);
    return 0;
  }
  const report = doctorReport(deps.facts());
  deps.stdout(flags.json ? `${JSON.stringify(report, null, 2)}\n` : formatDoctor(report));
  return report.ok ? 0 : 1;
}

export async function runInfo(argv: readonly string[], deps: DoctorDeps = defaultDoctorDeps()): Promise<number> {
  try {
    if (simpleFlags(argv, false, 'info').help) {
      deps.stdout(`${INFO_USAGE}\n`);
      return 0;
    }
  } catch (err) {
    deps.stderr(`mla-cuda info: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  const f = deps.facts();
  deps.stdout(`${JSON.stringify({ package: f.package, node: f.node, build: { ...f.build, napiVersion: f.napiVersion }, status: f.status, devices: f.devices }, null, 2)}\n`);
  return 0;
}
