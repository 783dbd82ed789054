// The benchmark CLI without a GPU: argument parsing, the FLOP/byte formulas, statistics, the
// runner (with a fake timer), ceilings, JSON / table / SVG output on synthetic results, and
// the no-GPU behaviour of `mla-cuda bench` (in-process with injected deps, and one real spawn).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ceilingCopyBytes, linearCeilingCases, matmulCandidates, metricsFor, parseCeilings, resolveCeilings, rooflineBound } from '../lib/bench/ceilings.js';
import type { Ceilings } from '../lib/bench/ceilings.js';
import { copyCase, suite as copySuite } from '../lib/bench/copy.js';
import {
  arithmeticIntensity, attentionBytes, attentionFlops, attentionPairs, copyBytes, gemmBytes, gemmFlops, MLA_DK, MLA_DV,
  mlaDecodeBytes, mlaDecodeFlops,
} from '../lib/bench/formulas.js';
import { fmtNum, formatTable, gitCommit, packageInfo, REPORT_SCHEMA, reportJson, resultFileStem } from '../lib/bench/report.js';
import type { BenchReport } from '../lib/bench/report.js';
import { eventTimer, measureCase, rotationCount, runCase } from '../lib/bench/runner.js';
import { DeviceTensor } from '../lib/runtime/tensor.js';
import { Stream } from '../lib/runtime/stream.js';
import { emulated, gpuSkip } from './helpers/gpu.js';
import type { CaseResult, RunnerEnv, TimedRuns, Timer } from '../lib/bench/runner.js';
import { median, percentile, summarize } from '../lib/bench/stats.js';
import { loadSuite, SUITE_NAMES, SuiteUnavailableError } from '../lib/bench/suites.js';
import { decadeLabel, escapeXml, rooflineSvg } from '../lib/bench/svg.js';
import type { BenchCase, BenchSuite, KernelCheck } from '../lib/bench/types.js';
import { CheckLedger, compareOutputs } from '../lib/bench/check.js';
import { parseGridJson, parseGridValue, UsageError } from '../lib/cli/args.js';
import { DEFAULTS, parseBenchArgs, runBench } from '../lib/cli/bench.js';
import type { BenchDeps } from '../lib/cli/bench.js';
import { MlaError } from '../lib/errors.js';
import { emulatorAddonPath } from '../lib/native.js';
import type { DeviceInfo, DeviceStatus } from '../lib/runtime/cuda.js';

// ---- arguments ----------------------------------------------------------------------------

t.test('parseBenchArgs: suites, shape flags, timing and output flags', async (t) => {
  const a = parseBenchArgs(['decode', 'prefill', '--b', '128', '--h', '16,128', '--sq', '1,2', '--sk', '4k,8192',
    '--warmup', '5', '--repeats', '7', '--filter', 'h16', '--filter=sk8192', '--json', 'out.json', '--svg', 'r.svg', '--device=1']);
  t.same(a.suites, ['decode', 'prefill']);
  t.same(a.grid.all, { b: [128], h: [16, 128], sq: [1, 2], sk: [4096, 8192] });
  t.equal(a.warmupMs, 5);
  t.equal(a.repeats, 7);
  t.same(a.filters, ['h16', 'sk8192']);
  t.equal(a.json, 'out.json');
  t.equal(a.svg, 'r.svg');
  t.equal(a.device, 1);
  t.equal(a.quick, false);
});

t.test('parseBenchArgs: defaults and --quick', async (t) => {
  const d = parseBenchArgs([]);
  t.same(d.suites, []);
  t.equal(d.warmupMs, DEFAULTS.warmupMs);
  t.equal(d.repeats, DEFAULTS.repeats);
  t.equal(d.json, undefined);
  const q = parseBenchArgs(['--quick']);
  t.equal(q.warmupMs, DEFAULTS.quickWarmupMs);
  t.equal(q.repeats, DEFAULTS.quickRepeats);
  t.equal(parseBenchArgs(['--quick', '--repeats', '3']).repeats, 3, 'explicit values win over --quick');
  t.equal(parseBenchArgs(['--warmup', '0']).warmupMs, 0, 'warm-up may be switched off');
});

t.test('parseBenchArgs: --json without a file means stdout', async (t) => {
  t.equal(parseBenchArgs(['--json']).json, '-');
  t.equal(parseBenchArgs(['--json', '-']).json, '-');
  t.equal(parseBenchArgs(['--json=-']).json, '-');
  const a = parseBenchArgs(['--json', 'decode']);
  t.equal(a.json, '-', 'a suite name after --json is a suite, not a file');
  t.same(a.suites, ['decode']);
  t.equal(parseBenchArgs(['--json', '--quick']).json, '-');
});

t.test('parseBenchArgs: --grid key=values, per-suite keys, and value types', async (t) => {
  const a = parseBenchArgs(['--grid', 'sk=4096,8192', '--grid', 'decode.b=64', '--grid', 'causal=true,false', '--grid', 'dtype=bf16']);
  t.same(a.grid.all, { sk: [4096, 8192], causal: [true, false], dtype: ['bf16'] });
  t.same(a.grid.bySuite, { decode: { b: [64] } });
  t.equal(parseGridValue('1m'), 1024 * 1024);
  t.equal(parseGridValue('2.5'), 2.5);
  t.equal(parseGridValue('1e3'), 1000);
  t.equal(parseGridValue('f16'), 'f16');
});

t.test('parseBenchArgs: a JSON grid file, with flags overriding it', async (t) => {
  const dir = t.testdir({
    'grid.json': JSON.stringify({ b: [128], h: 64, decode: { sk: [4096, 8192] } }),
    'bad.json': '{ b: [1] }',
    'nested.json': JSON.stringify({ b: [{ x: 1 }] }),
    'array.json': '[1, 2]',
  });
  const a = parseBenchArgs(['--grid-file', join(dir, 'grid.json'), '--h', '16,128']);
  t.same(a.grid.all, { b: [128], h: [16, 128] });
  t.same(a.grid.bySuite, { decode: { sk: [4096, 8192] } });
  t.throws(() => parseBenchArgs(['--grid-file', join(dir, 'bad.json')]), /not valid JSON/);
  t.throws(() => parseBenchArgs(['--grid-file', join(dir, 'nested.json')]), /"b" values must be numbers, strings or booleans/);
  t.throws(() => parseBenchArgs(['--grid-file', join(dir, 'array.json')]), /expected a JSON object/);
  t.throws(() => parseBenchArgs(['--grid-file', join(dir, 'missing.json')]), /cannot read/);
  t.throws(() => parseGridJson('{"b": []}', 'x', SUITE_NAMES), /has no values/);
});

t.test('parseBenchArgs: bad flags give a clear UsageError', async (t) => {
  const bad: [string[], RegExp][] = [
    [['--repeat', '5'], /unknown flag --repeat \(did you mean --repeats\?\)/],
    [['--frobnicate'], /unknown flag --frobnicate$/],
    [['-q'], /two dashes/],
    [['--repeats', '0'], /--repeats must be positive/],
    [['--repeats', '1.5'], /--repeats needs an integer/],
    [['--warmup', 'abc'], /--warmup needs a number, got "abc"/],
    [['--warmup', '-1'], /--warmup must be zero or more/],
    [['--matmul-tflops', '0'], /--matmul-tflops must be positive/],
    [['--b'], /--b needs a value/],
    [['--svg', '--quick'], /--svg needs a value/],
    [['--b', '1,,2'], /empty value/],
    [['--grid', 'sk'], /--grid expects key=v1,v2/],
    [['--grid', 'nosuite.b=1'], /unknown suite "nosuite"/],
    [['--grid', '1x=2'], /not a valid grid key/],
    [['--quick=maybe'], /is a switch/],
    [['--repeats', '3', '--repeats', '4'], /given more than once/],
    [['decod'], /unknown suite "decod".*did you mean decode\?/],
  ];
  for (const [argv, re] of bad) {
    t.throws(() => parseBenchArgs(argv), re, argv.join(' '));
    t.throws(() => parseBenchArgs(argv), UsageError);
  }
});

// ---- formulas -----------------------------------------------------------------------------

t.test('FlashMLA decode formulas against hand-computed values', async (t) => {
  t.equal(MLA_DK, 576);
  t.equal(MLA_DV, 512);
  // b = 128, s_q = 1, h_q = 128, h_kv = 1, s_k = 4096 for every sequence.
  const shape = { b: 128, sQ: 1, hQ: 128, hKv: 1, sumSeqlen: 128 * 4096 };
  t.equal(mlaDecodeFlops(shape), 146_028_888_064); // 1·524288·128·1088·2
  t.equal(mlaDecodeBytes(shape), 639_631_360); // (524288·576 + 128·128·576 + 128·128·512)·2
  t.equal(arithmeticIntensity(mlaDecodeFlops(shape), mlaDecodeBytes(shape)).toFixed(3), '228.302');
  // Σseqlen need not be b·s_k (varlen); MTP s_q = 2 doubles the FLOPs, not the cache bytes.
  const mtp = { b: 2, sQ: 2, hQ: 16, sumSeqlen: 100 + 300 };
  t.equal(mlaDecodeFlops(mtp), 2 * 400 * 16 * 1088 * 2);
  t.equal(mlaDecodeBytes(mtp), (400 * 576 + 2 * 2 * 16 * 576 + 2 * 2 * 16 * 512) * 2);
  t.equal(mlaDecodeBytes({ ...mtp, elemBytes: 1 }), mlaDecodeBytes(mtp) / 2);
});

t.test('gemm, copy and attention helpers', async (t) => {
  t.equal(gemmFlops(2, 3, 4), 48);
  t.equal(gemmBytes(2, 3, 4), (8 + 12 + 6) * 2);
  t.equal(gemmBytes(2, 3, 4, 2, 4), (8 + 12) * 2 + 6 * 4);
  t.equal(gemmBytes(2, 3, 4, 2, 4, true), (8 + 12) * 2 + 6 * 4 * 2);
  t.equal(copyBytes(1000), 2000);
  t.equal(attentionPairs(4, 4, true), 10); // 1 + 2 + 3 + 4
  t.equal(attentionPairs(2, 5, true), 9); // 4 + 5: bottom-right aligned
  t.equal(attentionPairs(3, 7, false), 21);
  const s = { b: 2, hQ: 4, hKv: 1, sQ: 4, sK: 4, dQK: 192, dV: 128, causal: true };
  t.equal(attentionFlops(s), 2 * 2 * 4 * 10 * (192 + 128));
  t.equal(attentionFlops({ ...s, causal: false }), 2 * 2 * 4 * 16 * (192 + 128));
  t.equal(attentionBytes(s), (2 * 4 * 4 * 192 + 2 * 4 * 1 * 320 + 2 * 4 * 4 * 128) * 2);
  t.equal(arithmeticIntensity(5, 0), 0);
});

// ---- statistics ---------------------------------------------------------------------------

t.test('median, percentiles and spread', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5);
  const s11 = [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1];
  t.equal(percentile([...s11].sort((a, b) => a - b), 10), 2);
  t.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90), 9.1);
  t.ok(Number.isNaN(percentile([], 50)));
  t.throws(() => percentile([1], 101), RangeError);
  const s = summarize([2, 4, 4, 4, 5, 5, 7, 9]);
  t.equal(s.n, 8);
  t.equal(s.median, 4.5);
  t.equal(s.mean, 5);
  t.equal(s.min, 2);
  t.equal(s.max, 9);
  t.equal(s.stddev.toFixed(6), '2.138090'); // sample standard deviation, sqrt(32/7)
  t.equal(summarize([7]).stddev, 0);
  t.throws(() => summarize([]), RangeError);
});

// ---- runner (fake timer, fake cases) ------------------------------------------------------

const fakeStream = {} as unknown as Stream;

/** Every run "takes" runMs; records the order runs happened in. */
function fakeEnv(runMs: number, l2Bytes = 50e6, free = 80e9): RunnerEnv & { calls: number } {
  const env = {
    stream: fakeStream, l2Bytes, calls: 0, freeBytes: () => free,
    timer: {
      each(n: number, body: (i: number) => void): TimedRuns {
        const ms: number[] = [];
        for (let i = 0; i < n; i++) {
          body(i);
          env.calls++;
          ms.push(runMs * (1 + (i % 3) / 10));
        }
        return { ms, hostMs: ms.map(() => runMs / 10), hold: 'held' };
      },
    } satisfies Timer,
  };
  return env;
}

t.test('eventTimer: runs queued in held batches, host time kept apart', { skip: gpuSkip }, async (t) => {
  using stream = new Stream();
  using x = DeviceTensor.empty([1024], 'f32');
  const r = eventTimer(stream).each(40, (i) => x.fill(i, { stream }));
  t.same([r.ms.length, r.hostMs.length], [40, 40], 'a device and a host time per run (two batches)');
  t.ok(r.ms.every((v) => v >= 0) && r.hostMs.every((v) => v > 0), 'times are sane');
  t.equal(r.hold, emulated ? 'unheld' : 'held', emulated ? 'the emulated device cannot hold' : 'every batch held until released');
  t.equal(x.select(0, 3).toFloat32Sync({ stream })[0], 39, 'every run ran, in order');
  t.equal(eventTimer(stream, { hold: false }).each(2, (i) => x.fill(i, { stream })).hold, 'unheld');
});

interface FakeLog {
  setups: number;
  disposed: number;
  runs: number[];
  mains: number[];
}

/** A check that compares `got` with the reference [1, 2, 3]. */
function fakeCheck(name: string, got: number[] = [1, 2, 3]): KernelCheck & { runs: number } {
  const c = { name, tolerance: 1e-6, runs: 0, run: () => (c.runs++, [{ name: 'out', got, want: [1, 2, 3] }]) };
  return c;
}
const RIGHT = fakeCheck('fake kernel');

function fakeCase(name: string, footprint: number, opts: { main?: boolean; failAt?: number; failWith?: Error; flops?: number; bytes?: number; checks?: KernelCheck[] } = {}): BenchCase & { log: FakeLog } {
  const log: FakeLog = { setups: 0, disposed: 0, runs: [], mains: [] };
  return {
    name, params: { n: 1 }, flops: opts.flops ?? 2e9, bytes: opts.bytes ?? 1e8, footprintBytes: footprint, log, checks: opts.checks ?? [RIGHT],
    setup() {
      if (opts.failAt !== undefined && log.setups === opts.failAt) throw opts.failWith ?? new Error('setup failed');
      const id = log.setups++;
      return {
        run: () => void log.runs.push(id),
        ...(opts.main ? { runMain: () => void log.mains.push(id) } : {}),
        dispose: () => void log.disposed++,
      };
    },
  };
}

t.test('rotationCount: 2×L2, at least 2, capped by memory and the instance cap', async (t) => {
  t.equal(rotationCount(10e6, 50e6, 80e9), 10);
  t.equal(rotationCount(1e9, 50e6, 80e9), 2, 'never fewer than two');
  t.equal(rotationCount(30e9, 50e6, 40e9), 1, 'but only what fits in 80% of free memory');
  t.equal(rotationCount(1000, 50e6, 80e9), 256, 'tiny cases stop at the cap');
  t.equal(rotationCount(1000, 50e6, 80e9, 16), 16);
  t.equal(rotationCount(0, 50e6, 80e9, 8), 8);
});

t.test('runCase: rotates through every instance, warms up, times run and runMain, frees all', async (t) => {
  const c = fakeCase('x', 20e6, { main: true });
  const env = fakeEnv(0.1);
  const r = runCase(c, env, { warmupMs: 1, repeats: 9 });
  t.equal(r.instances, 5); // ceil(2·50e6 / 20e6)
  t.equal(r.rotatedBytes, 100e6);
  t.equal(r.pastL2, true);
  t.ok(r.warmupRuns >= 7, `warm-up until 1 ms of device time (${r.warmupRuns} runs)`);
  t.equal(c.log.disposed, 5);
  t.same(new Set(c.log.runs), new Set([0, 1, 2, 3, 4]), 'every instance is used');
  t.same(c.log.runs.slice(r.warmupRuns, r.warmupRuns + 6), [0, 1, 2, 3, 4, 0].map((i) => (i + r.warmupRuns) % 5));
  t.equal(r.run.n, 9);
  t.equal(r.run.min, 100, 'ms become µs');
  t.equal(r.run.median.toFixed(9), '110.000000000');
  t.ok(r.main);
  t.equal(r.main!.n, 9);
  t.ok(c.log.mains.length >= 9);
});

t.test('runCase: OOM part-way keeps the instances it has; other errors free and rethrow', async (t) => {
  const oom = fakeCase('oom', 20e6, { failAt: 3, failWith: new MlaError('ERR_OOM', 'out of memory') });
  const r = runCase(oom, fakeEnv(0.1), { warmupMs: 0, repeats: 3 });
  t.equal(r.instances, 3);
  t.equal(r.pastL2, false, 'reported when the rotation no longer exceeds 2×L2');
  t.equal(r.warmupRuns, 1, 'zero warm-up still makes one run');
  const broken = fakeCase('broken', 20e6, { failAt: 2 });
  t.throws(() => runCase(broken, fakeEnv(0.1), { warmupMs: 0, repeats: 3 }), /setup failed/);
  t.equal(broken.log.disposed, 2);
  t.throws(() => runCase(fakeCase('r', 1e6), fakeEnv(0.1), { warmupMs: 0, repeats: 0 }), RangeError);
});

const CEIL: Ceilings = { bandwidthTBs: 2, matmulTFlops: 2000, bandwidthSource: 'test', matmulSource: 'test' };

t.test('metricsFor and the roofline bound', async (t) => {
  const us = summarize([1000]); // 1 ms
  const m = metricsFor(1e12, 1e9, us, CEIL);
  t.equal(m.tflops, 1000); // 1e12 FLOP in 1 ms
  t.equal(m.tbps, 1); // 1e9 bytes in 1 ms
  t.equal(m.pctBandwidth, 50);
  t.equal(m.pctMatmul, 50);
  t.equal(m.pctRoofline, 50); // intensity 1000 → min(2·1000, 2000) = 2000
  t.equal(rooflineBound(10, CEIL), 20);
  t.equal(rooflineBound(1e4, CEIL), 2000);
  t.equal(rooflineBound(10, { ...CEIL, matmulTFlops: null }), 20);
  t.equal(rooflineBound(10, { ...CEIL, bandwidthTBs: null }), 2000);
  const copy = metricsFor(0, 1e9, us, CEIL);
  t.equal(copy.pctMatmul, null, 'no FLOPs: no matmul share');
  t.equal(copy.pctRoofline, 50, 'a copy is bounded by bandwidth alone');
  t.equal(metricsFor(1e12, 1e9, us, { ...CEIL, matmulTFlops: null }).pctMatmul, null);
});

t.test('measureCase never throws; failures become an error field', async (t) => {
  const ok = measureCase('s', fakeCase('a', 1e6), fakeEnv(0.5), { warmupMs: 0, repeats: 3 }, CEIL, new CheckLedger());
  t.equal(ok.error, undefined);
  t.equal(ok.intensity, 20);
  t.ok(ok.run && ok.run.us.median > 0);
  const bad = measureCase('s', fakeCase('b', 1e6, { failAt: 0, failWith: new MlaError('ERR_SHAPE', 'h must be 16') }), fakeEnv(0.5), { warmupMs: 0, repeats: 3 }, CEIL, new CheckLedger());
  t.equal(bad.error, 'ERR_SHAPE: h must be 16');
  t.equal(bad.run, undefined);
});

t.test('measureCase checks before it times: a wrong kernel is never timed', async (t) => {
  const wrong = fakeCheck('wrong kernel', [1, 2, 30]);
  const right = fakeCheck('right kernel');
  const ledger = new CheckLedger();
  const c = fakeCase('w', 1e6, { checks: [right, wrong] });
  const r = measureCase('s', c, fakeEnv(0.5), { warmupMs: 0, repeats: 3 }, CEIL, ledger);
  t.match(r.error, /^not timed, wrong kernel: wrong result vs the float64 reference: out rel err 7\.22e\+0 > 0\.000001/);
  t.equal(r.run, undefined);
  t.equal(c.log.setups, 0, 'not even set up');
  const again = measureCase('s', fakeCase('w2', 1e6, { checks: [right, wrong] }), fakeEnv(0.5), { warmupMs: 0, repeats: 3 }, CEIL, ledger);
  t.ok(again.error);
  t.same([right.runs, wrong.runs], [1, 1], 'each check runs once per ledger');
  const ok = measureCase('s', fakeCase('r', 1e6, { checks: [right] }), fakeEnv(0.5), { warmupMs: 0, repeats: 3 }, CEIL, ledger);
  t.equal(ok.error, undefined);
  t.same(ok.checked, ['right kernel']);
  const throws: KernelCheck = { name: 'broken', tolerance: 1, run: () => { throw new MlaError('ERR_CUDA', 'launch failed'); } };
  const broken = measureCase('s', fakeCase('b', 1e6, { checks: [throws] }), fakeEnv(0.5), { warmupMs: 0, repeats: 3 }, CEIL, new CheckLedger());
  t.match(broken.error, /broken: the check could not run \(ERR_CUDA: launch failed\)/);
});

t.test('compareOutputs: tolerance, NaN, lengths, nothing compared', async (t) => {
  const pass = compareOutputs({ name: 'k', tolerance: 1e-2 }, [{ name: 'out', got: [1, 2, 3.001], want: [1, 2, 3] }]);
  t.ok(pass.ok, pass.message);
  t.ok(pass.errors['out']! < 1e-3);
  const nan = compareOutputs({ name: 'k', tolerance: 1e-2 }, [{ name: 'out', got: [1, NaN, 3], want: [1, 2, 3] }]);
  t.notOk(nan.ok, 'a NaN fails whatever the tolerance');
  t.match(nan.message, /out rel err NaN/);
  t.notOk(compareOutputs({ name: 'k', tolerance: 1 }, [{ name: 'out', got: [1], want: [1, 2] }]).ok);
  t.notOk(compareOutputs({ name: 'k', tolerance: 1 }, []).ok);
});

// ---- ceilings ---------------------------------------------------------------------------

t.test('parseCeilings: plain ceilings, a bench report, and errors', async (t) => {
  t.same(parseCeilings('{"bandwidthTBs": 3.1, "matmulTFlops": 700}', 'f'), { bandwidthTBs: 3.1, matmulTFlops: 700 });
  t.same(parseCeilings('{"schema": "x", "ceilings": {"bandwidthTBs": 3, "matmulTFlops": null}}', 'f'), { bandwidthTBs: 3, matmulTFlops: undefined });
  t.throws(() => parseCeilings('nope', 'f'), /f: not valid JSON/);
  t.throws(() => parseCeilings('{"bandwidthTBs": -1}', 'f'), /must be a positive number/);
  t.throws(() => parseCeilings('{"other": 1}', 'f'), /neither bandwidthTBs nor matmulTFlops/);
  t.throws(() => parseCeilings('[]', 'f'), /expected an object/);
});

t.test('resolveCeilings: flags, then file, then measurement', async (t) => {
  const timed: string[] = [];
  const time = (c: BenchCase) => {
    timed.push(c.name);
    // Copy: 2 GiB moved in 1 ms → 2.147 TB/s; linear: 1e12 FLOP in 2 ms → 500 TFLOP/s.
    return { instances: 2, rotatedBytes: 0, pastL2: true, warmupRuns: 1, hold: 'held' as const, run: summarize([c.flops > 0 ? 2000 : 1000]), host: summarize([5]) };
  };
  const linear: BenchSuite = {
    name: 'linear', description: '',
    cases: () => [fakeCase('small', 1, { flops: 1e9, bytes: 1e8 }), fakeCase('square', 1, { flops: 1e12, bytes: 1e9 }), fakeCase('zero', 1, { flops: 0 })],
  };
  const measured = resolveCeilings({}, undefined, { time, freeBytes: 80e9, linear, log: () => {} });
  t.equal(measured.bandwidthTBs, (2 * 2 ** 30) / 1000 / 1e6);
  t.match(measured.bandwidthSource, /measured: 1 GiB f32 copy/);
  t.equal(measured.matmulTFlops, 500);
  t.match(measured.matmulSource, /linear suite, square/);
  t.same(timed, ['1 GiB f32', 'square', 'small']);
  const given = resolveCeilings({ matmulTFlops: 900 }, { path: 'c.json', values: { bandwidthTBs: 3.3, matmulTFlops: 1 } }, { time, freeBytes: 80e9, log: () => {} });
  t.same([given.bandwidthTBs, given.matmulTFlops, given.bandwidthSource, given.matmulSource], [3.3, 900, 'file c.json', '--matmul-tflops']);
  const none = resolveCeilings({ bandwidthTBs: 3 }, undefined, { time, freeBytes: 80e9, log: () => {} });
  t.equal(none.matmulTFlops, null);
  t.match(none.matmulSource, /--matmul-tflops/);
  t.equal(ceilingCopyBytes(80e9), 2 ** 30);
  t.equal(ceilingCopyBytes(2e9), 5e8, 'a quarter of free memory when 1 GiB does not fit');
  t.same(matmulCandidates(linear.cases({ quick: false }), 1).map((c) => c.name), ['square']);
});

t.test('linearCeilingCases: T = 4096 when the suite takes it, else its defaults', async (t) => {
  const seen: unknown[] = [];
  const picky: BenchSuite = {
    name: 'linear', description: '',
    cases: (o) => {
      seen.push(o.grid);
      if (o.grid) throw new RangeError('unknown key t');
      return [fakeCase('default', 1)];
    },
  };
  t.same(linearCeilingCases(picky).map((c) => c.name), ['default']);
  t.same(seen, [{ t: [4096] }, undefined]);
  t.same(linearCeilingCases({ name: 'linear', description: '', cases: () => [] }), []);
  const real = await loadSuite('linear').catch(() => undefined);
  if (real) t.ok(matmulCandidates(linearCeilingCases(real)).length > 0, 'our linear suite gives matmul candidates');
});

// ---- suites -------------------------------------------------------------------------------

t.test('suite registry: known names, the copy suite, and missing files', async (t) => {
  t.same(SUITE_NAMES, ['decode', 'sparse', 'prefill', 'rope', 'linear', 'layer', 'copy']);
  const copy = await loadSuite('copy');
  t.equal(copy, copySuite);
  t.same(copy.cases({ quick: true }).map((c) => c.name), ['16 MiB f32', '256 MiB f32']);
  const cs = copy.cases({ quick: false, grid: { mib: [1, 0.5], dtype: ['bf16'] } });
  t.same(cs.map((c) => [c.name, c.bytes, c.footprintBytes, c.flops]), [['1 MiB bf16', 2 ** 21, 2 ** 21, 0], ['0.5 MiB bf16', 2 ** 20, 2 ** 20, 0]]);
  t.throws(() => copy.cases({ quick: false, grid: { dtype: ['f64'] } }), /unknown dtype f64/);
  t.equal(copyCase(10, 'f32').bytes, 16, 'rounded down to whole elements, read + write');
  await t.rejects(loadSuite('nope'), SuiteUnavailableError);
  for (const name of SUITE_NAMES) {
    const suite = await loadSuite(name);
    t.equal(suite.name, name);
    const cases = suite.cases({ quick: true });
    t.ok(cases.length > 0 && cases.every((c) => c.checks.length > 0), `${name}: every case names the checks of its kernels`);
  }
});

t.test("decode suite: the `plan` grid key times the call on a plan made once (FlashMLA's metadata outside), `pdl` forces dependent launch", async (t) => {
  const decodeSuite = await loadSuite('decode');
  const cs = decodeSuite.cases({ quick: true, grid: { h: [128], kernel: ['hopper'], plan: ['compute', 'reuse'] } });
  t.same(cs.map((c) => [c.name, c.params['plan']]), [['b16 h128 sq1 sk1024 bf16 hopper', 'compute'], ['b16 h128 sq1 sk1024 bf16 hopper plan-reused', 'reuse']]);
  t.equal(cs[0]!.flops, cs[1]!.flops, 'the same work counted');
  t.same(decodeSuite.cases({ quick: true }).map((c) => c.params['plan']), ['compute', 'compute'], "default: the whole call");
  t.throws(() => decodeSuite.cases({ quick: true, grid: { plan: ['once'] } }), /plan must be compute or reuse, got once/);
  t.same(decodeSuite.cases({ quick: true, grid: { h: [16], pdl: ['off', 'on'] } }).map((c) => [c.name, c.params['pdl']]),
    [['b16 h16 sq1 sk1024 bf16 no-pdl', false], ['b16 h16 sq1 sk1024 bf16 pdl', true]], 'pdl forced off and on (unset: MLA_CUDA_PDL)');
});

// ---- report, JSON, table, SVG on synthetic results ---------------------------------------

function timing(medianUs: number, flops: number, bytes: number) {
  return metricsFor(flops, bytes, summarize([medianUs * 0.9, medianUs, medianUs * 1.2]), CEIL);
}

function syntheticReport(): BenchReport {
  const dec = { b: 128, sQ: 1, hQ: 128, sumSeqlen: 128 * 4096 };
  const flops = mlaDecodeFlops(dec);
  const bytes = mlaDecodeBytes(dec);
  const results: CaseResult[] = [
    { suite: 'decode', name: 'b128 h128 sq1 sk4096', params: { b: 128 }, flops, bytes, intensity: flops / bytes, footprintBytes: bytes, instances: 2, pastL2: true, run: timing(400, flops, bytes), main: timing(380, flops, bytes) },
    { suite: 'linear', name: 'm4096 n4096 k4096 <bf16>', params: {}, flops: gemmFlops(4096, 4096, 4096), bytes: gemmBytes(4096, 4096, 4096), intensity: arithmeticIntensity(gemmFlops(4096, 4096, 4096), gemmBytes(4096, 4096, 4096)), footprintBytes: 1e8, instances: 2, pastL2: true, run: timing(250, gemmFlops(4096, 4096, 4096), gemmBytes(4096, 4096, 4096)) },
    { suite: 'copy', name: '256 MiB f32', params: {}, flops: 0, bytes: 2 ** 29, intensity: 0, footprintBytes: 2 ** 29, instances: 2, pastL2: true, run: timing(300, 0, 2 ** 29) },
    { suite: 'rope', name: 'tokens 4', params: {}, flops: 100, bytes: 1000, intensity: 0.1, footprintBytes: 2000, instances: 256, pastL2: false, run: timing(3, 100, 1000) },
    { suite: 'prefill', name: 'broken', params: {}, flops: 1, bytes: 1, intensity: 1, footprintBytes: 1, error: 'ERR_SHAPE: nope' },
  ];
  return {
    schema: REPORT_SCHEMA,
    meta: {
      package: { name: 'mla-cuda', version: '0.1.0' }, commit: '0123456789abcdef', dirty: true, date: '2026-11-23T10:00:00.000Z', command: 'mla-cuda bench --quick',
      node: 'v20.0.0', platform: 'linux-x64',
      device: { index: 0, name: 'NVIDIA H100 80GB HBM3', computeCapability: '9.0', smCount: 132, clockMHz: 1980, memoryClockMHz: 2619, memoryBusWidthBits: 5120, theoreticalBandwidthTBs: 3.35, totalMemoryBytes: 85e9, l2CacheBytes: 50e6, pciBusId: '0000:01:00.0' },
      driverVersion: '13.0', runtimeVersion: '13.0', build: { cudaArchitectures: '90-real', nvccVersion: '13.0.88' },
      settings: { warmupMs: 20, repeats: 10, quick: true, filters: [], timing: 'CUDA events' },
    },
    ceilings: CEIL, results, unavailable: [{ suite: 'layer', reason: 'suite "layer" is not available in this build' }],
  };
}

t.test('JSON report round-trips with metadata and rates', async (t) => {
  const r = syntheticReport();
  const back = JSON.parse(reportJson(r)) as BenchReport;
  t.equal(back.schema, 'mla-cuda-bench/1');
  t.equal(back.meta.device?.name, 'NVIDIA H100 80GB HBM3');
  t.equal(back.results.length, 5);
  t.equal(back.results[0]!.run!.us.median, 400);
  t.equal(back.results[0]!.main!.us.median, 380);
  t.equal(back.results[4]!.error, 'ERR_SHAPE: nope');
  t.equal(resultFileStem(r.meta), '2026-11-23-nvidia-h100-80gb-hbm3');
});

t.test('table: every case, main rows, errors, ceilings and footnotes', async (t) => {
  const text = formatTable(syntheticReport());
  t.match(text, /NVIDIA H100 80GB HBM3 \(sm_90, 132 SMs\)/);
  t.match(text, /commit 0123456789ab \(modified\)/);
  t.match(text, /memory bandwidth: 2\.00 TB\/s \(test\)/);
  t.match(text, /median µs/);
  t.match(text, /decode\s+b128 h128 sq1 sk4096\s+400/);
  t.match(text, /main kernel\s+380/);
  t.match(text, /prefill\s+broken\s+error: ERR_SHAPE: nope/);
  t.match(text, /tokens 4 \*/);
  t.match(text, /fit in 2×L2/);
  t.match(text, /layer/);
  t.equal(fmtNum(1234.5), '1235');
  t.equal(fmtNum(0.0001234), '1.2e-4');
  t.equal(fmtNum(null), '-');
});

/** A strict enough check that the SVG is well-formed XML: tags nest and close, attributes are quoted. */
function checkXml(svg: string): string[] {
  const problems: string[] = [];
  const stack: string[] = [];
  const body = svg.replace(/^<\?xml[^>]*\?>\s*/, '');
  const re = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let last = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(body)) !== null) {
    const between = body.slice(last, m.index);
    if (/[<>]/.test(between)) problems.push(`stray markup near ${JSON.stringify(between.slice(0, 40))}`);
    if (/&(?!amp;|lt;|gt;|quot;|apos;)/.test(between)) problems.push('unescaped &');
    last = re.lastIndex;
    const [, close, name, , self] = m;
    if (close) {
      if (stack.pop() !== name) problems.push(`mismatched </${name}>`);
    } else if (!self) stack.push(name!);
  }
  if (/[<>]/.test(body.slice(last))) problems.push('trailing markup');
  if (stack.length > 0) problems.push(`unclosed: ${stack.join(', ')}`);
  return problems;
}

t.test('SVG roofline: standalone, ceilings, points, labels, legend, title', async (t) => {
  const svg = rooflineSvg(syntheticReport());
  t.match(svg, /^<\?xml version="1.0" encoding="UTF-8"\?>\n<svg xmlns="http:\/\/www.w3.org\/2000\/svg" width="\d+" height="\d+" viewBox=/);
  t.same(checkXml(svg), [], 'well-formed');
  t.match(svg, /<title>mla-cuda roofline: NVIDIA H100 80GB HBM3 \(sm_90\)<\/title>/);
  t.match(svg, /class="ceiling-bandwidth"/);
  t.match(svg, /class="ceiling-matmul"/);
  t.match(svg, /2\.00 TB\/s/);
  t.match(svg, /2000 TFLOP\/s matmul/);
  t.match(svg, /ridge at 1000 FLOP\/B/);
  // decode (run + main), linear, rope; copy has no FLOPs and the error has no timing.
  t.equal(svg.match(/class="point"/g)?.length, 4);
  t.equal(svg.match(/class="point-label"/g)?.length, 3);
  t.match(svg, />b128 h128 sq1 sk4096<\/text>/);
  t.match(svg, /m4096 n4096 k4096 &lt;bf16&gt;/, 'labels are escaped');
  t.match(svg, /1 result\(s\) with 0 FLOP/);
  for (const s of ['decode', 'linear', 'rope', 'copy', 'prefill']) t.match(svg, new RegExp(`<text x="\\d+" y="\\d+">${s}</text>`), `legend has ${s}`);
  t.match(svg, />arithmetic intensity \(FLOP\/byte\)</);
  t.match(svg, />TFLOP\/s</);
  t.match(svg, /class="tick"/);
  t.match(svg, />1000<\/text>/, 'decade tick labels');
  t.equal(decadeLabel(-2), '0.01');
  t.equal(decadeLabel(3), '1000');
  t.equal(decadeLabel(6), '1e6');
  t.equal(escapeXml(`a<b>&"'`), 'a&lt;b&gt;&amp;&quot;&apos;');
});

t.test('SVG leaves out labels that would overlap and says so', async (t) => {
  const r = syntheticReport();
  const base = r.results[0]!;
  const crowd = Array.from({ length: 12 }, (_, i) => ({ ...base, name: `same spot ${i}`, main: undefined }));
  const svg = rooflineSvg({ ...r, results: crowd });
  t.same(checkXml(svg), []);
  t.equal(svg.match(/class="point"/g)?.length, 12, 'every point is drawn');
  const labels = svg.match(/class="point-label"/g)?.length ?? 0;
  t.ok(labels >= 1 && labels <= 5, `labels stacked a few lines at most (${labels})`);
  t.match(svg, new RegExp(`${12 - labels} crowded label\\(s\\) left out`));
});

t.test('SVG with no ceilings and no points is still a valid chart', async (t) => {
  const r = syntheticReport();
  const svg = rooflineSvg({ ...r, results: [], ceilings: { bandwidthTBs: null, matmulTFlops: null, bandwidthSource: '', matmulSource: '' }, meta: { ...r.meta, device: null } });
  t.same(checkXml(svg), []);
  t.notMatch(svg, /class="ceiling-/);
  t.match(svg, /bandwidth unknown/);
  t.match(svg, /no device/);
});

t.test('metadata: git commit (or MLA_CUDA_COMMIT) and package version', async (t) => {
  const here = gitCommit();
  if (here.commit !== null && here.dirty !== null) t.match(here.commit, /^[0-9a-f]{40}$/);
  const elsewhere = t.testdir({});
  t.same(gitCommit(elsewhere, { MLA_CUDA_COMMIT: 'deadbeef' }), { commit: 'deadbeef', dirty: null });
  t.same(gitCommit(elsewhere, {}), { commit: null, dirty: null });
  t.match(packageInfo(), { name: 'mla-cuda', version: /^\d+\.\d+\.\d+/ });
  t.same(packageInfo(elsewhere), { name: 'mla-cuda', version: 'unknown', nodeEngines: '' });
});

// ---- the command, in-process ------------------------------------------------------------

const NO_GPU: DeviceStatus = {
  ok: false, code: 'ERR_NO_DEVICE', cudaError: 'cudaErrorInsufficientDriver', message: 'CUDA driver version is insufficient', deviceCount: 0, driverVersion: 0, runtimeVersion: 13000,
};
const GPU: DeviceStatus = { ok: true, code: 'OK', cudaError: '', message: 'ok', deviceCount: 1, driverVersion: 13000, runtimeVersion: 13000 };
const H100: DeviceInfo = {
  index: 0, name: 'NVIDIA H100 80GB HBM3', major: 9, minor: 0, smCount: 132, totalMemory: 85e9, freeMemory: 80e9, l2CacheBytes: 50e6,
  sharedMemPerBlockOptin: 232448, sharedMemPerSm: 233472, clockKHz: 1980000, memoryClockKHz: 0, memoryBusWidth: 5120, pciBusId: '0000:01:00.0',
  computeCapability: '9.0', supportedByBuild: true,
};

function fakeSuite(name: string, n = 2): BenchSuite {
  return { name, description: `fake ${name}`, cases: () => Array.from({ length: n }, (_, i) => fakeCase(`${name} case${i}`, 10e6, { main: name === 'decode' })) };
}

function deps(over: Partial<BenchDeps> = {}): BenchDeps & { out: string; err: string; files: Map<string, string>; opened: number; holds: boolean[] } {
  const d = {
    out: '', err: '', files: new Map<string, string>(), opened: 0,
    stdout: (s: string) => void (d.out += s),
    stderr: (s: string) => void (d.err += s),
    interactive: false,
    status: () => GPU,
    build: () => ({ addonLoaded: true, compiledWithCuda: true, cudaDisabled: false, emulated: false, cudaArchitectures: '90-real', hopperDecode: true, nvccVersion: '13.0.88', runtimeVersion: 13000, ops: [] }),
    holds: [] as boolean[],
    openDevice: (_index: number, opts: { hold: boolean }) => {
      d.opened++;
      d.holds.push(opts.hold);
      return { info: H100, env: fakeEnv(0.05), dispose: () => {} };
    },
    loadSuite: async (name: string) => {
      if (name === 'layer' || name === 'prefill') throw new SuiteUnavailableError(name, `lib/bench/${name}.ts is not part of it yet`);
      return fakeSuite(name);
    },
    writeFile: (p: string, text: string) => void d.files.set(p, text),
    now: () => new Date('2026-11-23T10:00:00Z'),
    commit: () => ({ commit: 'abc123', dirty: false }),
    commandLine: 'mla-cuda bench',
    ...over,
  };
  return d;
}

t.test('bench without a GPU: clear message, exit code 2, device untouched', async (t) => {
  const d = deps({ status: () => NO_GPU });
  t.equal(await runBench(['decode', '--quick'], d), 2);
  t.match(d.err, /no usable CUDA device \(ERR_NO_DEVICE, cudaErrorInsufficientDriver\)/);
  t.match(d.err, /mla-cuda doctor/);
  t.equal(d.opened, 0);
  t.equal(d.out, '');
});

t.test('bench refuses the emulated device: not a timing tool', async (t) => {
  const d = deps({ build: () => ({ addonLoaded: true, compiledWithCuda: true, cudaDisabled: false, emulated: true, cudaArchitectures: 'emulated', hopperDecode: true, nvccVersion: 'GNU 12.2.0', runtimeVersion: 13000, ops: [] }) });
  t.equal(await runBench(['decode', '--quick'], d), 2);
  t.match(d.err, /emulated device is in use .* times mean nothing/);
  t.equal(d.opened, 0);
});

t.test('bench --help, bad flags and unavailable suites', async (t) => {
  const h = deps({ status: () => NO_GPU });
  t.equal(await runBench(['--help'], h), 0);
  t.match(h.out, /--warmup MS\s+warm-up per case in MILLISECONDS/);
  const bad = deps();
  t.equal(await runBench(['--repeats', 'x'], bad), 1);
  t.match(bad.err, /--repeats needs an integer, got "x"/);
  t.match(bad.err, /bench --help/);
  const named = deps();
  t.equal(await runBench(['layer'], named), 1, 'a named suite that is missing is an error');
  t.match(named.err, /suite "layer" is not available in this build/);
  t.equal(named.opened, 0);
});

t.test('bench --list shows cases without a GPU', async (t) => {
  const d = deps({ status: () => NO_GPU });
  t.equal(await runBench(['--list', '--filter', 'case1'], d), 0);
  t.match(d.out, /decode: fake decode \(1 case\)\n {2}decode case1/);
  t.match(d.out, /suite "layer" is not available/);
});

t.test('bench with an injected device: table, JSON file, SVG file, metadata', async (t) => {
  const d = deps();
  const code = await runBench(['decode', 'linear', '--quick', '--repeats', '4', '--warmup', '0', '--matmul-tflops', '800', '--bandwidth-tbs', '3', '--json', 'r.json', '--svg', 'r.svg'], d);
  t.equal(code, 0, d.err);
  t.match(d.out, /decode\s+decode case0\s+\d/);
  t.match(d.out, /main kernel/);
  t.match(d.err, /\[4\/4\] linear linear case1: /, 'plain progress lines off a TTY');
  const report = JSON.parse(d.files.get('r.json')!) as BenchReport;
  t.equal(report.results.length, 4);
  t.same(report.ceilings, { bandwidthTBs: 3, matmulTFlops: 800, bandwidthSource: '--bandwidth-tbs', matmulSource: '--matmul-tflops' });
  t.equal(report.meta.commit, 'abc123');
  t.equal(report.meta.device?.computeCapability, '9.0');
  t.equal(report.meta.device?.clockMHz, 1980);
  t.equal(report.meta.device?.memoryClockMHz, null, 'unreadable clocks are null');
  t.equal(report.meta.driverVersion, '13.0');
  t.equal(report.meta.build.cudaArchitectures, '90-real');
  t.equal(report.meta.settings.repeats, 4);
  t.equal(report.meta.date, '2026-11-23T10:00:00.000Z');
  t.equal(report.results[0]!.run!.us.n, 4);
  t.ok(report.results[0]!.main, 'runMain timed too');
  t.same([report.results[0]!.hold, report.results[0]!.hostUs?.n], ['held', 4], 'the host time of each call, and how the runs were timed');
  t.match(d.out, /host µs/);
  t.match(report.meta.settings.timing, /under a stream hold/);
  t.same(d.holds, [true], 'the stream is held by default');
  const noHold = deps();
  t.equal(await runBench(['copy', '--quick', '--no-hold', '--matmul-tflops', '1', '--bandwidth-tbs', '1', '--json', 'n.json'], noHold), 0);
  t.same(noHold.holds, [false], '--no-hold');
  t.match((JSON.parse(noHold.files.get('n.json')!) as BenchReport).meta.settings.timing, /host gaps included/);
  t.same(checkXml(d.files.get('r.svg')!), []);
  t.equal(report.meta.dirty, false);
  const saved = deps();
  t.equal(await runBench(['copy', '--quick', '--matmul-tflops', '1', '--bandwidth-tbs', '1', '--out-dir', 'bench/results'], saved), 0);
  t.same([...saved.files.keys()], [join('bench/results', '2026-11-23-nvidia-h100-80gb-hbm3.json'), join('bench/results', '2026-11-23-nvidia-h100-80gb-hbm3.svg')]);
  const badDevice = deps({ openDevice: () => { throw new MlaError('ERR_CUDA', 'invalid device ordinal'); } });
  t.equal(await runBench(['copy', '--device', '3'], badDevice), 1);
  t.match(badDevice.err, /cannot use device 3 \(1 visible\): invalid device ordinal/);
});

t.test('bench --json to stdout sends the table to stderr; filters; TTY progress', async (t) => {
  const ceilings = join(t.testdir({ 'c.json': JSON.stringify({ bandwidthTBs: 3.3, matmulTFlops: 700 }) }), 'c.json');
  const d = deps({ interactive: true });
  t.equal(await runBench(['--json', '--filter', 'case0', '--ceilings-file', ceilings, '--warmup', '0', '--repeats', '2'], d), 0, d.err);
  const report = JSON.parse(d.out) as BenchReport;
  t.same(report.results.map((r) => r.name), ['decode case0', 'sparse case0', 'rope case0', 'linear case0', 'copy case0']);
  t.same(report.unavailable.map((u) => u.suite), ['prefill', 'layer']);
  t.equal(report.ceilings.bandwidthSource, `file ${ceilings}`);
  t.match(d.err, /median µs/);
  t.match(d.err, /\r\x1b\[K\[1\/5\] decode decode case0 \.\.\./);
  const none = deps();
  t.equal(await runBench(['--filter', 'zzz', '--matmul-tflops', '1', '--bandwidth-tbs', '1'], none), 1);
  t.match(none.err, /no case matches --filter zzz/);
});


t.test('bench: a failing case is reported and makes the exit code 1; unwritable output too', async (t) => {
  const d = deps({
    loadSuite: async (name) => ({ name, description: '', cases: () => [fakeCase('fails', 1e6, { failAt: 0, failWith: new MlaError('ERR_CUDA', 'boom') })] }),
    writeFile: () => {
      throw new Error('EACCES');
    },
  });
  t.equal(await runBench(['rope', '--matmul-tflops', '1', '--bandwidth-tbs', '1', '--svg', '/x.svg'], d), 1);
  t.match(d.out, /error: ERR_CUDA: boom/);
  t.match(d.err, /cannot write the roofline to \/x.svg: EACCES/);
});

t.test('bench: a suite whose check fails is reported, not timed, and exits 1', async (t) => {
  const wrong = fakeCheck('fake decode', [1, 2, 4]);
  const c = fakeCase('wrong', 1e6, { checks: [wrong] });
  const d = deps({ loadSuite: async (name) => ({ name, description: '', cases: () => [c] }) });
  t.equal(await runBench(['decode', '--matmul-tflops', '1', '--bandwidth-tbs', '1', '--json', 'r.json'], d), 1);
  t.match(d.err, /CHECK FAILED: fake decode: wrong result vs the float64 reference/);
  t.equal(c.log.setups, 0);
  const report = JSON.parse(d.files.get('r.json')!) as BenchReport;
  t.match(report.results[0]!.error, /not timed, fake decode: wrong result/);
});

// ---- the built CLI, once, for real ---------------------------------------------------------

const cli = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

t.test('built CLI: bench exits 2 without a GPU, bad flags exit 1, --version', { skip: existsSync(cli) ? false : 'dist/ not built (npm run build)' }, async (t) => {
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, CI: 'true' } });
  const v = run('--version');
  t.equal(v.status, 0);
  t.match(v.stdout, /^\d+\.\d+\.\d+/);
  // The CUDA addon's own answer (npm test may have put this process on the emulated device).
  const withDevice = (device: string, ...args: string[]) =>
    spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, CI: 'true', MLA_CUDA_DEVICE: device } });
  const b = withDevice('cuda', 'bench', '--quick');
  if (b.status !== 0) {
    t.equal(b.status, 2, b.stderr);
    t.match(b.stderr, /no usable CUDA device/);
  }
  if (existsSync(emulatorAddonPath())) {
    const e = withDevice('emulator', 'bench', 'decode', '--quick');
    t.equal(e.status, 2, 'bench refuses the emulated device');
    t.match(e.stderr, /emulated device is in use/);
  }
  const bad = run('bench', '--nope');
  t.equal(bad.status, 1);
  t.match(bad.stderr, /unknown flag --nope/);
  const unknown = run('frobnicate');
  t.equal(unknown.status, 1);
  t.match(unknown.stderr, /unknown command "frobnicate"/);
  const help = run('help');
  t.match(help.stdout, /bench\s+time the kernels/);
  t.match(help.stdout, /doctor/);
  t.match(run('help', 'bench').stdout, /usage: mla-cuda bench/);
});
