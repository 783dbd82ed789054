// Prefill kernels: paged-cache gather, causal flash attention (FlashAttention-2 style,
// mma.sync m16n8k16 + ldmatrix, cp.async loads of V_t / K_{t+1} overlapped with the two
// products) and the LSE merge.
// See prefill.h for the plan layout and docs/prefill-kernel.md for the design.
#include <cmath>
#include <string>
#include "core/check.h"
#include "kernels/common.cuh"
#include "kernels/prefill.h"
#include "runtime/device_props.h"
#include "runtime/runtime.h"

namespace mla::gpu {
using namespace mla::kernels;

namespace {

constexpr int kQK = kPrefillNopeDim + kPrefillRopeDim;  // 192
constexpr int kDV = kPrefillVDim;                       // 128
constexpr int kBM = 64;                                 // query rows per CTA (4 warps × 16)
constexpr int kBN = 64;                                 // keys per tile
constexpr int kThreads = 128;
// Rows padded by 16 bytes: a row pitch of 400 (K, Q) or 272 (V) bytes is 16 mod 128, so the
// eight 16-byte rows one ldmatrix phase reads fall into eight different bank groups.
constexpr int kPitchQK = kQK + 8;
constexpr int kPitchV = kDV + 8;
constexpr int kQTile = kBM * kPitchQK;  // elements
constexpr int kKTile = kBN * kPitchQK;
constexpr int kVTile = kBN * kPitchV;
// 68608 bytes: under the 99 KB opt-in of sm_86/89/120; two CTAs per SM on sm_80/90 (where
// ~194 registers × 128 threads also allow two).
constexpr int kSmemBytes = (kQTile + kKTile + kVTile) * 2;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

struct PlanRow {
  int64_t qStart, qLen, seqLen, kvStart;
};
__device__ __forceinline__ PlanRow planRow(const int32_t* plan, int64_t stride, int64_t b) {
  const int32_t* p = plan + b * stride;
  return {p[0], p[1], p[2], p[3]};
}

// ---- gather ---------------------------------------------------------------------------------
struct GatherArgs {
  const uint4* cache;  // 16-byte units
  int64_t numPages, pageSize, sPage, sRow;  // strides in 16-byte units
  const int32_t* table;
  int64_t sTb, sTp, maxPages;
  const int32_t* plan;
  int64_t sPlan, numReq;
  uint4* dst;
  int64_t sDst;
  int64_t g0, rows;
};

// dst[r] = cache row of stream row g0 + r: request b = last b with kvStart[b] ≤ g (requests
// without keys share the next one's kvStart, so "last" picks the owner), position
// g − kvStart[b], page blockTable[b, pos / pageSize]. Rows whose lookup fails are zeroed.
// KV8: the cache is the FP8 layout (656-byte rows = 41 units, docs/fp8-cache.md) and dst bf16:
// latent[i] = e4m3(byte[i]) · scale[i / 128] (exact in bf16), the bf16 rope copied.
template <bool KV8>
__global__ void __launch_bounds__(128) prefillGatherKernel(GatherArgs a) {
  constexpr int kUnits = kPrefillCacheDim * 2 / 16;  // 72
  const int64_t r = blockIdx.x * 4LL + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= a.rows) return;
  const int64_t g = a.g0 + r;
  int64_t lo = 0, hi = a.numReq - 1, b = -1;
  while (lo <= hi) {
    int64_t mid = (lo + hi) >> 1;
    if (a.plan[mid * a.sPlan + 3] <= g) {
      b = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  const uint4* src = nullptr;
  if (b >= 0) {
    const PlanRow pr = planRow(a.plan, a.sPlan, b);
    const int64_t pos = g - pr.kvStart;
    if (pos >= 0 && pos < pr.seqLen) {
      const int64_t lp = pos / a.pageSize;
      if (lp < a.maxPages) {
        const int64_t page = a.table[b * a.sTb + lp * a.sTp];
        if (page >= 0 && page < a.numPages) src = a.cache + page * a.sPage + (pos % a.pageSize) * a.sRow;
      }
    }
  }
  uint4* d = a.dst + r * a.sDst;
  if constexpr (KV8) {
    constexpr int kLatentUnits = kFp8ScaleOffset / 16, kRopeUnit = kFp8RopeOffset / 16;  // 32, 33
    for (int u = lane; u < kLatentUnits + 8; u += 32) {
      if (u < kLatentUnits) {
        uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
        if (src) fp8ExpandBf16(src[u], reinterpret_cast<const float*>(src + kLatentUnits)[u / 8], lo, hi);
        d[2 * u] = lo;
        d[2 * u + 1] = hi;
      } else {
        d[2 * kLatentUnits + (u - kLatentUnits)] = src ? src[kRopeUnit + (u - kLatentUnits)] : make_uint4(0, 0, 0, 0);
      }
    }
  } else {
    for (int u = lane; u < kUnits; u += 32) d[u] = src ? src[u] : make_uint4(0, 0, 0, 0);
  }
}

// ---- attention --------------------------------------------------------------------------------
struct AttnArgs {
  const void* q;
  int64_t sQt, sQh, Tq;
  const void* kn;
  int64_t sKt, sKh;
  const void* kr;
  int64_t sRt;
  const void* v;
  int64_t sVt, sVh, Tk;
  void* out;
  int64_t sOt, sOh, R;
  float* lse;
  int64_t sLt, sLh;
  const int32_t* plan;
  int64_t sPlan, reqBegin;
  int64_t g0, g1, outRowBase;
  float scaleLog2;
};

// One CTA = 64 queries of one head of one request; warp w owns query rows 16w .. 16w+15.
//   S = Q·[K_nope ; k_rope]ᵀ · scale,  masked to keys kpos ≤ seqLen − qLen + j (causal, end
//   aligned) and to the chunk's keys; online softmax in base 2 (m, l per row, fp32);
//   O += P·V with P rounded to T.  out = O / l,  lse = (m + log2 l)·ln 2.
// Keys of the chunk are request positions [kLo, kHi); the tiles start at kLo and stop at the
// last key the tile's last query sees, so fully masked tiles are never loaded.
// Pipeline (FlashAttention-2, one buffer each for Q, K, V): V_t is fetched while S = Q·K_tᵀ
// runs, K_{t+1} while O += P·V_t runs. Q stays in shared memory (in registers it would push
// the kernel past 255 registers next to the 64 O and 32 S accumulators).
template <typename T>
__global__ void __launch_bounds__(kThreads, 2) prefillAttentionKernel(AttnArgs a) {
  MLA_DYNAMIC_SMEM(unsigned char, smemRaw, 16);
  T* qs = reinterpret_cast<T*>(smemRaw);
  T* ks = qs + kQTile;
  T* vs = ks + kKTile;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t b = a.reqBegin + blockIdx.z;
  const int h = blockIdx.y;
  // Causal: later query tiles have more keys; launch them first so the tail is short.
  const int64_t j0 = int64_t(gridDim.x - 1 - blockIdx.x) * kBM;
  const PlanRow pr = planRow(a.plan, a.sPlan, b);
  if (j0 >= pr.qLen) return;

  // Positions come from i32 plan entries, so 32-bit arithmetic is exact (and saves registers).
  const int qLen = int(pr.qLen);
  const int diag = int(pr.seqLen - pr.qLen);  // query j sees positions ≤ diag + j
  // Clipped to the key buffers too, so a bad plan from a direct native call cannot read past them.
  const int kHi = int(imax(0, imin(imin(pr.seqLen, a.g1 - pr.kvStart), a.Tk + a.g0 - pr.kvStart)));
  // Clamped to kHi in 64 bits: g0 − kvStart can exceed INT_MAX for a direct call with a large
  // g0 (or a negative kvStart), and a wrapped kLo would index key rows before the buffer.
  const int kLo = int(imin(imax(0, a.g0 - pr.kvStart), kHi));
  const int jEnd = int(imin(pr.qLen, j0 + kBM));
  const int kMax = min(kHi, diag + jEnd);  // exclusive bound of keys any row of the tile sees
  const int nTiles = kMax > kLo ? (kMax - kLo + kBN - 1) / kBN : 0;

  // Each thread copies fixed 16-byte columns of rows tid/16 + 8i (tid/8 + 16i for the rope
  // part), so the global pointers advance by a constant row step.
  const int cN = tid & 15, rN = tid >> 4;  // nope / V / Q units 0-15 (and 16-23 for Q rope)
  const int cR = tid & 7, rR = tid >> 3;   // rope units
  const int64_t rowBase = pr.kvStart - a.g0;  // chunk row of position 0
  const T* kng = static_cast<const T*>(a.kn) + h * a.sKh + cN * 8;
  const T* krg = static_cast<const T*>(a.kr) + cR * 8;
  const T* vg = static_cast<const T*>(a.v) + h * a.sVh + cN * 8;

  // K rows = [K_nope (16 units) ; k_rope (8 units)]: the concatenation happens here. Rows past
  // kHi are zero-filled (and masked), so no garbage reaches the mma.
  auto loadK = [&](int tile) {
    const int p0 = kLo + tile * kBN;
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i) {
      const int r = rN + 8 * i;
      const bool ok = p0 + r < kHi;
      cpAsync16(ks + r * kPitchQK + cN * 8, ok ? kng + (rowBase + p0 + r) * a.sKt : kng, ok);
    }
#pragma unroll
    for (int i = 0; i < kBN / 16; ++i) {
      const int r = rR + 16 * i;
      const bool ok = p0 + r < kHi;
      cpAsync16(ks + r * kPitchQK + 128 + cR * 8, ok ? krg + (rowBase + p0 + r) * a.sRt : krg, ok);
    }
  };
  // Zero rows matter for V: P = 0 times NaN garbage would still be NaN.
  auto loadV = [&](int tile) {
    const int p0 = kLo + tile * kBN;
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i) {
      const int r = rN + 8 * i;
      const bool ok = p0 + r < kHi;
      cpAsync16(vs + r * kPitchV + cN * 8, ok ? vg + (rowBase + p0 + r) * a.sVt : vg, ok);
    }
  };

  float o[kDV / 8][4];
#pragma unroll
  for (int i = 0; i < kDV / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mRow[2] = {-INFINITY, -INFINITY};
  float lRow[2] = {0.f, 0.f};
  const int jr0 = int(j0) + warp * 16 + (lane >> 2);  // rows of c0/c1; c2/c3 are jr0 + 8

  if (nTiles > 0) {
    const T* qg = static_cast<const T*>(a.q) + h * a.sQh;
#pragma unroll
    for (int i = 0; i < kBM / 8; ++i) {
      const int r = rN + 8 * i;
      const int64_t row = pr.qStart + j0 + r;
      const bool ok = j0 + r < qLen && row >= 0 && row < a.Tq;
      const T* src = ok ? qg + row * a.sQt : qg;
      cpAsync16(qs + r * kPitchQK + cN * 8, src + cN * 8, ok);
      if (cN < 8) cpAsync16(qs + r * kPitchQK + 128 + cN * 8, src + 128 + cN * 8, ok);
    }
    loadK(0);
    cpAsyncCommit();
  }

  // A fragments of Q (PTX m16n8k16): x4 matrices = rows 0-7/8-15 × cols 0-7/8-15 -> a0..a3.
  const T* qw = qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kPitchQK + (lane >> 4) * 8;
  // B fragments from K rows (keys = n, dims = k, k contiguous = "col" B): x4 matrices are
  // (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) -> two n-tiles.
  const T* kw = ks + ((lane & 7) + (lane >> 4) * 8) * kPitchQK + ((lane >> 3) & 1) * 8;
  // V B fragments: ldmatrix.trans of V rows (keys = k) gives each lane its k-pair; x4 matrices
  // are (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
  const T* vw = vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * kPitchV + (lane >> 4) * 8;

  for (int t = 0; t < nTiles; ++t) {
    cpAsyncWait<0>();
    __syncthreads();  // K_t (and Q) landed; every warp finished reading V_{t−1}
    loadV(t);
    cpAsyncCommit();

    float s[kBN / 8][4];
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kQK / 16; ++kk) {
      uint32_t qa[4];
      ldmatrixX4(qa, qw + kk * 16);
#pragma unroll
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t bf[4];
        ldmatrixX4(bf, kw + np * 16 * kPitchQK + kk * 16);
        mma16816<T>(s[2 * np], qa, bf);
        mma16816<T>(s[2 * np + 1], qa, bf + 2);
      }
    }

    const int p0 = kLo + t * kBN;
    // Masking is needed only where some key is past kHi or past the first row's diagonal. The
    // raw scores are masked and their max scaled (scale > 0: max commutes); each score takes the
    // scale in its exponent's FFMA.
    const bool needMask = p0 + kBN > min(kHi, diag + int(j0) + 1);
    if (needMask) {
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int pos = p0 + nt * 8 + (lane & 3) * 2 + (e & 1);
          const int j = jr0 + (e >> 1) * 8;
          if (pos >= kHi || pos > diag + j) s[nt][e] = -INFINITY;
        }
      }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      // The four lanes of a quad hold one row.
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      mx *= a.scaleLog2;
      const float mNew = fmaxf(mRow[r], mx);
      // A row with nothing visible yet keeps m = −inf; subtracting 0 instead avoids inf − inf.
      const float mUse = mNew == -INFINITY ? 0.f : mNew;
      const float corr = exp2Ftz(mRow[r] - mUse);
      mRow[r] = mNew;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt) {
        const float e0 = exp2Ftz(fmaf(s[nt][2 * r], a.scaleLog2, -mUse));
        const float e1 = exp2Ftz(fmaf(s[nt][2 * r + 1], a.scaleLog2, -mUse));
        s[nt][2 * r] = e0;
        s[nt][2 * r + 1] = e1;
        sum += e0 + e1;
      }
      lRow[r] = lRow[r] * corr + sum;  // per-lane partial; the quad is summed at the end
#pragma unroll
      for (int nt = 0; nt < kDV / 8; ++nt) {
        o[nt][2 * r] *= corr;
        o[nt][2 * r + 1] *= corr;
      }
    }

    cpAsyncWait<0>();
    __syncthreads();  // V_t landed; every warp finished reading K_t
    if (t + 1 < nTiles) {
      loadK(t + 1);
      cpAsyncCommit();
    }

    // P (C layout of two adjacent n-tiles) is exactly the A fragment of one 16-key k-step.
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = packPair<T>(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = packPair<T>(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = packPair<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = packPair<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int np = 0; np < kDV / 16; ++np) {
        uint32_t bf[4];
        ldmatrixX4Trans(bf, vw + kk * 16 * kPitchV + np * 16);
        mma16816<T>(o[2 * np], pa, bf);
        mma16816<T>(o[2 * np + 1], pa, bf + 2);
      }
    }
  }

  T* og = static_cast<T*>(a.out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = lRow[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const float lse = l > 0.f ? (mRow[r] + log2f(l)) * kLn2 : -INFINITY;
    const int j = jr0 + r * 8;
    if (j >= qLen) continue;
    const int64_t orow = pr.qStart + j - a.outRowBase;
    if (orow < 0 || orow >= a.R) continue;
    T* dst = og + orow * a.sOt + h * a.sOh + (lane & 3) * 2;
#pragma unroll
    for (int nt = 0; nt < kDV / 8; ++nt)
      *reinterpret_cast<uint32_t*>(dst + nt * 8) = packPair<T>(o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
    if ((lane & 3) == 0) a.lse[orow * a.sLt + h * a.sLh] = lse;
  }
}

// ---- LSE merge ------------------------------------------------------------------------------
struct MergeArgs {
  void* out;
  int64_t sOr, sOh;
  float* lse;
  int64_t sLr, sLh;
  const void* part;
  int64_t sPr, sPh;
  const float* plse;
  int64_t sQr, sQh;
  int64_t rows, heads, dim;
};

// m = max(lse1, lse2), w_i = e^{lse_i − m}:  out = (o1·w1 + o2·w2)/(w1 + w2),  lse = m + ln(w1 + w2).
// A side with lse = ±inf is empty (no keys): weight 0, its o is not read (it may be anything).
// Both signs, because the ops disagree on the marker: prefill (and this merge) write −inf, decode
// and sparse +inf with o = 0; a real LSE is finite (a float overflow of Σ e^s would need scores
// past 88 nats above the max, i.e. none). Treating +inf as "weight 1" let an empty decode partial
// swallow a real one. Both sides empty: o = 0, lse = −inf (the running result's "no keys yet").
// A NaN LSE is not empty: it propagates (NaN out and lse), it is never hidden.
template <typename T>
__global__ void __launch_bounds__(128) mergeAttnStatesKernel(MergeArgs a) {
  const int64_t idx = blockIdx.x * 4LL + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (idx >= a.rows * a.heads) return;
  const int64_t r = idx / a.heads, h = idx % a.heads;
  const float l1 = a.lse[r * a.sLr + h * a.sLh];
  const float l2 = a.plse[r * a.sQr + h * a.sQh];
  const bool e1 = fabsf(l1) == INFINITY, e2 = fabsf(l2) == INFINITY;
  const bool none = e1 && e2;
  const float m = e1 ? l2 : e2 ? l1 : fmaxf(l1, l2);
  // l == m gives the larger side weight 1 exactly (no e^0 rounding).
  const float w1 = e1 ? 0.f : (l1 == m ? 1.f : expf(l1 - m));
  const float w2 = e2 ? 0.f : (l2 == m ? 1.f : expf(l2 - m));
  const float inv = none ? 0.f : 1.f / (w1 + w2);
  T* o = static_cast<T*>(a.out) + r * a.sOr + h * a.sOh;
  const T* p = static_cast<const T*>(a.part) + r * a.sPr + h * a.sPh;
  for (int64_t d = lane; d < a.dim; d += 32) {
    float acc = 0.f;
    if (w1 > 0.f) acc += toFloat<T>(o[d]) * w1;
    if (w2 > 0.f) acc += toFloat<T>(p[d]) * w2;
    o[d] = fromFloat<T>(acc * inv);
  }
  // Every lane read l1 from this word above: order those reads before lane 0 overwrites it
  // (the early return is per warp, so the whole warp is here).
  __syncwarp();
  if (lane == 0) a.lse[r * a.sLr + h * a.sLh] = none ? -INFINITY : m + logf(w1 + w2);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
bool aligned4(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 3) == 0; }
bool isHalf(DType t) { return t == DType::BF16 || t == DType::F16; }

// Plan checks every launcher shares: [B, 4] i32, rows readable with stride(0).
Status checkPlan(const TensorRef& plan, const char* op) {
  MLA_CHECK(plan.dtype == DType::I32, Dtype, std::string(op) + ": `plan` must be i32");
  MLA_CHECK(plan.ndim == 2 && plan.shape[1] == kPrefillPlanCols && plan.strides[1] == 1, Shape,
            std::string(op) + ": `plan` must be [B, 4] with a contiguous last dim");
  return Status::Ok();
}

}  // namespace

int64_t prefillAttentionSmemBytes() { return kSmemBytes; }

Status launchPrefillGather(const PrefillGatherParams& p, StreamHandle stream) {
  // Only what memory safety needs (core/check.h); lib/ops/prefill.ts validates with names first.
  MLA_RETURN_IF_ERROR(checkPlan(p.plan, "prefillGather"));
  const TensorRef &c = p.cache, &d = p.dst, &bt = p.blockTable;
  const bool fp8 = c.dtype == DType::U8;  // the FP8 layout, expanded to a bf16 dst
  MLA_CHECK(fp8 ? d.dtype == DType::BF16 : (isHalf(c.dtype) && d.dtype == c.dtype), Dtype,
            "prefillGather: `cache` and `dst` must be the same bf16/f16 (or an FP8 u8 `cache` and a bf16 `dst`)");
  MLA_CHECK(bt.dtype == DType::I32 && bt.ndim == 2 && bt.shape[0] == p.plan.shape[0], Shape,
            "prefillGather: `blockTable` must be i32 [B, maxPages] with B = plan rows");
  MLA_CHECK(!fp8 || (c.ndim == 3 && c.shape[2] == kFp8RowBytes && c.strides[2] == 1 && c.strides[1] == kFp8RowBytes && c.strides[0] % 16 == 0),
            Shape, "prefillGather: an FP8 `cache` must be u8 [numPages, pageSize, 656] with 656-byte rows and 16-byte page strides");
  MLA_CHECK(fp8 || (c.ndim == 3 && c.shape[2] == kPrefillCacheDim && c.strides[2] == 1), Shape,
            "prefillGather: `cache` must be [numPages, pageSize, 576] with a contiguous last dim");
  MLA_CHECK(d.ndim == 2 && d.shape[1] == kPrefillCacheDim && d.strides[1] == 1, Shape,
            "prefillGather: `dst` must be [rows, 576] with a contiguous last dim");
  MLA_CHECK(p.g0 >= 0 && p.g1 >= p.g0 && p.g1 - p.g0 <= d.shape[0], Range, "prefillGather: chunk [g0, g1) must fit `dst`'s rows");
  MLA_CHECK(c.shape[1] >= 1, Shape, "prefillGather: `cache` pageSize must be >= 1");
  MLA_CHECK(aligned16(c.data) && aligned16(d.data) && c.strides[0] % 8 == 0 && c.strides[1] % 8 == 0 && d.strides[0] % 8 == 0, Shape,
            "prefillGather: `cache` and `dst` rows must be 16-byte aligned");
  const int64_t rows = p.g1 - p.g0;
  if (rows == 0 || p.plan.shape[0] == 0) return Status::Ok();
  GatherArgs a{};
  a.cache = static_cast<const uint4*>(c.data);
  a.numPages = c.shape[0];
  a.pageSize = c.shape[1];
  a.sPage = c.strides[0] / (fp8 ? 16 : 8);  // 16-byte units
  a.sRow = c.strides[1] / (fp8 ? 16 : 8);
  a.table = bt.ptr<int32_t>();
  a.sTb = bt.strides[0];
  a.sTp = bt.strides[1];
  a.maxPages = bt.shape[1];
  a.plan = p.plan.ptr<int32_t>();
  a.sPlan = p.plan.strides[0];
  a.numReq = p.plan.shape[0];
  a.dst = static_cast<uint4*>(d.data);
  a.sDst = d.strides[0] / 8;
  a.g0 = p.g0;
  a.rows = rows;
  const int64_t blocks = (rows + 3) / 4;
  MLA_CHECK(blocks <= 0x7fffffffLL, Range, "prefillGather: too many rows");
  if (fp8) MLA_LAUNCH_KERNEL(static_cast<unsigned>(blocks), 128, 0, static_cast<cudaStream_t>(stream), prefillGatherKernel<true>)(a);
  else MLA_LAUNCH_KERNEL(static_cast<unsigned>(blocks), 128, 0, static_cast<cudaStream_t>(stream), prefillGatherKernel<false>)(a);
  MLA_CHECK_LAUNCH("prefillGather");
  return Status::Ok();
}

Status launchPrefillAttention(const PrefillAttentionParams& p, StreamHandle stream) {
  // Only what memory safety needs (core/check.h); lib/ops/prefill.ts validates with names first
  // (scale among them: a bad scale gives wrong numbers, never a bad address).
  const char* op = "prefillAttention";
  MLA_RETURN_IF_ERROR(checkPlan(p.plan, op));
  const TensorRef &q = p.q, &kn = p.kNope, &kr = p.kRope, &v = p.v, &o = p.out, &l = p.lse;
  MLA_CHECK(isHalf(q.dtype), Dtype, "prefillAttention: `q` must be bf16 or f16");
  MLA_CHECK(kn.dtype == q.dtype && kr.dtype == q.dtype && v.dtype == q.dtype && o.dtype == q.dtype, Dtype,
            "prefillAttention: `kNope`, `kRope`, `v` and `out` must have q's dtype");
  MLA_CHECK(l.dtype == DType::F32, Dtype, "prefillAttention: `lse` must be f32");
  MLA_CHECK(q.ndim == 3 && q.shape[2] == kQK, Shape, "prefillAttention: `q` must be [Tq, H, 192]");
  const int64_t H = q.shape[1];
  MLA_CHECK(H >= 1 && H <= 65535, Shape, "prefillAttention: H must be in [1, 65535]");
  const int64_t Tk = kn.ndim == 3 ? kn.shape[0] : -1;
  MLA_CHECK(kn.ndim == 3 && kn.shape[1] == H && kn.shape[2] == kPrefillNopeDim, Shape, "prefillAttention: `kNope` must be [Tk, H, 128]");
  MLA_CHECK(v.ndim == 3 && v.shape[0] == Tk && v.shape[1] == H && v.shape[2] == kDV, Shape, "prefillAttention: `v` must be [Tk, H, 128]");
  MLA_CHECK(kr.ndim == 2 && kr.shape[0] == Tk && kr.shape[1] == kPrefillRopeDim, Shape, "prefillAttention: `kRope` must be [Tk, 64]");
  MLA_CHECK(o.ndim == 3 && o.shape[1] == H && o.shape[2] == kDV, Shape, "prefillAttention: `out` must be [R, H, 128]");
  MLA_CHECK(l.ndim == 2 && l.shape[0] == o.shape[0] && l.shape[1] == H, Shape, "prefillAttention: `lse` must be [R, H]");
  MLA_CHECK(q.strides[2] == 1 && kn.strides[2] == 1 && kr.strides[1] == 1 && v.strides[2] == 1 && o.strides[2] == 1, Shape,
            "prefillAttention: the last dim of `q`, `kNope`, `kRope`, `v` and `out` must be contiguous");
  // cp.async moves 16-byte units; the output is stored as element pairs.
  MLA_CHECK(aligned16(q.data) && aligned16(kn.data) && aligned16(kr.data) && aligned16(v.data) && q.strides[0] % 8 == 0 &&
                q.strides[1] % 8 == 0 && kn.strides[0] % 8 == 0 && kn.strides[1] % 8 == 0 && kr.strides[0] % 8 == 0 &&
                v.strides[0] % 8 == 0 && v.strides[1] % 8 == 0,
            Shape, "prefillAttention: `q`, `kNope`, `kRope` and `v` rows must be 16-byte aligned (strides multiples of 8)");
  MLA_CHECK(aligned4(o.data) && o.strides[0] % 2 == 0 && o.strides[1] % 2 == 0, Shape, "prefillAttention: `out` rows must be 4-byte aligned");
  const int64_t B = p.plan.shape[0];
  MLA_CHECK(p.reqBegin >= 0 && p.reqCount >= 0 && p.reqBegin + p.reqCount <= B, Range, "prefillAttention: request range outside the plan");
  MLA_CHECK(p.g0 >= 0 && p.g1 >= p.g0 && p.g1 - p.g0 <= Tk, Range, "prefillAttention: chunk [g0, g1) must fit the key rows");
  // maxQLen sizes the grid (a negative one would wrap to a huge unsigned grid dimension).
  MLA_CHECK(p.maxQLen >= 0, Range, "prefillAttention: `maxQLen` must be >= 0");
  const int64_t tiles = (p.maxQLen + kBM - 1) / kBM;
  if (tiles == 0 || p.reqCount == 0 || o.shape[0] == 0) return Status::Ok();
  MLA_CHECK(tiles <= 0x7fffffffLL && p.reqCount <= 65535, Range, "prefillAttention: grid too large");

  DeviceProps dp;
  MLA_RETURN_IF_ERROR(currentDeviceProps(&dp));
  MLA_CHECK(dp.smemOptin >= kSmemBytes, Argument,
            "prefillAttention: the device allows " + std::to_string(dp.smemOptin) + " bytes of shared memory per block, the kernel needs " +
                std::to_string(kSmemBytes));

  AttnArgs a{};
  a.q = q.data; a.sQt = q.strides[0]; a.sQh = q.strides[1]; a.Tq = q.shape[0];
  a.kn = kn.data; a.sKt = kn.strides[0]; a.sKh = kn.strides[1];
  a.kr = kr.data; a.sRt = kr.strides[0];
  a.v = v.data; a.sVt = v.strides[0]; a.sVh = v.strides[1]; a.Tk = Tk;
  a.out = o.data; a.sOt = o.strides[0]; a.sOh = o.strides[1]; a.R = o.shape[0];
  a.lse = l.ptr<float>(); a.sLt = l.strides[0]; a.sLh = l.strides[1];
  a.plan = p.plan.ptr<int32_t>(); a.sPlan = p.plan.strides[0]; a.reqBegin = p.reqBegin;
  a.g0 = p.g0; a.g1 = p.g1; a.outRowBase = p.outRowBase;
  a.scaleLog2 = static_cast<float>(p.scale) * kLog2e;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(H), static_cast<unsigned>(p.reqCount));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return MLA_DISPATCH_HALF_TYPES(q.dtype, T, [&] {
    constexpr auto kernel = prefillAttentionKernel<T>;
    MLA_RETURN_IF_ERROR(optInSharedMemory<kernel>(kSmemBytes, "prefillAttention"));
    MLA_LAUNCH_KERNEL(grid, kThreads, kSmemBytes, s, kernel)(a);
    MLA_CHECK_LAUNCH("prefillAttention");
    return Status::Ok();
  });
}

Status launchMergeAttnStates(const MergeAttnStatesParams& p, StreamHandle stream) {
  // Only what memory safety needs (core/check.h); lib/ops/prefill.ts validates with names first.
  const TensorRef &o = p.out, &l = p.lse, &q = p.part, &ql = p.partLse;
  MLA_CHECK(isHalf(o.dtype) && q.dtype == o.dtype, Dtype, "mergeAttnStates: `out` and `part` must be the same bf16/f16");
  MLA_CHECK(l.dtype == DType::F32 && ql.dtype == DType::F32, Dtype, "mergeAttnStates: `lse` and `partLse` must be f32");
  MLA_CHECK(o.ndim == 3 && q.ndim == 3 && l.ndim == 2 && ql.ndim == 2, Shape,
            "mergeAttnStates: `out`/`part` must be [R, H, D], `lse`/`partLse` [R, H]");
  MLA_CHECK(o.shape[0] == q.shape[0] && o.shape[1] == q.shape[1] && o.shape[2] == q.shape[2], Shape,
            "mergeAttnStates: `part` must have out's shape");
  MLA_CHECK(l.shape[0] == o.shape[0] && l.shape[1] == o.shape[1] && ql.shape[0] == o.shape[0] && ql.shape[1] == o.shape[1], Shape,
            "mergeAttnStates: `lse` and `partLse` must be [R, H]");
  MLA_CHECK(o.strides[2] == 1 && q.strides[2] == 1, Shape, "mergeAttnStates: the last dim of `out` and `part` must be contiguous");
  const int64_t n = o.shape[0] * o.shape[1];
  if (n == 0) return Status::Ok();
  const int64_t blocks = (n + 3) / 4;
  MLA_CHECK(blocks <= 0x7fffffffLL, Range, "mergeAttnStates: too many rows");
  MergeArgs a{};
  a.out = o.data; a.sOr = o.strides[0]; a.sOh = o.strides[1];
  a.lse = l.ptr<float>(); a.sLr = l.strides[0]; a.sLh = l.strides[1];
  a.part = q.data; a.sPr = q.strides[0]; a.sPh = q.strides[1];
  a.plse = ql.ptr<float>(); a.sQr = ql.strides[0]; a.sQh = ql.strides[1];
  a.rows = o.shape[0]; a.heads = o.shape[1]; a.dim = o.shape[2];
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return MLA_DISPATCH_HALF_TYPES(o.dtype, T, [&] {
    MLA_LAUNCH_KERNEL(static_cast<unsigned>(blocks), 128, 0, s, mergeAttnStatesKernel<T>)(a);
    MLA_CHECK_LAUNCH("mergeAttnStates");
    return Status::Ok();
  });
}

}  // namespace mla::gpu
