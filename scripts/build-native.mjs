#!/usr/bin/env node
// Builds build/Release/mla_cuda.node with cmake-js. The one entry point for `npm install`,
// `npm rebuild` and binding.gyp, so every route makes the same addon from the same sources.
//
// Environment:
//   CUDACXX=/path/nvcc    which nvcc to use (otherwise PATH, then $CUDA_PATH, /usr/local/cuda*)
//   CUDAARCHS="90"        CUDA architectures (default: 80;86;89;90;100;120 SASS + 120 PTX)
//   MLA_CUDA_REQUIRE=1    fail instead of building the CPU-only addon when nvcc is missing
//   MLA_CUDA_DISABLE=1    build the CPU-only addon even if nvcc exists
//   MLA_CUDA_EMULATOR=0   skip the emulated-device addon (built by default where the CUDA headers are)
//   MLA_CUDA_OUT_DIR=dir  put the .node (and the CMake tree under dir/cmake) elsewhere
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const env = { ...process.env };
const flag = (name) => /^(1|true|yes|on)$/i.test(env[name] ?? '');
const log = (msg) => process.stderr.write(`[mla-cuda] ${msg}\n`);

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

const outDir = resolve(env.MLA_CUDA_OUT_DIR ?? join(root, 'build', 'Release'));
const workDir = env.MLA_CUDA_OUT_DIR ? join(outDir, 'cmake') : join(root, 'build', 'cmake');
const addon = join(outDir, 'mla_cuda.node');
const emulatorAddon = join(outDir, 'emulator', 'mla_cuda_emulator.node');
mkdirSync(outDir, { recursive: true });
// A failed build must not leave an older addon (with an older CUDA decision) to be loaded.
rmSync(addon, { force: true });
rmSync(emulatorAddon, { force: true });

const args = [require.resolve('cmake-js/bin/cmake-js'), 'rebuild', '--out', workDir,
  `--CDMLA_OUTPUT_DIR=${outDir}`];
if (flag('MLA_CUDA_DISABLE')) {
  args.push('--CDMLA_CUDA_DISABLE=ON');
} else {
  const nvcc = findNvcc();
  if (nvcc && !env.CUDACXX) {
    env.CUDACXX = nvcc;
    log(`nvcc is not on PATH; using ${nvcc}`);
  }
}
if (flag('MLA_CUDA_REQUIRE')) args.push('--CDMLA_CUDA_REQUIRE=ON');
if (/^(0|false|no|off)$/i.test(env.MLA_CUDA_EMULATOR ?? '')) args.push('--CDMLA_EMULATOR=OFF');

const started = Date.now();
const result = spawnSync(process.execPath, args, { cwd: root, env, stdio: 'inherit' });
const seconds = ((Date.now() - started) / 1000).toFixed(1);
if (result.status !== 0) {
  log(`native build failed after ${seconds}s (exit ${result.status ?? result.signal}).`);
  if (flag('MLA_CUDA_REQUIRE')) log('MLA_CUDA_REQUIRE=1 is set: a CUDA compiler is mandatory.');
  log('Fixes: install the CUDA toolkit (12.8+) or set CUDACXX=/path/to/nvcc, a C++17 compiler and CMake >= 3.20, then `npm rebuild mla-cuda`.');
  process.exit(result.status ?? 1);
}

let cache = '';
try { cache = readFileSync(join(workDir, 'CMakeCache.txt'), 'utf8'); } catch { /* reported below */ }
const compiler = /^CMAKE_CUDA_COMPILER:\w+=(.*)$/m.exec(cache)?.[1] ?? '';
const withCuda = !flag('MLA_CUDA_DISABLE') && compiler !== '' && !compiler.endsWith('NOTFOUND');
if (withCuda) {
  let archs = env.CUDAARCHS ?? '?';
  try { archs = require(addon).buildInfo().cudaArchitectures; } catch { /* loading is checked at run time */ }
  log(`built ${addon} with CUDA (${compiler}; architectures ${archs}) in ${seconds}s`);
} else {
  log(`WARNING: built the CPU-only addon in ${seconds}s: no CUDA compiler was found` +
    (flag('MLA_CUDA_DISABLE') ? ' (MLA_CUDA_DISABLE is set)' : '') + '.');
  log('GPU calls will throw MlaError ERR_NO_CUDA. To fix: install the CUDA toolkit, put nvcc on PATH or set CUDACXX=/path/to/nvcc, then `npm rebuild mla-cuda`.');
}
if (existsSync(emulatorAddon)) {
  log(`built the emulated-device addon ${emulatorAddon} (used only with MLA_CUDA_DEVICE=emulator or auto)`);
}
