// The training-side parts of libtorch that tch 0.24 does not bind: gradients that live in a
// caller's buffer (TrainedLinear's GEMM adds into it), a backward pass from a given
// output gradient, and libtorch's (Kineto) profiler. Built with graphs.cpp and nvrtc.cpp.
// Tensors arrive as tch's handles, which point at `at::Tensor`s.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "shim.h"

namespace {

using uniattn_shim::guarded;

at::Tensor& tensor(void* handle) { return *static_cast<at::Tensor*>(handle); }

}  // namespace

// The launcher of NVRTC-compiled kernels (nvrtc.cpp).
extern "C" int ua_kernel_launch(void* kernel, int device, unsigned grid, unsigned block, unsigned shared_bytes,
                                int programmatic, void** args, char* err, size_t len);

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One kernel argument, stored so that its address can be handed to the launch.
union Arg {
  void* ptr;
  int64_t i64;
  int32_t i32;
  float f32;
};

// Launches `kernel` (a handle from ua_kernel_get) on `grid` blocks of 256 threads on the current
// stream of `like`'s device: inside autograd's backward that is the stream the forward ran on,
// so a captured graph takes both.
void launch_blocks(int64_t kernel, const at::Tensor& like, int64_t grid, std::vector<Arg> args) {
  std::vector<void*> ptrs;
  for (auto& a : args) ptrs.push_back(&a);
  char err[1024];
  if (ua_kernel_launch(reinterpret_cast<void*>(kernel), like.get_device(), static_cast<unsigned>(grid), 256, 0, 0,
                       ptrs.data(), err, sizeof err) != 0) {
    throw std::runtime_error(err);
  }
}

// [`launch_blocks`] with a grid-stride grid over `elements` (at most 4096 blocks).
void launch(int64_t kernel, const at::Tensor& like, int64_t elements, std::vector<Arg> args) {
  launch_blocks(kernel, like, std::clamp<int64_t>((elements + 255) / 256, 1, 4096), std::move(args));
}

Arg ptr(const at::Tensor& t) { return Arg{.ptr = t.data_ptr()}; }
Arg nullable(const at::Tensor& t) { return Arg{.ptr = t.defined() ? t.data_ptr() : nullptr}; }

// `t` contiguous and 16-byte aligned, as the kernels' wide loads need (copied if not).
at::Tensor aligned(const at::Tensor& t) {
  auto c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}

// Elements per 16-byte piece of `t`'s type: each kernel thread takes one piece.
int64_t pieces(const at::Tensor& t) { return t.numel() / (16 / t.element_size()); }
Arg i64(int64_t v) { return Arg{.i64 = v}; }
Arg i32(int64_t v) { return Arg{.i32 = static_cast<int32_t>(v)}; }
Arg f32(double v) { return Arg{.f32 = static_cast<float>(v)}; }

// silu(gate) * up with the fused kernels forward and backward (kernels.cu, swiglu_*).
struct Swiglu : public torch::autograd::Function<Swiglu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up, int64_t fwd,
                            int64_t bwd) {
    auto g = aligned(gate), u = aligned(up);
    auto out = at::empty_like(g);
    launch(fwd, g, pieces(g), {ptr(g), ptr(u), ptr(out), i64(g.numel())});
    ctx->save_for_backward({g, u});
    ctx->saved_data["bwd"] = bwd;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &g = saved[0], &u = saved[1];
    auto go = aligned(grads[0].to(g.scalar_type()));
    auto dg = at::empty_like(g), du = at::empty_like(u);
    launch(ctx->saved_data["bwd"].toInt(), g, pieces(g), {ptr(g), ptr(u), ptr(go), ptr(dg), ptr(du), i64(g.numel())});
    return {dg, du, at::Tensor(), at::Tensor()};
  }
};

// The residual add and the RMSNorm after it: from the f32 residual `h`, a branch's output `a`
// and the f32 norm weight `w`, {mid = h + a (f32), x = RMSNorm(mid) in a's type}, with the
// fused kernels forward and backward (kernels.cu, add_rms_norm_*). The backward kernel `bwd`
// runs `grad_blocks` blocks, each summing its rows' share of w's gradient.
struct AddRmsNorm : public torch::autograd::Function<AddRmsNorm> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& h, const at::Tensor& a, const at::Tensor& w,
                               double eps, int64_t plus_one, int64_t fwd, int64_t bwd, int64_t grad_blocks) {
    auto hc = h.contiguous(), ac = a.contiguous(), wc = w.contiguous();
    const auto dim = h.size(-1), rows = h.numel() / dim;
    auto mid = at::empty_like(hc);
    auto x = at::empty_like(ac);
    auto rstd = at::empty({rows}, hc.options());
    launch_blocks(fwd, hc, std::clamp<int64_t>(rows, 1, 65535),
                  {ptr(hc), ptr(ac), ptr(wc), ptr(mid), ptr(x), ptr(rstd), i64(rows), i64(dim), f32(eps),
                   i32(plus_one)});
    ctx->save_for_backward({mid, rstd, wc});
    ctx->saved_data["bwd"] = bwd;
    ctx->saved_data["grad_blocks"] = grad_blocks;
    ctx->saved_data["plus_one"] = plus_one;
    ctx->saved_data["type"] = static_cast<int64_t>(a.scalar_type());
    return {mid, x};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &mid = saved[0], &rstd = saved[1], &w = saved[2];
    const auto type = static_cast<at::ScalarType>(ctx->saved_data["type"].toInt());
    const auto dim = mid.size(-1), rows = mid.numel() / dim;
    auto gmid = grads[0].defined() ? grads[0].to(at::kFloat).contiguous() : at::Tensor();
    auto gx = grads[1].defined() ? grads[1].to(type).contiguous() : at::Tensor();
    auto dh = at::empty_like(mid);
    auto da = at::empty(mid.sizes(), mid.options().dtype(type));
    const auto blocks = std::clamp<int64_t>(rows, 1, ctx->saved_data["grad_blocks"].toInt());
    const bool want_dw = ctx->needs_input_grad(2) && gx.defined();
    auto partial = want_dw ? at::empty({blocks, dim}, mid.options()) : at::Tensor();
    launch_blocks(ctx->saved_data["bwd"].toInt(), mid, blocks,
                  {ptr(mid), ptr(rstd), ptr(w), nullable(gx), nullable(gmid), ptr(dh), ptr(da), nullable(partial),
                   i64(rows), i64(dim), i32(ctx->saved_data["plus_one"].toInt())});
    auto dw = want_dw ? partial.sum(0) : at::Tensor();
    return {dh, da, dw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// RoPE from a projection's output [b, t, h * d] to rotated heads [b, h, t, d], with the fused
// kernels forward and backward (kernels.cu, rope_*); the angles are constants.
struct Rope : public torch::autograd::Function<Rope> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin_signed, int64_t heads, int64_t fwd, int64_t bwd) {
    const auto b = x.size(0), t = x.size(1), d = x.size(2) / heads;
    const auto stride = cos.size(0) == 1 ? 0 : t * d;
    auto xc = aligned(x);
    auto out = at::empty({b, heads, t, d}, x.options());
    launch(fwd, xc, pieces(out),
           {ptr(xc), ptr(cos), ptr(sin_signed), ptr(out), i64(b), i64(t), i32(heads), i32(d), i64(stride)});
    ctx->save_for_backward({cos, sin_signed});
    ctx->saved_data["bwd"] = bwd;
    ctx->saved_data["shape"] = std::vector<int64_t>{b, t, heads, d, stride};
    ctx->saved_data["type"] = static_cast<int64_t>(x.scalar_type());
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto shape = ctx->saved_data["shape"].toIntVector();
    const auto type = static_cast<at::ScalarType>(ctx->saved_data["type"].toInt());
    const auto b = shape[0], t = shape[1], h = shape[2], d = shape[3], stride = shape[4];
    auto dy = aligned(grads[0].to(type));
    auto dx = at::empty({b, t, h * d}, dy.options());
    launch(ctx->saved_data["bwd"].toInt(), dy, pieces(dx),
           {ptr(dy), ptr(saved[0]), ptr(saved[1]), ptr(dx), i64(b), i64(t), i32(h), i32(d), i64(stride)});
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// `x W^T + b` in bf16 for a trained f32 weight whose gradient is a view of the optimizer's flat
// f32 buffer. The forward multiplies by `weight_bf16`, the optimizer's bf16 copy refreshed after
// each update (or a cast made here when there is none); the backward adds `dy^T x` straight into
// the f32 gradient inside the weight-gradient GEMM (cuBLAS with an f32 output and beta 1), so no
// bf16 weight gradient is written, read back and accumulated, and autograd accumulates nothing.
// The bias gradient is summed in f32. Autocast's own path costs a cast of every weight per step,
// a bf16 gradient, its cast to f32 and an accumulating add.
struct TrainedLinear : public torch::autograd::Function<TrainedLinear> {
  // Optional tensors as std::optional: autograd refuses undefined tensors as inputs.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& weight_bf16, const std::optional<at::Tensor>& bias) {
    auto w = weight_bf16 ? *weight_bf16 : weight.to(at::kBFloat16);
    auto xb = x.to(at::kBFloat16);
    ctx->save_for_backward({xb, w});
    ctx->saved_data["grad"] = weight.grad();
    ctx->saved_data["bias"] = bias.has_value();
    return at::linear(xb, w, bias ? std::optional<at::Tensor>(bias->to(at::kBFloat16)) : std::nullopt);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto &xb = saved[0], &w = saved[1];
    auto acc = ctx->saved_data["grad"].toTensor();
    auto dy = grads[0].to(at::kBFloat16);
    auto dy2 = dy.reshape({-1, w.size(0)});
    auto x2 = xb.reshape({-1, w.size(1)});
    at::addmm_out(acc, acc, dy2.t(), x2, at::kFloat);
    at::Tensor dx, dbias;
    if (ctx->needs_input_grad(0)) dx = at::mm(dy2, w).view(xb.sizes());
    if (ctx->saved_data["bias"].toBool()) dbias = dy2.sum(0, false, at::kFloat);
    return {dx, at::Tensor(), at::Tensor(), dbias};
  }
};

// Data parallelism: each decoder layer's gradients summed over the ranks while the backward
// pass goes on. The trainer marks each layer's input with a ReduceMarker; autograd runs the
// marker's backward once the gradient of that input is complete, which is after every node of
// the layer (each lies between the input and the loss) and after their gradients' accumulation
// into the flat buffer (autograd runs accumulations as soon as they are ready). The layer's
// slice of the flat gradient is then final, and NCCL sums it over the ranks on a stream of its
// own while the backward pass goes on through the layers below (what PyTorch's DDP does with
// its buckets). In a captured graph the collectives are captured with the rest.
using NcclAllReduce = int (*)(const void*, void*, size_t, int, int, void*, cudaStream_t);
constexpr int kNcclFloat32 = 7, kNcclSum = 0;

struct LayerReducer {
  std::mutex mu;
  NcclAllReduce all_reduce = nullptr;
  void* comm = nullptr;
  // The flat gradient's slice of each layer (count 0: nothing of the layer is trained).
  std::vector<std::pair<float*, size_t>> layers;
  std::optional<c10::cuda::CUDAStream> stream;
  // Off, the markers pass gradients through and sum nothing (warm-up runs, accumulation).
  bool live = false;
  // Collectives queued since the last join, and the first NCCL error or CUDA error.
  bool pending = false;
  int failed = 0;
  std::string cuda_error;
};

LayerReducer& reducer() {
  static LayerReducer r;
  return r;
}

struct ReduceMarker : public torch::autograd::Function<ReduceMarker> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t layer) {
    ctx->saved_data["layer"] = layer;
    return x.view_as(x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& r = reducer();
    std::lock_guard<std::mutex> lock(r.mu);
    const auto layer = ctx->saved_data["layer"].toInt();
    if (r.live && r.failed == 0 && r.cuda_error.empty() && layer < static_cast<int64_t>(r.layers.size()) && r.layers[layer].second > 0) {
      // Errors wait for the join: one thrown here would end the backward pass half done.
      try {
        uniattn_shim::order(c10::cuda::getCurrentCUDAStream().stream(), r.stream->stream());
        const auto [p, n] = r.layers[layer];
        r.failed = r.all_reduce(p, p, n, kNcclFloat32, kNcclSum, r.comm, r.stream->stream());
        r.pending = true;
      } catch (const std::exception& e) {
        r.cuda_error = e.what();
      }
    }
    return {grads[0], at::Tensor()};
  }
};

}  // namespace

extern "C" {

// `x W^T + b` through TrainedLinear for an f32 `weight` whose gradient is a view of the flat
// buffer; `weight_bf16` and `bias` are nullable. Writes a new tensor handle to `out`.
int ua_trained_linear(void* x, void* weight, void* weight_bf16, void* bias, void** out, char* err, size_t len) {
  return guarded(err, len, [&] {
    const auto& w = tensor(weight);
    if (!w.grad().defined()) throw std::runtime_error("the weight has no gradient buffer");
    if (!w.grad().is_contiguous()) throw std::runtime_error("the weight's gradient buffer is not contiguous");
    auto nullable = [](void* t) { return t ? std::optional<at::Tensor>(tensor(t)) : std::nullopt; };
    *out = new at::Tensor(TrainedLinear::apply(tensor(x), w, nullable(weight_bf16), nullable(bias)));
  });
}

// silu(gate) * up through the Swiglu autograd function; writes a new tensor handle to `out`.
int ua_swiglu(void* gate, void* up, int64_t fwd, int64_t bwd, void** out, char* err, size_t len) {
  return guarded(err, len, [&] { *out = new at::Tensor(Swiglu::apply(tensor(gate), tensor(up), fwd, bwd)); });
}

// RoPE of a projection's output through the Rope autograd function; writes a new tensor handle.
int ua_rope(void* x, void* cos, void* sin_signed, int64_t heads, int64_t fwd, int64_t bwd, void** out, char* err,
            size_t len) {
  return guarded(err, len, [&] {
    *out = new at::Tensor(Rope::apply(tensor(x), tensor(cos), tensor(sin_signed), heads, fwd, bwd));
  });
}

// h + a and its RMSNorm through the AddRmsNorm autograd function; writes new tensor handles
// for the sum and the normed tensor.
int ua_add_rms_norm(void* h, void* a, void* w, double eps, int64_t plus_one, int64_t fwd, int64_t bwd,
                    int64_t grad_blocks, void** mid, void** x, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto out = AddRmsNorm::apply(tensor(h), tensor(a), tensor(w), eps, plus_one, fwd, bwd, grad_blocks);
    *mid = new at::Tensor(out[0]);
    *x = new at::Tensor(out[1]);
  });
}

// Makes `device` the current CUDA device and gives torch's current stream on it: NCCL's
// collectives run there, ordered with the trainer's kernels.
int ua_current_stream(int device, void** stream, char* err, size_t len) {
  return guarded(err, len, [&] {
    uniattn_shim::check(cudaSetDevice(device));
    *stream = c10::cuda::getCurrentCUDAStream(device).stream();
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

// Sets up the layer reducer for one flat gradient buffer: NCCL's `ncclAllReduce` and a
// communicator, the f32 slice (`slices[l]`, `counts[l]` elements; 0 for none) of each of
// `layers` layers, and a stream of its own on `device`. `layers` 0 clears it.
int ua_reducer_set(void* all_reduce, void* comm, int device, void** slices, int64_t* counts, int64_t layers,
                   char* err, size_t len) {
  return guarded(err, len, [&] {
    auto& r = reducer();
    std::lock_guard<std::mutex> lock(r.mu);
    r.all_reduce = reinterpret_cast<NcclAllReduce>(all_reduce);
    r.comm = comm;
    r.layers.clear();
    for (int64_t l = 0; l < layers; ++l) r.layers.emplace_back(static_cast<float*>(slices[l]), counts[l]);
    if (layers > 0 && !r.stream) r.stream = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device));
    r.live = r.pending = false;
    r.failed = 0;
    r.cuda_error.clear();
  });
}

// Whether the markers' backward passes sum their layers (1) or pass through (0).
int ua_reducer_live(int live, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto& r = reducer();
    std::lock_guard<std::mutex> lock(r.mu);
    r.live = live != 0;
  });
}

// `x` through a ReduceMarker for layer `layer`; writes a new tensor handle to `out`.
int ua_reducer_mark(void* x, int64_t layer, void** out, char* err, size_t len) {
  return guarded(err, len, [&] { *out = new at::Tensor(ReduceMarker::apply(tensor(x), layer)); });
}

// Makes the current stream wait for the collectives queued since the last join, and writes
// the first NCCL error since the reducer was set (0: none) to `nccl_error`.
int ua_reducer_join(int* nccl_error, char* err, size_t len) {
  return guarded(err, len, [&] {
    auto& r = reducer();
    std::lock_guard<std::mutex> lock(r.mu);
    *nccl_error = r.failed;
    if (!r.cuda_error.empty()) throw std::runtime_error(r.cuda_error);
    if (!r.pending) return;
    uniattn_shim::order(r.stream->stream(), c10::cuda::getCurrentCUDAStream().stream());
    r.pending = false;
  });
}

}  // extern "C"
