// ropeTable / rope / appendLatent: argument reading for lib/ops/rope.ts (which validates
// everything first; the launchers re-check shapes so a direct call cannot fault).
#include "binding/napi_util.h"
#include "kernels/rope.h"

namespace mla::binding {
namespace {

// 1 is neox; anything else reads as interleaved (lib/ops/rope.ts checks the layout's name).
gpu::RopeLayout layoutArg(const ArgReader& a) {
  return a.i64("layout", 0) == 1 ? gpu::RopeLayout::Neox : gpu::RopeLayout::Interleaved;
}

// ropeTable({ table, invFreq, attentionFactor?, stream? })
Napi::Value RopeTableOp(const Napi::CallbackInfo& info) {
  ArgReader a(info, "ropeTable");
  gpu::RopeTableParams p;
  p.table = a.tensor("table");
  p.invFreq = a.tensor("invFreq");
  p.attentionFactor = a.f64("attentionFactor", 1.0);
  MLA_LAUNCH(a.env(), gpu::launchRopeTable(p, a.stream()));
  return a.env().Undefined();
}

// rope({ x, positions, table, layout?, stream? })
Napi::Value RopeOp(const Napi::CallbackInfo& info) {
  ArgReader a(info, "rope");
  gpu::RopeParams p;
  p.x = a.tensor("x");
  p.positions = a.tensor("positions");
  p.table = a.tensor("table");
  p.layout = layoutArg(a);
  MLA_LAUNCH(a.env(), gpu::launchRope(p, a.stream()));
  return a.env().Undefined();
}

// appendLatent({ kvDown, normWeight, eps, positions, slotMapping, cache, table, layout?, stream? })
Napi::Value AppendLatentOp(const Napi::CallbackInfo& info) {
  ArgReader a(info, "appendLatent");
  gpu::AppendLatentParams p;
  p.kvDown = a.tensor("kvDown");
  p.normWeight = a.tensor("normWeight");
  p.positions = a.tensor("positions");
  p.slotMapping = a.tensor("slotMapping");
  p.cache = a.tensor("cache");
  p.table = a.tensor("table");
  p.eps = static_cast<float>(a.f64("eps"));
  p.layout = layoutArg(a);
  MLA_LAUNCH(a.env(), gpu::launchAppendLatent(p, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("ropeTable", RopeTableOp);
MLA_REGISTER_OP("rope", RopeOp);
MLA_REGISTER_OP("appendLatent", AppendLatentOp);
}  // namespace mla::binding
