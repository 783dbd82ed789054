import t from 'tap';
import { mulberry32, randnArray, relError } from '../../lib/reference/util.js';
import { denseAttendOne, makePagedCache } from '../../lib/reference/testing.js';
import * as reference from '../../lib/reference/index.js';

interface Case {
  lens: number[];
  qLens: number[];
  H: number;
  C: number;
  R: number;
  pageSize: number;
  causal: boolean;
  scale: number;
}

// Runs reference.decode on a random paged cache and the dense oracle on the
// same rows; returns the worst relative errors and the visible-key counts.
function runCase(c: Case, seed: number): { outErr: number; lseErr: number; infMatch: boolean; lse: Float64Array } {
  const rng = mulberry32(seed);
  const D = c.C + c.R;
  const rows = c.lens.map((L) => randnArray(L * D, rng));
  const paged = makePagedCache(rows, D, c.pageSize, rng);
  const tokens = c.qLens.reduce((a, b) => a + b, 0);
  const q = randnArray(tokens * c.H * D, rng);
  const res = reference.decode({
    q,
    cache: paged.cache,
    pageSize: c.pageSize,
    blockTable: paged.blockTable,
    seqLens: Int32Array.from(c.lens),
    qSeqLens: c.qLens.every((l) => l === c.qLens[0]) ? c.qLens[0]! : c.qLens,
    numHeads: c.H,
    dimLatent: c.C,
    headDim: D,
    scale: c.scale,
    causal: c.causal,
  });
  const wantOut = new Float64Array(tokens * c.H * c.C);
  const wantLse = new Float64Array(tokens * c.H);
  let tok = 0;
  c.lens.forEach((L, b) => {
    // V = the first C columns of each key row.
    const values = new Float64Array(L * c.C);
    for (let k = 0; k < L; k++) values.set(rows[b]!.subarray(k * D, k * D + c.C), k * c.C);
    const sq = c.qLens[b]!;
    for (let j = 0; j < sq; j++, tok++) {
      const visible = c.causal ? L - sq + j + 1 : L;
      for (let h = 0; h < c.H; h++) {
        const r = denseAttendOne(q.subarray((tok * c.H + h) * D), rows[b]!, values, L, D, c.C, c.scale, visible);
        wantOut.set(r.out, (tok * c.H + h) * c.C);
        wantLse[tok * c.H + h] = r.lse;
      }
    }
  });
  let infMatch = true;
  const finGot: number[] = [];
  const finWant: number[] = [];
  for (let i = 0; i < wantLse.length; i++) {
    if (wantLse[i] === Infinity || res.lse[i] === Infinity) {
      infMatch &&= wantLse[i] === res.lse[i];
    } else {
      finGot.push(res.lse[i]!);
      finWant.push(wantLse[i]!);
    }
  }
  return { outErr: relError(res.out, wantOut), lseErr: relError(finGot, finWant), infMatch, lse: res.lse };
}

t.test('empty sequence: out 0, lse +inf', async (t) => {
  const rng = mulberry32(21);
  const C = 16;
  const D = 24;
  const paged = makePagedCache([randnArray(5 * D, rng), new Float64Array(0), randnArray(3 * D, rng)], D, 4, rng);
  const res = reference.decode({
    q: randnArray(3 * 2 * D, rng),
    cache: paged.cache,
    pageSize: 4,
    blockTable: paged.blockTable,
    seqLens: Int32Array.from([5, 0, 3]),
    qSeqLens: 1,
    numHeads: 2,
    dimLatent: C,
    scale: 0.1,
    causal: true,
  });
  t.same([...res.out.subarray(2 * C, 4 * C)], new Array(2 * C).fill(0), 'request 1 output is all zeros');
  t.same([res.lse[2], res.lse[3]], [Infinity, Infinity], 'request 1 lse is +inf');
  t.ok(Number.isFinite(res.lse[0]!) && Number.isFinite(res.lse[5]!), 'neighbours are finite');
  const none = reference.decode({
    q: new Float64Array(0),
    cache: paged.cache,
    pageSize: 4,
    blockTable: paged.blockTable,
    seqLens: [0, 0, 0],
    qSeqLens: 0,
    numHeads: 2,
    dimLatent: C,
    scale: 0.1,
    causal: true,
  });
  t.equal(none.out.length, 0, 'no queries, no output');
});

t.test('causal mask is bottom-right aligned', async (t) => {
  // With scale 0 every visible key scores 0, so lse = ln(visible keys): the
  // mask can be read off directly.
  const r = runCase({ lens: [5, 2, 9], qLens: [3, 4, 1], H: 2, C: 8, R: 4, pageSize: 3, causal: true, scale: 0 }, 31);
  const visible = (lse: number): number => Math.round(Math.exp(lse));
  const got: number[] = [];
  for (let tok = 0; tok < 8; tok++) got.push(r.lse[tok * 2] === Infinity ? 0 : visible(r.lse[tok * 2]!));
  // request 0: L 5, s_q 3 -> 3, 4, 5; request 1: L 2, s_q 4 -> 0, 0, 1, 2; request 2: L 9, s_q 1 -> 9
  t.same(got, [3, 4, 5, 0, 0, 1, 2, 9], 'query j sees keys 0 .. L − s_q + j');
  t.ok(r.infMatch, 'queries before the first key get +inf');
  const nc = runCase({ lens: [5, 2], qLens: [3, 2], H: 1, C: 8, R: 4, pageSize: 3, causal: false, scale: 0 }, 32);
  t.same([...nc.lse].map((l) => visible(l)), [5, 5, 5, 2, 2], 'non-causal: every query sees all keys');
});

t.test('matches the dense oracle: variable lengths, page sizes not dividing them', async (t) => {
  const cases: Array<[string, Case]> = [
    ['s_q 1, ragged', { lens: [1, 17, 33, 0, 64], qLens: [1, 1, 1, 1, 1], H: 3, C: 32, R: 16, pageSize: 5, causal: true, scale: 0.15 }],
    ['page size 1', { lens: [7, 3], qLens: [1, 1], H: 4, C: 12, R: 4, pageSize: 1, causal: true, scale: 0.3 }],
    ['page larger than every sequence', { lens: [7, 3, 20], qLens: [1, 1, 1], H: 2, C: 12, R: 4, pageSize: 64, causal: true, scale: 0.3 }],
    ['s_q 2 (MTP)', { lens: [9, 2, 31], qLens: [2, 2, 2], H: 5, C: 20, R: 8, pageSize: 7, causal: true, scale: 0.2 }],
    ['per-request s_q', { lens: [9, 4, 31, 6], qLens: [3, 1, 5, 0], H: 2, C: 20, R: 8, pageSize: 6, causal: true, scale: 0.2 }],
    ['s_q > L', { lens: [2, 5], qLens: [4, 1], H: 2, C: 8, R: 4, pageSize: 3, causal: true, scale: 0.5 }],
    ['non-causal', { lens: [9, 13], qLens: [3, 2], H: 2, C: 16, R: 8, pageSize: 4, causal: false, scale: 0.2 }],
    ['V3 head geometry', { lens: [40, 13], qLens: [1, 1], H: 4, C: 512, R: 64, pageSize: 16, causal: true, scale: 0.1352337788608801 }],
  ];
  let seed = 100;
  for (const [name, c] of cases) {
    const r = runCase(c, seed++);
    t.ok(r.outErr < 1e-13 && r.lseErr < 1e-13 && r.infMatch, `${name}: out rel err ${r.outErr.toExponential(2)}, lse ${r.lseErr.toExponential(2)}`);
  }
});

t.test('input validation', async (t) => {
  const rng = mulberry32(41);
  const D = 12;
  const paged = makePagedCache([randnArray(4 * D, rng)], D, 4, rng);
  const base = {
    q: randnArray(2 * D, rng),
    cache: paged.cache,
    pageSize: 4,
    blockTable: paged.blockTable,
    seqLens: [4],
    qSeqLens: 1,
    numHeads: 2,
    dimLatent: 8,
    scale: 0.1,
    causal: true,
  };
  t.doesNotThrow(() => reference.decode(base));
  t.throws(() => reference.decode({ ...base, seqLens: [5] }), /logical page 1/, 'sequence longer than its block table');
  t.throws(() => reference.decode({ ...base, dimLatent: 13 }), /dimLatent/);
  t.throws(() => reference.decode({ ...base, q: randnArray(2 * D + 1, rng), headDim: D }), { code: 'ERR_SHAPE', message: /decode: `q`/ });
  t.throws(() => reference.decode({ ...base, qSeqLens: [1, 1] }), /qSeqLens/);
  t.throws(() => reference.decode({ ...base, blockTable: Int32Array.from([-1]) }), /invalid page -1/);
});
