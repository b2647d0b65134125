// The training-side parts of libtorch that tch 0.24 does not bind: the one-launch AdamW
// (`at::_fused_adamw_`), gradients that live in a caller's buffer, a backward pass from a given
// output gradient, and libtorch's (Kineto) profiler. Built with graphs.cpp and nvrtc.cpp.
// Tensors arrive as tch's handles, which point at `at::Tensor`s.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <optional>
#include <string>

#include "shim.h"

namespace {

using uniattn_shim::guarded;

at::Tensor& tensor(void* handle) { return *static_cast<at::Tensor*>(handle); }

}  // namespace

extern "C" {

// AdamW over one tensor (the flat parameter buffer) in one kernel: PyTorch's
// `torch.optim.AdamW(fused=True)` update. `step` is a 0-d f32 tensor on the device holding the
// step number (1 on the first update); `grad_scale` (nullable) divides the gradient first,
// which is how clipping reaches the kernel without a host synchronisation.
int ua_fused_adamw(void* param, void* grad, void* exp_avg, void* exp_avg_sq, void* step, double lr, double beta1,
                   double beta2, double weight_decay, double eps, void* grad_scale, char* err, size_t len) {
  return guarded(err, len, [&] {
    std::optional<at::Tensor> scale;
    if (grad_scale != nullptr) scale = tensor(grad_scale);
    at::_fused_adamw_({tensor(param)}, {tensor(grad)}, {tensor(exp_avg)}, {tensor(exp_avg_sq)}, {},
                      {tensor(step)}, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false, scale, std::nullopt);
  });
}

// Makes `grad` the gradient of `param`: backward passes then accumulate into it in place.
int ua_set_grad(void* param, void* grad, char* err, size_t len) {
  return guarded(err, len, [&] { tensor(param).mutable_grad() = tensor(grad); });
}

// Backpropagates from `output` with `grad` as its gradient (`output.backward(grad)`).
int ua_backward(void* output, void* grad, char* err, size_t len) {
  return guarded(err, len, [&] { torch::autograd::backward({tensor(output)}, {tensor(grad)}); });
}

// Enters bf16 autocast on CUDA for this thread (libtorch's CUDA default is f16), writing the
// previous state out for ua_autocast_leave.
int ua_autocast_enter(int* prev_enabled, int* prev_dtype, char* err, size_t len) {
  return guarded(err, len, [&] {
    *prev_enabled = at::autocast::is_autocast_enabled(at::kCUDA) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(at::kCUDA));
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::increment_nesting();
  });
}

// Leaves what ua_autocast_enter entered: the weight casts it cached are dropped when the
// outermost region ends, and the previous state returns.
int ua_autocast_leave(int prev_enabled, int prev_dtype, char* err, size_t len) {
  return guarded(err, len, [&] {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(at::kCUDA, prev_enabled != 0);
    at::autocast::set_autocast_dtype(at::kCUDA, static_cast<at::ScalarType>(prev_dtype));
  });
}

// Starts libtorch's profiler (CPU operators and CUDA kernels, through Kineto/CUPTI).
int ua_profiler_start(char* err, size_t len) {
  return guarded(err, len, [&] {
    using namespace torch::autograd::profiler;
    using torch::profiler::impl::ActivityType;
    const ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
    const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
    prepareProfiler(config, activities);
    enableProfiler(config, activities);
  });
}

// Stops the profiler and writes what it recorded as a Chrome trace (JSON) to `path`, or
// drops it when `path` is null.
int ua_profiler_stop(const char* path, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr && result) result->save(std::string(path));
  });
}

// The most memory libtorch's allocator has handed out (`torch.cuda.max_memory_allocated`) and
// held (`max_memory_reserved`) on `device` so far, in bytes.
int ua_memory_peaks(int device, int64_t* allocated, int64_t* reserved, char* err, size_t len) {
  return guarded(err, len, [&] {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].peak;
    *reserved = stats.reserved_bytes[all].peak;
  });
}

}  // extern "C"
