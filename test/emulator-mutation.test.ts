// Mutation tests of the emulated device ("a checker that cannot fail is not a checker"): each
// mutant is a real kernel source (csrc/kernels/*.cu) with one deliberate bug of the kind the
// emulator exists to catch, built into a temporary emulator addon (only the mutated file is
// recompiled; test/helpers/mutants.ts) and run on one focused case against the float64
// reference in a child process. Every mutant must be detected, by an emulator fault with the
// expected message or by a result outside the op's tolerance; an unmutated control copy built
// the same way must pass every case, or the harness itself would "detect" everything.
// Run alone: npx tap --disable-coverage test/emulator-mutation.test.ts
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  applyEdits,
  buildMutantAddon,
  HARNESS_CASES,
  limiter,
  locateEmulatorBuild,
  packageJs,
  runHarness,
  writeHarness,
} from './helpers/mutants.js';
import type { BuiltAddon, EmulatorBuild, HarnessResult, KernelFile, Mutant, Mutated } from './helpers/mutants.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const IN_FLIGHT = /reads shared memory with a cp\.async of thread \d+ still in flight/;
// Without the barrier, whichever side of the race runs first is reported: a read of another
// warp's landed copy, or the copy that overwrites what another warp (or several: "warp -2") read.
const NO_BARRIER = /filled by cp\.async without a __syncthreads in between|overwrites shared memory that (?:warp \d+|several warps) read \(ldmatrix\) since the last __syncthreads/;

const MUTANTS: readonly Mutant[] = [
  // ---- decode.cu ----
  {
    id: 'decode-no-wait',
    title: 'decode: the main loop\'s cp.async.wait_group removed',
    file: 'decode.cu',
    edits: [{ find: '      cpAsyncWait<(ST >= 2 ? ST - 2 : 0)>();\n', replace: '' }],
    run: 'decode',
    expect: { fault: IN_FLIGHT },
  },
  {
    id: 'decode-no-barrier',
    title: 'decode: the __syncthreads between the K tile\'s wait and the ldmatrix reads removed',
    file: 'decode.cu',
    edits: [{ find: '      cpAsyncWait<(ST >= 2 ? ST - 2 : 0)>();\n      __syncthreads();\n', replace: '      cpAsyncWait<(ST >= 2 ? ST - 2 : 0)>();\n' }],
    run: 'decode',
    expect: { fault: NO_BARRIER },
  },
  {
    id: 'decode-v-not-transposed',
    title: 'decode: V fragments loaded with ldmatrix.x4 instead of .x4.trans',
    file: 'decode.cu',
    edits: [{ find: 'ldmatrixX4Trans(vb, ', replace: 'ldmatrixX4(vb, ' }],
    run: 'decode',
    expect: { numeric: true },
  },
  {
    id: 'decode-causal-off-by-one',
    title: 'decode: causal key limit one short (L - s_q + j instead of + 1)',
    file: 'decode.cu',
    edits: [{ find: 'a.causal ? L - sq + j + 1 : L', replace: 'a.causal ? L - sq + j : L' }],
    run: 'decode',
    expect: { numeric: true },
  },
  {
    id: 'decode-no-rowmax-barrier',
    title: 'decode: the __syncthreads after the row-max exchange through sRed removed',
    file: 'decode.cu',
    edits: [{
      find: '        sRed[cg * BM + rg * 16 + g + 8] = mx[1];\n      }\n      __syncthreads();\n',
      replace: '        sRed[cg * BM + rg * 16 + g + 8] = mx[1];\n      }\n',
    }],
    run: 'decode',
    expect: { numeric: true },
  },
  {
    id: 'decode-divergent-barrier',
    title: 'decode: the row-max barrier reached by column group 0 only',
    file: 'decode.cu',
    edits: [{ find: '      __syncthreads();\n\n      float alpha[2], mUse[2];', replace: '      if (cg == 0) __syncthreads();\n\n      float alpha[2], mUse[2];' }],
    run: 'decode',
    expect: { fault: /divergent __syncthreads: this thread is at \S+decode\.cu:\d+, others wait at \S+decode\.cu:\d+/ },
  },
  // ---- linear.cu ----
  {
    id: 'linear-wait-too-short',
    title: 'linear: tiled pipeline waits with one group too many pending (wait_group STAGES-1)',
    file: 'linear.cu',
    edits: [{ find: 'cpAsyncWait<STAGES - 2>();', replace: 'cpAsyncWait<STAGES - 1>();' }],
    run: 'linear',
    expect: { fault: IN_FLIGHT },
  },
  {
    id: 'linear-no-barrier',
    title: 'linear: the tiled pipeline\'s __syncthreads after the wait removed',
    file: 'linear.cu',
    edits: [{ find: '    cpAsyncWait<STAGES - 2>();\n    __syncthreads();\n', replace: '    cpAsyncWait<STAGES - 2>();\n' }],
    run: 'linear',
    expect: { fault: NO_BARRIER },
  },
  {
    id: 'linear-drop-split',
    title: 'linear: split-K reduce skips slice 0',
    file: 'linear.cu',
    edits: [{ find: 'for (int s = 0; s < g.splits; ++s) {', replace: 'for (int s = 1; s < g.splits; ++s) {' }],
    run: 'linear',
    expect: { numeric: true },
  },
  {
    id: 'linear-k-tail',
    title: 'linear: K tail predicate off by one (gk <= kEnd loads the chunk past K)',
    file: 'linear.cu',
    edits: [{ find: 'const bool ok = gr < rowLimit && gk < kEnd;', replace: 'const bool ok = gr < rowLimit && gk <= kEnd;' }],
    run: 'linear',
    expect: { fault: /cp\.async reads \[0x[0-9a-f]+, \+16\), which is not inside any live device allocation/ },
  },
  // ---- prefill.cu ----
  {
    id: 'prefill-no-wait',
    title: 'prefill: the wait for K_t (and Q) removed',
    file: 'prefill.cu',
    edits: [{ find: '    cpAsyncWait<0>();\n    __syncthreads();  // K_t (and Q) landed', replace: '    __syncthreads();  // K_t (and Q) landed' }],
    run: 'prefill',
    expect: { fault: IN_FLIGHT },
  },
  {
    id: 'prefill-no-barrier',
    title: 'prefill: the __syncthreads between V_t\'s wait and P·V removed',
    file: 'prefill.cu',
    edits: [{ find: '    __syncthreads();  // V_t landed; every warp finished reading K_t\n', replace: '' }],
    run: 'prefill',
    expect: { fault: NO_BARRIER },
  },
  {
    id: 'prefill-v-not-transposed',
    title: 'prefill: V fragments loaded with ldmatrix.x4 instead of .x4.trans',
    file: 'prefill.cu',
    edits: [{ find: 'ldmatrixX4Trans(bf, vw ', replace: 'ldmatrixX4(bf, vw ' }],
    run: 'prefill',
    expect: { numeric: true },
  },
  {
    id: 'prefill-causal-off-by-one',
    title: 'prefill: causal mask hides the diagonal key (pos >= diag + j)',
    file: 'prefill.cu',
    edits: [{ find: 'pos > diag + j) x = -INFINITY;', replace: 'pos >= diag + j) x = -INFINITY;' }],
    run: 'prefill',
    expect: { numeric: true },
  },
  {
    id: 'merge-no-syncwarp',
    title: 'prefill merge: the __syncwarp ordering the lanes\' lse reads before lane 0\'s overwrite removed',
    file: 'prefill.cu',
    edits: [{ find: '  __syncwarp();\n  if (lane == 0) a.lse', replace: '  if (lane == 0) a.lse' }],
    run: 'merge',
    expect: { numeric: true },
  },
];

t.test('applyEdits refuses a site that is missing, repeated or a no-op', async (tt) => {
  const src = 'a();\n  __syncthreads();\nb();\n  __syncthreads();\n';
  const m = (find: string, replace: string, count?: number, nth?: number): Pick<Mutant, 'id' | 'file' | 'edits'> =>
    ({ id: 'unit', file: 'decode.cu', edits: [{ find, replace, count, nth }] });
  tt.throws(() => applyEdits(src, m('c();', '')), /occurs 0 time\(s\).*expected 1: the kernel changed/);
  tt.throws(() => applyEdits(src, m('  __syncthreads();\n', '')), /occurs 2 time\(s\).*expected 1/);
  tt.throws(() => applyEdits(src, m('a();', 'a();')), /changes nothing/);
  const r = applyEdits(src, m('  __syncthreads();\n', '', 2, 1));
  tt.equal(r.source, 'a();\n  __syncthreads();\nb();\n', 'the chosen occurrence is replaced');
  tt.same(r.lines, [4], 'at its line');
});

const setup = locateEmulatorBuild(root);

if (typeof setup === 'string') {
  t.test('emulator mutation tests', { skip: setup }, async () => {});
} else {
  await mutationTests(setup);
}

interface Outcome {
  mutated?: Mutated;
  error?: string;
  built?: BuiltAddon;
  results: HarnessResult[];
}

function fmtMs(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function describe(r: HarnessResult): string {
  if (r.faulted) return `fault: ${r.message}`;
  if (r.errored) return `harness error: ${r.message}`;
  return `${r.pass ? 'within' : 'outside'} tolerance: ${r.detail}`;
}

async function mutationTests(build: EmulatorBuild): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'mla-cuda-mutants-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const sources = new Map<KernelFile, string>();
  const source = (f: KernelFile): string => {
    let s = sources.get(f);
    if (s === undefined) {
      s = readFileSync(join(root, 'csrc', 'kernels', f), 'utf8');
      sources.set(f, s);
    }
    return s;
  };

  const js = await packageJs(root, work);
  if (js.value.why !== undefined) t.comment(`${js.value.why}: compiled lib/ privately in ${fmtMs(js.ms)}`);
  if (js.value.log) t.comment(`tsc reported:\n${js.value.log}`);
  if (!js.value.usable) {
    t.fail('cannot compile lib/ for the harness (see tsc\'s output above)');
    return;
  }
  const harness = writeHarness(work);
  const pool = limiter(2);  // two compiles at a time at most

  const start = (id: string, file: KernelFile, mutant: Pick<Mutant, 'id' | 'file' | 'edits'>, cases: readonly HarnessResult['case'][]): Promise<Outcome> =>
    pool(async (): Promise<Outcome> => {
      let mutated: Mutated;
      try {
        mutated = applyEdits(source(file), mutant);
      } catch (err) {
        return { error: err instanceof Error ? err.message : String(err), results: [] };
      }
      const built = await buildMutantAddon(build, file, mutated.source, join(work, id));
      const results: HarnessResult[] = [];
      if (built.addon) for (const c of cases) results.push(await runHarness(harness, js.value.dir, built.addon, c));
      return { mutated, built, results };
    }).catch((err: unknown): Outcome => ({ error: err instanceof Error ? err.stack ?? err.message : String(err), results: [] }));

  // The control: an unmutated copy through the same copy / compile / link / child path. The
  // cheapest kernel file to compile; every case runs on it (the other kernels are the build's).
  const control = start('control', 'prefill.cu', { id: 'control', file: 'prefill.cu', edits: [] }, HARNESS_CASES);
  const outcomes = MUTANTS.map((m) => start(m.id, m.file, m, [m.run]));

  t.test('every mutant\'s site occurs exactly as expected in the current kernel sources', async (tt) => {
    for (const m of MUTANTS) {
      try {
        const { lines } = applyEdits(source(m.file), m);
        tt.pass(`${m.id}: ${m.file}:${lines.join(',')}`);
      } catch (err) {
        tt.fail(err instanceof Error ? err.message : String(err));
      }
    }
  });

  t.test('control: an unmutated copy built the same way passes every case', async (tt) => {
    const o = await control;
    if (o.error !== undefined || !o.built?.addon) {
      tt.fail(`control build failed: ${o.error ?? o.built?.log}`);
      return;
    }
    tt.comment(`compile ${fmtMs(o.built.compileMs)}, link ${fmtMs(o.built.linkMs)}, runs ${o.results.map((r) => `${r.case} ${fmtMs(r.ms)}`).join(', ')}`);
    tt.equal(o.results.length, HARNESS_CASES.length, 'every case ran');
    for (const r of o.results) tt.ok(r.pass && !r.faulted && !r.errored, `control ${r.case}: ${describe(r)}`);
  });

  for (const [i, m] of MUTANTS.entries()) {
    t.test(`${m.id}: ${m.title}`, { todo: m.todo ?? false }, async (tt) => {
      const o = await outcomes[i]!;
      if (o.error !== undefined || !o.built?.addon || !o.mutated) {
        tt.fail(`mutant not built: ${o.error ?? o.built?.log}`);
        return;
      }
      const r = o.results[0];
      if (!r) {
        tt.fail('the harness did not run');
        return;
      }
      const site = `${m.file}:${o.mutated.lines.join(',')}`;
      tt.comment(`${site}: compile ${fmtMs(o.built.compileMs)}, link ${fmtMs(o.built.linkMs)}, ${r.case} run ${fmtMs(r.ms)}`);
      tt.notOk(r.errored, `${m.id}: the harness ran (${r.errored ? r.message : 'ok'})`);
      if ('fault' in m.expect) {
        tt.ok(r.faulted && m.expect.fault.test(r.message),
          `${m.id} (${site}) detected by an emulator fault matching ${m.expect.fault}: got ${describe(r)}`);
        // The fault names the mutated copy's file: it came from the mutated kernel.
        if (r.faulted) tt.ok(r.message.includes(join(work, m.id, m.file)), `${m.id}: the fault names the mutated ${m.file}`);
      } else {
        tt.ok(!r.faulted && !r.errored && !r.pass, `${m.id} (${site}) detected numerically (out of tolerance): got ${describe(r)}`);
      }
    });
  }
}
