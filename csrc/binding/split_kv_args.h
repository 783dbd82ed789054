// The arguments decode and sparse read alike (both run the split-KV kernels of
// kernels/decode_impl.cuh): q, cache, out, lse, the workspace with its declared sizes, the scale
// and which of the three launches to issue. Conversion only, like every binding.
#pragma once
#include "binding/napi_util.h"

namespace mla::binding {

template <class Params>
void readSplitKvArgs(const ArgReader& a, Params& p) {
  p.q = a.tensor("q");
  p.cache = a.tensor("cache");
  p.out = a.tensor("out");
  p.lse = a.tensor("lse");
  p.workspace = a.tensor("workspace");
  p.scale = static_cast<float>(a.f64("scale"));
  p.wsMaxBatch = a.i64("wsMaxBatch");
  p.wsPartialRows = a.i64("wsPartialRows");
  p.wsMaxParts = a.i64("wsMaxParts");
  p.runPlan = a.boolean("runPlan", true);
  p.runMain = a.boolean("runMain", true);
  p.runCombine = a.boolean("runCombine", true);
  p.pdl = a.boolean("pdl", false);
}

}  // namespace mla::binding
