// The benchmark suites' kernel checks, run on whatever device this process has (the emulated
// one in `npm test`): each must pass on the real kernels, and each must fail when one of its
// outputs is corrupted, so a wrong kernel can never be timed. The runner itself refuses the
// emulated device for timing; the checks are plain kernel calls and run anywhere.
import t from 'tap';
import { compareOutputs, runCheck } from '../lib/bench/check.js';
import { SUITES } from '../lib/bench/suites.js';
import type { BenchSuiteOptions, CheckOutput, KernelCheck } from '../lib/bench/types.js';
import { gpuSkip } from './helpers/gpu.js';

/** Every check the suites' quick cases name, plus the FP8 decode variant, each once. */
function allChecks(): KernelCheck[] {
  const byName = new Map<string, KernelCheck>();
  const add = (suite: string, opts: BenchSuiteOptions): void => {
    for (const c of SUITES[suite]!.cases(opts)) for (const k of c.checks) byName.set(k.name, k);
  };
  for (const name of Object.keys(SUITES)) add(name, { quick: true });
  add('decode', { quick: true, grid: { cache: ['fp8'], h: [16] } });
  return [...byName.values()];
}

/** Every 7th value of the first output off by one: what a kernel with a wrong index would give. */
function corrupt(outputs: CheckOutput[]): void {
  const o = outputs[0]!;
  outputs[0] = { ...o, got: Array.from(o.got, (v, i) => (i % 7 === 0 ? v + 1 : v)) };
}

t.test('every suite declares checks, and they cover each kernel path', async (t) => {
  const names = allChecks().map((c) => c.name);
  for (const want of [/^decode bf16 \(/, /^decode bf16 fp8-cache/, /^sparse bf16 \(/, /^sparse bf16 fp8-cache/, /^prefill bf16/, /^prefillAttention bf16/,
    /^appendLatent bf16 \(/, /^appendLatent bf16 f32 norm weight/, /^ropeQuery bf16/, /^linear bf16/, /^absorbQuery bf16/, /^absorbOutput bf16/, /^rmsNorm/, /^copy f32/]) {
    t.ok(names.some((n) => want.test(n)), `a check matches ${want}`);
  }
});

t.test('suite checks pass on the device and fail on a corrupted output', { skip: gpuSkip }, async (t) => {
  for (const check of allChecks()) {
    const outputs = check.run();
    const good = compareOutputs(check, outputs);
    t.ok(good.ok, good.message);
    corrupt(outputs);
    const bad = compareOutputs(check, outputs);
    t.notOk(bad.ok, `${check.name}: a corrupted output fails (${bad.message})`);
  }
});

t.test('runCheck feeds a corrupted output to the comparison', { skip: gpuSkip }, async (t) => {
  const copy = allChecks().find((c) => c.name.startsWith('copy'))!;
  t.ok(runCheck(copy).ok);
  const r = runCheck(copy, { corrupt });
  t.notOk(r.ok);
  t.match(r.message, /wrong result vs the float64 reference: dst rel err/);
});
