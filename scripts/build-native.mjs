#!/usr/bin/env node
// Builds build/Release/mla_cuda.node with cmake-js. The one entry point for `npm install` and
// `npm rebuild`, so every route makes the same addon from the same sources.
//
// Environment:
//   CUDACXX=/path/nvcc    which nvcc to use (otherwise PATH, then $CUDA_PATH, /usr/local/cuda*)
//   CUDAARCHS="90"        CUDA architectures; always wins. Unset: the visible GPUs' architectures
//                         (nvidia-smi) + PTX, or, with no GPU visible, 80;86;89;90;100;120 + PTX 120
//   MLA_CUDA_ALL_ARCHS=1  build every supported architecture even where a GPU is visible (a
//                         portable build, e.g. for a container image)
//   MLA_CUDA_REQUIRE=1    fail instead of building the CPU-only addon when nvcc is missing
//   MLA_CUDA_DISABLE=1    build the CPU-only addon even if nvcc exists
//   MLA_CUDA_EMULATOR=0   skip the emulated-device addon (built by default where the CUDA headers are)
//   MLA_CUDA_OUT_DIR=dir  put the .node (and the CMake tree under dir/cmake) elsewhere
// Flags: --dry-run prints the plan (architectures and why, folders, cmake-js call) as JSON.
//
// Where the CMake intermediates go: build/cmake in a git checkout (kept, so `cmake --build
// build/cmake` rebuilds incrementally); anywhere else (an installed package) a temporary folder
// that is removed afterwards, so node_modules keeps only the addon.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const env = { ...process.env };
const dryRun = process.argv.includes('--dry-run');
const flag = (name) => /^(1|true|yes|on)$/i.test(env[name] ?? '');

// npm runs a dependency's install script with its output captured (shown only if it fails), so
// a two-minute build looks hung. Where the user has a terminal, the progress goes straight to it.
const terminal = (() => {
  if (dryRun || process.stderr.isTTY || env.npm_lifecycle_event !== 'install') return null;
  try { return openSync('/dev/tty', 'w'); } catch { return null; } // no controlling terminal (CI)
})();
const toTerminal = (line) => {
  if (terminal === null) return;
  try { writeSync(terminal, `${line}\n`); } catch { /* the terminal went away; the build goes on */ }
};
const log = (msg) => {
  process.stderr.write(`[mla-cuda] ${msg}\n`);
  toTerminal(`[mla-cuda] ${msg}`);
};

// MLA_CUDA_NVCC_SEARCH=0 turns the fallback search off (tests use it to simulate a machine
// without the toolkit).
function findNvcc() {
  if (env.CUDACXX) return env.CUDACXX;
  if (env.MLA_CUDA_NVCC_SEARCH === '0') return null;
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, 'nvcc'))) return null; // CMake finds it on PATH itself
  }
  const candidates = [];
  for (const v of ['CUDA_PATH', 'CUDA_HOME', 'CUDA_ROOT']) if (env[v]) candidates.push(join(env[v], 'bin', 'nvcc'));
  candidates.push('/usr/local/cuda/bin/nvcc');
  try {
    const versions = readdirSync('/usr/local').filter((d) => /^cuda-\d+\.\d+$/.test(d));
    versions.sort((a, b) => {
      const [am, an] = a.slice(5).split('.').map(Number);
      const [bm, bn] = b.slice(5).split('.').map(Number);
      return bm - am || bn - an;
    });
    for (const d of versions) candidates.push(join('/usr/local', d, 'bin', 'nvcc'));
  } catch { /* no /usr/local */ }
  return candidates.find((p) => existsSync(p)) ?? null;
}

const DEFAULT_ARCHS = 'SASS for 80, 86, 89, 90, 100, 120 + PTX for 120'; // CMakeLists.txt's list
const MIN_ARCH = 80; // mma.sync bf16 and cp.async

// The architectures to build and one line saying why. `value` undefined = CMakeLists' default.
function chooseArchitectures(nvcc) {
  if (env.CUDAARCHS) return { value: env.CUDAARCHS, why: `architectures ${env.CUDAARCHS} (from CUDAARCHS)` };
  const all = (reason) => ({ value: undefined, why: `${DEFAULT_ARCHS}: ${reason}` });
  if (flag('MLA_CUDA_ALL_ARCHS')) return all('MLA_CUDA_ALL_ARCHS is set');
  const smi = spawnSync('nvidia-smi', ['--query-gpu=name,compute_cap', '--format=csv,noheader'],
    { env, encoding: 'utf8', timeout: 20_000 });
  if (smi.error || smi.status !== 0) {
    const reason = smi.error?.code === 'ENOENT' ? 'nvidia-smi not found'
      : `nvidia-smi: ${(smi.stderr || smi.stdout || String(smi.error ?? smi.status)).trim().split('\n')[0]}`;
    return all(`no GPU visible at install time (${reason})`);
  }
  const gpus = smi.stdout.split('\n').map((l) => /^(.*),\s*(\d+)\.(\d+)\s*$/.exec(l.trim()))
    .filter((m) => m !== null).map((m) => ({ name: m[1].trim(), arch: Number(m[2]) * 10 + Number(m[3]) }));
  if (gpus.length === 0) return all('no GPU visible at install time (nvidia-smi listed none)');
  const names = [...new Set(gpus.map((g) => `${g.name} (sm_${g.arch})`))].join(', ');
  const usable = [...new Set(gpus.filter((g) => g.arch >= MIN_ARCH).map((g) => g.arch))].sort((a, b) => a - b);
  if (usable.length === 0) return all(`the visible GPU(s) ${names} are older than sm_${MIN_ARCH}, which the kernels need`);
  // A GPU newer than this nvcc knows (no SASS possible) is served by the default build's PTX.
  const known = spawnSync(nvcc ?? 'nvcc', ['--list-gpu-arch'], { env, encoding: 'utf8', timeout: 20_000 });
  if (known.status === 0) {
    const listed = new Set([...known.stdout.matchAll(/compute_(\d+)/g)].map((m) => Number(m[1])));
    const unknown = usable.filter((a) => !listed.has(a));
    if (unknown.length > 0) return all(`this nvcc cannot compile for sm_${unknown.join(', sm_')} of ${names}`);
  }
  // SASS for each visible architecture, and PTX of the newest so a newer GPU can still JIT.
  const value = usable.map((a, i) => (i === usable.length - 1 ? `${a}` : `${a}-real`)).join(';');
  return {
    value,
    why: `SASS for ${usable.join(', ')} + PTX for ${usable[usable.length - 1]} only, for the visible GPU(s) ${names} ` +
      '(MLA_CUDA_ALL_ARCHS=1 builds every architecture)',
  };
}

const outDir = resolve(env.MLA_CUDA_OUT_DIR ?? join(root, 'build', 'Release'));
const keepWorkDir = env.MLA_CUDA_OUT_DIR !== undefined || existsSync(join(root, '.git'));
const workDir = env.MLA_CUDA_OUT_DIR ? join(outDir, 'cmake')
  : keepWorkDir ? join(root, 'build', 'cmake')
  : (dryRun ? join(tmpdir(), 'mla-cuda-build-XXXXXX') : mkdtempSync(join(tmpdir(), 'mla-cuda-build-')));
const addon = join(outDir, 'mla_cuda.node');
const emulatorAddon = join(outDir, 'emulator', 'mla_cuda_emulator.node');

const args = [require.resolve('cmake-js/bin/cmake-js'), 'rebuild', '--out', workDir,
  `--CDMLA_OUTPUT_DIR=${outDir}`];
let archs = null;
if (flag('MLA_CUDA_DISABLE')) {
  args.push('--CDMLA_CUDA_DISABLE=ON');
} else {
  const nvcc = findNvcc();
  if (nvcc && !env.CUDACXX) {
    env.CUDACXX = nvcc;
    log(`nvcc is not on PATH; using ${nvcc}`);
  }
  archs = chooseArchitectures(env.CUDACXX);
  if (archs.value !== undefined) env.CUDAARCHS = archs.value; // CMake reads it for CMAKE_CUDA_ARCHITECTURES
}
if (flag('MLA_CUDA_REQUIRE')) args.push('--CDMLA_CUDA_REQUIRE=ON');
if (/^(0|false|no|off)$/i.test(env.MLA_CUDA_EMULATOR ?? '')) args.push('--CDMLA_EMULATOR=OFF');

if (dryRun) {
  process.stdout.write(`${JSON.stringify({
    cuda: !flag('MLA_CUDA_DISABLE'), architectures: archs?.value ?? null, why: archs?.why ?? 'MLA_CUDA_DISABLE is set',
    buildDir: workDir, keepBuildDir: keepWorkDir, outDir, cmakeJs: args.slice(1),
  }, null, 2)}\n`);
  process.exit(0);
}

mkdirSync(outDir, { recursive: true });
// A failed build must not leave an older addon (with an older CUDA decision) to be loaded.
rmSync(addon, { force: true });
rmSync(emulatorAddon, { force: true });

log(archs ? `building the native addon with CUDA: ${archs.why}` : 'building the CPU-only addon (MLA_CUDA_DISABLE is set)');
if (!keepWorkDir) log(`CMake intermediates go to ${workDir} (removed after the build)`);

// The build's own output is passed through unchanged (npm shows it on failure, or with
// --foreground-scripts); each compiled unit also becomes one short line on the terminal.
const unitLine = (line) => {
  const ninja = /^\[(\d+)\/(\d+)\] Building \w+ object (?:\S*?CMakeFiles\/([^/]+)\.dir\/)?(\S+?)\.o$/.exec(line);
  if (ninja) return `[${ninja[1]}/${ninja[2]}] ${ninja[4]}${ninja[3]?.includes('emulator') ? ' (emulated device)' : ''}`;
  const make = /^\[\s*(\d+)%\] Building \w+ object (?:\S*?CMakeFiles\/([^/]+)\.dir\/)?(\S+?)\.o$/.exec(line);
  if (make) return `[${make[1]}%] ${make[3]}${make[2]?.includes('emulator') ? ' (emulated device)' : ''}`;
  return null;
};
const started = Date.now();
const child = spawn(process.execPath, args, { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
for (const [from, to] of [[child.stdout, process.stdout], [child.stderr, process.stderr]]) {
  let pending = '';
  from.on('data', (chunk) => {
    to.write(chunk);
    if (terminal === null) return;
    pending += chunk.toString('utf8');
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const l of lines) {
      const unit = unitLine(l.trim());
      if (unit) toTerminal(`[mla-cuda] compiling ${unit}`);
    }
  });
}
const [code, signal] = await new Promise((done) => child.on('close', (c, s) => done([c, s])));
const seconds = ((Date.now() - started) / 1000).toFixed(1);

let cache = '';
try { cache = readFileSync(join(workDir, 'CMakeCache.txt'), 'utf8'); } catch { /* reported below */ }
if (!keepWorkDir) rmSync(workDir, { recursive: true, force: true });
if (code !== 0) {
  log(`native build failed after ${seconds}s (exit ${code ?? signal}).`);
  if (flag('MLA_CUDA_REQUIRE')) log('MLA_CUDA_REQUIRE=1 is set: a CUDA compiler is mandatory.');
  log('Fixes: install the CUDA toolkit (12.8+) or set CUDACXX=/path/to/nvcc, a C++17 compiler and CMake >= 3.20, then `npm rebuild mla-cuda`.');
  if (terminal !== null) closeSync(terminal);
  process.exit(code ?? 1);
}

const compiler = /^CMAKE_CUDA_COMPILER:\w+=(.*)$/m.exec(cache)?.[1] ?? '';
const withCuda = !flag('MLA_CUDA_DISABLE') && compiler !== '' && !compiler.endsWith('NOTFOUND');
if (withCuda) {
  let built = env.CUDAARCHS ?? '?';
  try { built = require(addon).buildInfo().cudaArchitectures; } catch { /* loading is checked at run time */ }
  log(`built ${addon} with CUDA (${compiler}; architectures ${built}) in ${seconds}s`);
} else if (flag('MLA_CUDA_DISABLE')) {
  log(`built the CPU-only addon in ${seconds}s because MLA_CUDA_DISABLE is set: GPU calls will throw MlaError ERR_NO_CUDA.`);
  log('To build with CUDA: unset MLA_CUDA_DISABLE, then `npm rebuild mla-cuda`.');
} else {
  log(`WARNING: built the CPU-only addon in ${seconds}s: no CUDA compiler (nvcc) was found.`);
  log('GPU calls will throw MlaError ERR_NO_CUDA. To fix: install the CUDA toolkit, put nvcc on PATH or set CUDACXX=/path/to/nvcc, then `npm rebuild mla-cuda`.');
}
if (existsSync(emulatorAddon)) {
  log(`built the emulated-device addon ${emulatorAddon} (used only with MLA_CUDA_DEVICE=emulator or auto)`);
}
if (terminal !== null) closeSync(terminal);
