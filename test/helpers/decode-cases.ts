// Decode cases shared by test/decode.test.ts and test/emulator.test.ts: random inputs over
// shuffled pages, the float64 reference, a poisoned run, and the comparison.
import { cuda, DeviceTensor } from '../../lib/index.js';
import { decode, DecodeWorkspace, type DecodeKernelChoice, type DecodeOptions } from '../../lib/ops/decode.js';
import { shuffledBlockTable } from '../../lib/reference/testing.js';
import { poison, randn, relError, rng, roundTo } from './gpu.js';
import type { Asserts } from './validation.js';
import * as reference from '../../lib/reference/index.js';

export const D = 576;
export const DV = 512;

export interface CaseSpec {
  B: number;
  H: number;
  pageSize: number;
  seqLens: number[];
  /** Uniform s_q, or per request (then qSeqLens is passed). */
  sQ: number | number[];
  causal: boolean;
  dtype: 'bf16' | 'f16';
  seed: number;
  scale?: number;
  /** The main kernel to force (default: decode's own choice). */
  kernel?: DecodeKernelChoice;
}

/** A decode main kernel a test forces (decode's `kernel` option). */
export type TestedDecodeKernel = 'portable' | 'hopper' | 'hopper-wide';

/**
 * The decode main kernels to test on the current device: on compute capability 9.0 (a real
 * H100/H200 or the emulated sm_90; the Hopper path must exist there) the portable one and the
 * Hopper path twice, as chosen ('hopper': its few-rows kernel where s_q·H <= 32) and with its
 * 64-row kernel forced ('hopper-wide'); the portable one elsewhere.
 * MLA_TEST_DECODE_KERNELS=portable narrows it (scripts/gpu-check.sh, after the Hopper kernel
 * failed its smoke test there; `note` says so in the test output).
 */
export function decodeKernels(note: (msg: string) => void): TestedDecodeKernel[] {
  const d = cuda.deviceInfo(cuda.currentDevice());
  const all: TestedDecodeKernel[] = d.computeCapability === '9.0' ? ['portable', 'hopper', 'hopper-wide'] : ['portable'];
  const only = process.env['MLA_TEST_DECODE_KERNELS'];
  if (only === undefined) return all;
  const kept = all.filter((k) => only.split(',').includes(k));
  note(`MLA_TEST_DECODE_KERNELS=${only}: testing ${kept.join(', ') || 'no'} decode kernel(s) of ${all.join(', ')}`);
  return kept;
}

export interface Built {
  q: DeviceTensor;
  cache: DeviceTensor;
  blockTable: DeviceTensor;
  seqLens: DeviceTensor;
  qSeqLens?: DeviceTensor;
  ref: { out: Float64Array; lse: Float64Array };
  tokens: number;
  tensors: DeviceTensor[];
}

/** Random inputs over shuffled pages (unused table entries hold -1), and the reference. */
export function build(spec: CaseSpec): Built {
  const { B, H, pageSize, seqLens, dtype } = spec;
  const r = rng(spec.seed);
  const qLens = typeof spec.sQ === 'number' ? seqLens.map(() => spec.sQ as number) : spec.sQ;
  const tokens = qLens.reduce((a, b) => a + b, 0);
  const { table, maxPages, numPages } = shuffledBlockTable(seqLens, pageSize, r);
  const qF = randn(tokens * H * D, spec.seed + 1, 0.5);
  const cF = randn(numPages * pageSize * D, spec.seed + 2, 1);
  const scale = spec.scale ?? 0.1352337788608801;
  const ref = reference.decode({
    q: roundTo(qF, dtype),
    cache: roundTo(cF, dtype),
    pageSize,
    blockTable: table,
    seqLens,
    qSeqLens: qLens,
    numHeads: H,
    dimLatent: DV,
    headDim: D,
    scale,
    causal: spec.causal,
  });
  const tensors: DeviceTensor[] = [];
  const up = <T extends DeviceTensor>(x: T): T => {
    tensors.push(x);
    return x;
  };
  const built: Built = {
    q: up(DeviceTensor.fromArray(qF, [tokens, H, D], dtype)),
    cache: up(DeviceTensor.fromArray(cF, [numPages, pageSize, D], dtype)),
    blockTable: up(DeviceTensor.fromArray(table, [B, maxPages], 'i32')),
    seqLens: up(DeviceTensor.fromArray(Int32Array.from(seqLens), [B], 'i32')),
    ref,
    tokens,
    tensors,
  };
  if (typeof spec.sQ !== 'number') built.qSeqLens = up(DeviceTensor.fromArray(Int32Array.from(qLens), [B], 'i32'));
  return built;
}

export function checkOutputs(tt: Asserts, label: string, got: { out: Float32Array; lse: Float32Array }, ref: { out: Float64Array; lse: Float64Array }): void {
  const err = relError(got.out, ref.out);
  tt.ok(err < 1e-2, `${label}: out rel err ${err.toExponential(2)} < 1e-2`);
  let lseBad = 0;
  let emptyBad = 0;
  for (let i = 0; i < ref.lse.length; i++) {
    const want = ref.lse[i]!;
    const have = got.lse[i]!;
    if (want === Infinity) {
      if (have !== Infinity) lseBad++;
      for (let c = 0; c < DV; c++) if (got.out[i * DV + c] !== 0) emptyBad++;
    } else if (!(Math.abs(have - want) <= 2e-3 + 2e-3 * Math.abs(want))) {
      lseBad++;
    }
  }
  tt.equal(lseBad, 0, `${label}: lse matches (+inf for rows without keys)`);
  tt.equal(emptyBad, 0, `${label}: rows without keys are exactly 0`);
}

/** decode() of a built case into poisoned outputs, read back; `over` replaces the cache or adds options. */
export function runBuilt(b: Built, spec: CaseSpec, ws?: DecodeWorkspace, over: Partial<Pick<DecodeOptions, 'cache' | 'plan' | 'pdl'>> = {}): { out: Float32Array; lse: Float32Array } {
  const H = spec.H;
  const out = poison(DeviceTensor.empty([b.tokens, H, DV], spec.dtype));
  const lse = poison(DeviceTensor.empty([b.tokens, H], 'f32'));
  try {
    const res = decode({
      q: b.q,
      cache: b.cache,
      blockTable: b.blockTable,
      seqLens: b.seqLens,
      qSeqLens: b.qSeqLens,
      scale: spec.scale ?? 0.1352337788608801,
      causal: spec.causal,
      out,
      lse,
      workspace: ws,
      kernel: spec.kernel,
      ...over,
    });
    return { out: res.out.toFloat32Sync(), lse: res.lse.toFloat32Sync() };
  } finally {
    out.dispose();
    lse.dispose();
  }
}

export function disposeBuilt(b: Built): void {
  for (const x of b.tensors) x.dispose();
}
