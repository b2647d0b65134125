// Shared by the shim's files (graphs.cpp, nvrtc.cpp, train.cpp): every entry point catches C++
// exceptions and returns a message instead (0 = success), so none crosses into Rust.
#pragma once
#include <cuda_runtime_api.h>

#include <cstring>
#include <exception>
#include <stdexcept>

namespace uniattn_shim {

inline void put_error(char* err, size_t len, const char* what) {
  if (err == nullptr || len == 0) return;
  std::strncpy(err, what, len - 1);
  err[len - 1] = '\0';
}

template <typename F>
int guarded(char* err, size_t len, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    put_error(err, len, e.what());
  } catch (...) {
    put_error(err, len, "unknown C++ exception");
  }
  return 1;
}

inline void check(cudaError_t e) {
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
}

// `waiter` waits for everything queued on `first` so far: an event between them, no host
// synchronisation (in a capture, an edge of the graph).
inline void order(cudaStream_t first, cudaStream_t waiter) {
  cudaEvent_t ev;
  check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  const auto recorded = cudaEventRecord(ev, first);
  const auto waited = recorded == cudaSuccess ? cudaStreamWaitEvent(waiter, ev, 0) : recorded;
  cudaEventDestroy(ev);
  check(waited);
}

}  // namespace uniattn_shim
