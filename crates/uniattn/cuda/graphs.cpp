// CUDA graphs and streams for uniattn: the parts of libtorch that tch 0.24 does not bind.
// Built by build.rs, with kernels.cpp, into a shared library that the binary carries and loads
// (dlopen) only when CUDA is available, because libtorch_cuda cannot be loaded on a machine
// without a GPU driver.
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <optional>

#include "shim.h"

namespace {

using uniattn_shim::check;
using uniattn_shim::guarded;
using uniattn_shim::order;

// A captured graph and the side stream it is captured and replayed on. Work enters the side
// stream after everything queued on the caller's stream, and the caller's stream waits for it
// on leaving, so the graph orders with eager work like any other kernel.
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream side;
  std::optional<c10::cuda::CUDAStream> caller;
  explicit Graph(c10::DeviceIndex device)
      : graph(/*keep_graph=*/true), side(c10::cuda::getStreamFromPool(false, device)) {}
};

void enter(Graph* g) {
  auto caller = c10::cuda::getCurrentCUDAStream(g->side.device_index());
  order(caller.stream(), g->side.stream());
  g->caller = caller;
  c10::cuda::setCurrentCUDAStream(g->side);
}

void leave(Graph* g) {
  if (!g->caller) return;
  order(g->side.stream(), g->caller->stream());
  c10::cuda::setCurrentCUDAStream(*g->caller);
  g->caller.reset();
}

}  // namespace

extern "C" {

// One memory pool that every graph of the process captures into (vLLM and gpt-fast do the
// same): graphs replay one at a time, so they may share their temporaries.
int ua_pool_new(unsigned long long* id0, unsigned long long* id1, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto id = at::cuda::graph_pool_handle();
    *id0 = id.first;
    *id1 = id.second;
  });
}

int ua_graph_new(int device, void** out, char* err, size_t len) {
  return guarded(err, len, [&] { *out = new Graph(static_cast<c10::DeviceIndex>(device)); });
}

void ua_graph_free(void* g) { delete static_cast<Graph*>(g); }

// Makes the graph's side stream current (for warm-up runs and the capture itself).
int ua_graph_enter(void* g, char* err, size_t len) {
  return guarded(err, len, [&] { enter(static_cast<Graph*>(g)); });
}

// Returns to the caller's stream, which then waits for the side stream's work.
int ua_graph_leave(void* g, char* err, size_t len) {
  return guarded(err, len, [&] { leave(static_cast<Graph*>(g)); });
}

// Between enter and leave: starts capturing the side stream. Only this thread's work is
// captured (another thread's CUDA calls neither join nor break the capture).
int ua_graph_capture_begin(void* g, unsigned long long id0, unsigned long long id1, char* err, size_t len) {
  return guarded(err, len, [&] {
    static_cast<Graph*>(g)->graph.capture_begin({id0, id1}, cudaStreamCaptureModeThreadLocal);
  });
}

int ua_graph_capture_end(void* g, char* err, size_t len) {
  return guarded(err, len, [&] { static_cast<Graph*>(g)->graph.capture_end(); });
}

// Replays on the side stream, ordered after the caller's queued work and before its next.
int ua_graph_replay(void* g, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto* graph = static_cast<Graph*>(g);
    enter(graph);
    graph->graph.replay();
    leave(graph);
  });
}

// Nodes (kernels, copies, memsets) in the captured graph: what one replay launches.
int ua_graph_nodes(void* g, size_t* out, char* err, size_t len) {
  return guarded(err, len, [&] {
    check(cudaGraphGetNodes(static_cast<Graph*>(g)->graph.raw_cuda_graph(), nullptr, out));
  });
}

// Pinned host memory of `bytes` bytes: copies from the GPU into it need not block the host.
int ua_host_alloc(size_t bytes, void** out, char* err, size_t len) {
  return guarded(err, len, [&] { check(cudaHostAlloc(out, bytes, cudaHostAllocDefault)); });
}

void ua_host_free(void* p) { cudaFreeHost(p); }

// Copies `bytes` from GPU memory `src` into pinned `dst` on `device`'s current stream, after the
// work queued there, and writes an event recorded after the copy to `event` (ua_event_wait).
int ua_copy_to_host_async(int device, const void* src, void* dst, size_t bytes, void** event, char* err,
                          size_t len) {
  return guarded(err, len, [&] {
    check(cudaSetDevice(device));
    const auto stream = c10::cuda::getCurrentCUDAStream(device).stream();
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
    cudaEvent_t e;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    const auto recorded = cudaEventRecord(e, stream);
    if (recorded != cudaSuccess) cudaEventDestroy(e);
    check(recorded);
    *event = e;
  });
}

// Blocks until `event` (from ua_copy_to_host_async) has happened, then destroys it.
int ua_event_wait(void* event, char* err, size_t len) {
  return guarded(err, len, [&] {
    const auto e = static_cast<cudaEvent_t>(event);
    const auto waited = cudaEventSynchronize(e);
    cudaEventDestroy(e);
    check(waited);
  });
}

}  // extern "C"
