// primitives: argument reading for lib/ops/primitives.ts (the PTX conformance kernels; the
// launcher re-checks shapes and dtypes so a direct call cannot fault).
#include "binding/napi_util.h"
#include "kernels/primitives.h"

namespace mla::binding {
namespace {

// primitives({ which, ...the tensors of that primitive (see primitives.h), num?, trans?, the sm_90a
// integers (n, k, swizzleA, swizzleB, tnspA, tnspB, lboRows, rs, scaleD, box0-2, swizzle, mode, handover), stream? })
Napi::Value PrimitivesOp(const Napi::CallbackInfo& info) {
  ArgReader a(info, "primitives");
  PrimitivesParams p;
  const int64_t which = a.i64("which");
  switch (which) {
    case static_cast<int64_t>(Primitive::Mma):
      p.a = a.tensor("a");
      p.b = a.tensor("b");
      p.c = a.tensor("c");
      p.d = a.tensor("d");
      break;
    case static_cast<int64_t>(Primitive::Ldmatrix):
      p.matrix = a.tensor("matrix");
      p.perm = a.tensor("perm");
      p.frag = a.tensor("frag");
      p.num = static_cast<int>(a.i64("num"));
      p.trans = a.boolean("trans", false);
      break;
    case static_cast<int64_t>(Primitive::CpAsync):
      p.src = a.tensor("src");
      p.pred = a.tensor("pred");
      p.early = a.tensor("early");
      p.out = a.tensor("out");
      break;
    case static_cast<int64_t>(Primitive::Shuffle):
      p.values = a.tensor("values");
      p.cases = a.tensor("cases");
      p.shfl = a.tensor("shfl");
      break;
    case static_cast<int64_t>(Primitive::Vote):
      p.preds = a.tensor("preds");
      p.votes = a.tensor("votes");
      break;
    case static_cast<int64_t>(Primitive::Wgmma):
      p.a = a.tensor("a");
      p.b = a.tensor("b");
      p.c = a.tensor("c");
      p.d = a.tensor("d");
      p.n = static_cast<int>(a.i64("n"));
      p.k = static_cast<int>(a.i64("k"));
      p.swizzleA = static_cast<int>(a.i64("swizzleA", 0));
      p.swizzleB = static_cast<int>(a.i64("swizzleB", 0));
      p.tnspA = static_cast<int>(a.i64("tnspA", 0));
      p.tnspB = static_cast<int>(a.i64("tnspB", 0));
      p.lboRows = static_cast<int>(a.i64("lboRows", p.k));
      p.rs = a.boolean("rs", false);
      p.scaleD = a.boolean("scaleD", true);
      p.mode = static_cast<int>(a.i64("mode", 0));
      break;
    case static_cast<int64_t>(Primitive::Tma):
      p.src = a.tensor("src");
      p.coords = a.tensor("coords");
      p.out = a.tensor("out");
      p.box[0] = static_cast<int>(a.i64("box0"));
      p.box[1] = static_cast<int>(a.i64("box1", 1));
      p.box[2] = static_cast<int>(a.i64("box2", 1));
      p.swizzle = static_cast<int>(a.i64("swizzle", 0));
      p.mode = static_cast<int>(a.i64("mode", 0));
      break;
    case static_cast<int64_t>(Primitive::Mbarrier):
      p.src = a.tensor("src");
      p.tile = a.tensor("tile");
      p.waits = a.tensor("waits");
      p.mode = static_cast<int>(a.i64("mode", 0));
      p.handover = static_cast<int>(a.i64("handover", 0));
      break;
    default: break;  // an unknown `which` reads nothing; the launcher refuses it
  }
  p.which = static_cast<Primitive>(which);
  MLA_LAUNCH(a.env(), gpu::launchPrimitive(p, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("primitives", PrimitivesOp);
}  // namespace mla::binding
