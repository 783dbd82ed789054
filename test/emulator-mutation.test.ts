// Mutation tests of the emulated device ("a checker that cannot fail is not a checker"): each
// mutant is a real kernel source (csrc/kernels/*.cu) with one deliberate bug of the kind the
// emulator exists to catch, built into a temporary emulator addon (only the mutated file is
// recompiled; test/helpers/mutants.ts) and run on one focused case against the float64
// reference in a child process. Every mutant must be detected, by an emulator fault with the
// expected message or by a result outside the op's tolerance; an unmutated control copy built
// the same way must pass every case, or the harness itself would "detect" everything.
// Run alone: npx tap --disable-coverage test/emulator-mutation.test.ts
//
// With MLA_MUTANT_SANITIZER=thread the same machinery runs on the ThreadSanitizer emulator
// (build/sanitize-thread) instead: the emulator's own checks see cp.async and ldmatrix, not plain
// loads and stores, so a missing barrier between plain shared-memory accesses is only a wrong
// number by luck of the fiber order; TSan (with the happens-before edges csrc/emu/scheduler.cc
// states under MLA_EMU_TSAN) must report it as a data race at the kernel's lines. There the
// control must be free of reports, and every race mutant (RACE_MUTANTS) reported.
// Run: MLA_MUTANT_SANITIZER=thread MLA_CUDA_DEVICE=emulator npx tap --disable-coverage -t 900 test/emulator-mutation.test.ts
import t from 'tap';
import type { Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  applyEdits,
  buildMutantAddon,
  kernelSource,
  HARNESS_CASES,
  limiter,
  lineOf,
  locateEmulatorBuild,
  packageJs,
  parseTsanReports,
  runHarness,
  TSAN_HARNESS_CASES,
  TSAN_TREE,
  tsanChildEnv,
  writeHarness,
} from './helpers/mutants.js';
import type {
  BuiltAddon,
  EmulatorBuild,
  Edit,
  HarnessCase,
  HarnessResult,
  KernelFile,
  Mutant,
  Mutated,
  TsanAccess,
  TsanFrame,
  TsanReport,
} from './helpers/mutants.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const IN_FLIGHT = /reads shared memory with a cp\.async of thread \d+ still in flight/;
// Without the barrier, whichever side of the race runs first is reported: a read of another
// warp's landed copy, or the copy that overwrites what another warp (or several: "warp -2") read.
const NO_BARRIER = /filled by cp\.async without a __syncthreads in between|overwrites shared memory that (?:warp \d+|several warps) read \(ldmatrix\) since the last __syncthreads/;

// wgmma reading a K stage whose TMA load has not landed (csrc/emu/hopper.cc readOperand).
const TMA_IN_FLIGHT = /wgmma operand B reads shared offset \d+ while a TMA load into it is in flight \(wait on its mbarrier at shared offset \d+ first\)/;

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
  // ---- decode_sm90.cu (sm_90a: wgmma, TMA, mbarrier; the decode-hopper case has NaN in every cache row no request reads) ----
  {
    id: 'hopper-no-mbarrier-wait',
    title: 'decode sm_90a: the mbarrier wait for a K chunk\'s TMA load removed',
    file: 'decode_sm90.cu',
    edits: [{ find: '      mbarrierWait(&bar[stage * kNChunks + c], phase & 1u);\n', replace: '' }],
    run: 'decode-hopper',
    expect: { fault: TMA_IN_FLIGHT },
    faultLine: 'wgmmaSS<T, 64, 0, 0>(s, ',
  },
  {
    id: 'hopper-pv-no-fence',
    title: 'decode sm_90a: the wgmma.fence before warpgroup 0\'s P0·V0_L removed (S\'s wait_group came in between)',
    file: 'decode_sm90.cu',
    edits: [{ find: '        wgmmaFence();\n        issuePV(0, pb, 0);\n', replace: '        issuePV(0, pb, 0);\n' }],
    run: 'decode-hopper',
    expect: { fault: /wgmma\.mma_async without wgmma\.fence/ },
    faultLine: 'if (aRegs) wgmmaRS<T, 256, 1>(o, ',
  },
  {
    id: 'hopper-s-no-wait',
    title: 'decode sm_90a: the wgmma.wait_group after the first scores removed (read before they land)',
    file: 'decode_sm90.cu',
    edits: [{ find: '      else issueS(1, kVChunks, kNChunks, true);\n      wgmmaWait<0>();\n', replace: '      else issueS(1, kVChunks, kNChunks, true);\n' }],
    run: 'decode-hopper',
    // In flight, the accumulators read NaN; a later wait_group covers the group, so no thread exits
    // with results unwaited.
    expect: { numeric: true },
  },
  {
    id: 'hopper-no-partial-clear',
    title: 'decode sm_90a: the clearing of the V rows past L in a partial tile disabled',
    file: 'decode_sm90.cu',
    edits: [{ find: 'return kvBegin + t * kBN + kBN > L ? max(L - kvBegin - t * kBN, 0) : -1;', replace: 'return -1;' }],
    run: 'decode-hopper',
    // The rows of the last page past L are NaN in the case's cache: 0 · NaN reaches P·V.
    expect: { numeric: true },
  },
  {
    id: 'hopper-v-lbo',
    title: 'decode sm_90a: the V descriptor\'s leading byte offset doubled (2 * kChunkBytes)',
    file: 'decode_sm90.cu',
    edits: [{
      find: 'smemDesc(vAddr + kk * 16 * 128, Swizzle::B128, kChunkBytes, 1024)',
      replace: 'smemDesc(vAddr + kk * 16 * 128, Swizzle::B128, 2 * kChunkBytes, 1024)',
    }],
    run: 'decode-hopper',
    expect: { numeric: true },
  },
  {
    id: 'hopper-v-swizzle',
    title: 'decode sm_90a: the V descriptor with the 64-byte swizzle instead of the TMA\'s 128-byte one',
    file: 'decode_sm90.cu',
    edits: [{
      find: 'smemDesc(vAddr + kk * 16 * 128, Swizzle::B128, kChunkBytes, 1024)',
      replace: 'smemDesc(vAddr + kk * 16 * 128, Swizzle::B64, kChunkBytes, 1024)',
    }],
    run: 'decode-hopper',
    expect: { numeric: true },
  },
  {
    // Warpgroup 1 multiplies by sP0 before warpgroup 0 has written this tile's P0 (the
    // previous pair's, or the 0xFF fill).
    id: 'hopper-no-p0-barrier',
    title: 'decode sm_90a: warpgroup 1\'s wait for P0 in shared memory (named barrier) removed',
    file: 'decode_sm90.cu',
    edits: [{ find: '        namedBarrierSync(kBarP0, kThreadsSm90);\n', replace: '' }],
    run: 'decode-hopper',
    expect: { numeric: true },
  },
  {
    // The quad's thread 0 writes the new row max before its three neighbours have read the old one.
    id: 'hopper-no-quad-syncwarp',
    title: 'decode sm_90a: the __syncwarp between reading the running max and writing the new one removed',
    file: 'decode_sm90.cu',
    edits: [{ find: '        exponentiate(mNew);\n        __syncwarp();  // the quad\'s other threads have read sM\n', replace: '        exponentiate(mNew);\n' }],
    run: 'decode-hopper',
    expect: { numeric: true },
    // Wrong only where the max grows after the first pair of tiles: 3 SMs give parts of several pairs.
    env: { MLA_EMU_DEVICES: 'sm_90:3' },
  },
  {
    // The Q tile's cp.async copies are waited for by nobody: S's wgmma reads them in flight.
    id: 'hopper-q-no-cp-async-wait',
    title: 'decode sm_90a: the cp.async wait for the Q tile removed',
    file: 'decode_sm90.cu',
    edits: [{ find: '    if (tid < kBM) sM[tid] = -INFINITY;\n    cpAsyncWait<0>();\n', replace: '    if (tid < kBM) sM[tid] = -INFINITY;\n' }],
    run: 'decode-hopper',
    expect: { fault: /wgmma operand \S+ reads shared offset \d+ while a cp\.async of thread \d+ into it is in flight/ },
    faultLine: 'wgmmaSS<T, 64, 0, 0>(s, ',
  },
  // ---- decode_sm90.cu's few-rows kernel (decodeNarrowSm90Kernel) ----
  {
    id: 'narrow-no-mbarrier-wait',
    title: 'decode sm_90a few rows: the mbarrier wait for a K chunk\'s TMA load removed',
    file: 'decode_sm90.cu',
    edits: [{ find: '        mbarrierWait(&tileBar[c], phase & 1u);\n', replace: '' }],
    run: 'decode-narrow',
    // The K tile is the A operand here.
    expect: { fault: /wgmma operand A reads shared offset \d+ while a TMA load into it is in flight/ },
    faultLine: 'wgmmaSS<T, NR, 0, 0>(s, ',
  },
  {
    id: 'narrow-no-partial-clear',
    title: 'decode sm_90a few rows: the clearing of the V rows past L in a partial tile disabled',
    file: 'decode_sm90.cu',
    edits: [{ find: 'const int first = key0 + kBN > L ? max(L - key0, 0) : kBN;', replace: 'const int first = kBN;' }],
    run: 'decode-narrow',
    // The rows of the last page past L are NaN in the case's cache: 0 · NaN reaches P·V.
    expect: { numeric: true },
  },
  {
    id: 'narrow-v-not-transposed',
    title: 'decode sm_90a few rows: V^T read K-major instead of MN-major (the A transpose bit cleared)',
    file: 'decode_sm90.cu',
    edits: [{ find: 'wgmmaSS<T, NR, 1, 0>(o + cb * NS, ', replace: 'wgmmaSS<T, NR, 0, 0>(o + cb * NS, ' }],
    run: 'decode-narrow',
    expect: { numeric: true },
  },
  {
    // The other three warps' maxima are read before they are written: a tile max too small
    // overflows P (or a stale one from the tile before).
    id: 'narrow-no-max-exchange-barrier',
    title: 'decode sm_90a few rows: the warpgroup barrier after the row-max exchange removed',
    file: 'decode_sm90.cu',
    edits: [{ find: '      namedBarrierSync(kBarLocal0 + wg, 128);\n      // Chunk 8 (rope)', replace: '      // Chunk 8 (rope)' }],
    run: 'decode-narrow',
    expect: { numeric: true },
  },
  // No mutant removes a fenceProxyAsync(): the emulator cannot see it (fibers are sequentially
  // consistent and keep no record of plain stores since the last proxy fence; docs/emulator.md,
  // sm_90a "Not checked"), so it would only ever be a todo. racecheck on a GPU is the check.
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
    // 67 KB of dynamic shared memory without the opt-in: CUDA refuses the launch (48 KB rule).
    id: 'prefill-no-smem-optin',
    title: 'prefill: the shared-memory opt-in (cudaFuncSetAttribute MaxDynamicSharedMemorySize) removed',
    file: 'prefill.cu',
    edits: [{ find: 'MLA_RETURN_IF_ERROR(optInSharedMemory<kernel>(kSmemBytes, "prefillAttention"));', replace: '' }],
    run: 'prefill',
    expect: { launchRefused: /prefillAttention: cudaErrorInvalidValue/ },
  },
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
    edits: [{ find: 'pos > diag + j) s[nt][e] = -INFINITY;', replace: 'pos >= diag + j) s[nt][e] = -INFINITY;' }],
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
  {
    // A plain load one allocation-length too far lands on the guard page after device memory:
    // a memory fault ends the kernel instead of reading a neighbour's data (or crashing Node).
    id: 'merge-read-past-end',
    title: 'prefill merge: the partial output read one allocation past its end',
    file: 'prefill.cu',
    edits: [{ find: 'acc += toFloat<T>(p[d]) * w2;', replace: 'acc += toFloat<T>(p[d + a.rows * a.sPr]) * w2;' }],
    run: 'merge',
    expect: { fault: /mergeAttnStatesKernel.* faulted on the emulated device: block \(\d+,0,0\) thread \d+ .*: memory fault at address 0x[0-9a-f]+, outside every live device allocation/ },
    faultWithoutLine: true,
  },
  {
    // The other lanes exit while lane 0 waits for them: a deadlock, reported with the warp's state.
    id: 'merge-lone-syncwarp',
    title: 'prefill merge: only lane 0 reaches the full-mask __syncwarp',
    file: 'prefill.cu',
    edits: [{ find: '  __syncwarp();\n  if (lane == 0) a.lse', replace: '  if (lane == 0) __syncwarp();\n  if (lane == 0) a.lse' }],
    run: 'merge',
    expect: { fault: /deadlock in block .*exited 0xfffffffe.*in __syncwarp 0x00000001 \(mask 0xffffffff at / },
  },
];

/** A mutant's edits, by id: the race mutants reuse sites of MUTANTS where they are the same. */
function editsOf(id: string): readonly Edit[] {
  const m = MUTANTS.find((x) => x.id === id);
  if (!m) throw new Error(`no mutant ${id}`);
  return m.edits;
}

/**
 * A race on plain memory accesses that the TSan build must report: a `data race` whose two
 * accesses both name the mutated copy of the kernel at one of the `racy` lines.
 */
interface RaceMutant {
  id: string;
  title: string;
  file: KernelFile;
  edits: readonly Edit[];
  run: HarnessCase;
  /**
   * Source text of the accesses the mutation leaves unordered, each once in the mutated source;
   * their lines are the lines a report may name (either side of the race may be reported first,
   * and a statement with two stores is two sites).
   */
  racy: readonly string[];
  /** Set where TSan is known not to report it: the gap, in words (the detection is a tap `todo`). */
  todo?: string;
  /** Extra environment of the harness child, as Mutant's. */
  env?: Readonly<Record<string, string>>;
}

const RACE_MUTANTS: readonly RaceMutant[] = [
  {
    id: 'decode-no-rowmax-barrier',
    title: 'decode: the row-max exchange through sRed without its __syncthreads (write, then other warps read)',
    file: 'decode.cu',
    edits: editsOf('decode-no-rowmax-barrier'),
    run: 'decode',
    racy: [
      'sRed[cg * BM + rg * 16 + g] = mx[0];',
      'sRed[cg * BM + rg * 16 + g + 8] = mx[1];',
      'for (int c = 0; c < CG; ++c) tm = fmaxf(tm, sRed[c * BM + rg * 16 + g + r * 8]);',
    ],
  },
  {
    id: 'decode-no-p-barrier',
    title: 'decode: the P tile (sP, plain stores) read by other column groups\' ldmatrix without the __syncthreads in between',
    file: 'decode.cu',
    edits: [{
      find: '        o[n][3] *= alpha[1];\n      }\n      __syncthreads();\n',
      replace: '        o[n][3] *= alpha[1];\n      }\n',
    }],
    run: 'decode',
    racy: [
      '*reinterpret_cast<uint32_t*>(pr) = packPair<T>(p[0], p[1]);',
      '*reinterpret_cast<uint32_t*>(pr + 8 * PLD) = packPair<T>(p[2], p[3]);',
      'ldmatrixX4(pa, sP + (rg * 16 + (lane & 15)) * PLD + ks * 16 + (lane >> 4) * 8);',
    ],
  },
  {
    id: 'decode-no-rowsum-barrier',
    title: 'decode: the row-sum exchange through sRed without its __syncthreads',
    file: 'decode.cu',
    edits: [{
      find: '      sRed[cg * BM + rg * 16 + g + 8] = l[1];\n    }\n    __syncthreads();\n',
      replace: '      sRed[cg * BM + rg * 16 + g + 8] = l[1];\n    }\n',
    }],
    run: 'decode',
    racy: [
      'sRed[cg * BM + rg * 16 + g] = l[0];',
      'sRed[cg * BM + rg * 16 + g + 8] = l[1];',
      'for (int c = 0; c < CG; ++c) lt += sRed[c * BM + rg * 16 + g + r * 8];',
    ],
  },
  {
    id: 'linear-skinny-no-barrier',
    title: 'linear (skinny, M <= 16): the cross-warp split-K reduction through static __shared__ red without its __syncthreads',
    file: 'linear.cu',
    edits: [{
      find: '      for (int r = 0; r < 4; ++r) red[warp * 16 + nt * 4 + r][lane] = acc[nt][r];\n    __syncthreads();\n',
      replace: '      for (int r = 0; r < 4; ++r) red[warp * 16 + nt * 4 + r][lane] = acc[nt][r];\n',
    }],
    run: 'linear-skinny',
    racy: [
      'for (int r = 0; r < 4; ++r) red[warp * 16 + nt * 4 + r][lane] = acc[nt][r];',
      'for (int r = 0; r < 4; ++r) acc[nt][r] += red[(warp + j) * 16 + nt * 4 + r][lane];',
    ],
  },
  {
    // Global memory, not shared: the lanes' reads of lse and lane 0's overwrite of the same word.
    id: 'merge-no-syncwarp',
    title: 'prefill merge: lane 0 overwrites lse that the other lanes read, without the __syncwarp',
    file: 'prefill.cu',
    edits: editsOf('merge-no-syncwarp'),
    run: 'merge',
    racy: [
      'const float l1 = a.lse[r * a.sLr + h * a.sLh];',
      'if (lane == 0) a.lse[r * a.sLr + h * a.sLh] = none ? -INFINITY : m + logf(w1 + w2);',
    ],
  },
  {
    id: 'hopper-no-scale1-barrier',
    title: 'decode sm_90a: warpgroup 1\'s max and scale read by warpgroup 0 without the named barrier in between',
    file: 'decode_sm90.cu',
    // Not a numeric mutant: in most thread orders warpgroup 1 writes first, and a stale scale is
    // mostly 1 (the max rarely grows late), so only TSan sees it reliably.
    edits: [{ find: '        namedBarrierSync(kBarScale1, kThreadsSm90);\n', replace: '' }],
    run: 'decode-hopper',
    racy: [
      'for (int r = 0; r < 2; ++r) sM[rowOf[r]] = mNew[r], sScale1[rowOf[r]] = c[r];',
      'c[r] = sScale1[rowOf[r]];',
      'const float mOld = sM[rowOf[r]];',
    ],
  },
  {
    // The P·V wgmma reads sP0 in the emulator (hopper.cc, __tsan_read_range), called from the
    // kernel's wgmmaSS line: the race's read side names that line.
    id: 'hopper-no-p0-barrier',
    title: 'decode sm_90a: P0\'s plain stores into sP0 read by warpgroup 1\'s P·V wgmma without the named barrier in between',
    file: 'decode_sm90.cu',
    edits: editsOf('hopper-no-p0-barrier'),
    run: 'decode-hopper',
    racy: [
      '*reinterpret_cast<uint32_t*>(sP0 + tileOffset(rowOf[r], col)) = packPair<T>(s[i] * c[r], s[i + 1] * c[r]);',
      'else wgmmaSS<T, 256, 0, 1>(o, smemDesc(aAddr + kk * 32, Swizzle::B128, 16, 1024), vDesc, 1);',
    ],
  },
  {
    // Warpgroup 0's P1·V1_L wgmma reads sP1 (Q's rope chunk) before warpgroup 1's plain stores
    // of this pair's P1 are ordered before it.
    id: 'hopper-no-pv1-issued-barrier',
    title: 'decode sm_90a: P1\'s plain stores into sP1 read by warpgroup 0\'s P·V wgmma without the named barrier in between',
    file: 'decode_sm90.cu',
    edits: [{ find: '          namedBarrierSync(kBarPv1Issued, kThreadsSm90);\n', replace: '' }],
    run: 'decode-hopper',
    // Pairs of tiles in one part (P1 exists only there): 3 SMs give parts of several pairs.
    env: { MLA_EMU_DEVICES: 'sm_90:3' },
    racy: [
      '*reinterpret_cast<uint32_t*>(sP1 + tileOffset(rowOf[r], col)) = pb[i >> 1];',
      'else wgmmaSS<T, 256, 0, 1>(o, smemDesc(aAddr + kk * 32, Swizzle::B128, 16, 1024), vDesc, 1);',
    ],
  },
  {
    // P's plain stores into sP read by the warpgroup's P·V wgmma (another warp's rows) unordered.
    id: 'narrow-no-p-barrier',
    title: 'decode sm_90a few rows: P\'s stores read by the P·V wgmma without the warpgroup barrier in between',
    file: 'decode_sm90.cu',
    edits: [{ find: '      namedBarrierSync(kBarLocal0 + wg, 128);  // P and the cleared rows visible to the wgmmas\n', replace: '' }],
    run: 'decode-narrow',
    todo: 'the emulated wgmma runs when all 4 warps of the warpgroup have issued it (a rendezvous), which orders every ' +
      'warp\'s earlier P stores before the operand reads; on a GPU only the barrier (with the proxy fence) does',
    racy: [
      '*reinterpret_cast<T*>(sP + tileOffset<NR>(colOf(ci(i)), keyA + 8 * ((i >> 1) & 1))) = fromFloat<T>(p);',
      'wgmmaSS<T, NR, 1, 0>(o + cb * NS, smemDesc(kAddr + cb * kChunkBytes + kk * 16 * 128, Swizzle::B128, kChunkBytes, 1024),',
    ],
  },
  {
    // The merged rows read (another warpgroup's half included) before they are all written.
    id: 'narrow-no-merge-barrier',
    title: 'decode sm_90a few rows: the merged output read back without the barrier after both warpgroups wrote it',
    file: 'decode_sm90.cu',
    edits: [{ find: '      __syncthreads();  // both warpgroups\' halves written\n', replace: '' }],
    run: 'decode-narrow',
    racy: [
      'sO[(wg * NR + colOf(ci(i))) * N::kPitch + (cb * 64 - pass * N::kCols) + keyA + 8 * ((i >> 1) & 1)] = o[cb * NS + i] * fac[ci(i)];',
      'const float4 a0 = x0[0], a1 = x0[1], b0 = x1[0], b1 = x1[1];',
    ],
  },
  {
    // The next request's second tile lands in stage 1 while the merge still reads it there.
    id: 'narrow-no-merge-end-barrier',
    title: 'decode sm_90a few rows: the next request\'s second tile loaded into stage 1 without the barrier after the merge',
    file: 'decode_sm90.cu',
    edits: [{ find: '    __syncthreads();    // the merge is done with stage 1: the next request\'s second tile\n', replace: '' }],
    run: 'decode-narrow',
    // The case's three requests have 5 tiles each: with 2 SMs a part covers two of them.
    env: { MLA_EMU_DEVICES: 'sm_90:2' },
    racy: [
      'const float4 a0 = x0[0], a1 = x0[1], b0 = x1[0], b1 = x1[1];',
      'for (int c = c0; c < c1; ++c) tmaLoad3d(tile + c * kChunkBytes + (k - key0) * 128, kv, c * 64, r0, pg, &bar[c]);',
    ],
  },
  {
    // The next request's running-max reset races with this request's epilogue reads. The case's
    // three requests have 5 tiles each: with 2 SMs a part covers two of them.
    id: 'hopper-no-request-end-barrier',
    title: 'decode sm_90a: the next request\'s running max reset without the barrier after this request\'s epilogue',
    file: 'decode_sm90.cu',
    edits: [{ find: '    __syncthreads();  // sM and sL read before the next request resets them\n', replace: '' }],
    run: 'decode-hopper',
    env: { MLA_EMU_DEVICES: 'sm_90:2' },
    racy: [
      'if (tid < kBM) sM[tid] = -INFINITY;',
      'const float lt = sL[row] + sL[kBM + row], m = sM[row];',
    ],
  },
  {
    id: 'hopper-no-quad-syncwarp',
    title: 'decode sm_90a: the running max read by a quad\'s threads and rewritten by its thread 0 without the __syncwarp',
    file: 'decode_sm90.cu',
    edits: editsOf('hopper-no-quad-syncwarp'),
    run: 'decode-hopper',
    racy: [
      'const float mOld = sM[rowOf[r]];',
      'for (int r = 0; r < 2; ++r) sM[rowOf[r]] = mNew[r], sScale0[rowOf[r]] = c[r];',
    ],
  },
  // ---- known gaps: races TSan cannot see because the scheduler states more order than CUDA ----
  {
    // CUDA orders memory among a warp's lanes at __syncwarp only ("threads within a warp that
    // wish to communicate via memory can store to memory, execute __syncwarp(), and then safely
    // read"); a shuffle exchanges registers and orders nothing.
    id: 'merge-shfl-not-syncwarp',
    title: 'prefill merge: the __syncwarp replaced by a __shfl_sync (a warp collective that orders no memory)',
    file: 'prefill.cu',
    edits: [{ find: '  __syncwarp();\n  if (lane == 0) a.lse', replace: '  (void)__shfl_sync(0xffffffffu, 0, 0);\n  if (lane == 0) a.lse' }],
    run: 'merge',
    racy: [
      'const float l1 = a.lse[r * a.sLr + h * a.sLh];',
      'if (lane == 0) a.lse[r * a.sLr + h * a.sLh] = none ? -INFINITY : m + logf(w1 + w2);',
    ],
    todo: 'csrc/emu/scheduler.cc warpRendezvous releases and acquires the warp\'s sync object for every warp ' +
      'collective (shuffle, vote, ldmatrix, mma.sync), not only __syncwarp, so any collective orders the lanes\' ' +
      'memory accesses for TSan; the emulator\'s own rendezvous also really orders them, so the result is right too',
  },
  {
    // Every split-K partial written to slice 0: CTAs of different splits store the same
    // workspace words, a write-write race between blocks (the sum is wrong too, so a numeric
    // check would catch it; TSan should name the store).
    id: 'linear-splitk-same-slice',
    title: 'linear (tiled, split-K): every split writes workspace slice 0 (CTAs race on the same words)',
    file: 'linear.cu',
    edits: [{
      find: '          float* p = g.ws + ((static_cast<int64_t>(split) * g.batch + b)',
      replace: '          float* p = g.ws + ((static_cast<int64_t>(0) * g.batch + b)',
    }],
    run: 'linear',
    racy: ['          *reinterpret_cast<float2*>(p) = make_float2(v0, v1);'],
    todo: 'csrc/emu/scheduler.cc launch() orders every block after the previous one (each fiber releases ' +
      'blockEnd, the host acquires it and releases `launch`, which the next block\'s fibers acquire; thread i ' +
      'of every block is also the same TSan fiber), so races between CTAs of one grid are never reported',
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

const sanitizer = process.env['MLA_MUTANT_SANITIZER'] ?? '';

if (sanitizer === '') {
  const setup = locateEmulatorBuild(root);
  if (typeof setup === 'string') {
    t.test('emulator mutation tests', { skip: setup }, async () => {});
  } else {
    mutationTests(setup);
  }
} else if (sanitizer === 'thread') {
  const setup = locateEmulatorBuild(root, TSAN_TREE);
  const env = typeof setup === 'string' ? setup : tsanChildEnv(setup);
  if (typeof setup === 'string' || typeof env === 'string') {
    t.test('emulator mutation tests under ThreadSanitizer', { skip: typeof setup === 'string' ? setup : String(env) }, async () => {});
  } else {
    raceTests(setup, env);
  }
} else {
  // A typo must not pass as a run that tested nothing.
  t.fail(`MLA_MUTANT_SANITIZER=${sanitizer}: only "thread" is supported (or unset for the default mode)`);
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

type Start = (id: string, file: KernelFile, mutant: Pick<Mutant, 'id' | 'file' | 'edits' | 'env'>, cases: readonly HarnessCase[]) => Promise<Outcome>;

interface Runner {
  work: string;
  source: (f: KernelFile) => string;
  /** Queues a mutant's build and its cases' runs (two at a time: two compiles at most). */
  start: Start;
}

/**
 * The work directory, the package's JS and the child program, and the queue that builds mutants
 * from `build` and runs cases on them with `childEnv`. Synchronous on purpose: every subtest
 * must be declared before the first await of real work (tap ends the root test once its queued
 * subtests are done, and the private tsc build of lib/ takes seconds: subtests declared after it
 * were silently never run).
 */
function makeRunner(build: EmulatorBuild, childEnv: Readonly<Record<string, string>> = {}, timeoutMs = 90_000): Runner {
  const work = mkdtempSync(join(tmpdir(), 'mla-cuda-mutants-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const sources = new Map<KernelFile, string>();
  const source = (f: KernelFile): string => {
    let s = sources.get(f);
    if (s === undefined) {
      s = kernelSource(root, f);
      sources.set(f, s);
    }
    return s;
  };

  // The JS dir and child program, or why there is none (every outcome then carries the reason).
  const ready = packageJs(root, work).then((js): { dir: string; harness: string } | string => {
    if (js.value.why !== undefined) t.comment(`${js.value.why}: compiled lib/ privately in ${fmtMs(js.ms)}`);
    if (js.value.log) t.comment(`tsc reported:\n${js.value.log}`);
    if (!js.value.usable) return `cannot compile lib/ for the harness (tsc's output: ${js.value.log || 'none'})`;
    return { dir: js.value.dir, harness: writeHarness(work) };
  });
  const pool = limiter(2);  // two compiles at a time at most

  const start: Start = (id, file, mutant, cases) =>
    pool(async (): Promise<Outcome> => {
      let mutated: Mutated;
      try {
        mutated = applyEdits(source(file), mutant);
      } catch (err) {
        return { error: err instanceof Error ? err.message : String(err), results: [] };
      }
      const js = await ready;
      if (typeof js === 'string') return { error: js, results: [] };
      const built = await buildMutantAddon(build, file, mutated.source, join(work, id));
      const results: HarnessResult[] = [];
      const env = { ...childEnv, ...(mutant.env ?? {}) };
      if (built.addon) for (const c of cases) results.push(await runHarness(js.harness, js.dir, built.addon, c, timeoutMs, env));
      return { mutated, built, results };
    }).catch((err: unknown): Outcome => ({ error: err instanceof Error ? err.stack ?? err.message : String(err), results: [] }));
  return { work, source, start };
}

/** One assertion per mutant that its site (what `site` reads off the current sources) is there. */
function sitesTest(title: string, mutants: readonly { id: string }[], site: (i: number) => string): void {
  t.test(title, async (tt) => {
    for (const [i, m] of mutants.entries()) {
      try {
        tt.pass(`${m.id}: ${site(i)}`);
      } catch (err) {
        tt.fail(err instanceof Error ? err.message : String(err));
      }
    }
  });
}

/** The control's per-case results, after checking it built and ran every case; undefined if not. */
async function controlResults(tt: Test, control: Promise<Outcome>, cases: readonly HarnessCase[]): Promise<HarnessResult[] | undefined> {
  const o = await control;
  if (o.error !== undefined || !o.built?.addon) {
    tt.fail(`control build failed: ${o.error ?? o.built?.log}`);
    return undefined;
  }
  tt.comment(`compile ${fmtMs(o.built.compileMs)}, link ${fmtMs(o.built.linkMs)}, runs ${o.results.map((r) => `${r.case} ${fmtMs(r.ms)}`).join(', ')}`);
  tt.equal(o.results.length, cases.length, 'every case ran');
  return o.results;
}

function mutationTests(build: EmulatorBuild): void {
  const { work, source, start } = makeRunner(build);

  // The control: an unmutated copy through the same copy / compile / link / child path. The
  // cheapest kernel file to compile; every case runs on it (the other kernels are the build's).
  const control = start('control', 'prefill.cu', { id: 'control', file: 'prefill.cu', edits: [] }, HARNESS_CASES);
  const outcomes = MUTANTS.map((m) => start(m.id, m.file, m, [m.run]));

  sitesTest('every mutant\'s site occurs exactly as expected in the current kernel sources', MUTANTS, (i) => {
    const m = MUTANTS[i]!;
    const mutated = applyEdits(source(m.file), m);
    const at = m.faultLine === undefined ? '' : `, fault expected at line ${lineOf(mutated.source, m.faultLine, `mutant ${m.id}`)}`;
    return `${m.file}:${mutated.lines.join(',')}${at}`;
  });

  t.test('control: an unmutated copy built the same way passes every case', async (tt) => {
    for (const r of (await controlResults(tt, control, HARNESS_CASES)) ?? []) {
      tt.ok(r.pass && !r.faulted && !r.errored, `control ${r.case}: ${describe(r)}`);
    }
  });

  for (const [i, m] of MUTANTS.entries()) {
    // A known gap marks only the detection `todo` (a todo subtest would not run at all): the
    // mutant is still built and run, and what the emulator did is still shown.
    const todo = m.todo === undefined ? {} : { todo: m.todo };
    t.test(`${m.id}: ${m.title}`, async (tt) => {
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
      const env = m.env === undefined ? '' : ` (${Object.entries(m.env).map(([k, v]) => `${k}=${v}`).join(' ')})`;
      tt.comment(`${site}: compile ${fmtMs(o.built.compileMs)}, link ${fmtMs(o.built.linkMs)}, ${r.case} run ${fmtMs(r.ms)}${env}`);
      if ('launchRefused' in m.expect) {
        tt.ok(r.errored && !r.faulted && m.expect.launchRefused.test(r.message),
          `${m.id} (${site}) detected: the launch is refused with ${m.expect.launchRefused}: got ${describe(r)}`, todo);
        return;
      }
      tt.notOk(r.errored, `${m.id}: the harness ran (${r.errored ? r.message : 'ok'})`);
      if ('fault' in m.expect) {
        tt.ok(r.faulted && m.expect.fault.test(r.message),
          `${m.id} (${site}) detected by an emulator fault matching ${m.expect.fault}: got ${describe(r)}`, todo);
        // The fault names the mutated copy's file: it came from the mutated kernel.
        const file = join(work, m.id, m.file);
        if (r.faulted && !m.faultWithoutLine) tt.ok(r.message.includes(file), `${m.id}: the fault names the mutated ${m.file}`);
        if (r.faulted && m.faultLine !== undefined) {
          const line = lineOf(o.mutated.source, m.faultLine, `mutant ${m.id}`);
          tt.ok(r.message.includes(`${file}:${line}:`), `${m.id}: the fault names ${m.file}:${line} (${m.faultLine.trim()}…)`);
        }
      } else {
        tt.ok(!r.faulted && !r.errored && !r.pass, `${m.id} (${site}) detected numerically (out of tolerance): got ${describe(r)}`, todo);
      }
    });
  }
}

// ---- ThreadSanitizer mode ----------------------------------------------------------------------

/** A template-heavy symbol without its template and parameter lists: `decodeMainKernel`. */
function shortFn(fn: string): string {
  let out = '';
  let depth = 0;
  for (const c of fn) {
    if (c === '<' || c === '(') depth++;
    else if (c === '>' || c === ')') depth = Math.max(0, depth - 1);
    else if (depth === 0) out += c;
  }
  return out.trim() || fn;
}

function fmtFrame(f: TsanFrame | undefined): string {
  if (!f) return '(no frame)';
  return f.file === undefined ? shortFn(f.fn) : `${shortFn(f.fn)} ${basename(f.file)}:${f.line}`;
}

/** An access's top frame, and the first frame in the mutated kernel where that is deeper (ldmatrix). */
function fmtAccess(a: TsanAccess, kernel: string): string {
  const top = a.frames[0];
  const inKernel = a.frames.find((f) => f.file === kernel);
  const where = top && top.file !== kernel && inKernel ? `${fmtFrame(top)} ← ${fmtFrame(inKernel)}` : fmtFrame(top);
  return `${a.what.replace(/ at 0x[0-9a-f]+/, '')}: ${where}`;
}

/** TSan's warnings in a child's stderr, counted on the raw text (the parser must not be what hides one). */
function tsanWarnings(stderr: string | undefined): number {
  return (stderr ?? '').match(/^WARNING: ThreadSanitizer:/gm)?.length ?? 0;
}

/** Whether both of a race's accesses name the mutated kernel copy at one of the expected lines. */
function namesRace(r: TsanReport, kernel: string, lines: ReadonlySet<number>): boolean {
  return r.kind === 'data race' && r.accesses.length >= 2 &&
    r.accesses.every((a) => a.frames.some((f) => f.file === kernel && f.line !== undefined && lines.has(f.line)));
}

function raceTests(build: EmulatorBuild, childEnv: Readonly<Record<string, string>>): void {
  // TSan slows the instrumented kernels several-fold (decode: ~5 s against ~0.5 s).
  const { work, source, start } = makeRunner(build, childEnv, 300_000);
  t.comment(`ThreadSanitizer tree ${TSAN_TREE.dir}; children run with ${Object.entries(childEnv).map(([k, v]) => `${k}=${v}`).join(' ')}`);

  // The control covers the skinny linear kernel too: its static `red` is a race mutant's site.
  const control = start('control', 'prefill.cu', { id: 'control', file: 'prefill.cu', edits: [] }, TSAN_HARNESS_CASES);
  const outcomes = RACE_MUTANTS.map((m) => start(m.id, m.file, m, [m.run]));

  // The expected lines, in the mutated source (a throw here is reported by the test below).
  const expected = (m: RaceMutant): { lines: number[]; site: number[] } => {
    const mutated = applyEdits(source(m.file), m);
    return { lines: m.racy.map((text) => lineOf(mutated.source, text, `race mutant ${m.id}`)), site: mutated.lines };
  };

  sitesTest('every race mutant\'s site and racy accesses occur exactly as expected in the current kernel sources', RACE_MUTANTS, (i) => {
    const m = RACE_MUTANTS[i]!;
    const e = expected(m);
    return `${m.file}:${e.site.join(',')}, racy lines ${e.lines.join(', ')}`;
  });

  t.test('control under ThreadSanitizer: an unmutated copy passes every case with no report', async (tt) => {
    for (const r of (await controlResults(tt, control, TSAN_HARNESS_CASES)) ?? []) {
      tt.ok(r.pass && !r.faulted && !r.errored, `control ${r.case}: ${describe(r)}`);
      const n = tsanWarnings(r.stderr);
      const first = parseTsanReports(r.stderr ?? '')[0];
      tt.equal(n, 0, `control ${r.case}: no ThreadSanitizer report${first ? ` (first: ${first.text.slice(0, 3000)})` : ''}`);
    }
  });

  for (const [i, m] of RACE_MUTANTS.entries()) {
    // A known gap marks only the detection `todo` (a todo subtest would not run at all): the
    // mutant is still built and run, and what TSan printed is still shown.
    t.test(`${m.id} under ThreadSanitizer: ${m.title}`, async (tt) => {
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
      let lines: number[];
      try {
        lines = expected(m).lines;
      } catch (err) {
        tt.fail(err instanceof Error ? err.message : String(err));
        return;
      }
      const kernel = join(work, m.id, m.file);
      const site = `${m.file}:${o.mutated.lines.join(',')}`;
      tt.comment(`${site}: compile ${fmtMs(o.built.compileMs)}, link ${fmtMs(o.built.linkMs)}, ${r.case} run ${fmtMs(r.ms)} (${describe(r)})`);
      // A fault would stop the block before the racing accesses; an error is a harness problem.
      tt.notOk(r.errored || r.faulted, `${m.id}: the harness ran to the end (${r.errored || r.faulted ? r.message : 'ok'})`);
      const reports = parseTsanReports(r.stderr ?? '');
      const want = new Set(lines);
      const hits = reports.filter((x) => namesRace(x, kernel, want));
      const shown = hits[0] ?? reports[0];
      tt.comment(`${tsanWarnings(r.stderr)} ThreadSanitizer report(s), ${hits.length} on the racy lines ${m.file}:${lines.join(',')}` +
        (shown ? `; ${hits[0] ? 'first of them' : 'first report'}: ${shown.accesses.slice(0, 2).map((a) => fmtAccess(a, kernel)).join(' | ')}` : ''));
      tt.ok(hits.length > 0,
        `${m.id} (${site}) reported as a data race between ${m.file}:{${lines.join(',')}} on both sides` +
        (hits.length > 0 ? '' : `; got ${reports.length} report(s)${shown ? `, first:\n${shown.text.slice(0, 4000)}` : ''}`),
        m.todo === undefined ? {} : { todo: m.todo });
    });
  }
}
