// decode / decodeWorkspaceBytes / decodeConfig: the native side of lib/ops/decode.ts.
#include "binding/split_kv_args.h"
#include "kernels/decode.h"

namespace mla::binding {
namespace {

// decode({ q, cache, blockTable, seqLens, qSeqLens?, out, lse, workspace, scale, causal,
//          uniformQSeqLen (ignored with qSeqLens), maxQSeqLen, wsMaxBatch, wsPartialRows,
//          wsMaxParts, runPlan?, runMain?, runCombine?, pdl?, kernel? (DecodeKernel), stream? })
// Converts only (core/check.h has the rule): the TS wrapper has validated everything it can
// see; the launcher re-checks what memory safety depends on, so a direct call cannot fault the GPU.
Napi::Value Decode(const Napi::CallbackInfo& info) {
  ArgReader a(info, "decode");
  DecodeParams p;
  readSplitKvArgs(a, p);
  p.blockTable = a.tensor("blockTable");
  p.seqLens = a.tensor("seqLens");
  p.hasQSeqLens = a.optionalTensor("qSeqLens", &p.qSeqLens);
  p.causal = a.boolean("causal", false);
  p.uniformQSeqLen = a.i64("uniformQSeqLen", 1);
  p.maxQSeqLen = a.i64("maxQSeqLen", p.uniformQSeqLen);
  p.kernel = static_cast<DecodeKernel>(a.i64("kernel", 0));
  MLA_LAUNCH(a.env(), gpu::launchDecode(p, a.stream()));
  return a.env().Undefined();
}

// decodeWorkspaceBytes({ maxBatch, partialRows, maxParts }) -> layout (no device needed).
Napi::Value DecodeWorkspaceBytes(const Napi::CallbackInfo& info) {
  ArgReader a(info, "decodeWorkspaceBytes");
  DecodeWorkspaceLayout l;
  MLA_LAUNCH(a.env(), gpu::checkedDecodeWorkspaceLayout(a.i64("maxBatch"), a.i64("partialRows"), a.i64("maxParts"), &l));
  Napi::Object o = Napi::Object::New(a.env());
  o.Set("totalBytes", Napi::Number::New(a.env(), static_cast<double>(l.totalBytes)));
  o.Set("partMetaOffset", Napi::Number::New(a.env(), static_cast<double>(l.partMetaOff)));
  o.Set("reqInfoOffset", Napi::Number::New(a.env(), static_cast<double>(l.reqInfoOff)));
  o.Set("lseOffset", Napi::Number::New(a.env(), static_cast<double>(l.lseOff)));
  o.Set("oOffset", Napi::Number::New(a.env(), static_cast<double>(l.oOff)));
  return o;
}

// decodeConfig({ numHeads, maxQSeqLen, maxParts, kernel?, fp8Cache? }) -> the tile config a call
// would use here.
Napi::Value DecodeConfig(const Napi::CallbackInfo& info) {
  ArgReader a(info, "decodeConfig");
  gpu::DecodeConfigInfo c;
  MLA_LAUNCH(a.env(), gpu::decodeConfigFor(a.i64("numHeads"), a.i64("maxQSeqLen"), a.i64("maxParts"),
                                           static_cast<DecodeKernel>(a.i64("kernel", 0)), a.boolean("fp8Cache", false), &c));
  Napi::Object o = Napi::Object::New(a.env());
  o.Set("blockM", c.blockM);
  o.Set("blockN", c.blockN);
  o.Set("stages", c.stages);
  o.Set("smemBytes", c.smemBytes);
  o.Set("numParts", c.numParts);
  o.Set("rowTiles", c.rowTiles);
  o.Set("ctasPerSm", c.ctasPerSm);
  o.Set("kernel", c.hopper ? "hopper" : "portable");
  return o;
}

}  // namespace
MLA_REGISTER_OP("decode", Decode);
MLA_REGISTER_OP("decodeWorkspaceBytes", DecodeWorkspaceBytes);
MLA_REGISTER_OP("decodeConfig", DecodeConfig);
}  // namespace mla::binding
