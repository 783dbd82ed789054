// CUDA graph capture and replay (graph.h), on the CUDA runtime (or the emulated device's).
#include <cuda_runtime.h>
#include "runtime/cuda_check.h"
#include "runtime/graph.h"

namespace mla::gpu {

static cudaStream_t S(StreamHandle s) { return static_cast<cudaStream_t>(s); }

Status streamBeginCapture(StreamHandle stream) {
  MLA_CUDA_TRY(cudaStreamBeginCapture(S(stream), cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  return Status::Ok();
}

// The captured graph is only an intermediate: the executable one is what replays.
static Status endCapture(StreamHandle stream, cudaGraph_t* graph) {
  MLA_CUDA_TRY(cudaStreamEndCapture(S(stream), graph), "cudaStreamEndCapture");
  return Status::Ok();
}

Status streamEndCapture(StreamHandle stream, void** graphExec) {
  cudaGraph_t graph = nullptr;
  if (Status s = endCapture(stream, &graph); !s.ok()) return s;
  cudaGraphExec_t exec = nullptr;
  cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  MLA_CUDA_TRY(err, "cudaGraphInstantiate");
  *graphExec = exec;
  return Status::Ok();
}

Status streamEndCaptureInto(StreamHandle stream, void* graphExec, bool* updated) {
  *updated = false;
  cudaGraph_t graph = nullptr;
  if (Status s = endCapture(stream, &graph); !s.ok()) return s;
  cudaGraphExecUpdateResultInfo info{};
  cudaError_t err = cudaGraphExecUpdate(static_cast<cudaGraphExec_t>(graphExec), graph, &info);
  cudaGraphDestroy(graph);
  if (err == cudaErrorGraphExecUpdateFailure) {
    cudaGetLastError();  // a refused update is an answer, not an error to leave behind
    return Status::Ok();
  }
  MLA_CUDA_TRY(err, "cudaGraphExecUpdate");
  *updated = true;
  return Status::Ok();
}

Status streamIsCapturing(StreamHandle stream, bool* capturing) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  MLA_CUDA_TRY(cudaStreamIsCapturing(S(stream), &status), "cudaStreamIsCapturing");
  *capturing = status != cudaStreamCaptureStatusNone;
  return Status::Ok();
}

Status graphLaunch(void* graphExec, StreamHandle stream) {
  MLA_CUDA_TRY(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graphExec), S(stream)), "cudaGraphLaunch");
  return Status::Ok();
}

void graphExecDestroy(void* graphExec) { cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graphExec)); }

}  // namespace mla::gpu
