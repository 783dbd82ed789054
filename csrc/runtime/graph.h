// CUDA graphs through stream capture, as the binding sees them (plain C++; graph.cu implements
// it, runtime_stub.cc refuses it). A capture records what the ops launch on one stream; the
// instantiated graph replays all of it with one launch and no host work in between.
#pragma once
#include "core/status.h"
#include "core/tensor.h"

namespace mla::gpu {

// Thread-local capture mode: only this thread's unsafe calls (allocation, synchronisation)
// break the capture, so other worker threads keep working.
Status streamBeginCapture(StreamHandle stream);
// Ends the capture and instantiates it. A capture broken by an unsupported call fails here.
Status streamEndCapture(StreamHandle stream, void** graphExec);
// Ends the capture and updates `graphExec` in place from it (same topology: same kernels in the
// same order; arguments may differ). *updated is false when the topology changed: graphExec is
// then unchanged and the caller re-instantiates.
Status streamEndCaptureInto(StreamHandle stream, void* graphExec, bool* updated);
Status streamIsCapturing(StreamHandle stream, bool* capturing);
Status graphLaunch(void* graphExec, StreamHandle stream);
void graphExecDestroy(void* graphExec);  // errors ignored: it runs from finalizers

}  // namespace mla::gpu
