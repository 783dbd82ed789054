#!/usr/bin/env node
// The kernel tests on the emulated device built with a sanitizer (docs/emulator.md):
//   npm run test:asan   AddressSanitizer: every out-of-bounds or freed access of a kernel
//                       (global, shared, stack), reported at the kernel's line; ~5x slower.
//   npm run test:tsan   ThreadSanitizer: races on plain shared-memory accesses (what the
//                       emulator's own shadow does not see), plus planted races that must be
//                       reported; ~10x slower.
// Too slow for every CI run (see the README for when to run them); each prints one summary
// line and exits non-zero on any report or failure. `--no-build` reuses the last build.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const mode = process.argv[2];
if (mode !== 'address' && mode !== 'thread') {
  console.error('usage: node scripts/emu-sanitize.mjs address|thread [--no-build]');
  process.exit(2);
}
const short = mode === 'address' ? 'asan' : 'tsan';
const outDir = join(root, 'build', 'Sanitize');
const addon = join(outDir, 'emulator', `mla_cuda_emulator_${short}.node`);
const log = (m) => process.stderr.write(`[emu-sanitize] ${m}\n`);

if (!process.argv.includes('--no-build')) {
  const started = Date.now();
  const r = spawnSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'rebuild', '--out', join(root, 'build', `sanitize-${mode}`),
    `--CDMLA_EMU_SANITIZE=${mode}`, `--CDMLA_OUTPUT_DIR=${outDir}`], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0 || !existsSync(addon)) {
    log(`building the ${mode}-sanitized emulator failed (needs the CUDA headers, g++ with lib${short}, x86-64)`);
    process.exit(1);
  }
  log(`built ${addon} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

const runtime = spawnSync('g++', [`-print-file-name=lib${short}.so`], { encoding: 'utf8' }).stdout.trim();
if (!runtime || !existsSync(runtime)) {
  log(`lib${short}.so not found (g++ -print-file-name=lib${short}.so)`);
  process.exit(1);
}
// The sanitizer runtime is preloaded into the test processes only (tap itself stays plain).
// ASan: no leak check (Node keeps its heap at exit). TSan: only instrumented code (the kernels)
// is reported, not Node's own threads.
const sanitizerEnv = mode === 'address'
  ? [`LD_PRELOAD=${runtime}`, 'ASAN_OPTIONS=detect_leaks=0:abort_on_error=0']
  : [`LD_PRELOAD=${runtime}`, 'TSAN_OPTIONS=ignore_noninstrumented_modules=1:halt_on_error=0'];

// Reduced to the cases that reach every kernel and tile path; the full shapes run unsanitized.
const runs = [
  { files: ['test/runtime.test.ts', 'test/rmsnorm.test.ts', 'test/emulator.test.ts', 'test/emulator-sm90.test.ts', 'test/primitives.test.ts'] },
  // Both decode kernels (the portable and the sm_90a one) on the emulated sm_90.
  { files: ['test/decode.test.ts'], grep: 'randomized grid|variable query lengths|empty sequences|rows past each length|one plan, several layers' },
  { files: ['test/linear.test.ts'], grep: 'odd sizes|prepareAbsorbWeights layout' },
  { files: ['test/prefill.test.ts'], grep: 'kernel alone|mergeAttnStates|reused workspace' },
  { files: ['test/rope.test.ts', 'test/attention.test.ts'], grep: 'appendLatent|table|gpu backend reproduces' },
  { files: ['test/graph.test.ts'] },
  { files: ['test/fp8-cache.test.ts'], grep: 'appendLatent writes|decode over an FP8|prefill over an FP8' },
  { files: ['test/sparse.test.ts'] },
];
if (mode === 'thread') runs.push({ files: ['test/emulator-mutation.test.ts'], env: ['MLA_MUTANT_SANITIZER=thread'], plain: true });

const tap = join(root, 'node_modules', 'tap', 'dist', 'esm', 'run.mjs');
let reports = 0, failed = 0, passed = 0;
const pattern = mode === 'address' ? /ERROR: AddressSanitizer/g : /WARNING: ThreadSanitizer/g;
for (const run of runs) {
  const args = [tap, '--reporter=tap', '--disable-coverage', '-t', '1200', '--jobs=1'];
  if (!run.plain) for (const e of sanitizerEnv) args.push(`--test-env=${e}`);
  for (const e of run.env ?? []) args.push(`--test-env=${e}`);
  if (run.grep) args.push(`--grep=${run.grep}`);
  const started = Date.now();
  const r = spawnSync(process.execPath, [...args, ...run.files], {
    cwd: root, encoding: 'utf8', maxBuffer: 1 << 28,
    env: { ...process.env, MLA_CUDA_DEVICE: 'emulator', MLA_CUDA_EMULATOR_ADDON: addon },
  });
  const out = `${r.stdout}\n${r.stderr}`;
  // Planted races are meant to be reported; the mutation test counts them itself.
  const found = run.plain ? 0 : (out.match(pattern) ?? []).length;
  const counts = /# \{ total: (\d+), pass: (\d+)(?:, fail: (\d+))?/.exec(out.split('\n').filter((l) => l.startsWith('# {')).pop() ?? '');
  const f = r.status !== 0 && !(counts?.[3]) ? 1 : Number(counts?.[3] ?? 0);
  reports += found;
  failed += f;
  passed += Number(counts?.[2] ?? 0);
  log(`${run.files.join(' ')}${run.grep ? ` (${run.grep})` : ''}: ${counts?.[2] ?? 0} passed, ${f} failed, ${found} ${mode} reports, ${((Date.now() - started) / 1000).toFixed(0)} s`);
  if (found > 0 || f > 0) process.stderr.write(out.split('\n').filter((l) => /Sanitizer|^\s+#\d|not ok/.test(l)).slice(0, 60).join('\n') + '\n');
}
console.log(`${mode} sanitizer: ${passed} passed, ${failed} failed, ${reports} reports`);
process.exit(failed > 0 || reports > 0 ? 1 : 0);
