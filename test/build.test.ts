// The install paths that do not need a GPU: a machine without nvcc gets a working CPU-only
// addon whose GPU calls throw ERR_NO_CUDA with the fix; MLA_CUDA_REQUIRE=1 turns that into a
// failed install; a failed rebuild never leaves an older addon behind; the architectures follow
// the visible GPU. (test/install.test.ts installs the packed tarball into a new project.)
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../lib/native.js';

const script = join(packageRoot, 'scripts', 'build-native.mjs');
const outDir = mkdtempSync(join(tmpdir(), 'mla-cuda-build-'));
t.teardown(() => rmSync(outDir, { recursive: true, force: true }));

// A PATH with cmake, a C++ compiler and node but no nvcc, and no fallback search.
function buildWithoutNvcc(extra: Record<string, string> = {}) {
  const env: Record<string, string> = {
    PATH: '/usr/bin:/bin', HOME: process.env['HOME'] ?? '/tmp', MLA_CUDA_OUT_DIR: outDir, MLA_CUDA_NVCC_SEARCH: '0',
    MLA_CUDA_EMULATOR: '0', // the CPU-only addon is what is under test here
    ...extra,
  };
  return spawnSync(process.execPath, [script], { env, encoding: 'utf8', cwd: packageRoot });
}

const addon = join(outDir, 'mla_cuda.node');

t.test('without nvcc the install succeeds with a CPU-only addon and a clear warning', async (t) => {
  const r = buildWithoutNvcc();
  t.equal(r.status, 0, 'build exits 0');
  t.match(r.stderr, /WARNING: built the CPU-only addon/);
  t.match(r.stderr, /CUDACXX/);
  t.ok(existsSync(addon), 'the addon exists');
  // Load it in a child so this process keeps its own (CUDA) addon.
  const probe = `
    const a = require(${JSON.stringify(addon)});
    const out = { build: a.buildInfo(), status: a.deviceStatus() };
    try { new a.DeviceBuffer(16); } catch (e) { out.err = { code: e.code, message: e.message }; }
    try { a.ops.fill({}); } catch (e) { out.opErr = { code: e.code, message: e.message }; }
    console.log(JSON.stringify(out));`;
  const c = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8' });
  t.equal(c.status, 0, c.stderr);
  const res = JSON.parse(c.stdout) as {
    build: { compiledWithCuda: boolean; cudaArchitectures: string; ops: string[] };
    status: { ok: boolean; code: string; message: string };
    err: { code: string; message: string };
    opErr: { code: string; message: string };
  };
  t.equal(res.build.compiledWithCuda, false);
  t.equal(res.build.cudaArchitectures, '');
  t.ok(res.build.ops.length >= 2, 'the op table is there (every op reports ERR_NO_CUDA)');
  t.equal(res.status.ok, false);
  t.equal(res.status.code, 'ERR_NO_CUDA');
  t.equal(res.err.code, 'ERR_NO_CUDA');
  t.match(res.err.message, /install the CUDA toolkit/i);
  t.match(res.err.message, /CUDACXX/);
  t.match(res.err.message, /npm rebuild mla-cuda/);
  t.equal(res.opErr.code, 'ERR_ARGUMENT', 'argument checks still run first');
});

t.test('MLA_CUDA_REQUIRE=1 makes a missing nvcc fail the install and removes the old addon', async (t) => {
  t.ok(existsSync(addon), 'an addon from the previous build is there');
  const r = buildWithoutNvcc({ MLA_CUDA_REQUIRE: '1' });
  t.not(r.status, 0, 'build fails');
  t.match(r.stdout + r.stderr, /no CUDA compiler found and MLA_CUDA_REQUIRE=1/);
  t.notOk(existsSync(addon), 'no stale addon (with an older CUDA decision) is left to load');
});

// The architecture plan (--dry-run: no build). A fake nvidia-smi stands in for the GPU.
function plan(smi: string | null, extra: Record<string, string> = {}) {
  const bin = mkdtempSync(join(tmpdir(), 'mla-cuda-smi-'));
  t.teardown(() => rmSync(bin, { recursive: true, force: true }));
  if (smi !== null) writeFileSync(join(bin, 'nvidia-smi'), `#!/bin/sh\n${smi}\n`, { mode: 0o755 });
  // /usr/local/bin: this machine's nvcc; no other nvidia-smi is reachable from this PATH.
  const env: Record<string, string> = { PATH: `${bin}:/usr/local/bin:/usr/bin:/bin`, HOME: process.env['HOME'] ?? '/tmp', ...extra };
  for (const k of ['CUDACXX', 'CUDA_PATH', 'CUDA_HOME']) if (process.env[k]) env[k] = process.env[k];
  const r = spawnSync(process.execPath, [script, '--dry-run'], { env, encoding: 'utf8', cwd: packageRoot });
  t.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { architectures: string | null; why: string; buildDir: string; keepBuildDir: boolean };
}

t.test('install builds for the visible GPU only; without one, for every architecture; CUDAARCHS wins', async (t) => {
  const h100 = plan('echo "NVIDIA H100 80GB HBM3, 9.0"');
  t.equal(h100.architectures, '90', 'SASS and PTX for sm_90 only');
  t.match(h100.why, /only, for the visible GPU\(s\) NVIDIA H100 80GB HBM3 \(sm_90\)/);
  t.match(h100.why, /MLA_CUDA_ALL_ARCHS=1/, 'says how to get a portable build');

  const mixed = plan('echo "NVIDIA A100-SXM4-80GB, 8.0"; echo "NVIDIA H100 80GB HBM3, 9.0"; echo "NVIDIA H100 80GB HBM3, 9.0"');
  t.equal(mixed.architectures, '80-real;90', 'each architecture once, PTX for the newest');

  const none = plan(null);
  t.equal(none.architectures, null, 'the default list (CMakeLists.txt)');
  t.match(none.why, /SASS for 80, 86, 89, 90, 100, 120 \+ PTX for 120: no GPU visible at install time \(nvidia-smi not found\)/);

  const noDriver = plan('echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."; exit 9');
  t.equal(noDriver.architectures, null);
  t.match(noDriver.why, /could not communicate with the NVIDIA driver/);

  const old = plan('echo "Tesla T4, 7.5"');
  t.equal(old.architectures, null, 'a GPU the kernels cannot run on does not narrow the build');
  t.match(old.why, /Tesla T4 \(sm_75\) are older than sm_80/);

  const future = plan('echo "Some Future GPU, 15.0"');
  t.equal(future.architectures, null, 'an architecture this nvcc does not know: the default build (its PTX can JIT)');
  t.match(future.why, /cannot compile for sm_150/);

  t.equal(plan('echo "NVIDIA H100 80GB HBM3, 9.0"', { CUDAARCHS: '89' }).architectures, '89', 'CUDAARCHS wins');
  t.equal(plan('echo "NVIDIA H100 80GB HBM3, 9.0"', { MLA_CUDA_ALL_ARCHS: '1' }).architectures, null, 'MLA_CUDA_ALL_ARCHS=1');
  t.equal(h100.keepBuildDir, true, 'a checkout keeps build/cmake for incremental builds');
  t.equal(h100.buildDir, join(packageRoot, 'build', 'cmake'));
});

t.test('MLA_CUDA_DISABLE=1 says that it, not a missing nvcc, made the addon CPU-only', async (t) => {
  const r = buildWithoutNvcc({ MLA_CUDA_DISABLE: '1' });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stderr, /built the CPU-only addon in [\d.]+s because MLA_CUDA_DISABLE is set/);
  t.notMatch(r.stderr, /no CUDA compiler|nvcc\) was found/);
  const c = spawnSync(process.execPath, ['-e',
    `const a = require(${JSON.stringify(addon)}); console.log(a.buildInfo().cudaDisabled);` +
    `try { new a.DeviceBuffer(16); } catch (e) { console.log(e.message); }`], { encoding: 'utf8' });
  t.match(c.stdout, /^true\n/, 'buildInfo().cudaDisabled (doctor words its fix by it)');
  t.match(c.stdout, /built without CUDA because MLA_CUDA_DISABLE was set at install time/);
});
