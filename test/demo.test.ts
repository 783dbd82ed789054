// The quickstart demo, in-process: the tiny fixture on the reference backend must
// report errors below 1e-5 and say which backend ran.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { runDemo } from '../lib/cli/demo.js';
import { packageRoot } from '../lib/native.js';
import { emulated, gpuSkip } from './helpers/gpu.js';

async function capture(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runDemo(argv, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

t.test('tiny fixture on the reference backend', async (t) => {
  const r = await capture(['--fixture', 'tiny', '--backend', 'reference']);
  t.equal(r.code, 0, 'exit code 0');
  t.match(r.out, /^backend: reference/m, 'says it runs on the reference backend');
  t.match(r.out, /fixture: mla-tiny\.safetensors: hidden 96, 3 heads/);
  const errs = [...r.out.matchAll(/rel err (\S+)/g)].map((m) => Number(m[1]));
  t.equal(errs.length, 4, 'prefill and three decode steps');
  for (const e of errs) t.ok(e < 1e-5, `rel err ${e} < 1e-5`);
  t.match(r.out, /ms\/step/);
  t.match(r.out, /MLA 48 values = 96 B; MHA \(k 40 \+ v 20 per head × 3\) 360 B/);
  t.match(r.out, /DeepSeek-V3 \(61 layers, bf16\): MLA 68\.6 KiB per token vs MHA 4\.8 MiB \(71\.1× less\)/);
  t.match(r.out, /^ok: every output within 1e-5/m);
});

t.test('without a forced backend it picks one and says so in one line', async (t) => {
  const r = await capture(['--fixture=tiny']);
  t.equal(r.code, 0);
  // The tiny fixture's head dims are outside what the kernels support: reference either way.
  t.match(r.out, /^backend: reference: (no usable CUDA device|MlaAttention \(gpu backend\): the CUDA kernels do not support)/m);
});

t.test('usage errors', async (t) => {
  const bad = await capture(['--fixture', 'huge']);
  t.equal(bad.code, 1);
  t.match(bad.err, /--fixture must be one of v3slim, tiny/);
  const be = await capture(['--fixture', 'tiny', '--backend', 'tpu']);
  t.equal(be.code, 1);
  t.match(be.err, /--backend must be gpu or reference/);
  const flag = await capture(['--fixtur', 'tiny']);
  t.equal(flag.code, 1);
  t.match(flag.err, /unknown flag --fixtur/);
  const help = await capture(['--help']);
  t.equal(help.code, 0);
  t.match(help.out, /usage: mla-cuda demo/);
  const missing = await capture(['--fixture', '/nonexistent/x.safetensors']);
  t.equal(missing.code, 1);
  t.match(missing.err, /does not exist/);
});

t.test('v3slim on the gpu backend', { skip: gpuSkip }, async (t) => {
  const r = await capture(['--backend', 'gpu']);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /^backend: gpu/m);
  t.match(r.out, /^ok: every output within 2e-2/m);
});

// The CUDA addon's no-device path, in a child that never falls back to the emulated device.
t.test('--backend gpu without a device fails with the reason', { skip: gpuSkip === false && !emulated ? 'a GPU is present' : false }, async (t) => {
  const r = spawnSync(process.execPath, [join(packageRoot, 'dist', 'cli', 'main.js'), 'demo', '--fixture', 'tiny', '--backend', 'gpu'], {
    encoding: 'utf8',
    env: { ...process.env, MLA_CUDA_DEVICE: 'cuda' },
  });
  t.equal(r.status, 1);
  t.match(r.stderr, /ERR_NO_DEVICE: --backend gpu: no usable CUDA device/);
});
