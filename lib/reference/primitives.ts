// What the PTX ISA says the conformance kernels (csrc/kernels/primitives.cu) must produce,
// written from the ISA's definitions and nothing else, so the emulated device and a GPU are each
// held to the document rather than to one another.

/** 0xFFFFFFFF: what lib/ops/primitives.ts fills every 32-bit output with before a run. */
export const FILL_U32 = 0xffffffff;

export type ShflOpName = 'idx' | 'xor' | 'down' | 'up';
export interface ShuffleCase {
  op: ShflOpName;
  /** srcLane (idx), laneMask (xor) or delta (down, up); any int32. */
  arg: number;
  /** 1, 2, 4, 8, 16 or 32. */
  width: number;
}

/** A 16-bit float's bits as a number, exactly (bf16: the top half of an f32). */
export function halfBitsToNumber(h: number, dtype: 'bf16' | 'f16'): number {
  const sign = h & 0x8000 ? -1 : 1;
  if (dtype === 'bf16') return new Float32Array(new Uint32Array([(h & 0xffff) << 16]).buffer)[0]!;
  const e = (h >> 10) & 31, m = h & 1023;
  if (e === 31) return m ? Number.NaN : sign * Infinity;
  return sign * (e === 0 ? m * 2 ** -24 : (1024 + m) * 2 ** (e - 25));
}

/**
 * mma.sync.m16n8k16.row.col.f32.{bf16,f16}: D = A·B + C for A [16,16], B [16,8] (row-major bits)
 * and C [16,8]. Formed exactly (float64, C first, k ascending) and rounded once: the ISA does
 * not fix the order or the intermediate rounding, so callers pick inputs where every partial sum
 * is exact in fp32, and then this is the only right answer (up to the sign of an exact zero).
 */
export function mmaReference(a: Uint16Array, b: Uint16Array, c: Float32Array, dtype: 'bf16' | 'f16'): Float32Array {
  const d = new Float32Array(128);
  for (let i = 0; i < 16; i++) {
    for (let j = 0; j < 8; j++) {
      let s = c[i * 8 + j]!;
      for (let k = 0; k < 16; k++) s += halfBitsToNumber(a[i * 16 + k]!, dtype) * halfBitsToNumber(b[k * 8 + j]!, dtype);
      d[i * 8 + j] = s;
    }
  }
  return d;
}

/**
 * ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16: lane i < 8·num gives row i%8 of tile i/8
 * (here: row perm[i] of the [32,8] u16 matrix). Lane l receives in register m the pair at tile
 * row l/4, columns 2(l%4) and +1 (low half first); .trans: rows 2(l%4) and +1 of column l/4.
 * Registers past num keep FILL_U32. Result [32 lanes][4].
 */
export function ldmatrixReference(matrix: Uint16Array, perm: ArrayLike<number>, num: 1 | 2 | 4, trans: boolean): Uint32Array {
  const out = new Uint32Array(128).fill(FILL_U32);
  const at = (m: number, r: number, col: number): number => matrix[(perm[8 * m + r]! & 31) * 8 + col]!;
  for (let l = 0; l < 32; l++) {
    for (let m = 0; m < num; m++) {
      const [lo, hi] = trans
        ? [at(m, 2 * (l % 4), l >> 2), at(m, 2 * (l % 4) + 1, l >> 2)]
        : [at(m, l >> 2, 2 * (l % 4)), at(m, l >> 2, 2 * (l % 4) + 1)];
      out[l * 4 + m] = (lo | (hi << 16)) >>> 0;
    }
  }
  return out;
}

/**
 * cp.async.cg.shared.global 16 B with src-size 16 (pred) or 0 (zero fill, no global read);
 * chunks 0-31 in commit group 0, 32-63 in group 1. early [32,4]: chunk `lane` as its thread sees
 * it after cp.async.wait_group 1 (group 0 is complete); out [64,4]: shared memory after
 * wait_group 0 and a barrier.
 */
export function cpAsyncReference(src: Uint32Array, pred: ArrayLike<boolean>): { early: Uint32Array; out: Uint32Array } {
  const out = new Uint32Array(256);
  for (let i = 0; i < 64; i++) if (pred[i]) out.set(src.subarray(i * 4, i * 4 + 4), i * 4);
  return { early: out.slice(0, 128), out };
}

/**
 * shfl.sync.{idx,bfly,down,up}.b32 as the CUDA intrinsics issue it: c = ((32 - width) << 8) | 31
 * (up: | 0). PTX ISA: bval = b[4:0], segmask = c[12:8], maxLane = (lane & segmask) |
 * (cval & ~segmask), minLane = lane & segmask; up: j = lane - bval, ok if j >= maxLane; down:
 * j = lane + bval, ok if j <= maxLane; bfly: j = lane ^ bval, ok if j <= maxLane; idx: j =
 * minLane | (bval & ~segmask), ok if j <= maxLane; not ok: j = lane. Result [cases][32 lanes].
 */
export function shuffleReference(values: Uint32Array, cases: readonly ShuffleCase[]): Uint32Array {
  const out = new Uint32Array(cases.length * 32);
  cases.forEach(({ op, arg, width }, i) => {
    const segmask = (32 - width) & 31, cval = op === 'up' ? 0 : 31, bval = arg & 31;
    for (let lane = 0; lane < 32; lane++) {
      const maxLane = (lane & segmask) | (cval & ~segmask & 31), minLane = lane & segmask;
      let j: number, ok: boolean;
      switch (op) {
        case 'up': j = lane - bval; ok = j >= maxLane; break;
        case 'down': j = lane + bval; ok = j <= maxLane; break;
        case 'xor': j = lane ^ bval; ok = j <= maxLane; break;
        case 'idx': j = minLane | (bval & ~segmask & 31); ok = j <= maxLane; break;
      }
      out[i * 32 + lane] = values[ok ? j : lane]!;
    }
  });
  return out;
}

/** vote.sync.ballot/any/all with the full mask, per lane: [m][ballot, any, all][32 lanes]. */
export function voteReference(preds: Int32Array): Uint32Array {
  const m = preds.length / 32;
  const out = new Uint32Array(m * 96);
  for (let i = 0; i < m; i++) {
    let bits = 0;
    for (let l = 0; l < 32; l++) if (preds[i * 32 + l] !== 0) bits |= 1 << l;
    bits >>>= 0;
    out.fill(bits, i * 96, i * 96 + 32);
    out.fill(bits !== 0 ? 1 : 0, i * 96 + 32, i * 96 + 64);
    out.fill(bits === 0xffffffff ? 1 : 0, i * 96 + 64, i * 96 + 96);
  }
  return out;
}

// ---- sm_90a ---------------------------------------------------------------------------------------

/** A swizzle mode by its span in bytes (0: none; PTX ISA "Shared Memory Matrix Layout" / TMA). */
export type SwizzleSpan = 0 | 32 | 64 | 128;

/** One wgmma conformance case (csrc/kernels/primitives_sm90.cu lays A and B out accordingly). */
export interface WgmmaCase {
  dtype: 'bf16' | 'f16';
  /** N of m64nNk16: 16, 32, 64 or 256. */
  n: 16 | 32 | 64 | 256;
  /** K, in k16 steps that accumulate: 16 or 64. */
  k: 16 | 64;
  /** A's swizzle (ignored with rs). */
  swizzleA: SwizzleSpan;
  swizzleB: SwizzleSpan;
  /** A K-major (0, default) or MN-major (1, shared memory only: not with rs). */
  tnspA?: 0 | 1;
  /** B K-major (0) or MN-major (1). */
  tnspB: 0 | 1;
  /** k-rows per 64-column group of a swizzled MN-major B: its LBO is lboRows·span (default k). */
  lboRows?: number;
  /** A from registers (wgmma RS) instead of shared memory. */
  rs: boolean;
  /** scale-d: false computes D = A·B and ignores the accumulators' input. */
  scaleD: boolean;
  /**
   * Emulator test variant: 1 no wgmma.fence; 2 a cp.async into B before the wait; with k > 16,
   * one commit group per k16 step, wait_group 1, then a cp.async into B's first (3, allowed) or
   * last (4, a fault) k16 slice.
   */
  mode?: 0 | 1 | 2 | 3 | 4;
}

/**
 * wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}, chained over k/16 steps on the same
 * accumulators: D = A·B + (scale-d ? C : 0) for A [64,k], B [k,n] (row-major bits), C [64,n]. The
 * ISA fixes neither summation order nor intermediate rounding; formed exactly and rounded once,
 * which is the only right answer when every partial sum is exact in fp32 (integer inputs).
 */
export function wgmmaReference(a: Uint16Array, b: Uint16Array, c: Float32Array, spec: Pick<WgmmaCase, 'dtype' | 'n' | 'k' | 'scaleD'>): Float32Array {
  const { n, k, dtype } = spec;
  const d = new Float32Array(64 * n);
  for (let i = 0; i < 64; i++) {
    for (let j = 0; j < n; j++) {
      let s = spec.scaleD ? c[i * n + j]! : 0;
      for (let x = 0; x < k; x++) s += halfBitsToNumber(a[i * k + x]!, dtype) * halfBitsToNumber(b[x * n + j]!, dtype);
      d[i * n + j] = s;
    }
  }
  return d;
}

/**
 * Where a swizzle moves the 16-byte chunk at shared address `addr` (PTX ISA "Tensor Copy" /
 * matrix descriptor swizzling modes): the chunk index within a 128-byte row, address bits [4,7),
 * is XOR-ed with the row index bits [7,10), as many as the mode has: 128B 3, 64B 2, 32B 1.
 */
export function swizzleAddress(addr: number, span: SwizzleSpan): number {
  const bits = span === 128 ? 7 : span === 64 ? 3 : span === 32 ? 1 : 0;
  return addr ^ (((addr >> 7) & bits) << 4);
}

/**
 * cp.async.bulk.tensor tile mode (PTX ISA "Tensor Copy"): the box at `coords` (innermost first) of
 * a tensor `shape` (outermost first) lands in shared memory as rows of box[0] elements, packed in
 * order of the outer box coordinates; an element with any coordinate outside the tensor is zero
 * (OOB fill none); then the swizzle moves each 16-byte chunk (destination 1024-byte aligned, so the
 * shared address is the offset). Per load: box elements as u16, in shared-address order.
 */
export function tmaReference(src: Uint16Array, shape: readonly number[], box: readonly number[], swizzle: SwizzleSpan, coords: readonly (readonly number[])[]): Uint16Array {
  const rank = shape.length;
  const dims = [...shape].reverse();  // innermost first, as the tensor map has them
  const elems = box.reduce((x, y) => x * y, 1);
  const out = new Uint16Array(coords.length * elems);
  coords.forEach((c, l) => {
    const dense = new Uint16Array(elems);
    for (let e = 0; e < elems; e++) {
      let rest = e, offset = 0, stride = 1, inside = true;
      for (let i = 0; i < rank; i++) {
        const x = c[i]! + (rest % box[i]!);
        rest = Math.floor(rest / box[i]!);
        if (x < 0 || x >= dims[i]!) inside = false;
        offset += x * stride;
        stride *= dims[i]!;
      }
      dense[e] = inside ? src[offset]! : 0;
    }
    for (let chunk = 0; chunk < (elems * 2) / 16; chunk++) {
      const to = swizzleAddress(chunk * 16, swizzle) / 2;
      out.set(dense.subarray(chunk * 8, chunk * 8 + 8), l * elems + to);
    }
  });
  return out;
}

/**
 * An mbarrier as the PTX ISA describes it: a phase completes when its pending arrival count and
 * its transaction count (expect-tx adds, complete-tx subtracts) are both zero; then the phase
 * number advances and the arrival count reloads. try_wait.parity(p) holds once the phase of
 * parity p has completed, i.e. while the current phase's parity differs from p.
 */
export class MbarrierModel {
  private pending: number;
  private tx = 0;
  private phase = 0;
  constructor(private readonly count: number) {
    this.pending = count;
  }
  arrive(expectTx = 0): void {
    this.tx += expectTx;
    if (this.pending === 0) throw new Error('mbarrier: more arrivals than its count');
    this.pending--;
    this.complete();
  }
  completeTx(bytes: number): void {
    this.tx -= bytes;
    this.complete();
  }
  tryWait(parity: number): boolean {
    return (this.phase & 1) !== (parity & 1);
  }
  private complete(): void {
    if (this.pending === 0 && this.tx === 0) {
      this.phase++;
      this.pending = this.count;
    }
  }
}

/**
 * The script of primitives_sm90.cu's mbarrier kernel run on MbarrierModel: count 2; try_wait
 * results after each step, the same for both recording threads. `tile`: the box (all of src).
 */
export function mbarrierReference(src: Uint16Array): { waits: Uint32Array; tile: Uint16Array } {
  const m = new MbarrierModel(2), seq: boolean[] = [];
  seq.push(m.tryWait(0), m.tryWait(1));
  m.arrive();  // thread 0
  seq.push(m.tryWait(0));
  m.arrive();  // thread 32
  seq.push(m.tryWait(0), m.tryWait(1));
  m.arrive(1024);  // thread 0: expect_tx(1024 bytes) and arrive
  m.arrive();  // thread 32
  seq.push(m.tryWait(1));
  m.completeTx(1024);  // the TMA box of 8 x 64 bf16
  seq.push(m.tryWait(1), m.tryWait(0));
  m.arrive();
  m.arrive();
  seq.push(m.tryWait(0), m.tryWait(1));
  const row = Uint32Array.from(seq, (v) => (v ? 1 : 0));
  const waits = new Uint32Array(20);
  waits.set(row, 0);
  waits.set(row, 10);
  return { waits, tile: src.slice() };
}
