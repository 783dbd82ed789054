// The install paths that do not need a GPU: a machine without nvcc gets a working CPU-only
// addon whose GPU calls throw ERR_NO_CUDA with the fix; MLA_CUDA_REQUIRE=1 turns that into a
// failed install; a failed rebuild never leaves an older addon behind.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
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
