// Absorbed attention (reference.decode on the latent cache, W_UK folded into q,
// W_UV into the output) must equal naive attention on expanded K/V
// (reference.prefill), for any geometry, s_q and cached prefix.

import t from 'tap';
import { absorbOutput, absorbQuery, splitKvBProj } from '../../lib/reference/absorb.js';
import { gatherPagedCache } from '../../lib/reference/cache.js';
import { expandLatentKv } from '../../lib/reference/prefill.js';
import { mulberry32, randnArray, relError } from '../../lib/reference/util.js';
import { makePagedCache } from '../../lib/reference/testing.js';
import * as reference from '../../lib/reference/index.js';

interface Geometry {
  H: number;
  N: number;
  R: number;
  V: number;
  C: number;
}

function compare(g: Geometry, kvLens: number[], qLens: number[], pageSize: number, seed: number) {
  const rng = mulberry32(seed);
  const { H, N, R, V, C } = g;
  const D = C + R;
  const scale = (N + R) ** -0.5;
  const kvBProj = randnArray(H * (N + V) * C, rng, C ** -0.5);
  const rows = kvLens.map((L) => randnArray(L * D, rng));
  const paged = makePagedCache(rows, D, pageSize, rng);
  const Tq = qLens.reduce((a, b) => a + b, 0);
  const q = randnArray(Tq * H * (N + R), rng);

  // Naive: keys/values expanded per head from the packed cache rows.
  const view = { cache: paged.cache, pageSize, dim: D, blockTable: paged.blockTable, maxPages: paged.maxPages };
  const packed = gatherPagedCache(view, kvLens);
  const naive = reference.prefill({
    q,
    kv: packed,
    kvBProj,
    qSeqLens: qLens,
    kvSeqLens: kvLens,
    numHeads: H,
    qkNopeHeadDim: N,
    qkRopeHeadDim: R,
    vHeadDim: V,
    kvLoraRank: C,
    scale,
  });

  // Absorbed: [q_nope·W_UK ; q_rope] against the paged latent cache.
  const w = splitKvBProj(kvBProj, { numHeads: H, qkNopeHeadDim: N, vHeadDim: V, kvLoraRank: C });
  const qLat = absorbQuery(q, Tq, w, { stride: N + R });
  const qAbs = new Float64Array(Tq * H * D);
  for (let r = 0; r < Tq * H; r++) {
    qAbs.set(qLat.subarray(r * C, (r + 1) * C), r * D);
    qAbs.set(q.subarray(r * (N + R) + N, (r + 1) * (N + R)), r * D + C);
  }
  const abs = reference.decode({
    q: qAbs,
    cache: paged.cache,
    pageSize,
    blockTable: paged.blockTable,
    seqLens: kvLens,
    qSeqLens: qLens,
    numHeads: H,
    dimLatent: C,
    scale,
    causal: true,
  });
  const out = absorbOutput(abs.out, Tq, w);
  let infMatch = true;
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < naive.lse.length; i++) {
    // "No keys": prefill (the naive path) marks it −inf, decode (the absorbed path) +inf.
    if (Math.abs(naive.lse[i]!) === Infinity || Math.abs(abs.lse[i]!) === Infinity) infMatch &&= Math.abs(naive.lse[i]!) === Infinity && Math.abs(abs.lse[i]!) === Infinity;
    else {
      a.push(abs.lse[i]!);
      b.push(naive.lse[i]!);
    }
  }
  return { outErr: relError(out, naive.out), lseErr: relError(a, b), infMatch, naiveOut: naive.out };
}

const GEOMETRIES: Array<[string, Geometry]> = [
  ['tiny fixture dims', { H: 3, N: 24, R: 16, V: 20, C: 32 }],
  ['latent narrower than nope', { H: 2, N: 16, R: 2, V: 10, C: 6 }],
  ['single head', { H: 1, N: 8, R: 8, V: 8, C: 40 }],
  ['V3 head geometry', { H: 4, N: 128, R: 64, V: 128, C: 512 }],
];

t.test('s_q = 1 decode: absorbed equals naive', async (t) => {
  let seed = 1;
  for (const [name, g] of GEOMETRIES) {
    const kvLens = g.C >= 512 ? [1, 19] : [1, 7, 16, 33];
    const r = compare(g, kvLens, kvLens.map(() => 1), 5, seed++);
    t.ok(r.outErr < 1e-12 && r.lseErr < 1e-12 && r.infMatch, `${name}: out rel err ${r.outErr.toExponential(2)}, lse ${r.lseErr.toExponential(2)}`);
  }
});

t.test('s_q > 1 causal decode equals naive prefill over a cached prefix', async (t) => {
  let seed = 50;
  for (const [name, g] of GEOMETRIES) {
    // (kv, q) per request: whole-sequence prefill, chunk after a prefix, MTP-style
    // 2-4 queries, and s_q > L where early queries see no key.
    const kvLens = g.C >= 512 ? [12, 9] : [6, 20, 9, 3];
    const qLens = g.C >= 512 ? [12, 3] : [6, 4, 2, 5];
    for (const pageSize of [3, 16]) {
      const r = compare(g, kvLens, qLens, pageSize, seed++);
      t.ok(
        r.outErr < 1e-12 && r.lseErr < 1e-12 && r.infMatch,
        `${name}, page ${pageSize}, kv ${kvLens} q ${qLens}: out rel err ${r.outErr.toExponential(2)}, lse ${r.lseErr.toExponential(2)}`,
      );
    }
  }
});

t.test('splitKvBProj and the absorbed products', async (t) => {
  const rng = mulberry32(77);
  const H = 3;
  const N = 5;
  const V = 4;
  const C = 7;
  const kvBProj = randnArray(H * (N + V) * C, rng);
  const w = splitKvBProj(kvBProj, { numHeads: H, qkNopeHeadDim: N, vHeadDim: V, kvLoraRank: C });
  // Row h·(N+V) + n of kv_b_proj is W_UK[h, n]; row h·(N+V) + N + d is W_UV[h, d].
  t.equal(w.wUK[(2 * N + 3) * C + 6], kvBProj[(2 * (N + V) + 3) * C + 6]);
  t.equal(w.wUV[(1 * V + 2) * C + 0], kvBProj[(1 * (N + V) + N + 2) * C + 0]);
  // q_nope·W_UK·c equals q_nope·(W_UK·c) = q_nope·k_nope: the identity absorption rests on.
  const qn = randnArray(2 * H * N, rng);
  const c = randnArray(C, rng);
  const qLat = absorbQuery(qn, 2, w);
  const { k } = expandLatentKv(Float64Array.from([...c, 0.5, -0.5]), 1, kvBProj, {
    numHeads: H,
    qkNopeHeadDim: N,
    qkRopeHeadDim: 2,
    vHeadDim: V,
    kvLoraRank: C,
  });
  let worst = 0;
  for (let tok = 0; tok < 2; tok++) {
    for (let h = 0; h < H; h++) {
      let viaLatent = 0;
      for (let i = 0; i < C; i++) viaLatent += qLat[(tok * H + h) * C + i]! * c[i]!;
      let viaKey = 0;
      for (let n = 0; n < N; n++) viaKey += qn[(tok * H + h) * N + n]! * k[h * (N + 2) + n]!;
      worst = Math.max(worst, Math.abs(viaLatent - viaKey) / Math.abs(viaKey));
      t.same([...k.subarray(h * (N + 2) + N, (h + 1) * (N + 2))], [0.5, -0.5], `head ${h} shares the rope key`);
    }
  }
  t.ok(worst < 1e-12, `q_lat·c = q_nope·k_nope (worst rel ${worst.toExponential(2)})`);
  t.throws(() => splitKvBProj(kvBProj.subarray(1), { numHeads: H, qkNopeHeadDim: N, vHeadDim: V, kvLoraRank: C }), /kvBProj/);
  t.throws(() => absorbQuery(qn, 3, w), /qNope/);
  t.throws(() => absorbOutput(qn, 2, w), /oLatent/);
});
