// Fused kernels for uniattn, compiled at first use through NVRTC (src/cuda/kernels.rs), so
// that building needs no CUDA compiler. Each replaces a chain of libtorch kernels and repeats
// its arithmetic step for step: every intermediate the chain would store is rounded to the
// tensor's type here too, and products and sums use the _rn intrinsics so that the compiler
// cannot contract them into fused multiply-adds the chain does not do. In f32 the results
// equal the chain's up to the order of reductions; in bf16/f16 up to that, `expf`, and the
// held softmax's approximate exponential (below the type's rounding step; see softmax_exp).
//
// No headers: bf16 and f16 are handled as raw 16-bit values.

typedef long long i64;
typedef unsigned short u16;
typedef unsigned int u32;

struct bf16 { u16 bits; };
struct f16 { u16 bits; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_float(f16 x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
// Round to nearest even, NaN kept quiet: c10's round_to_nearest_even. From sm_80 one
// conversion instruction does it (the same bits but for a NaN's payload), where the integer
// form takes five: a softmax rounds every element three times.
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) {
  bf16 r;
#if __CUDA_ARCH__ >= 800
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
#else
  const u32 u = __float_as_uint(x);
  r.bits = (u & 0x7fffffffu) > 0x7f800000u ? (u16)0x7fc0 : (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
#endif
  return r;
}
template <> __device__ __forceinline__ f16 from_float<f16>(float x) {
  f16 r;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
  return r;
}

// `x` rounded to T and back: what storing an intermediate tensor of type T does.
template <typename T> __device__ __forceinline__ float round_to(float x) { return to_float(from_float<T>(x)); }

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ i64 global_index() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 global_stride() { return (i64)gridDim.x * blockDim.x; }

// ---------------------------------------------------------------------------------------------
// Gated MLP activation: out[r, i] = act(gu[r, i]) * gu[r, inter + i], where `gu` is the fused
// gate|up projection ([rows, 2 * inter]). Replaces act (one kernel) and the product (another).
// act: SiLU (`gelu` = 0) as torch computes it, x / (1 + exp(-x)), or GELU's tanh form.
__device__ __forceinline__ float gate_act(float g, int gelu) {
  if (gelu) {
    const float beta = 0.7978845608028654f;  // sqrt(2 / pi)
    const float inner = beta * (g + 0.044715f * g * g * g);
    return 0.5f * g * (1.0f + tanhf(inner));
  }
  return g / (1.0f + expf(-g));
}

template <typename T>
__device__ void gated_act(const T* gu, T* out, i64 rows, i64 inter, int gelu) {
  const i64 n = rows * inter;
  for (i64 i = global_index(); i < n; i += global_stride()) {
    const i64 r = i / inter, c = i - r * inter;
    const float g = to_float(gu[r * 2 * inter + c]);
    const float u = to_float(gu[r * 2 * inter + inter + c]);
    out[i] = from_float<T>(__fmul_rn(round_to<T>(gate_act(g, gelu)), u));
  }
}

// ---------------------------------------------------------------------------------------------
// The decode attention kernel's threads a block (below), and the query heads a kv head it and
// reuse_attention_decode take: a warp a query head.
#define DA_THREADS 256
#define DA_MAX_GROUP (DA_THREADS / 32)

// RoPE and the KV-cache write in one pass over the fused projection's output.
// `x`: rows (`n` sequences x `t` tokens) of `row_stride` elements whose first columns are `nq`
// query heads, `nk` key heads and `nv` value heads, `d` wide each. Query and key heads are
// rotated (HF's rotate-half form: x * cos + roll(x, d/2) * sin_signed, with `cos` and
// `sin_signed` given per row, [rows, d]); queries go to `q_out` ([n, nq, t, d]), keys and values
// to the caches at their row's position: element (b, head, pos, j) of a cache lives at
// b * slot_stride + head * head_stride + pos * d + j. Rows whose position lies outside
// 0..capacity write nothing (the engine never sends one; the guard keeps memory safe).
template <typename T>
__device__ void rope_kv_write(const T* x, i64 row_stride, const i64* pos, const T* cos, const T* sin_signed,
                              i64 rows, i64 t, int nq, int nk, int nv, int d, T* q_out, T* k_cache,
                              T* v_cache, i64 slot_stride, i64 head_stride, i64 capacity) {
  const int heads = nq + nk + nv;
  const int half = d / 2;
  const i64 n = rows * heads * d;
  for (i64 i = global_index(); i < n; i += global_stride()) {
    const int j = (int)(i % d);
    const int h = (int)((i / d) % heads);
    const i64 r = i / ((i64)d * heads);
    const T* src = x + r * row_stride + (i64)h * d;
    float v = to_float(src[j]);
    if (h < nq + nk) {
      const float partner = to_float(src[(j + half) % d]);
      const float a = round_to<T>(__fmul_rn(v, to_float(cos[r * d + j])));
      const float b = round_to<T>(__fmul_rn(partner, to_float(sin_signed[r * d + j])));
      v = __fadd_rn(a, b);
    }
    const T out = from_float<T>(v);
    const i64 seq = r / t, tok = r - seq * t;
    if (h < nq) {
      q_out[((seq * nq + h) * t + tok) * d + j] = out;
      continue;
    }
    const i64 p = pos[r];
    if (p < 0 || p >= capacity) continue;
    const i64 at = seq * slot_stride + p * d + j;
    if (h < nq + nk) {
      k_cache[at + (i64)(h - nq) * head_stride] = out;
    } else {
      v_cache[at + (i64)(h - nq - nk) * head_stride] = out;
    }
  }
}

// 16-byte loads and stores of a row's elements (8 bf16/f16 or 4 f32 at a time): the softmax
// and cross-entropy kernels below run at memory speed only with wide accesses. `raw` is taken by
// value: bound by reference to `*reinterpret_cast<const uint4*>(p)` it named memory, not a
// loaded value, and every element was read on its own (eight 2-byte loads in the SASS of the
// training kernels until 2026-12-03).
template <typename T>
__device__ __forceinline__ void unpack16(const uint4 raw, float* out) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < (int)(16 / sizeof(T)); ++k) out[k] = to_float(e[k]);
}

template <typename T>
__device__ __forceinline__ void load16(const T* p, float* out) {
  unpack16<T>(*reinterpret_cast<const uint4*>(p), out);
}

template <typename T>
__device__ __forceinline__ void store16(T* p, const float* in) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int k = 0; k < (int)(16 / sizeof(T)); ++k) e[k] = from_float<T>(in[k]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// ---------------------------------------------------------------------------------------------
// softmax(scores * scale [softcapped] + mask) over the last axis, in f32, stored as T: what
// `attention_probs` computes in four to seven kernels. `scores`: [b, heads, q, k] contiguous;
// `mask`: additive, [b, 1, q, k] contiguous. One block per row. A row of up to
// SOFTMAX_PIECES 16-byte pieces a thread is read once, 16 bytes at a time, and kept in
// registers (the launcher sizes blocks so: a decode step's lead map of 8k bf16 keys is 256
// threads of four pieces); longer or unaligned rows are read three times, an element at a
// time. Reading scalars three times made the lead map of batch 32 / 8k keys (7 MB) take 32 us
// on an H200, ~6x its bytes' time.
#define SOFTMAX_PIECES 4

template <typename T>
__device__ __forceinline__ float masked_value(float s, float m, float scale, float softcap) {
  float x = round_to<T>(__fmul_rn(s, scale));
  if (softcap > 0.0f) {
    x = round_to<T>(__fmul_rn(round_to<T>(tanhf(round_to<T>(__fdiv_rn(x, softcap)))), softcap));
  }
  return round_to<T>(__fadd_rn(x, m));
}

template <typename T>
__device__ __forceinline__ float masked_score(const T* s, const T* m, i64 c, float scale, float softcap) {
  return masked_value<T>(to_float(s[c]), to_float(m[c]), scale, softcap);
}

template <typename T>
__device__ float block_reduce(float v, bool is_max, float* shared) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < warps ? shared[threadIdx.x] : (is_max ? neg_inf() : 0.0f);
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) {
      const float w = __shfl_xor_sync(0xffffffffu, v, o);
      v = is_max ? fmaxf(v, w) : v + w;
    }
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  return shared[0];
}

// exp(x - mx) and its share of `sum`, the two steps of the held softmax that run for every
// element twice. In f32 as the composition computes them (`expf`, a correctly rounded
// division). In bf16/f16, whose rounding step (2^-8 / 2^-11 relative) is far coarser than
// either form's error, one `ex2.approx` (2 ulp of f32) and a product with the sum's inverse:
// the accurate forms took ~25 instructions an element, which made the lead map's softmax at
// batch 32 / 8k keys issue-bound (17.7 us for 15 MB on an H200, 2026-12-02).
template <typename T>
__device__ __forceinline__ float softmax_exp(float x, float mx) {
  if (sizeof(T) == 4) return expf(x - mx);
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(__fmul_rn(x - mx, 1.4426950408889634f)));
  return e;
}

template <typename T>
__device__ __forceinline__ float softmax_share(float e, float sum, float inverse) {
  return sizeof(T) == 4 ? __fdiv_rn(e, sum) : __fmul_rn(e, inverse);
}

// The row in registers, as its masked values (rounded to T, so they pack back exactly): all
// loads issued before the first is used, and the exponentials computed twice rather than held
// in f32, so that a block of 256 threads needs few enough registers for every row of a decode
// step's map to be resident at once (448 rows at batch 32 on an H200's 132 SMs).
template <typename T>
__device__ void masked_softmax_held(const T* s, const T* m, T* o, i64 pieces, float scale, float softcap,
                                    float* shared) {
  constexpr int N = 16 / sizeof(T);
  uint4 held[SOFTMAX_PIECES], raw_m[SOFTMAX_PIECES];
#pragma unroll
  for (int p = 0; p < SOFTMAX_PIECES; ++p) {
    const i64 i = threadIdx.x + (i64)p * blockDim.x;
    if (i < pieces) {
      held[p] = *reinterpret_cast<const uint4*>(s + i * N);
      raw_m[p] = *reinterpret_cast<const uint4*>(m + i * N);
    }
  }
  float mx = neg_inf();
#pragma unroll
  for (int p = 0; p < SOFTMAX_PIECES; ++p) {
    if (threadIdx.x + (i64)p * blockDim.x < pieces) {
      float x[N], mv[N];
      unpack16<T>(held[p], x);
      unpack16<T>(raw_m[p], mv);
      T* e = reinterpret_cast<T*>(&held[p]);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        x[k] = masked_value<T>(x[k], mv[k], scale, softcap);
        mx = fmaxf(mx, x[k]);
        e[k] = from_float<T>(x[k]);
      }
    }
  }
  mx = block_reduce<T>(mx, true, shared);
  float sum = 0.0f;
#pragma unroll
  for (int p = 0; p < SOFTMAX_PIECES; ++p) {
    if (threadIdx.x + (i64)p * blockDim.x < pieces) {
      float x[N];
      unpack16<T>(held[p], x);
#pragma unroll
      for (int k = 0; k < N; ++k) sum += softmax_exp<T>(x[k], mx);
    }
  }
  sum = block_reduce<T>(sum, false, shared);
  const float inverse = 1.0f / sum;
#pragma unroll
  for (int p = 0; p < SOFTMAX_PIECES; ++p) {
    const i64 i = threadIdx.x + (i64)p * blockDim.x;
    if (i < pieces) {
      float x[N];
      unpack16<T>(held[p], x);
#pragma unroll
      for (int k = 0; k < N; ++k) x[k] = softmax_share<T>(softmax_exp<T>(x[k], mx), sum, inverse);
      store16<T>(o + i * N, x);
    }
  }
}

template <typename T>
__device__ void masked_softmax(const T* scores, const T* mask, T* out, i64 heads, i64 q, i64 k, float scale,
                               float softcap) {
  constexpr int N = 16 / sizeof(T);
  __shared__ float shared[32];
  const i64 row = blockIdx.x;
  const i64 b = row / (heads * q), tok = row % q;
  const T* s = scores + row * k;
  const T* m = mask + (b * q + tok) * k;
  const bool aligned = k % N == 0 && (((unsigned long long)scores | (unsigned long long)mask |
                                       (unsigned long long)out) & 15) == 0;
  if (aligned && k / N <= (i64)blockDim.x * SOFTMAX_PIECES) {
    masked_softmax_held<T>(s, m, out + row * k, k / N, scale, softcap, shared);
    return;
  }
  float mx = neg_inf();
  for (i64 c = threadIdx.x; c < k; c += blockDim.x) mx = fmaxf(mx, masked_score(s, m, c, scale, softcap));
  mx = block_reduce<T>(mx, true, shared);
  float sum = 0.0f;
  for (i64 c = threadIdx.x; c < k; c += blockDim.x) sum += expf(masked_score(s, m, c, scale, softcap) - mx);
  sum = block_reduce<T>(sum, false, shared);
  for (i64 c = threadIdx.x; c < k; c += blockDim.x) {
    out[row * k + c] = from_float<T>(__fdiv_rn(expf(masked_score(s, m, c, scale, softcap) - mx), sum));
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy and its gradient in one kernel over a chunk of LM-head logits: for row r with
// a target, loss[r] = scale * (log sum exp(z) - z[target]) and grad[r, :] = scale * (softmax(z)
// - onehot(target)), in f32, where z = softcap * tanh(x / softcap) when softcap > 0 (Gemma 2's
// final logits; the gradient includes its derivative). What the trainer's chain of cast, log-
// softmax, NLL and their backward passes computes in ~10 kernels and three f32 copies of the
// logits. Rows whose target is negative (-100: no target) get zero loss and gradient; `grad`
// may be null (the loss alone). `scale` is read from device memory, so that a captured training
// step takes each step's value. One block per row.
__device__ __forceinline__ float capped(float x, float softcap) {
  return softcap > 0.0f ? __fmul_rn(tanhf(__fdiv_rn(x, softcap)), softcap) : x;
}

// Calls f(column, value) for the elements of a row `x` in columns [begin, end) that fall to this
// thread (threads blockDim.x apart), in 16-byte pieces where `wide` (then `x` is 16-byte aligned
// and `begin` a multiple of the piece), UNROLL of a thread's pieces loaded before any is used
// (a scan over L2-resident logits is latency-bound one piece at a time: row_argmax), in column
// order within a thread.
template <typename T, int UNROLL = 1, typename F>
__device__ __forceinline__ void for_each_in_span(const T* x, i64 begin, i64 end, bool wide, F f) {
  constexpr int N = 16 / sizeof(T);
  const i64 first = wide ? begin / N : 0, last = wide ? end / N : 0;
  for (i64 i = first + threadIdx.x; i < last; i += UNROLL * (i64)blockDim.x) {
    uint4 raw[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (i + u * (i64)blockDim.x < last) raw[u] = *reinterpret_cast<const uint4*>(x + (i + u * (i64)blockDim.x) * N);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const i64 p = i + u * (i64)blockDim.x;
      if (p >= last) break;
      float e[N];
      unpack16<T>(raw[u], e);
#pragma unroll
      for (int k = 0; k < N; ++k) f(p * N + k, e[k]);
    }
  }
  for (i64 c = (wide ? last * N : begin) + threadIdx.x; c < end; c += blockDim.x) f(c, to_float(x[c]));
}

template <typename T>
__device__ void cross_entropy(const T* logits, const i64* targets, float* loss, T* grad, i64 v,
                              const float* scale_at, float softcap) {
  constexpr int N = 16 / sizeof(T);
  const float scale = *scale_at;
  __shared__ float shared[32];
  const i64 row = blockIdx.x;
  const T* x = logits + row * v;
  T* g = grad == nullptr ? nullptr : grad + row * v;
  const bool wide = v % N == 0 && ((unsigned long long)logits & 15) == 0 &&
                    ((unsigned long long)grad & 15) == 0;
  const i64 target = targets[row];
  if (target < 0 || target >= v) {
    if (threadIdx.x == 0) loss[row] = 0.0f;
    if (g != nullptr) {
      for (i64 c = threadIdx.x; c < v; c += blockDim.x) g[c] = from_float<T>(0.0f);
    }
    return;
  }
  float mx = neg_inf();
  for_each_in_span<T>(x, 0, v, wide, [&](i64, float xc) { mx = fmaxf(mx, capped(xc, softcap)); });
  mx = block_reduce<T>(mx, true, shared);
  float sum = 0.0f;
  for_each_in_span<T>(x, 0, v, wide, [&](i64, float xc) { sum += expf(capped(xc, softcap) - mx); });
  sum = block_reduce<T>(sum, false, shared);
  if (threadIdx.x == 0) {
    const float zt = capped(to_float(x[target]), softcap);
    loss[row] = scale * (logf(sum) + mx - zt);
  }
  if (g == nullptr) return;
  auto grad_of = [&](i64 c, float xc) {
    float d = expf(capped(xc, softcap) - mx) / sum - (c == target ? 1.0f : 0.0f);
    if (softcap > 0.0f) {
      const float t = tanhf(xc / softcap);
      d *= 1.0f - t * t;
    }
    return scale * d;
  };
  const i64 pieces = wide ? v / N : 0;
  for (i64 i = threadIdx.x; i < pieces; i += blockDim.x) {
    float e[N];
    load16<T>(x + i * N, e);
#pragma unroll
    for (int k = 0; k < N; ++k) e[k] = grad_of(i * N + k, e[k]);
    store16<T>(g + i * N, e);
  }
  for (i64 c = pieces * N + threadIdx.x; c < v; c += blockDim.x) g[c] = from_float<T>(grad_of(c, to_float(x[c])));
}

// ---------------------------------------------------------------------------------------------
// Training's SwiGLU, forward and backward (the trainer's autograd function in train.cpp calls
// them): out = silu(gate) * up, and from the output's gradient go, d_up = go * silu(gate) and
// d_gate = silu'(gate) * go * up, with the roundings of torch's silu, mul, silu_backward chain
// (each stored intermediate rounded to T). Elementwise over n contiguous elements, 16 bytes at
// a time where n allows (the tensors are fresh allocations, so aligned).
template <typename T>
__device__ __forceinline__ float swiglu_value(float g, float u) {
  return __fmul_rn(round_to<T>(g / (1.0f + expf(-g))), u);
}

template <typename T>
__device__ __forceinline__ void swiglu_grads(float g, float u, float go, float* dg, float* du) {
  const float s = 1.0f / (1.0f + expf(-g));
  *du = __fmul_rn(go, round_to<T>(g / (1.0f + expf(-g))));
  *dg = round_to<T>(__fmul_rn(go, u)) * s * (1.0f + g * (1.0f - s));
}

template <typename T>
__device__ void swiglu_forward(const T* gate, const T* up, T* out, i64 n) {
  constexpr int N = 16 / sizeof(T);
  const i64 pieces = n % N == 0 ? n / N : 0;
  for (i64 i = global_index(); i < pieces; i += global_stride()) {
    float g[N], u[N];
    load16<T>(gate + i * N, g);
    load16<T>(up + i * N, u);
#pragma unroll
    for (int k = 0; k < N; ++k) g[k] = swiglu_value<T>(g[k], u[k]);
    store16<T>(out + i * N, g);
  }
  for (i64 i = pieces * N + global_index(); i < n; i += global_stride()) {
    out[i] = from_float<T>(swiglu_value<T>(to_float(gate[i]), to_float(up[i])));
  }
}

template <typename T>
__device__ void swiglu_backward(const T* gate, const T* up, const T* grad_out, T* grad_gate, T* grad_up, i64 n) {
  constexpr int N = 16 / sizeof(T);
  const i64 pieces = n % N == 0 ? n / N : 0;
  for (i64 i = global_index(); i < pieces; i += global_stride()) {
    float g[N], u[N], go[N], dg[N], du[N];
    load16<T>(gate + i * N, g);
    load16<T>(up + i * N, u);
    load16<T>(grad_out + i * N, go);
#pragma unroll
    for (int k = 0; k < N; ++k) swiglu_grads<T>(g[k], u[k], go[k], &dg[k], &du[k]);
    store16<T>(grad_gate + i * N, dg);
    store16<T>(grad_up + i * N, du);
  }
  for (i64 i = pieces * N + global_index(); i < n; i += global_stride()) {
    float dg, du;
    swiglu_grads<T>(to_float(gate[i]), to_float(up[i]), to_float(grad_out[i]), &dg, &du);
    grad_gate[i] = from_float<T>(dg);
    grad_up[i] = from_float<T>(du);
  }
}

// ---------------------------------------------------------------------------------------------
// Training's RoPE, forward and backward, straight from a projection's output: `x` is [b, t, h, d]
// (the projection [b, t, h * d], contiguous), the angles `cos` and `sin_signed` f32 [ab, 1, t, d]
// (ab = b, or 1 shared by the batch: `angle_stride` is t * d or 0). The rotation runs in f32 as
// the composition does under autocast (bf16 x times f32 angles) and is stored as T once, where
// the composition's f32 result is cast for attention: out is [b, h, t, d]. The backward pass
// maps the output's gradient dy [b, h, t, d] back to dx [b, t, h, d]: with p = (j + d/2) mod d,
// y[j] = x[j] cos[j] + x[p] sin[j], so dx[i] = dy[i] cos[i] + dy[p] sin[p] with p = (i + d/2) mod d.
// Each thread takes 16 bytes of a head (the caller checks that d/2 is a multiple of it).
template <typename T>
__device__ void rope_forward(const T* x, const float* cos, const float* sin_signed, T* out, i64 b, i64 t, int h,
                             int d, i64 angle_stride) {
  constexpr int N = 16 / sizeof(T);
  const int half = d / 2, per_head = d / N;
  const i64 n = b * t * h * per_head;
  for (i64 i = global_index(); i < n; i += global_stride()) {
    const int j = (int)(i % per_head) * N;
    const i64 rest = i / per_head;  // (seq, head, tok) in the output's order
    const i64 tok = rest % t, head = (rest / t) % h, seq = rest / (t * h);
    const T* src = x + ((seq * t + tok) * h + head) * d;
    const float* c = cos + seq * angle_stride + tok * d + j;
    const float* sn = sin_signed + seq * angle_stride + tok * d + j;
    float a[N], p[N];
    load16<T>(src + j, a);
    load16<T>(src + (j + half) % d, p);
#pragma unroll
    for (int k = 0; k < N; ++k) a[k] = __fadd_rn(__fmul_rn(a[k], c[k]), __fmul_rn(p[k], sn[k]));
    store16<T>(out + rest * d + j, a);
  }
}

template <typename T>
__device__ void rope_backward(const T* dy, const float* cos, const float* sin_signed, T* dx, i64 b, i64 t, int h,
                              int d, i64 angle_stride) {
  constexpr int N = 16 / sizeof(T);
  const int half = d / 2, per_head = d / N;
  const i64 n = b * t * h * per_head;
  for (i64 i = global_index(); i < n; i += global_stride()) {
    const int j = (int)(i % per_head) * N, q = (j + half) % d;
    const i64 rest = i / per_head;  // (seq, tok, head) in dx's order
    const i64 head = rest % h, tok = (rest / h) % t, seq = rest / (h * t);
    const T* row = dy + ((seq * h + head) * t + tok) * d;
    const i64 a = seq * angle_stride + tok * d;
    float g[N], gp[N];
    load16<T>(row + j, g);
    load16<T>(row + q, gp);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      g[k] = __fadd_rn(__fmul_rn(g[k], cos[a + j + k]), __fmul_rn(gp[k], sin_signed[a + q + k]));
    }
    store16<T>(dx + rest * d + j, g);
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW over the trainer's flat f32 buffers with torch.optim.AdamW(fused=True)'s arithmetic (its
// FusedAdamMathFunctor: the hyper-parameters are doubles, so most of it runs in double), also
// writing each updated parameter's copy of type T (the bf16 operand of the matrix products under
// autocast; null: none) in the same pass instead of a cast over every weight after it.
// `grad_scale` (nullable, on the device) divides the gradient: clipping without a host
// synchronisation. Four elements a thread (16-byte loads); the caller passes 16-byte aligned
// buffers.
__device__ __forceinline__ void adamw_update(float& param, float grad, float& exp_avg, float& exp_avg_sq,
                                             double lr, double beta1, double beta2, double weight_decay,
                                             double eps, float bias_correction1, float bias_correction2_sqrt,
                                             const float* grad_scale) {
  if (grad_scale != nullptr) grad /= static_cast<double>(*grad_scale);
  if (weight_decay != 0) param -= lr * weight_decay * param;
  exp_avg = beta1 * exp_avg + (1 - beta1) * grad;
  exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad;
  const float step_size = lr / bias_correction1;
  const float denom = (sqrtf(exp_avg_sq) / bias_correction2_sqrt) + eps;
  param -= step_size * exp_avg / denom;
}

template <typename T>
__device__ void adamw(float* p, const float* g, float* m, float* v, T* copy, i64 n, double lr, double beta1,
                      double beta2, double weight_decay, double eps, float bias_correction1,
                      float bias_correction2_sqrt, const float* grad_scale) {
  for (i64 i = global_index() * 4; i < n; i += global_stride() * 4) {
    if (i + 4 <= n) {
      float4 pp = *reinterpret_cast<const float4*>(p + i), gg = *reinterpret_cast<const float4*>(g + i);
      float4 mm = *reinterpret_cast<const float4*>(m + i), vv = *reinterpret_cast<const float4*>(v + i);
      float* ps[4] = {&pp.x, &pp.y, &pp.z, &pp.w};
      float* ms[4] = {&mm.x, &mm.y, &mm.z, &mm.w};
      float* vs[4] = {&vv.x, &vv.y, &vv.z, &vv.w};
      const float gs[4] = {gg.x, gg.y, gg.z, gg.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        adamw_update(*ps[k], gs[k], *ms[k], *vs[k], lr, beta1, beta2, weight_decay, eps, bias_correction1,
                     bias_correction2_sqrt, grad_scale);
      }
      *reinterpret_cast<float4*>(p + i) = pp;
      *reinterpret_cast<float4*>(m + i) = mm;
      *reinterpret_cast<float4*>(v + i) = vv;
      if (copy != nullptr) {
#pragma unroll
        for (int k = 0; k < 4; ++k) copy[i + k] = from_float<T>(*ps[k]);
      }
    } else {
      for (i64 j = i; j < n; ++j) {
        adamw_update(p[j], g[j], m[j], v[j], lr, beta1, beta2, weight_decay, eps, bias_correction1,
                     bias_correction2_sqrt, grad_scale);
        if (copy != nullptr) copy[j] = from_float<T>(p[j]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A decode step's projections at batch 1: y[o] = sum_i a[i] W[o, i] (+ bias[o]), W [rows, in]
// as PyTorch stores it. At one row a projection is a matrix-vector product whose speed is the
// bytes of W in flight: each lane streams 16 bytes at a time with GEMV_UNROLL loads
// (GEMV_UNROLL_ONE_ROW where a warp sums one row) issued before any arithmetic (cuBLAS's
// kernels for these shapes reach 0.3-2.2 TB/s on the H200 and add a split-K reduction kernel
// for long rows). A warp takes an output (four warps one long
// row); the grid is what fits on the GPU at once, and each warp loads its next output's weights
// before it works on this one (gemv_outputs). Sums are f32, rounded once, as cuBLAS rounds
// alpha x W^T + beta C.
//
// The RMSNorm before a block (`g` non-null) is applied as the row is read: a = x * g (g + 1
// rounded to T for Gemma) and rstd = 1 / sqrt(mean(x^2) + eps) multiplies the sums at the end:
// y = rstd * sum_i x_i g_i W[o, i]. No norm kernel; it differs from the normed tensor's
// product by that tensor's rounding.
//
// Around the product, what would otherwise be kernels of their own (the entry points below):
//   - decode_gemv, `add` non-null: y = T(acc + add[o]) (the residual stream, cuBLAS's beta = 1;
//     `add` may be `y`);
//   - decode_gemv_gated: W is the fused gate|up weight [2 rows, in]; output o is rows o and
//     rows + o, and writes T(T(act(T(gate))) * T(up)), what the projection and `gated_act` store;
//   - decode_gemv_rope: W is a fused projection whose rows are nq query, nk key and nv value
//     heads of d rows; an output is a head's rows j and j + d/2, query and key heads rotated
//     and keys and values written into the cache, what the projection and `rope_kv_write` store.
// Launched as programmatic dependent launches (src/cuda/kernels.rs), each lets the next kernel
// start at once and streams its first weights before it waits for the previous kernel.
// x, W are 16-byte aligned and `in` a multiple of 16 bytes' elements (the caller checks).
#define GEMV_UNROLL 4
// Loads a lane issues at once where a warp sums one row (R = 1): the down projection's slice of
// a 4,864-wide row (4.75 loads a lane over four warps) in one round trip, where GEMV_UNROLL took
// two, at 80 registers on sm_90 (six blocks an SM, as at GEMV_UNROLL; six loads take 96: five).
#define GEMV_UNROLL_ONE_ROW 5
// Loads of x (and of g) a thread issues at once when staging the normed row.
#define GEMV_STAGE_LOADS 2

// Programmatic dependent launch (sm_90 on; no-ops before, and after a plain launch): let the
// stream's next kernel start early, and wait until the kernels before this one have finished
// and their writes are visible. Before the wait a kernel reads only what no kernel writes.
__device__ __forceinline__ void allow_next_kernel() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_kernels() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// The start of a small kernel that reads nothing before the kernel before it has finished
// (rope_kv_write, gated_act and rms_norm_decode, each launched programmatically behind a
// cuBLAS projection): its blocks are resident and waiting when that kernel ends, instead of
// being launched then, and the next projection may do the same behind it (batch 32 / 8k:
// ~4.7% more tokens a second, dense and UniAttn, H200, 2026-12-03). Not row_argmax: with it
// chained as well, the only change at batch 1, UniAttn there decoded 1.2% fewer tokens a second.
__device__ __forceinline__ void start_chained() {
  allow_next_kernel();
  wait_for_previous_kernels();
}

// Weights are read once: past L1.
__device__ __forceinline__ uint4 load_streaming(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Runs the outputs 0..outputs of a decode_gemv kernel: output o is the sums of rows
// `rows_of(o)` (R of them) of W with the input row x (normed by g where non-null), plus bias,
// handed to `finish(o, acc)` on one thread. A block holds `blockDim.x / 32` warps; `split` is 1
// (a warp an output) or all of them (the block's warps take slices of one long row, and their
// sums add in order), so that a long row has more loads in flight than one warp issues. The
// grid is at most what fits on the GPU at once and strides over the outputs; a warp issues the
// loads of its next output before it works on this one, so its weights stream without a gap.
// With g, the block first stages x * g in shared memory (f32, `in` floats) and the row's sum of
// squares, once for all its outputs.
template <typename T, int R, typename RowsOf, typename Finish>
__device__ void gemv_outputs(const T* x, const T* g, float eps, int plus_one, const T* w, const T* bias, i64 in,
                             i64 outputs, int split, RowsOf rows_of, Finish finish) {
  constexpr int V = 16 / sizeof(T);
  constexpr int U = R == 1 ? GEMV_UNROLL_ONE_ROW : GEMV_UNROLL;  // loads a lane issues at once
  extern __shared__ float shared[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int per_block = warps / split, part = warp % split;
  const i64 pieces = in / V, per_part = (pieces + split - 1) / split;
  const i64 begin = part * per_part, end = min(pieces, begin + per_part);
  const i64 stride = (i64)gridDim.x * per_block;
  float* staged = shared;
  float* partial = shared + (g != nullptr ? in : 0);  // [warps][R + 1]
  const uint4* xs = reinterpret_cast<const uint4*>(x);
  const auto load = [&](i64 out, i64 base, uint4 (&dst)[R][U]) {
    i64 row[R];
    rows_of(out, row);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const i64 i = base + u * 32;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (i < end) dst[r][u] = load_streaming(reinterpret_cast<const uint4*>(w + row[r] * in) + i);
      }
    }
  };
  i64 o = (i64)blockIdx.x * per_block + warp / split;
  // The first loads of W go out before the wait: under a programmatic launch they overlap the
  // kernel before this one.
  uint4 wv[R][U];
  if (o < outputs) load(o, begin + lane, wv);
  wait_for_previous_kernels();
  float rstd = 1.0f;
  if (g != nullptr) {
    // 16 bytes of x and of g a thread, GEMV_STAGE_LOADS of each issued before any is used: the
    // row of a model up to 2k wide arrives in one round trip.
    float squares = 0.0f;
    const uint4* gs = reinterpret_cast<const uint4*>(g);
    for (i64 c0 = threadIdx.x; c0 < pieces; c0 += GEMV_STAGE_LOADS * blockDim.x) {
      uint4 xv[GEMV_STAGE_LOADS], gv[GEMV_STAGE_LOADS];
#pragma unroll
      for (int u = 0; u < GEMV_STAGE_LOADS; ++u) {
        const i64 c = c0 + (i64)u * blockDim.x;
        if (c < pieces) {
          xv[u] = xs[c];
          gv[u] = gs[c];
        }
      }
#pragma unroll
      for (int u = 0; u < GEMV_STAGE_LOADS; ++u) {
        const i64 c = c0 + (i64)u * blockDim.x;
        if (c >= pieces) break;
        float xf[V], gf[V];
        unpack16<T>(xv[u], xf);
        unpack16<T>(gv[u], gf);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          staged[c * V + e] = xf[e] * (plus_one ? round_to<T>(gf[e] + 1.0f) : gf[e]);
          squares = fmaf(xf[e], xf[e], squares);
        }
      }
    }
    for (int s = 16; s > 0; s >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, s);
    if (lane == 0) partial[warp * (R + 1) + R] = squares;
    __syncthreads();
    float total = 0.0f;
    for (int k = 0; k < warps; ++k) total += partial[k * (R + 1) + R];
    rstd = rsqrtf(total / (float)in + eps);
  }
  // With split > 1 the block's warps share each output, so they take the same turns (the
  // barriers below); with split = 1 there are none in the loop.
  for (; o < outputs; o += stride) {
    uint4 wn[R][U];
    if (o + stride < outputs) load(o + stride, begin + lane, wn);
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    for (i64 base = begin + lane; base < end; base += 32 * U) {
      if (base != begin + lane) load(o, base, wv);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const i64 i = base + u * 32;
        if (i >= end) continue;
        float a[V], wf[V];
        if (g != nullptr) {
#pragma unroll
          for (int q = 0; q < V / 4; ++q) {
            const float4 f = reinterpret_cast<const float4*>(staged)[i * (V / 4) + q];
            a[4 * q] = f.x;
            a[4 * q + 1] = f.y;
            a[4 * q + 2] = f.z;
            a[4 * q + 3] = f.w;
          }
        } else {
          unpack16<T>(xs[i], a);
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          unpack16<T>(wv[r][u], wf);
#pragma unroll
          for (int k = 0; k < V; ++k) acc[r] = fmaf(wf[k], a[k], acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      for (int s = 16; s > 0; s >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], s);
    }
    if (split > 1) {
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) partial[warp * (R + 1) + r] = acc[r];
      }
      __syncthreads();
      if (part == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          acc[r] = 0.0f;
          for (int p = 0; p < split; ++p) acc[r] += partial[(warp + p) * (R + 1) + r];
        }
      }
      __syncthreads();
    }
    if (lane == 0 && part == 0) {
      i64 row[R];
      rows_of(o, row);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        // _rn: the same roundings in every entry point (no contraction into one fma).
        acc[r] = __fmul_rn(acc[r], rstd);
        if (bias != nullptr) acc[r] = __fadd_rn(acc[r], to_float(bias[row[r]]));
      }
      finish(o, acc);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < U; ++u) wv[r][u] = wn[r][u];
    }
  }
}

// (x W^T + bias), then the add.
template <typename T>
__device__ void decode_gemv(const T* x, const T* g, float eps, int plus_one, const T* w, const T* bias,
                            const T* add, T* y, i64 rows, i64 in, int split) {
  allow_next_kernel();
  const auto rows_of = [](i64 o, i64 (&row)[1]) { row[0] = o; };
  const auto finish = [&](i64 o, const float (&acc)[1]) {
    float v = acc[0];
    if (add != nullptr) v += to_float(add[o]);
    y[o] = from_float<T>(v);
  };
  gemv_outputs<T, 1>(x, g, eps, plus_one, w, bias, in, rows, split, rows_of, finish);
}

// Rows 2o and 2o + 1 to a warp, for a long stream of short rows (the LM head: 151,936 rows of
// 896): a warp holds two rows' loads in flight where the one-row form holds one, and the
// stream's speed is the bytes in flight (the head ran at 2.8 TB/s one row a warp, H200, ncu).
// Each row's sums are the one-row form's, in the same order: the same values.
template <typename T>
__device__ void decode_gemv_pairs(const T* x, const T* w, T* y, i64 rows, i64 in) {
  allow_next_kernel();
  const auto rows_of = [](i64 o, i64 (&row)[2]) {
    row[0] = 2 * o;
    row[1] = 2 * o + 1;
  };
  const auto finish = [&](i64 o, const float (&acc)[2]) {
    y[2 * o] = from_float<T>(acc[0]);
    y[2 * o + 1] = from_float<T>(acc[1]);
  };
  gemv_outputs<T, 2>(x, nullptr, 0.0f, 0, w, nullptr, in, rows / 2, 1, rows_of, finish);
}

// Outputs o and rows + o of the fused gate|up weight: the gated activation.
template <typename T>
__device__ void decode_gemv_gated(const T* x, const T* g, float eps, int plus_one, const T* w, const T* bias,
                                  T* y, i64 rows, i64 in, int split, int gelu) {
  allow_next_kernel();
  const auto rows_of = [&](i64 o, i64 (&row)[2]) {
    row[0] = o;
    row[1] = rows + o;
  };
  const auto finish = [&](i64 o, const float (&acc)[2]) {
    const float gate = round_to<T>(acc[0]), up = round_to<T>(acc[1]);
    y[o] = from_float<T>(__fmul_rn(round_to<T>(gate_act(gate, gelu)), up));
  };
  gemv_outputs<T, 2>(x, g, eps, plus_one, w, bias, in, rows, split, rows_of, finish);
}

// Pairs of outputs: rows j and j + d/2 of a head (query and key heads rotated as
// `rope_kv_write` does, with `cos`/`sin_signed` the position's [d] angles). All of y ([outs]) is
// written; keys and values also go to the caches' row pos[0] (`k_cache`/`v_cache`: [heads,
// capacity, d] at `head_stride`, null where the layout has none).
template <typename T>
__device__ void decode_gemv_rope(const T* x, const T* g, float eps, int plus_one, const T* w, const T* bias,
                                 T* y, i64 outs, i64 in, int split, const i64* pos, const T* cos,
                                 const T* sin_signed, int nq, int nk, int nv, int d, T* k_cache, T* v_cache,
                                 i64 head_stride, i64 capacity) {
  allow_next_kernel();
  const int half = d / 2;
  const auto rows_of = [&](i64 o, i64 (&row)[2]) {
    row[0] = (o / half) * d + o % half;
    row[1] = row[0] + half;
  };
  const auto finish = [&](i64 o, const float (&acc)[2]) {
    i64 row[2];
    rows_of(o, row);
    const float va = round_to<T>(acc[0]), vb = round_to<T>(acc[1]);
    const int head = (int)(o / half), j = (int)(o % half);
    float oa = va, ob = vb;
    if (head < nq + nk) {
      oa = __fadd_rn(round_to<T>(__fmul_rn(va, to_float(cos[j]))),
                     round_to<T>(__fmul_rn(vb, to_float(sin_signed[j]))));
      ob = __fadd_rn(round_to<T>(__fmul_rn(vb, to_float(cos[j + half]))),
                     round_to<T>(__fmul_rn(va, to_float(sin_signed[j + half]))));
    }
    y[row[0]] = from_float<T>(oa);
    y[row[1]] = from_float<T>(ob);
    if (head < nq) return;
    const i64 p = pos[0];
    if (p < 0 || p >= capacity) return;
    T* cache =
        head < nq + nk ? k_cache + (i64)(head - nq) * head_stride : v_cache + (i64)(head - nq - nk) * head_stride;
    cache[p * d + j] = from_float<T>(oa);
    cache[p * d + j + half] = from_float<T>(ob);
  };
  gemv_outputs<T, 2>(x, g, eps, plus_one, w, bias, in, outs / 2, split, rows_of, finish);
}

// ---------------------------------------------------------------------------------------------
// A decode step's reuse layer (one token a sequence) whose lead attended for it (DA_JOINT,
// DA_AHEAD), up to its output projection, in one kernel: x = norm(h) (the values
// rms_norm_decode gives), v = x W_v^T + bias (written to the value cache at the row's
// position), and the layer's attention, its lead's sums over the keys before this one
// (`sums`, f32 [rows][nv * group][d]) plus this key's probability (`current`, [rows][nv *
// group]) times v, for the `group` query heads of each value head. `out` ([rows][nv * group *
// d + hidden]) gets the attention, then x: the input of the output projection fused with W_c
// (src/engine/layers.rs), so that no V|W_c GEMM, norm kernel or compensation add runs: those
// and rope_kv_write's tail took ~9 us a reuse layer at batch 32 / 8k for 1.8 MB; UniAttn's step
// went 1.708 -> 1.671 ms (H200, 2026-12-04; docs/benchmarks.md).
// A block: REUSE_ROWS rows and REUSE_OUTS value outputs (one head's, d % REUSE_OUTS == 0),
// REUSE_WARP_OUTS a warp (16 a block, two a warp: 32 blocks at batch 32, 6.3 us a launch for
// their sums, not their bytes, and 0.010 ms a step slower); blockIdx.x = row group * output groups + output group. Shared
// memory: the rows' x in T, [REUSE_ROWS][hidden], the norm's weights [hidden], then the values,
// f32 [REUSE_ROWS][REUSE_OUTS]. The caller checks: hidden and the attention's width whole
// 16-byte pieces, 16-byte aligned h, g, w and out rows, group <= DA_MAX_GROUP.
#define REUSE_ROWS 8
#define REUSE_OUTS 8
#define REUSE_WARP_OUTS (REUSE_OUTS / 8)  // a warp's outputs
#define REUSE_HELD 4   // 16-byte pieces of a weight row a lane holds at once
#define REUSE_LOADS 4  // 16-byte loads a thread issues at once as it stages h
template <typename T>
__device__ void reuse_attention_decode(const T* h, const T* g, float eps, int plus_one, const T* w, const T* bias,
                                       i64 rows, int hidden, int nv, int d, int group, const i64* pos, T* v_cache,
                                       i64 slot_stride, i64 head_stride, i64 capacity, const float* sums,
                                       const float* current, T* out) {
  constexpr int V = 16 / sizeof(T);
  extern __shared__ __align__(16) uint4 reuse_shared[];
  T* xs = reinterpret_cast<T*>(reuse_shared);
  float* values = reinterpret_cast<float*>(xs + (REUSE_ROWS + 1) * hidden);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int pieces = hidden / V, out_groups = nv * d / REUSE_OUTS;
  const int heads = nv * group, width = heads * d;
  const i64 out_stride = (i64)width + hidden;
  const int o0 = (int)(blockIdx.x % out_groups) * REUSE_OUTS;
  const i64 r0 = (i64)(blockIdx.x / out_groups) * REUSE_ROWS;
  const int block_rows = (int)min((i64)REUSE_ROWS, rows - r0);
  // This warp's two weight rows, a REUSE_HELD pieces a lane at a time; the first go out before
  // the wait (weights are written by no kernel), overlapping the kernel before this one.
  uint4 wv[REUSE_WARP_OUTS][REUSE_HELD];
  const auto load_weights = [&](int chunk) {
#pragma unroll
    for (int u = 0; u < REUSE_WARP_OUTS; ++u) {
#pragma unroll
      for (int k = 0; k < REUSE_HELD; ++k) {
        const int p = (chunk * REUSE_HELD + k) * 32 + lane;
        if (p < pieces) {
          wv[u][k] = load_streaming(w + (i64)(o0 + REUSE_WARP_OUTS * warp + u) * hidden + (i64)p * V);
        }
      }
    }
  };
  load_weights(0);
  allow_next_kernel();
  wait_for_previous_kernels();
  // The tail's inputs (written by the lead's attention), loaded now, used last.
  constexpr int TAIL = REUSE_ROWS * REUSE_OUTS * DA_MAX_GROUP / 256;
  float tail_sum[TAIL], tail_p[TAIL];
  const auto tail_at = [&](int i, int& r, int& oo, int& qh) {
    const int e = threadIdx.x + i * 256;  // (row, query head of the value head, output)
    oo = e % REUSE_OUTS;
    const int u = (e / REUSE_OUTS) % group;
    r = e / (REUSE_OUTS * group);
    qh = ((o0 + oo) / d) * group + u;
  };
#pragma unroll
  for (int i = 0; i < TAIL; ++i) {
    int r, oo, qh;
    tail_at(i, r, oo, qh);
    if (r < block_rows) {
      tail_p[i] = current[(r0 + r) * heads + qh];
      tail_sum[i] = sums[((r0 + r) * heads + qh) * d + (o0 + oo) % d];
    }
  }
  // The block's rows of h and the norm's weights into shared memory, REUSE_LOADS 16-byte loads
  // a thread issued at once: a round trip or two, where a warp's loop over its row's pieces
  // waited one a piece, twice (7.5 us a launch at batch 32, H200 trace, 2026-12-04).
  T* gs = xs + REUSE_ROWS * hidden;
  const int h_pieces = block_rows * pieces, staged = h_pieces + pieces;
  const uint4* h4 = reinterpret_cast<const uint4*>(h + r0 * hidden);
  const uint4* g4 = reinterpret_cast<const uint4*>(g);
  uint4* xs4 = reinterpret_cast<uint4*>(xs);
  for (int e0 = threadIdx.x; e0 < staged; e0 += REUSE_LOADS * 256) {
    uint4 piece[REUSE_LOADS];
#pragma unroll
    for (int u = 0; u < REUSE_LOADS; ++u) {
      const int e = e0 + u * 256;
      if (e < staged) piece[u] = e < h_pieces ? h4[e] : g4[e - h_pieces];
    }
#pragma unroll
    for (int u = 0; u < REUSE_LOADS; ++u) {
      const int e = e0 + u * 256;
      if (e < staged) xs4[e < h_pieces ? e : REUSE_ROWS * pieces + e - h_pieces] = piece[u];
    }
  }
  __syncthreads();
  // x: warp r normalizes row r in place (rows past the batch stay as they are: their sums are
  // not used); the block of output group 0 also writes it into `out`.
  if (warp < block_rows) {
    T* xr = xs + warp * hidden;
    float ss = 0.0f;
    for (int p = lane; p < pieces; p += 32) {
      float hf[V];
      unpack16<T>(*reinterpret_cast<const uint4*>(xr + p * V), hf);
#pragma unroll
      for (int j = 0; j < V; ++j) ss += hf[j] * hf[j];
    }
    for (int s = 16; s > 0; s >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, s);
    const float rs = rsqrtf(ss / (float)hidden + eps);
    T* xo = out + (r0 + warp) * out_stride + width;
    for (int p = lane; p < pieces; p += 32) {
      float hf[V], gf[V], o[V];
      unpack16<T>(*reinterpret_cast<const uint4*>(xr + p * V), hf);
      unpack16<T>(*reinterpret_cast<const uint4*>(gs + p * V), gf);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        // rms_norm_decode's formula (its `normed`).
        const float wc = plus_one ? round_to<T>(__fadd_rn(gf[j], 1.0f)) : gf[j];
        o[j] = round_to<T>(__fmul_rn(__fmul_rn(hf[j], rs), wc));
      }
      store16<T>(xr + p * V, o);
      if (o0 == 0) store16<T>(xo + p * V, o);
    }
  }
  __syncthreads();
  // v: this warp's two outputs for every row of the block, summed across the lanes in order.
  float acc[REUSE_WARP_OUTS][REUSE_ROWS];
#pragma unroll
  for (int u = 0; u < REUSE_WARP_OUTS; ++u) {
#pragma unroll
    for (int r = 0; r < REUSE_ROWS; ++r) acc[u][r] = 0.0f;
  }
  for (int chunk = 0; chunk * REUSE_HELD * 32 < pieces; ++chunk) {
    if (chunk > 0) load_weights(chunk);
#pragma unroll
    for (int k = 0; k < REUSE_HELD; ++k) {
      const int p = (chunk * REUSE_HELD + k) * 32 + lane;
      if (p >= pieces) break;
      float wf[REUSE_WARP_OUTS][V];
#pragma unroll
      for (int u = 0; u < REUSE_WARP_OUTS; ++u) unpack16<T>(wv[u][k], wf[u]);
#pragma unroll
      for (int r = 0; r < REUSE_ROWS; ++r) {
        float xf[V];
        unpack16<T>(*reinterpret_cast<const uint4*>(xs + r * hidden + p * V), xf);
#pragma unroll
        for (int j = 0; j < V; ++j) {
#pragma unroll
          for (int u = 0; u < REUSE_WARP_OUTS; ++u) acc[u][r] = fmaf(wf[u][j], xf[j], acc[u][r]);
        }
      }
    }
  }
#pragma unroll
  for (int u = 0; u < REUSE_WARP_OUTS; ++u) {
#pragma unroll
    for (int r = 0; r < REUSE_ROWS; ++r) {
      for (int s = 16; s > 0; s >>= 1) acc[u][r] += __shfl_xor_sync(0xffffffffu, acc[u][r], s);
    }
  }
  // Lane (u, r) finishes the warp's output u of row r: bias, rounding, the cache write.
  if (lane < REUSE_WARP_OUTS * REUSE_ROWS) {
    const int u = lane / REUSE_ROWS, r = lane % REUSE_ROWS, o = o0 + REUSE_WARP_OUTS * warp + u;
    float a = 0.0f;
#pragma unroll
    for (int uu = 0; uu < REUSE_WARP_OUTS; ++uu) {
#pragma unroll
      for (int rr = 0; rr < REUSE_ROWS; ++rr) {
        if (uu == u && rr == r) a = acc[uu][rr];
      }
    }
    if (bias != nullptr) a = __fadd_rn(a, to_float(bias[o]));
    const T v = from_float<T>(a);
    values[r * REUSE_OUTS + REUSE_WARP_OUTS * warp + u] = to_float(v);
    const i64 p = r < block_rows ? pos[r0 + r] : -1;
    if (p >= 0 && p < capacity) v_cache[(r0 + r) * slot_stride + (o / d) * head_stride + p * d + o % d] = v;
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < TAIL; ++i) {
    int r, oo, qh;
    tail_at(i, r, oo, qh);
    if (r < block_rows) {
      const float v = values[r * REUSE_OUTS + oo];
      out[(r0 + r) * out_stride + (i64)qh * d + (o0 + oo) % d] = from_float<T>(fmaf(tail_p[i], v, tail_sum[i]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A decode step's RMSNorm: x = T(h * rstd * w) with w in T (Gemma's 1 + w rounded to T, as
// RmsNorm::forward hands it to libtorch), what libtorch's fused RMSNorm computes (the sum in
// another order), launched behind the projection before it. One block per row, grid-stride
// over rows.
template <typename T>
__device__ void rms_norm_decode(const T* h, const T* w, T* x, i64 rows, i64 dim, float eps, int plus_one) {
  // A row of up to NORM_HELD elements a thread (8 x 256: every hidden size to 2,048) is read
  // once, all of its loads issued before the first is used, and kept in registers for the
  // second pass, where the loop form (longer rows) reads the stream back and the weights only
  // after the reduction: at batch 32 the loop's 32 blocks took 4.4 us, libtorch's plain RMSNorm
  // 2.5 (H200 trace, 2026-12-02). The same values in the same order.
  constexpr int NORM_HELD = 8, NORM_PIECES = 2;
  __shared__ float shared[32];
  const auto normed = [&](float m, float rs, float wv) {
    const float wc = plus_one ? round_to<T>(__fadd_rn(wv, 1.0f)) : wv;
    return from_float<T>(__fmul_rn(__fmul_rn(m, rs), wc));
  };
  // Rows of whole 16-byte pieces, all three arrays on 16 bytes, a thread's pieces held: one
  // load a piece (the element form issued 2-byte loads: 3.1 us at batch 32 where libtorch's
  // plain RMSNorm took 2.4, H200 trace, 2026-12-03).
  constexpr int per = 16 / (int)sizeof(T);
  const auto on16 = [](const void* p) { return (reinterpret_cast<unsigned long long>(p) & 15) == 0; };
  const bool wide =
      dim % per == 0 && dim / per <= (i64)blockDim.x * NORM_PIECES && on16(h) && on16(w) && on16(x);
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* hr = h + r * dim;
    T* xr = x + r * dim;
    float ss = 0.0f;
    if (wide) {
      uint4 hv[NORM_PIECES], wv[NORM_PIECES];
      float mid[NORM_PIECES][per];
#pragma unroll
      for (int k = 0; k < NORM_PIECES; ++k) {
        const i64 c = (threadIdx.x + (i64)k * blockDim.x) * per;
        if (c < dim) {
          hv[k] = *reinterpret_cast<const uint4*>(hr + c);
          wv[k] = *reinterpret_cast<const uint4*>(w + c);
        }
      }
#pragma unroll
      for (int k = 0; k < NORM_PIECES; ++k) {
        const i64 c = (threadIdx.x + (i64)k * blockDim.x) * per;
        if (c < dim) {
          unpack16<T>(hv[k], mid[k]);
#pragma unroll
          for (int j = 0; j < per; ++j) ss += mid[k][j] * mid[k][j];
        }
      }
      ss = block_reduce<T>(ss, false, shared);
      const float rs = rsqrtf(ss / (float)dim + eps);
#pragma unroll
      for (int k = 0; k < NORM_PIECES; ++k) {
        const i64 c = (threadIdx.x + (i64)k * blockDim.x) * per;
        if (c < dim) {
          float wf[per], o[per];
          unpack16<T>(wv[k], wf);
#pragma unroll
          for (int j = 0; j < per; ++j) o[j] = to_float(normed(mid[k][j], rs, wf[j]));
          store16<T>(xr + c, o);
        }
      }
      continue;
    }
    if (dim <= (i64)blockDim.x * NORM_HELD) {
      float mid[NORM_HELD], weight[NORM_HELD];
#pragma unroll
      for (int k = 0; k < NORM_HELD; ++k) {
        const i64 c = threadIdx.x + (i64)k * blockDim.x;
        if (c < dim) {
          mid[k] = to_float(hr[c]);
          weight[k] = to_float(w[c]);
        }
      }
#pragma unroll
      for (int k = 0; k < NORM_HELD; ++k) {
        const i64 c = threadIdx.x + (i64)k * blockDim.x;
        if (c < dim) ss += mid[k] * mid[k];
      }
      ss = block_reduce<T>(ss, false, shared);
      const float rs = rsqrtf(ss / (float)dim + eps);
#pragma unroll
      for (int k = 0; k < NORM_HELD; ++k) {
        const i64 c = threadIdx.x + (i64)k * blockDim.x;
        if (c < dim) xr[c] = normed(mid[k], rs, weight[k]);
      }
      continue;
    }
    for (i64 c = threadIdx.x; c < dim; c += blockDim.x) {
      const float m = to_float(hr[c]);
      ss += m * m;
    }
    ss = block_reduce<T>(ss, false, shared);
    const float rs = rsqrtf(ss / (float)dim + eps);
    for (i64 c = threadIdx.x; c < dim; c += blockDim.x) xr[c] = normed(to_float(hr[c]), rs, to_float(w[c]));
  }
}

// ---------------------------------------------------------------------------------------------
// Training's residual add and the RMSNorm after it (the trainer's autograd function in
// train.cpp): mid = h + a, with h the f32 residual stream and a a branch's output in T, and
// x = T(mid * rstd * w) with rstd = 1 / sqrt(mean(mid^2) + eps) and w the f32 norm weight (plus
// one for Gemma): what the add, libtorch's fused RMSNorm in f32 and autocast's cast to T compute,
// in one pass instead of three. One block per row, grid-stride over rows; rstd ([rows]) is kept
// for the backward pass.
template <typename T>
__device__ void add_rms_norm_forward(const float* h, const T* a, const float* w, float* mid, T* x, float* rstd,
                                     i64 rows, i64 dim, float eps, int plus_one) {
  __shared__ float shared[32];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* hr = h + r * dim;
    const T* ar = a + r * dim;
    float* mr = mid + r * dim;
    float ss = 0.0f;
    for (i64 c = threadIdx.x; c < dim; c += blockDim.x) {
      const float m = __fadd_rn(hr[c], to_float(ar[c]));
      mr[c] = m;
      ss += m * m;
    }
    ss = block_reduce<T>(ss, false, shared);
    const float rs = rsqrtf(ss / (float)dim + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for (i64 c = threadIdx.x; c < dim; c += blockDim.x) {
      const float wc = plus_one ? __fadd_rn(w[c], 1.0f) : w[c];
      x[r * dim + c] = from_float<T>(__fmul_rn(__fmul_rn(mr[c], rs), wc));
    }
  }
}

// Its backward pass, from the gradients of x (gx, in T) and of mid (gmid, f32), either null
// where it has none: d_mid = gmid + rstd * (gx w - xhat * mean(gx w xhat)), xhat = mid * rstd,
// written as dh (f32) and da (T); and, unless dw_partial is null, each block's sum over its rows
// of gx * xhat ([gridDim.x, dim] f32, which the caller sums into w's gradient). A thread keeps
// the sums of its columns in registers: dim <= COLS x blockDim.x; entry points for 4, 8 and 16
// columns, so that narrow rows keep few registers and many blocks fit an SM.
template <typename T, int NORM_COLS>
__device__ void add_rms_norm_backward(const float* mid, const float* rstd, const float* w, const T* gx,
                                      const float* gmid, float* dh, T* da, float* dw_partial, i64 rows, i64 dim,
                                      int plus_one) {
  __shared__ float shared[32];
  float dw[NORM_COLS];
#pragma unroll
  for (int k = 0; k < NORM_COLS; ++k) dw[k] = 0.0f;
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const float rs = rstd[r];
    const float* mr = mid + r * dim;
    float dot = 0.0f;
    if (gx != nullptr) {
#pragma unroll
      for (int k = 0; k < NORM_COLS; ++k) {
        const i64 c = threadIdx.x + (i64)k * blockDim.x;
        if (c < dim) {
          const float g = to_float(gx[r * dim + c]), xh = mr[c] * rs;
          dot += g * (plus_one ? w[c] + 1.0f : w[c]) * xh;
          dw[k] += g * xh;
        }
      }
    }
    dot = block_reduce<T>(dot, false, shared) / (float)dim;
#pragma unroll
    for (int k = 0; k < NORM_COLS; ++k) {
      const i64 c = threadIdx.x + (i64)k * blockDim.x;
      if (c < dim) {
        float d = gmid != nullptr ? gmid[r * dim + c] : 0.0f;
        if (gx != nullptr) {
          const float g = to_float(gx[r * dim + c]), xh = mr[c] * rs;
          d += rs * (g * (plus_one ? w[c] + 1.0f : w[c]) - xh * dot);
        }
        dh[r * dim + c] = d;
        da[r * dim + c] = from_float<T>(d);
      }
    }
  }
  if (dw_partial == nullptr) return;
#pragma unroll
  for (int k = 0; k < NORM_COLS; ++k) {
    const i64 c = threadIdx.x + (i64)k * blockDim.x;
    if (c < dim) dw_partial[blockIdx.x * dim + c] = dw[k];
  }
}

// ---------------------------------------------------------------------------------------------
// A decode step's attention at small batches (flash-decoding): out = softmax(q K^T * scale +
// mask) V with one query row per head, query head kv * g + h reading kv head kv (torch's
// enable_gqa). At batch 1 cuDNN spends two kernels and ~9 us a layer whatever the length,
// although the keys and values of 2k positions are ~1 MB. Here one kernel: the blocks of a
// (sequence, kv head) pair take `per_block` sub-tiles of its keys each, staged (keys and values)
// in shared memory by cp.async one sub-tile ahead; warp h is query head h of the group, so a
// head's softmax and sums never leave its warp: lane j scores keys j and j + 32 of a sub-tile
// (whole rows, against the query in shared memory), keeps the running max and sum, and sums
// P V over all the sub-tile's rows for its d / 32 output elements. The last block of a pair to
// finish (a ticket counter that wraps back to zero by itself) combines the blocks' sums, its
// warps a head each, 32 floats a lane in flight. Sums and the softmax in f32; the output is
// rounded once, as the fused kernels round it. The instructions a warp issues are the cost (a
// block runs each a few times at most), so the head width is a compile-time constant
// (decode_attention_rows). 16-bit rows of 64 and 128 run on tensor cores instead
// (decode_attention_mma, sm_80 on). On an H200 the tensor-core form on heads of 64 makes a
// batch-1 step faster than cuDNN's kernels (most for UniAttn, whose reuse layers then read no
// keys) and is slower from batch 8 (49 us a layer against 39 at batch 32, 8k); the CUDA-core
// form is slower everywhere. The caller runs it where it wins (docs/benchmarks.md, 2026-12-01).
// Modes, for UniAttn's SuperBlocks:
//   DA_LEAD: a lead also leaves its map for its reuse layers: its scores (scaled, masked; f32
//     `maps` [pair][g][splits * per_block * tile]) and each head's whole-softmax max and sum
//     (`stats` [pair][g][2]);
//   DA_REUSE: a reuse layer takes exp(s - max) / sum of those as its probabilities and
//     multiplies them by its own values: no queries, no keys read;
//   DA_AHEAD: a lead also attends for its reuse layers (`ahead`: their value caches), which
//     then run no attention kernel at all. A reuse layer's attention over the keys before the
//     current one needs only the lead's probabilities and values it cached in earlier steps,
//     so the lead's launch computes it too: (1 + ahead.count) units a pair, unit r scoring the
//     lead's keys and summing P V over its own values (the lead's for r = 0, reuse layer r's
//     without the current key, whose value that layer has not yet projected), f32 into
//     `ahead.outputs` ([count][pairs][g][d], already divided by the softmax sum), and the
//     current key's probability into `ahead.current` ([pairs][g]). The reuse layer adds
//     p * v of its new value as it projects it (reuse_attention_decode).
//   DA_JOINT: the same outputs as DA_AHEAD from one block a run of keys (tensor cores only):
//     it scores each sub-tile once and multiplies the probabilities by the lead's values and
//     each reuse layer's (up to DA_JOINT_OUTPUTS in all, staged together; the current key's row
//     of a reuse layer's values staged as zeros). DA_AHEAD's units each score the lead's keys
//     again: at batch 32 / 8k they read 536 MB from L2 for 335 MB of keys and values, and its
//     launch ran at 3.0 TB/s with L2 76% busy (ncu, 2026-12-03).
//   DA_JOINT_ALL: DA_JOINT whose pair's last block reads two splits' sums of every output an L2
//     round trip where DA_JOINT reads a batch of one output's splits, and the current key's score
//     after them: fewer round trips where a pair has few splits (the caller picks, by counting
//     them). A kernel of its own: the path's registers, had both been one kernel's, moved the
//     sub-tile loop's allocation.
// Threads: DA_THREADS. Sub-tiles of DA_STAGE_BYTES / (d * sizeof(T)) keys (16-64). The caller
// checks: d * sizeof(T) in {128, 256, 512}, g <= DA_MAX_GROUP, g * d <= 1024, splits <= DA_MAX_SPLITS,
// 16-byte aligned key and value rows, and sizes the shared memory as two stages (da_stage_bytes)
// and the query (src/cuda/kernels/decode_attention.rs).
#define DA_STAGE_BYTES 8192
#define DA_PLAIN 0
#define DA_LEAD 1
#define DA_REUSE 2
#define DA_AHEAD 3
#define DA_JOINT 4
#define DA_JOINT_ALL 5
__host__ __device__ constexpr bool da_joint(int mode) { return mode == DA_JOINT || mode == DA_JOINT_ALL; }
// Outputs a DA_JOINT block makes at most: a lead's and three reuse layers' (the paper's
// SuperBlocks of four); their accumulators are a warp's registers.
#define DA_JOINT_OUTPUTS 4
// Reuse layers a lead attends for at most (DA_AHEAD): SuperBlocks of up to eight layers.
#define DA_MAX_AHEAD 7
// Blocks a (sequence, kv head) pair at most (da_finish reads two splits' max and sum a lane).
#define DA_MAX_SPLITS 64

// DA_AHEAD's arguments, one struct so that every form's entry point takes the same list (the
// others get zeros): the reuse layers' value caches (the lead's value strides), each
// sequence's current key (its position, [n] contiguous), and where the outputs go.
struct DaAhead {
  const void* values[DA_MAX_AHEAD];
  const i64* current_key;
  float* outputs;
  float* current;
  i64 count;
};

// 16 bytes from global to shared memory without passing through registers (sm_80 on; a plain
// copy before).
__device__ __forceinline__ void copy_async16(void* smem, const void* gmem) {
#if __CUDA_ARCH__ >= 800
  unsigned s;
  asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(s) : "l"(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
#else
  *reinterpret_cast<uint4*>(smem) = *reinterpret_cast<const uint4*>(gmem);
#endif
}
__device__ __forceinline__ void copy_async_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Waits until at most `pending` committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void copy_async_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(pending) : "memory");
#endif
}

// A float another block wrote (past L1, which is not coherent between blocks).
__device__ __forceinline__ float load_from_l2(const float* p) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}

// Byte offset of 16-byte chunk `col` of key row `r` of a staged sub-tile. Rows are swizzled
// (the chunk index xor the row's low bits) so that the eight lanes of a 16-byte shared-memory
// access, which read the same chunk of eight consecutive rows, hit eight different bank groups.
__device__ __forceinline__ int tile_offset(int r, int col, int row_bytes) {
  return r * row_bytes + ((col ^ (r & 7)) << 4);
}

// Bytes of one stage: a sub-tile's keys (`tile_bytes`), its values (`values` layers' of them:
// DA_JOINT stages each output's), and (reuse) its g rows of the lead's map, `map_stride` floats
// apart.
__device__ __forceinline__ int da_stage_bytes(int g, int tile_bytes, int map_stride, int values) {
  return (1 + values) * tile_bytes + g * map_stride * 4;
}

// What one block of the decode attention kernel works on, the same for both forms: its
// (sequence, kv head) pair, its run of `subs` sub-tiles of `tile` keys from key `first`, that
// pair's keys (none for a reuse layer), values and [g][map_row] rows of a lead's map, and where
// stage `s` of the block's shared memory keeps a sub-tile's keys and values (`tile_bytes` each,
// `values` layers' of values) and map rows.
template <typename T>
struct DaBlock {
  // Unsigned, as in da_finish: the compiler keeps what both compute alive between them, and an
  // unsigned index widens to 64 bits with no register for its sign. `unit`: the pair's (or,
  // for DA_AHEAD, the pair and output's) blocks, `out` the output r (0: the layer's own).
  unsigned unit, pair, seq, kv, out;
  int subs, stage_bytes, tile, tile_bytes, block_keys, values;
  i64 first, map_row;
  const T* k;
  const T* v;
  float* map;
  __device__ DaBlock(const T* keys_all, const T* values_all, float* maps, int nk, int g, i64 all_keys, int splits,
                     int per_block, int tile_keys, int row_bytes, int map_stride, i64 k_seq, i64 k_head, i64 v_seq,
                     i64 v_head, unsigned units, int values, const DaAhead& ahead) {
    tile = tile_keys;
    this->values = values;
    unit = blockIdx.x / (unsigned)splits;
    pair = unit / units;
    out = unit % units;
    seq = pair / (unsigned)nk;
    kv = pair % (unsigned)nk;
    // Each by its constant offset: an index into the argument would copy it to local memory.
#pragma unroll
    for (unsigned i = 0; i < DA_MAX_AHEAD; ++i) {
      if (out == i + 1) values_all = static_cast<const T*>(ahead.values[i]);
    }
    tile_bytes = tile * row_bytes;
    stage_bytes = da_stage_bytes(g, tile_bytes, map_stride, values);
    map_row = (i64)splits * per_block * tile;
    first = (i64)(blockIdx.x % splits) * per_block * tile;
    block_keys = (int)min((i64)per_block * tile, all_keys - first);
    subs = (block_keys + tile - 1) / tile;
    k = keys_all == nullptr ? nullptr : keys_all + seq * k_seq + kv * k_head;
    v = values_all + seq * v_seq + kv * v_head;
    map = maps == nullptr ? nullptr : maps + (i64)pair * g * map_row;
  }
  // Sub-tile `sub`'s first key, and its keys (`tile`, or fewer at the end).
  __device__ i64 key0(int sub) const { return first + (i64)sub * tile; }
  __device__ int rows(int sub) const { return min(tile, block_keys - sub * tile); }
  __device__ unsigned char* keys_of(unsigned char* smem, int s) const { return smem + s * stage_bytes; }
  __device__ unsigned char* values_of(unsigned char* smem, int s) const { return keys_of(smem, s) + tile_bytes; }
  __device__ float* map_of(unsigned char* smem, int s) const {
    return reinterpret_cast<float*>(values_of(smem, s) + values * tile_bytes);
  }
  // The same places as 32-bit shared-memory addresses from the block's `smem_at`.
  __device__ unsigned keys_at(unsigned smem_at, int s) const { return smem_at + s * stage_bytes; }
  __device__ unsigned values_at(unsigned smem_at, int s) const { return keys_at(smem_at, s) + tile_bytes; }
};

// Starts staging sub-tile `sub + 1` (`stage(sub, buffer)`, into the buffer the last sub-tile
// read) and waits until sub-tile `sub` is in shared memory for every thread of the block.
template <typename Stage>
__device__ __forceinline__ void next_stage(const Stage& stage, int sub, int subs) {
  if (sub + 1 < subs) {
    stage(sub + 1, (sub + 1) & 1);
    copy_async_wait<1>();
  } else {
    copy_async_wait<0>();
  }
  __syncthreads();
}

// A reuse layer's share of a sub-tile's map: each of the g heads' `tile` scores from its row of
// the lead's map (`map_row` floats a head) into `ms` ([g][stride]), by cp.async.
__device__ __forceinline__ void stage_lead_map(float* ms, const float* map, i64 map_row, i64 key0, int g,
                                               int tile, int stride) {
  const int per_head = tile / 4;  // 16-byte chunks of a head's scores
  for (int c = threadIdx.x; c < g * per_head; c += DA_THREADS) {
    const int hh = c / per_head, j = c % per_head;
    copy_async16(ms + hh * stride + 4 * j, map + hh * map_row + key0 + 4 * j);
  }
}

// One step of an online softmax over a lane's N scores `sc`, `mx` their row's max over the
// step: sets their probabilities `p` against the new running max `m`, adds them to this lane's
// share of the sum `l`, and returns the factor for the sums so far. Exponentials as softmax_exp
// takes them for T (in bf16/f16 one `ex2.approx`: `expf`'s range reduction was ~50 of the
// ~680 instructions a warp issued a sub-tile in DA_JOINT at batch 32 / 8k).
template <typename T, int N>
__device__ __forceinline__ float online_softmax(float& m, float& l, float mx, const float (&sc)[N], float (&p)[N]) {
  const float now = fmaxf(m, mx);
  // Nothing unmasked yet: the probabilities so far are zero, whatever the base.
  const float base = now == neg_inf() ? 0.0f : now;
  const float rescale = softmax_exp<T>(m, base);
  l *= rescale;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    p[j] = softmax_exp<T>(sc[j], base);
    l += p[j];
  }
  m = now;
  return rescale;
}

// `LANE` elements of T from `p` (4, 8 or 16 bytes, as aligned) as floats: one load.
template <typename T, int LANE>
__device__ __forceinline__ void load_lane(const T* p, float (&out)[LANE]) {
  constexpr int bytes = LANE * (int)sizeof(T);
  static_assert(bytes == 4 || bytes == 8 || bytes == 16, "a lane's elements are 4, 8 or 16 bytes");
  alignas(16) T e[LANE];
  if constexpr (bytes == 16) {
    *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(p);
  } else if constexpr (bytes == 8) {
    *reinterpret_cast<uint2*>(e) = *reinterpret_cast<const uint2*>(p);
  } else {
    *reinterpret_cast<unsigned*>(e) = *reinterpret_cast<const unsigned*>(p);
  }
#pragma unroll
  for (int k = 0; k < LANE; ++k) out[k] = to_float(e[k]);
}

// The end of a block's work: warp h holds query head h's output elements lane * LANE_DIMS ...
// (`acc`, not yet divided by the softmax sum, or a reuse layer's, already weighted; OUTS of them
// for DA_JOINT, one a layer, else one), the running max `m` and the whole sum `l` over the
// block's keys. One block a unit writes the output; else the blocks hand their sums over
// ([block][g][outputs * d + 2]: sums, max, sum) and the last block of the unit to finish (a
// ticket counter that wraps back to zero by itself) combines them. A lead also leaves each
// head's whole-softmax max and sum in `stats`; output r > 0 (a DA_AHEAD unit's, or a DA_JOINT
// block's) is reuse layer r's, written in f32, and output 0 of a lead attending ahead writes
// the current key's probability (its score was left in `ahead.current` by the block that holds
// the key). `smem` is free (the stages are read).
template <typename T, int MODE, int LANE_DIMS, int OUTS>
__device__ void da_finish(float (&acc)[OUTS][LANE_DIMS], float m, float l, T* out, float* partial, u32* tickets,
                          int nk, int g, int splits, i64 keys, unsigned char* smem, float* stats,
                          const DaAhead& ahead) {
  constexpr bool lead = MODE == DA_LEAD, reuse = MODE == DA_REUSE, joint = da_joint(MODE);
  constexpr bool attends_ahead = MODE == DA_AHEAD || joint;
  constexpr int lane_dims = LANE_DIMS, d = 32 * LANE_DIMS;
  static_assert(joint || OUTS == 1, "one output a block but DA_JOINT's");
  const int t = threadIdx.x, lane = t & 31, h = t >> 5;
  const unsigned units = MODE == DA_AHEAD ? 1 + (unsigned)ahead.count : 1;
  const int outputs = joint ? 1 + (int)ahead.count : 1;
  const unsigned unit = blockIdx.x / (unsigned)splits, pair = unit / units;
  // The layer output u is for: 0 the lead's (or the layer's own), r > 0 reuse layer r's.
  const auto layer_of = [&](int u) { return MODE == DA_AHEAD ? unit % units : (unsigned)u; };
  const unsigned seq = pair / (unsigned)nk, kv = pair % (unsigned)nk;
  T* o = out + (i64)seq * (nk * g) * d + (i64)kv * g * d + (i64)h * d + lane * lane_dims;
  const unsigned pairs = gridDim.x / ((unsigned)splits * units);
  // DA_JOINT_ALL's combine reads the current key's score with the splits' sums (below), and its
  // position (which kernels before this one wrote) now.
  constexpr bool all_outputs = MODE == DA_JOINT_ALL;
  const i64 joint_key = all_outputs ? ahead.current_key[seq] : -1;
  float joint_score = neg_inf();
  // The output (divided by the softmax sum `l` unless a reuse layer's), and what goes with it.
  const auto write = [&](const float(&y)[lane_dims], unsigned r, float max_all, float sum_all) {
    // One block's sums are divided, as the composition divides; the combined ones scaled.
    const float scale_all = reuse ? 1.0f : 1.0f / sum_all;
    float* o_ahead = r == 0 ? nullptr
                            : ahead.outputs + ((i64)(r - 1) * pairs + pair) * g * d + (i64)h * d + lane * lane_dims;
#pragma unroll
    for (int e = 0; e < lane_dims; ++e) {
      const float v = reuse ? y[e] : splits == 1 ? y[e] / sum_all : y[e] * scale_all;
      if (r == 0) {
        o[e] = from_float<T>(v);
      } else {
        o_ahead[e] = v;
      }
    }
    if (lane != 0) return;
    if (lead) {
      stats[((i64)pair * g + h) * 2] = max_all;
      stats[((i64)pair * g + h) * 2 + 1] = sum_all;
    }
    if (attends_ahead && r == 0) {
      const i64 key = ahead.current_key[seq];
      float* p = ahead.current + (i64)pair * g + h;
      const float s = all_outputs && splits > 1 ? joint_score : key >= 0 && key < keys ? load_from_l2(p) : neg_inf();
      *p = s == neg_inf() ? 0.0f : expf(s - max_all) * scale_all;
    }
  };
  if (splits == 1) {
    // The current key's score came from another warp of this block.
    if (attends_ahead) {
      __threadfence();
      __syncthreads();
    }
    if (h >= g) return;
#pragma unroll
    for (int u = 0; u < OUTS; ++u) {
      if (u < outputs) write(acc[u], layer_of(u), m, l);
    }
    return;
  }
  // Hand the sums over ([block][g][outputs * d + 2]: sums, max, sum); the last block of the
  // unit combines them.
  const i64 stride = (i64)outputs * d + 2, at_max = (i64)outputs * d;
  if (h < g) {
    float* mine = partial + ((i64)blockIdx.x * g + h) * stride;
#pragma unroll
    for (int u = 0; u < OUTS; ++u) {
#pragma unroll
      for (int e = 0; e < lane_dims; ++e) {
        if (u < outputs) mine[u * d + lane * lane_dims + e] = acc[u][e];
      }
    }
    if (lane == 0) {
      mine[at_max] = m;
      mine[at_max + 1] = l;
    }
  }
  __threadfence();
  __syncthreads();
  __shared__ int last_block;
  if (t == 0) last_block = atomicInc(tickets + unit, (u32)(splits - 1)) == (u32)(splits - 1);
  __syncthreads();
  if (!last_block || h >= g) return;
  __threadfence();
  const float* all = partial + ((i64)unit * splits * g + h) * stride;  // split sp at sp * g * stride
  float* weight = reinterpret_cast<float*>(smem) + h * splits;       // the stages are read
  // What the combine reads goes out at once, for one L2 round trip where there were three
  // before the sums (a batch-1 / 8k launch's last block is the only one left running): the
  // first batch of splits' sums of the first output, which the weights only scale, and each
  // lane's splits' max and sum (two a lane: the caller keeps splits <= DA_MAX_SPLITS).
  // DA_JOINT_ALL reads a batch of splits' sums of every output at once, and the current key's
  // score: at batch 32 / 8k (four splits) two L2 round trips where DA_JOINT takes five,
  // which left ~7 us from a pair's last sub-tile to its outputs against ~2.4 for a block that
  // does not combine (per-block clocks, 2026-12-03). Half the registers of a full batch: a batch
  // of all four splits spilled inside the sub-tile loop.
  constexpr int batch = 32 / lane_dims;  // splits' elements a lane holds at once: 32 floats
  constexpr int units_read = all_outputs ? OUTS : 1, splits_read = all_outputs ? batch / OUTS / 2 : batch;
  static_assert(splits_read >= 1, "a split of every output a round trip at least");
  float x[units_read][splits_read][lane_dims];
  // Splits sp0 on of output u0 (and, DA_JOINT_ALL, of every output).
  const auto load_batch = [&](int sp0, int u0) {
#pragma unroll
    for (int uu = 0; uu < units_read; ++uu) {
#pragma unroll
      for (int b = 0; b < splits_read; ++b) {
#pragma unroll
        for (int e = 0; e < lane_dims; ++e) {
          const int u = u0 + uu;
          const float* at = all + (sp0 + b) * g * stride + u * d + lane * lane_dims + e;
          x[uu][b][e] = (!all_outputs || u < outputs) && sp0 + b < splits ? load_from_l2(at) : 0.0f;
        }
      }
    }
  };
  load_batch(0, 0);
  if (all_outputs && lane == 0 && joint_key >= 0 && joint_key < keys) {
    joint_score = load_from_l2(ahead.current + (i64)pair * g + h);
  }
  float max_all = neg_inf(), sum_all = 0.0f;
  if (reuse) {
    for (int sp = lane; sp < splits; sp += 32) weight[sp] = 1.0f;  // each block's share is in its sums
  } else {
    float ms[2], ls[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int sp = lane + 32 * i;
      ms[i] = sp < splits ? load_from_l2(all + sp * g * stride + at_max) : neg_inf();
      ls[i] = sp < splits ? load_from_l2(all + sp * g * stride + at_max + 1) : 0.0f;
    }
    max_all = fmaxf(ms[0], ms[1]);
    for (int off = 16; off > 0; off >>= 1) max_all = fmaxf(max_all, __shfl_xor_sync(0xffffffffu, max_all, off));
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int sp = lane + 32 * i;
      const float w = ms[i] == neg_inf() ? 0.0f : expf(ms[i] - max_all);
      if (sp < splits) weight[sp] = w;
      sum_all += w * ls[i];
    }
    for (int off = 16; off > 0; off >>= 1) sum_all += __shfl_xor_sync(0xffffffffu, sum_all, off);
  }
  __syncwarp();
  if constexpr (all_outputs) {
    float y[OUTS][lane_dims];
#pragma unroll
    for (int u = 0; u < OUTS; ++u) {
#pragma unroll
      for (int e = 0; e < lane_dims; ++e) y[u][e] = 0.0f;
    }
    // Each output's sums over the splits in their order, as for the other forms.
#pragma unroll 1
    for (int sp0 = 0;; sp0 += splits_read) {
#pragma unroll
      for (int u = 0; u < OUTS; ++u) {
#pragma unroll
        for (int b = 0; b < splits_read; ++b) {
#pragma unroll
          for (int e = 0; e < lane_dims; ++e) {
            if (sp0 + b < splits) y[u][e] = fmaf(weight[sp0 + b], x[u][b][e], y[u][e]);
          }
        }
      }
      if (sp0 + splits_read >= splits) break;
      load_batch(sp0 + splits_read, 0);
    }
#pragma unroll
    for (int u = 0; u < OUTS; ++u) {
      if (u < outputs) write(y[u], layer_of(u), max_all, sum_all);
    }
    return;
  }
#pragma unroll 1
  for (int u = 0; u < outputs; ++u) {
    if (u > 0) load_batch(0, u);
    float y[lane_dims];
#pragma unroll
    for (int e = 0; e < lane_dims; ++e) y[e] = 0.0f;
#pragma unroll 1
    for (int sp0 = 0;; sp0 += splits_read) {
#pragma unroll
      for (int b = 0; b < splits_read; ++b) {
#pragma unroll
        for (int e = 0; e < lane_dims; ++e) {
          if (sp0 + b < splits) y[e] = fmaf(weight[sp0 + b], x[0][b][e], y[e]);
        }
      }
      if (sp0 + splits_read >= splits) break;
      load_batch(sp0 + splits_read, u);
    }
    write(y, layer_of(u), max_all, sum_all);
  }
}

// The kernel for rows of ROW_BYTES bytes (head width D = ROW_BYTES / sizeof(T)): the sub-tile's
// keys, the lane's D / 32 output elements and the loops over them are compile-time constants
// (at run time, form 4 issued ~4,000 instructions a warp at batch 1, 2k, most of them a P V
// loop over 8 predicated element loads a row; 2026-12-01).
template <typename T, int MODE, int ROW_BYTES>
__device__ void decode_attention_rows(const T* q, const T* k, const T* v, const T* mask, T* out, float* partial,
                                      u32* tickets, int nk, int g, i64 keys, int splits, int per_block, i64 q_seq,
                                      i64 q_head, i64 k_seq, i64 k_head, i64 v_seq, i64 v_head, i64 mask_seq,
                                      float scale, float* maps, float* stats, const DaAhead& ahead) {
  constexpr bool lead = MODE == DA_LEAD, reuse = MODE == DA_REUSE, attends_ahead = MODE == DA_AHEAD;
  constexpr int d = ROW_BYTES / (int)sizeof(T), row_bytes = ROW_BYTES, chunks = ROW_BYTES / 16;
  constexpr int lane_dims = d / 32, tile = DA_STAGE_BYTES / ROW_BYTES;
  extern __shared__ __align__(128) uint4 da_shared_chunks[];  // see decode_attention_mma
  unsigned char* smem = reinterpret_cast<unsigned char*>(da_shared_chunks);
  const int t = threadIdx.x, lane = t & 31, h = t >> 5;  // warp h: query head kv * g + h
  const DaBlock<T> b(reuse ? nullptr : k, v, maps, nk, g, keys, splits, per_block, tile, row_bytes, tile, k_seq,
                     k_head, v_seq, v_head, attends_ahead ? 1 + (unsigned)ahead.count : 1, 1, ahead);
  const unsigned pair = b.pair, seq = b.seq, kv = b.kv;
  const int subs = b.subs;
  const i64 row = b.map_row;  // a head's row of a lead's map
  float* map = b.map;
  float* qs = reinterpret_cast<float*>(smem + 2 * b.stage_bytes);  // [g][d]
  // DA_AHEAD: the current key, whose score unit 0 leaves and whose value unit r > 0 skips.
  const i64 current_key = attends_ahead ? ahead.current_key[seq] : -1;

  const auto stage = [&](int sub, int s) {
    unsigned char* ks = b.keys_of(smem, s);
    unsigned char* vs = b.values_of(smem, s);
    float* ms = b.map_of(smem, s);
    const i64 key0 = b.key0(sub);
    const int n = b.rows(sub);
    for (int c = t; c < n * chunks; c += DA_THREADS) {
      const int r = c / chunks, col = c % chunks;
      if (!reuse) {
        copy_async16(ks + tile_offset(r, col, row_bytes), reinterpret_cast<const unsigned char*>(b.k + (key0 + r) * d) + col * 16);
      }
      copy_async16(vs + c * 16, reinterpret_cast<const unsigned char*>(b.v + key0 * d) + (i64)c * 16);
    }
    if (reuse) stage_lead_map(ms, map, row, key0, g, tile, tile);
    copy_async_commit();
  };
  stage(0, 0);
  if (!reuse) {
    for (int i = t; i < g * d; i += DA_THREADS) {
      qs[i] = to_float(q[seq * q_seq + (i64)(kv * g + i / d) * q_head + i % d]);
    }
  }
  // The warp's running max (`m`, or a reuse layer's lead's), this lane's share of the sum, and
  // its output elements lane * lane_dims ...
  float m = neg_inf(), l = 0.0f, inv_sum = 1.0f, acc[lane_dims];
#pragma unroll
  for (int e = 0; e < lane_dims; ++e) acc[e] = 0.0f;
  if (reuse && h < g) {
    m = stats[((i64)pair * g + h) * 2];
    inv_sum = 1.0f / stats[((i64)pair * g + h) * 2 + 1];
  }
#pragma unroll 1
  for (int sub = 0; sub < subs; ++sub) {
    const int s = sub & 1;
    next_stage(stage, sub, subs);
    const unsigned char* ks = b.keys_of(smem, s);
    const unsigned char* vs = b.values_of(smem, s);
    const float* ms = b.map_of(smem, s);
    const i64 key0 = b.key0(sub);
    const int n = b.rows(sub);
    if (h < g) {
      // This lane's keys: lane and lane + 32 (a sub-tile has at most 64).
      float p[2];
      if (reuse) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int r = lane + 32 * j;
          p[j] = r < n ? softmax_exp<T>(ms[h * tile + r], m) * inv_sum : 0.0f;
        }
      } else {
        float sc[2], bias[2], dot[2] = {0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int r = lane + 32 * j;
          bias[j] = r < n ? to_float(mask[seq * mask_seq + key0 + r]) : 0.0f;
        }
        const float* qh = qs + h * d;
#pragma unroll 4
        for (int c = 0; c < chunks; ++c) {
          constexpr int V = 16 / sizeof(T);
          float qf[V];
#pragma unroll
          for (int e = 0; e < V; ++e) qf[e] = qh[c * V + e];
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int r = lane + 32 * j;
            if (r < tile) {
              float kf[V];
              unpack16<T>(*reinterpret_cast<const uint4*>(ks + tile_offset(r, c, row_bytes)), kf);
#pragma unroll
              for (int e = 0; e < V; ++e) dot[j] = fmaf(kf[e], qf[e], dot[j]);
            }
          }
        }
        float mx = neg_inf();
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int r = lane + 32 * j;
          sc[j] = r < n ? dot[j] * scale + bias[j] : neg_inf();
          if (lead && r < tile) map[h * row + key0 + r] = sc[j];
          if (attends_ahead && b.out == 0 && r < n && key0 + r == current_key) ahead.current[(i64)pair * g + h] = sc[j];
          mx = fmaxf(mx, sc[j]);
        }
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float rescale = online_softmax<T>(m, l, mx, sc, p);
        // A reuse layer's current value is not in its cache yet: its key counts in the sum only.
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (attends_ahead && b.out > 0 && key0 + lane + 32 * j == current_key) p[j] = 0.0f;
        }
#pragma unroll
        for (int e = 0; e < lane_dims; ++e) acc[e] *= rescale;
      }
      // P V: row r's probability from the lane that holds it (rows 0-31 from p[0], 32-63 from
      // p[1]), times this lane's elements, one load a row.
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll 4
        for (int r = 32 * j; r < min(n, 32 * (j + 1)); ++r) {
          const float pr = __shfl_sync(0xffffffffu, p[j], r & 31);
          float vf[lane_dims];
          load_lane<T, lane_dims>(reinterpret_cast<const T*>(vs + r * row_bytes) + lane * lane_dims, vf);
#pragma unroll
          for (int e = 0; e < lane_dims; ++e) acc[e] = fmaf(pr, vf[e], acc[e]);
        }
      }
    }
    // The next stage's copies go into the buffers this one read.
    __syncthreads();
  }
  for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
  float sums[1][lane_dims];  // da_finish's shape: one output
#pragma unroll
  for (int e = 0; e < lane_dims; ++e) sums[0][e] = acc[e];
  da_finish<T, MODE, lane_dims, 1>(sums, m, l, out, partial, tickets, nk, g, splits, keys, smem, stats, ahead);
}

// ---------------------------------------------------------------------------------------------
// The same attention on tensor cores, for 16-bit types and head widths 64 and 128 (sm_80 on).
// On CUDA cores the kernel is bound by its arithmetic, not its bytes, wherever a kv head serves
// several query heads: Qwen2.5's 7 make a key 896 multiply-adds for 256 bytes, and at batch 32 /
// 8k it took 225 us a layer where cuDNN takes ~39 (ncu, 2026-12-01). Here the group's query
// heads are the rows of `mma`'s A operand (rows g..15 zero: g <= 8, so rows 8-15 never hold a
// head and their halves of each fragment are constant zeros), and each warp takes its own 16
// keys of every staged sub-tile (DA_MMA_TILE_BYTES of keys): scores S = Q K^T by m16n8k16 for
// its two 8-key halves (K read from shared memory as the B operand), an online softmax over the
// warp's keys, and O += P V by m16n8k16 again, whose A fragment is the two score accumulators'
// layout (a lane holds its row's probabilities for the keys it scored) and whose B fragments are
// V read transposed by `ldmatrix`. P goes in as two 16-bit parts (its rounding and the rest), so
// P V keeps ~16 bits of each probability as the f32 form does (within 1e-5 of the sum of the
// terms). The warps' sums are combined in shared memory, then across blocks as above
// (da_finish). 16 keys a warp, not 8: at 8 the softmax's bookkeeping, the conversions and the
// barriers were paid every 8 keys, and the kernel issued ~420 instructions a warp a sub-tile at
// ~8 cycles each with 16 KB in flight a block: 2.1 TB/s (ncu, batch 32 / 8k, 2026-12-01).
#if __CUDA_ARCH__ >= 800
#define DA_MMA_TILE_BYTES 16384
// Two floats as one register of 16-bit T (the first in the low half), rounded to nearest even.
__device__ __forceinline__ u32 pack_pair(bf16, float a, float b) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
  return r;
}
__device__ __forceinline__ u32 pack_pair(f16, float a, float b) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
  return r;
}
// The part of (a, b) that pack_pair drops.
template <typename T>
__device__ __forceinline__ u32 pack_rest(float a, float b) {
  const u32 hi = pack_pair(T{}, a, b);
  T ha, hb;
  ha.bits = (u16)(hi & 0xffffu);
  hb.bits = (u16)(hi >> 16);
  return pack_pair(T{}, a - to_float(ha), b - to_float(hb));
}

#define DA_MMA_K16(TYPE)                                                                                   \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE                                      \
               ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%10,%11};"                                \
               : "+f"(d[0]), "+f"(d[1]), "=f"(unused[0]), "=f"(unused[1])                                  \
               : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.0f), "f"(0.0f))
// d (row `lane / 4` of a 16 x 8 tile, columns 2 (lane % 4) and + 1) += a b over 16 of k, A's
// rows 8-15 zero: a0 / a2 hold A's row `lane / 4` at k 2 (lane % 4) + {0, 1} and + 8; b0 / b1
// B's column `lane / 4` at the same k.
__device__ __forceinline__ void mma_k16(bf16, float (&d)[2], u32 a0, u32 a2, u32 b0, u32 b1) {
  float unused[2];
  DA_MMA_K16("bf16");
}
__device__ __forceinline__ void mma_k16(f16, float (&d)[2], u32 a0, u32 a2, u32 b0, u32 b1) {
  float unused[2];
  DA_MMA_K16("f16");
}
#undef DA_MMA_K16

// Four 8 x 8 tiles of 16-bit elements from shared memory: lanes 8j .. 8j + 7 give the
// addresses of tile j's rows (16 bytes each); this lane gets tile j's row `lane / 4` at columns
// 2 (lane % 4) and + 1, or `transposed`, its column `lane / 4` at rows 2 (lane % 4) and + 1.
// `row` is a shared-memory address (shared_address).
template <bool transposed>
__device__ __forceinline__ void load_tiles(unsigned row, u32 (&out)[4]) {
  if constexpr (transposed) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3])
                 : "r"(row));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3])
                 : "r"(row));
  }
}

// The 32-bit shared-memory address of `p`: offsets from it are 32-bit arithmetic where a
// generic pointer's are 64-bit (the tensor-core form's registers are counted).
__device__ __forceinline__ unsigned shared_address(const void* p) {
  unsigned s;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(s) : "l"(p));
  return s;
}

// copy_async16 to shared-memory address `s`, or 16 zero bytes where `valid` is false (`gmem` is
// then not read).
__device__ __forceinline__ void copy_async16_or_zero(unsigned s, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
}

template <typename T, int MODE, int D>
__device__ void decode_attention_mma(const T* q, const T* k, const T* v, const T* mask, T* out, float* partial,
                                     u32* tickets, int nk, int g, i64 keys, int splits, int per_block, i64 q_seq,
                                     i64 q_head, i64 k_seq, i64 k_head, i64 v_seq, i64 v_head, i64 mask_seq,
                                     float scale, float* maps, float* stats, const DaAhead& ahead) {
  constexpr bool lead = MODE == DA_LEAD, reuse = MODE == DA_REUSE, joint = da_joint(MODE);
  constexpr bool attends_ahead = MODE == DA_AHEAD || joint;
  // DA_JOINT stages a sub-tile's values for each of its outputs: sub-tiles of half the keys
  // (DA_STAGE_BYTES of them), so that two blocks still fit an SM.
  constexpr int outs = joint ? DA_JOINT_OUTPUTS : 1;
  constexpr int row_bytes = D * 2, chunks = row_bytes / 16;
  constexpr int tile = (joint ? DA_STAGE_BYTES : DA_MMA_TILE_BYTES) / row_bytes, tile_bytes = tile * row_bytes;
  // A warp takes 16 keys of a sub-tile (a slice) and its share of the outputs' columns-of-8:
  // D = 64 has 8 slices a sub-tile, D = 128 4 (DA_JOINT: 4 and 2), each shared by the warps
  // that score them alike (the mma's are cheap; registers for all 16 columns-of-8 spilled) and
  // take one part (`half`) of the columns each, `dim_tiles` of them; DA_JOINT's columns run on
  // from one output's to the next.
  constexpr int slices = tile / 16, halves = (DA_THREADS / 32) / slices;
  constexpr int steps = D / 16, dim_tiles = outs * D / 8 / halves;
  // A reuse layer's staged map rows and the queries, padded so that the 8 rows of a fragment
  // load fall in different banks.
  constexpr int map_stride = tile + 8, q_stride = D / 2 + 4;
  static_assert(slices * halves == DA_THREADS / 32 && dim_tiles % 2 == 0, "a warp a slice and half");
  static_assert(tile * chunks % DA_THREADS == 0, "whole rounds of 16-byte copies");
  // Aligned past da_finish's static flag (which left the stages 16 bytes off a 32-byte line): a
  // 32-byte sector of keys whose two 16-byte copies landed in two 32-byte units of shared memory
  // went to L2 as two requests, twice the sectors and half of them hits (ncu, batch 32 / 8k:
  // 8.7 M sectors for 139 MB; scripts/device/load_probe.sh).
  extern __shared__ __align__(128) uint4 da_shared_chunks[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(da_shared_chunks);
  const unsigned smem_at = shared_address(smem);
  const int t = threadIdx.x, lane = t & 31, w = t >> 5;
  const int row = lane >> 2, quad = lane & 3;  // this lane's query head in the group; its key pair
  const int slice = w % slices, half = w / slices;
  // DA_JOINT's outputs: the lead's and its reuse layers'.
  const int values = joint ? 1 + (int)ahead.count : 1;
  const DaBlock<T> b(reuse ? nullptr : k, v, maps, nk, g, keys, splits, per_block, tile, row_bytes, map_stride, k_seq,
                     k_head, v_seq, v_head, MODE == DA_AHEAD ? 1 + (unsigned)ahead.count : 1, values, ahead);
  const unsigned pair = b.pair, seq = b.seq, kv = b.kv;
  const int subs = b.subs;
  const i64 map_row = b.map_row;  // a head's row of a lead's map
  // The block's keys, values and map from its first key on: a sub-tile's offsets fit in 32 bits.
  const T* k_block = reuse ? nullptr : b.k + b.first * D;
  const T* v_block = b.v + b.first * D;
  // DA_JOINT: reuse layer r's values at the same offset from ahead.values[r - 1].
  const i64 v_offset = seq * v_seq + kv * v_head + b.first * D;
  float* map = b.map == nullptr ? nullptr : b.map + b.first;
  const bool head = row < g;
  // DA_AHEAD, DA_JOINT: the current key from the block's first, whose score output 0 leaves and
  // whose value a reuse layer's output skips.
  const i64 current_key = attends_ahead ? ahead.current_key[seq] - b.first : -1;

  // Keys and values swizzled alike (tile_offset), rows past the keys zero; DA_JOINT's reuse
  // layers' values after the lead's, each with the current key's row zero.
  const auto stage = [&](int sub, int s) {
    const unsigned ks = b.keys_at(smem_at, s), vs = b.values_at(smem_at, s);
    float* ms = b.map_of(smem, s);
    const int key0 = sub * tile, n = b.rows(sub);
#pragma unroll 1
    for (int i = 0; i < tile * chunks / DA_THREADS; ++i) {
      const int c = t + i * DA_THREADS, r = c / chunks, col = c % chunks;
      const int at = (key0 + min(r, n - 1)) * D + col * 8;
      const unsigned swizzled = tile_offset(r, col, row_bytes);
      if (!reuse) copy_async16_or_zero(ks + swizzled, k_block + at, r < n);
      copy_async16_or_zero(vs + swizzled, v_block + at, r < n);
#pragma unroll
      for (int u = 1; u < outs; ++u) {
        if (u < values) {
          const T* vu = static_cast<const T*>(ahead.values[u - 1]) + v_offset;
          copy_async16_or_zero(vs + u * tile_bytes + swizzled, vu + at, r < n && key0 + r != current_key);
        }
      }
    }
    if (reuse) stage_lead_map(ms, map, map_row, key0, g, tile, map_stride);
    copy_async_commit();
  };
  // DA_JOINT is launched programmatically (src/cuda/kernels/decode_attention.rs) behind the
  // lead's rope_kv_write, which writes its queries and its current key's and value's rows: a
  // first sub-tile without that row goes out before the wait, its bytes in flight while the
  // kernel before finishes (the cache's other rows, the mask and the positions were written
  // by earlier kernels, which have finished).
  const bool early = joint && (current_key < 0 || current_key >= tile);
  if (early) stage(0, 0);
  wait_for_previous_kernels();
  if (!early) stage(0, 0);
  // The group's queries, 16-bit pairs [8][q_stride] past the stages (rows g..7 zero): read as
  // A fragments (k step s: this lane's row at 16 s + 2 quad + {0, 1} and + 8) at each
  // sub-tile, where holding them would take D / 8 registers.
  u32* qs = reinterpret_cast<u32*>(smem + 2 * b.stage_bytes);
  const unsigned qs_at = smem_at + 2 * b.stage_bytes;
  if (!reuse) {
    for (int i = t; i < DA_MAX_GROUP * D / 2; i += DA_THREADS) {
      const int hh = i / (D / 2), c = 2 * (i % (D / 2));
      const T* qr = q + seq * q_seq + (i64)(kv * g + hh) * q_head;
      qs[hh * q_stride + c / 2] = hh < g ? (u32)qr[c].bits | ((u32)qr[c + 1].bits << 16) : 0u;
    }
  }
  // This lane's row: the running max (a reuse layer's: its lead's), its share of the sum, and
  // the output at columns 8 j + 2 quad + {0, 1}.
  float m = neg_inf(), l = 0.0f, inv_sum = 1.0f, acc[dim_tiles][2];
#pragma unroll
  for (int j = 0; j < dim_tiles; ++j) acc[j][0] = acc[j][1] = 0.0f;
  if (reuse && head) {
    m = stats[((i64)pair * g + row) * 2];
    inv_sum = 1.0f / stats[((i64)pair * g + row) * 2 + 1];
  }
  // This lane's four keys of a sub-tile (scores and P): e = 2 h + j is key 16 slice + 8 h +
  // 2 quad + j, h the warp's half of its 16 keys.
  const int kk = 16 * slice + 2 * quad;
  const auto key_of = [&](int e) { return kk + 8 * (e >> 1) + (e & 1); };
  float* map_lane = lead ? map + row * map_row + kk : nullptr;  // where a lead leaves them
  // This lane's mask values, read a sub-tile ahead: read where they are used, each sub-tile
  // waited a round trip to memory on them after its staged keys had arrived.
  const T* mask_row = reuse ? nullptr : mask + seq * mask_seq + b.first;
  const auto mask_of = [&](int sub, T (&raw)[4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (!reuse && sub < subs && key_of(e) < b.rows(sub)) raw[e] = mask_row[sub * tile + key_of(e)];
    }
  };
  T bias_next[4];
  mask_of(0, bias_next);
#pragma unroll 1
  for (int sub = 0; sub < subs; ++sub) {
    const int s = sub & 1;
    next_stage(stage, sub, subs);
    const int key0 = sub * tile, n = b.rows(sub);
    float bias[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) bias[e] = key_of(e) < n ? to_float(bias_next[e]) : 0.0f;
    mask_of(sub + 1, bias_next);
    const unsigned ks = b.keys_at(smem_at, s), vs = b.values_at(smem_at, s);
    const float* ms = b.map_of(smem, s);
    float p[4];
    if (reuse) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float2 sc = *reinterpret_cast<const float2*>(ms + row * map_stride + kk + 8 * h);
        p[2 * h] = head && key_of(2 * h) < n ? softmax_exp<T>(sc.x, m) * inv_sum : 0.0f;
        p[2 * h + 1] = head && key_of(2 * h + 1) < n ? softmax_exp<T>(sc.y, m) * inv_sum : 0.0f;
      }
    } else {
      // Two k steps a round: the queries' A fragments (chunks 4 p .. 4 p + 3 of rows 0-7), and
      // for each step the keys' B fragments (chunks 2 st and + 1 of keys 0-7 and 8-15).
      float dots[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
#pragma unroll
      for (int p2 = 0; p2 < steps / 2; ++p2) {
        u32 qa[4];
        load_tiles<false>(qs_at + 4 * ((lane & 7) * q_stride + 4 * (4 * p2 + (lane >> 3))), qa);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int st = 2 * p2 + j;
          u32 kb[4];
          const int r = 16 * slice + (lane & 7) + 8 * (lane >> 4);
          load_tiles<false>(ks + tile_offset(r, 2 * st + ((lane >> 3) & 1), row_bytes), kb);
          mma_k16(T{}, dots[0], qa[2 * j], qa[2 * j + 1], kb[0], kb[1]);
          mma_k16(T{}, dots[1], qa[2 * j], qa[2 * j + 1], kb[2], kb[3]);
        }
      }
      float sc[4] = {dots[0][0], dots[0][1], dots[1][0], dots[1][1]}, mx = neg_inf();
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sc[e] = key_of(e) < n ? sc[e] * scale + bias[e] : neg_inf();
        mx = fmaxf(mx, sc[e]);
      }
      if (lead && head && half == 0) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          *reinterpret_cast<float2*>(map_lane + key0 + 8 * h) = make_float2(sc[2 * h], sc[2 * h + 1]);
        }
      }
      if (attends_ahead && head && half == 0 && b.out == 0) {  // DA_JOINT's b.out is 0
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (key_of(e) < n && key0 + key_of(e) == current_key) ahead.current[(i64)pair * g + row] = sc[e];
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float rescale = online_softmax<T>(m, l, mx, sc, p);
      // A reuse layer's current value is not in its cache yet: its key counts in the sum only
      // (DA_JOINT stages it as zeros).
      if (MODE == DA_AHEAD && b.out > 0) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (key0 + key_of(e) == current_key) p[e] = 0.0f;
        }
      }
#pragma unroll
      for (int j = 0; j < dim_tiles; ++j) {
        acc[j][0] *= rescale;
        acc[j][1] *= rescale;
      }
    }
    // P V over this warp's 16 keys and columns: V's tiles of 8 keys x 8 columns, four a load
    // (keys 0-7 and 8-15 of two columns-of-8).
    const u32 p_hi0 = pack_pair(T{}, p[0], p[1]), p_lo0 = pack_rest<T>(p[0], p[1]);
    const u32 p_hi2 = pack_pair(T{}, p[2], p[3]), p_lo2 = pack_rest<T>(p[2], p[3]);
#pragma unroll
    for (int c2 = 0; c2 < dim_tiles / 2; ++c2) {
      // Columns-of-8 `col0` and + 1 of output u (DA_JOINT's past its outputs stay zero): a
      // warp's columns are whole outputs or part of one, so col0 is a constant and only u
      // varies with the warp (an index by `half` into all the outputs' columns kept each
      // column's swizzled address in a register, and spilled them).
      constexpr int out_tiles = D / 8;
      const int u = dim_tiles >= out_tiles ? half * (dim_tiles / out_tiles) + 2 * c2 / out_tiles : 0;
      const int col0 = dim_tiles >= out_tiles ? 2 * c2 % out_tiles : half * dim_tiles + 2 * c2;
      if (joint && u >= values) continue;
      u32 vb[4];
      const int col = col0 + (lane >> 4);
      load_tiles<true>(vs + u * tile_bytes + tile_offset(16 * slice + (lane & 15), col, row_bytes), vb);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        mma_k16(T{}, acc[2 * c2 + j], p_hi0, p_hi2, vb[2 * j], vb[2 * j + 1]);
        mma_k16(T{}, acc[2 * c2 + j], p_lo0, p_lo2, vb[2 * j], vb[2 * j + 1]);
      }
    }
    // The next stage's copies go into the buffers this one read.
    __syncthreads();
  }
  // The warps' sums, [slice][g][outs * D + 2] (sums, max, sum) in the stages' memory, combined
  // by warp h for head h into the form da_finish takes.
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  constexpr int stride = outs * D + 2;
  float* sums = reinterpret_cast<float*>(smem);
  if (head) {
    float* mine = sums + (slice * g + row) * stride;
#pragma unroll
    for (int j = 0; j < dim_tiles; ++j) {
      mine[8 * (half * dim_tiles + j) + 2 * quad] = acc[j][0];
      mine[8 * (half * dim_tiles + j) + 2 * quad + 1] = acc[j][1];
    }
    if (half == 0 && quad == 0) {
      mine[outs * D] = m;
      mine[outs * D + 1] = l;
    }
  }
  __syncthreads();
  constexpr int lane_dims = D / 32;
  float o[outs][lane_dims], m_all = neg_inf(), l_all = 0.0f;
#pragma unroll
  for (int u = 0; u < outs; ++u) {
#pragma unroll
    for (int e = 0; e < lane_dims; ++e) o[u][e] = 0.0f;
  }
  if (w < g) {
    for (int x = 0; x < slices; ++x) m_all = fmaxf(m_all, sums[(x * g + w) * stride + outs * D]);
    for (int x = 0; x < slices; ++x) {
      const float* theirs = sums + (x * g + w) * stride;
      const float mx = theirs[outs * D];
      const float weight = reuse ? 1.0f : (mx == neg_inf() ? 0.0f : expf(mx - m_all));
      l_all += weight * theirs[outs * D + 1];
#pragma unroll
      for (int u = 0; u < outs; ++u) {
#pragma unroll
        for (int e = 0; e < lane_dims; ++e) o[u][e] = fmaf(weight, theirs[u * D + lane * lane_dims + e], o[u][e]);
      }
    }
  }
  // da_finish may reuse the memory just read.
  __syncthreads();
  da_finish<T, MODE, lane_dims, outs>(o, m_all, l_all, out, partial, tickets, nk, g, splits, keys, smem, stats,
                                      ahead);
}
#endif

// Dispatches on the row's bytes (the caller checks they are 128, 256 or 512).
template <typename T, int MODE>
__device__ void decode_attention(const T* q, const T* k, const T* v, const T* mask, T* out, float* partial,
                                 u32* tickets, int nk, int g, int d, i64 keys, int splits, int per_block,
                                 i64 q_seq, i64 q_head, i64 k_seq, i64 k_head, i64 v_seq, i64 v_head,
                                 i64 mask_seq, float scale, float* maps, float* stats, const DaAhead& ahead) {
  // The next kernel (the output projection) may start streaming its weights.
  allow_next_kernel();
#define DA_ROWS(BYTES)                                                                                     \
  decode_attention_rows<T, MODE, BYTES>(q, k, v, mask, out, partial, tickets, nk, g, keys, splits, per_block, \
                                        q_seq, q_head, k_seq, k_head, v_seq, v_head, mask_seq, scale, maps,   \
                                        stats, ahead)
#if __CUDA_ARCH__ >= 800
  // 16-bit rows of 64 and 128 on tensor cores; only 512-byte rows (D = 256) on CUDA cores.
  if constexpr (sizeof(T) == 2) {
#define DA_MMA(D)                                                                                            \
  decode_attention_mma<T, MODE, D>(q, k, v, mask, out, partial, tickets, nk, g, keys, splits, per_block, q_seq,  \
                                   q_head, k_seq, k_head, v_seq, v_head, mask_seq, scale, maps, stats, ahead)
    switch (d) {
      case 64: DA_MMA(64); return;
      case 128: DA_MMA(128); return;
      default: break;
    }
#undef DA_MMA
  }
#endif
  if constexpr (da_joint(MODE)) {
    __trap();  // tensor cores only: the caller never launches it elsewhere
  } else {
    switch (d * (int)sizeof(T)) {
      case 128: DA_ROWS(128); break;
      case 256: DA_ROWS(256); break;
      default: DA_ROWS(512); break;
    }
  }
#undef DA_ROWS
}

// ---------------------------------------------------------------------------------------------
// Greedy picks: the index of each row's largest value, the first of equal ones and NaN above all
// (torch's argmax), as int64 into `out` (row r at r * out_stride). torch's reduction gave a row of
// 152k bf16 logits 17 blocks and took ~16 us at batch 32 (H200 trace, 2026-12-03): latency, not
// bytes; this takes 12. Here `per_row` blocks a row (block b: row b / per_row, part b % per_row)
// each take a span of it; the last of a row's blocks to finish (its ticket, zero before the
// launch) combines their picks (per_row <= 32). Rows of `v` values, contiguous.
__device__ __forceinline__ bool pick_before(float a, i64 ia, float b, i64 ib) {
  const bool a_nan = a != a, b_nan = b != b;
  if (a_nan || b_nan) return a_nan && (!b_nan || ia < ib);
  return a > b || (a == b && ia < ib);
}
__device__ __forceinline__ void warp_pick(float& v, i64& i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const i64 oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (pick_before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}
__device__ __forceinline__ i64 load_from_l2(const i64* p) {
  i64 v;
  asm volatile("ld.global.cg.s64 %0, [%1];" : "=l"(v) : "l"(p));
  return v;
}
template <typename T>
__device__ void row_argmax(const T* x, i64 v, int per_row, float* part_v, i64* part_i, u32* tickets, i64* out,
                           i64 out_stride) {
  __shared__ float warp_v[32];
  __shared__ i64 warp_i[32];
  __shared__ bool last;
  // A row is read in 16-byte pieces where they line up, eight of a thread's in flight (one
  // element a load left the scan latency-bound: 15.8 us at batch 32).
  constexpr int N = 16 / sizeof(T);
  const i64 row = blockIdx.x / per_row;
  const T* xr = x + row * v;
  const bool wide = v % N == 0 && (reinterpret_cast<unsigned long long>(x) & 15) == 0;
  const i64 width = wide ? N : 1, units = v / width;
  const i64 span = (units + per_row - 1) / per_row, begin = (blockIdx.x % per_row) * span;
  const i64 end = min(units, begin + span);
  // Index v stands for nothing yet: every real pick comes before it.
  float bv = neg_inf();
  i64 bi = v;
  for_each_in_span<T, 8>(xr, begin * width, end * width, wide, [&](i64 c, float xv) {
    if (pick_before(xv, c, bv, bi)) {
      bv = xv;
      bi = c;
    }
  });
  warp_pick(bv, bi);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) {
    warp_v[w] = bv;
    warp_i[w] = bi;
  }
  __syncthreads();
  if (w == 0) {
    const bool held = lane < (int)(blockDim.x / 32);
    bv = held ? warp_v[lane] : neg_inf();
    bi = held ? warp_i[lane] : v;
    warp_pick(bv, bi);
    if (lane == 0) {
      part_v[blockIdx.x] = bv;
      part_i[blockIdx.x] = bi;
      __threadfence();
      last = atomicAdd(tickets + row, 1u) == (u32)per_row - 1;
    }
  }
  __syncthreads();
  if (!last || w != 0) return;
  __threadfence();
  const bool held = lane < per_row;
  bv = held ? load_from_l2(part_v + row * per_row + lane) : neg_inf();
  bi = held ? load_from_l2(part_i + row * per_row + lane) : v;
  warp_pick(bv, bi);
  if (lane == 0) {
    out[row * out_stride] = bi;
    tickets[row] = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points, one per element type: <name>_<f32|bf16|f16>.
#define DECODE_ATTENTION_ENTRY(T, SUFFIX, NAME, MODE)                                                      \
  extern "C" __global__ void __launch_bounds__(DA_THREADS, 2) NAME##_##SUFFIX(                             \
      const T* q, const T* k, const T* v, const T* mask, T* out, float* partial, u32* tickets, int nk, int g, \
      int d, i64 keys, int splits, int per_block, i64 q_seq, i64 q_head, i64 k_seq, i64 k_head,             \
      i64 v_seq, i64 v_head, i64 mask_seq, float scale, float* maps, float* stats, DaAhead ahead) {        \
    decode_attention<T, MODE>(q, k, v, mask, out, partial, tickets, nk, g, d, keys, splits, per_block, q_seq, \
                              q_head, k_seq, k_head, v_seq, v_head, mask_seq, scale, maps, stats, ahead);  \
  }
// The batch-1 matrix-vector kernel in 16-bit types held to 80 registers (92 by choice), six
// blocks of 128 threads an SM instead of five, with no spills (scripts/kernel_sass.sh): its
// grid is as many blocks as fit, striding over the rows, and the sixth block's rows in flight
// took ~15 us from a batch-1 step (docs/benchmarks.md, 2026-12-03). In f32 the bound spills, so
// it keeps the compiler's choice; decode_gemv_gated held to five blocks (92 registers) was no
// faster, and every further block spills.
#define GEMV_BOUNDS_f32
#define GEMV_BOUNDS_bf16 __launch_bounds__(128, 6)
#define GEMV_BOUNDS_f16 __launch_bounds__(128, 6)
#define UA_ENTRY_POINTS(T, SUFFIX)                                                                         \
  extern "C" __global__ void gated_act_##SUFFIX(const T* gu, T* out, i64 rows, i64 inter, int gelu) {     \
    start_chained();                                                                                       \
    gated_act<T>(gu, out, rows, inter, gelu);                                                              \
  }                                                                                                        \
  extern "C" __global__ void row_argmax_##SUFFIX(const T* x, i64 v, int per_row, float* part_v, i64* part_i, \
                                                 u32* tickets, i64* out, i64 out_stride) {                  \
    row_argmax<T>(x, v, per_row, part_v, part_i, tickets, out, out_stride);                                 \
  }                                                                                                        \
  extern "C" __global__ void rope_kv_write_##SUFFIX(                                                       \
      const T* x, i64 row_stride, const i64* pos, const T* cos, const T* sin_signed, i64 rows, i64 t,     \
      int nq, int nk, int nv, int d, T* q_out, T* k_cache, T* v_cache, i64 slot_stride, i64 head_stride, \
      i64 capacity) {                                                                                      \
    start_chained(); /* and a lead's joint attention may start staging its past keys */                    \
    rope_kv_write<T>(x, row_stride, pos, cos, sin_signed, rows, t, nq, nk, nv, d, q_out, k_cache, v_cache, \
                     slot_stride, head_stride, capacity);                                                  \
  }                                                                                                        \
  extern "C" __global__ void masked_softmax_##SUFFIX(const T* scores, const T* mask, T* out, i64 heads,   \
                                                     i64 q, i64 k, float scale, float softcap) {          \
    masked_softmax<T>(scores, mask, out, heads, q, k, scale, softcap);                                     \
  }                                                                                                        \
  extern "C" __global__ void GEMV_BOUNDS_##SUFFIX decode_gemv_##SUFFIX(                                   \
      const T* x, const T* g, float eps, int plus_one, const T* w, const T* bias, const T* add, T* y,       \
      i64 rows, i64 in, int split) {                                                                        \
    decode_gemv<T>(x, g, eps, plus_one, w, bias, add, y, rows, in, split);                                  \
  }                                                                                                        \
  extern "C" __global__ void decode_gemv_pairs_##SUFFIX(const T* x, const T* w, T* y, i64 rows, i64 in) {   \
    decode_gemv_pairs<T>(x, w, y, rows, in);                                                                \
  }                                                                                                        \
  extern "C" __global__ void decode_gemv_gated_##SUFFIX(const T* x, const T* g, float eps, int plus_one,      \
                                                        const T* w, const T* bias, T* y, i64 rows, i64 in,  \
                                                        int split, int gelu) {                              \
    decode_gemv_gated<T>(x, g, eps, plus_one, w, bias, y, rows, in, split, gelu);                                  \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(128, 4) decode_gemv_rope_##SUFFIX(                         \
      const T* x, const T* g, float eps, int plus_one, const T* w, const T* bias, T* y, i64 outs, i64 in,   \
      int split, const i64* pos, const T* cos, const T* sin_signed, int nq, int nk, int nv, int d, T* k_cache, \
      T* v_cache, i64 head_stride, i64 capacity) {                                                         \
    decode_gemv_rope<T>(x, g, eps, plus_one, w, bias, y, outs, in, split, pos, cos, sin_signed, nq, nk, nv, d,     \
                        k_cache, v_cache, head_stride, capacity);                                          \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(256, 1) reuse_attention_decode_##SUFFIX(                  \
      const T* h, const T* g, float eps, int plus_one, const T* w, const T* bias, i64 rows, int hidden, int nv, \
      int d, int group, const i64* pos, T* v_cache, i64 slot_stride, i64 head_stride, i64 capacity,           \
      const float* sums, const float* current, T* out) {                                                    \
    reuse_attention_decode<T>(h, g, eps, plus_one, w, bias, rows, hidden, nv, d, group, pos, v_cache,           \
                              slot_stride, head_stride, capacity, sums, current, out);                      \
  }                                                                                                        \
  DECODE_ATTENTION_ENTRY(T, SUFFIX, decode_attention, DA_PLAIN)                                             \
  DECODE_ATTENTION_ENTRY(T, SUFFIX, decode_attention_lead, DA_LEAD)                                        \
  DECODE_ATTENTION_ENTRY(T, SUFFIX, decode_attention_reuse, DA_REUSE)                                      \
  DECODE_ATTENTION_ENTRY(T, SUFFIX, decode_attention_ahead, DA_AHEAD)                                      \
  DECODE_ATTENTION_ENTRY(T, SUFFIX, decode_attention_joint, DA_JOINT)                                      \
  DECODE_ATTENTION_ENTRY(T, SUFFIX, decode_attention_joint_all, DA_JOINT_ALL)                              \
  extern "C" __global__ void cross_entropy_##SUFFIX(const T* logits, const i64* targets, float* loss,     \
                                                    T* grad, i64 v, const float* scale, float softcap) {  \
    cross_entropy<T>(logits, targets, loss, grad, v, scale, softcap);                                      \
  }                                                                                                        \
  extern "C" __global__ void swiglu_forward_##SUFFIX(const T* gate, const T* up, T* out, i64 n) {          \
    swiglu_forward<T>(gate, up, out, n);                                                                   \
  }                                                                                                        \
  extern "C" __global__ void swiglu_backward_##SUFFIX(const T* gate, const T* up, const T* grad_out,      \
                                                      T* grad_gate, T* grad_up, i64 n) {                  \
    swiglu_backward<T>(gate, up, grad_out, grad_gate, grad_up, n);                                         \
  }                                                                                                        \
  extern "C" __global__ void rope_forward_##SUFFIX(const T* x, const float* cos, const float* sin_signed,  \
                                                   T* out, i64 b, i64 t, int h, int d, i64 angle_stride) { \
    rope_forward<T>(x, cos, sin_signed, out, b, t, h, d, angle_stride);                                    \
  }                                                                                                        \
  extern "C" __global__ void rope_backward_##SUFFIX(const T* dy, const float* cos, const float* sin_signed, \
                                                    T* dx, i64 b, i64 t, int h, int d, i64 angle_stride) { \
    rope_backward<T>(dy, cos, sin_signed, dx, b, t, h, d, angle_stride);                                   \
  }                                                                                                        \
  extern "C" __global__ void add_rms_norm_forward_##SUFFIX(const float* h, const T* a, const float* w,       \
                                                          float* mid, T* x, float* rstd, i64 rows, i64 dim,   \
                                                          float eps, int plus_one) {                          \
    add_rms_norm_forward<T>(h, a, w, mid, x, rstd, rows, dim, eps, plus_one);                                \
  }                                                                                                        \
  extern "C" __global__ void add_rms_norm_backward4_##SUFFIX(                                                \
      const float* mid, const float* rstd, const float* w, const T* gx, const float* gmid, float* dh, T* da, \
      float* dw_partial, i64 rows, i64 dim, int plus_one) {                                                \
    add_rms_norm_backward<T, 4>(mid, rstd, w, gx, gmid, dh, da, dw_partial, rows, dim, plus_one);              \
  }                                                                                                        \
  extern "C" __global__ void add_rms_norm_backward8_##SUFFIX(                                                \
      const float* mid, const float* rstd, const float* w, const T* gx, const float* gmid, float* dh, T* da, \
      float* dw_partial, i64 rows, i64 dim, int plus_one) {                                                \
    add_rms_norm_backward<T, 8>(mid, rstd, w, gx, gmid, dh, da, dw_partial, rows, dim, plus_one);              \
  }                                                                                                        \
  extern "C" __global__ void add_rms_norm_backward16_##SUFFIX(                                                \
      const float* mid, const float* rstd, const float* w, const T* gx, const float* gmid, float* dh, T* da, \
      float* dw_partial, i64 rows, i64 dim, int plus_one) {                                                \
    add_rms_norm_backward<T, 16>(mid, rstd, w, gx, gmid, dh, da, dw_partial, rows, dim, plus_one);              \
  }                                                                                                        \
  extern "C" __global__ void rms_norm_decode_##SUFFIX(const T* h, const T* w, T* x, i64 rows, i64 dim,     \
                                                      float eps, int plus_one) {                          \
    start_chained();                                                                                       \
    rms_norm_decode<T>(h, w, x, rows, dim, eps, plus_one);                                                 \
  }                                                                                                        \
  extern "C" __global__ void adamw_##SUFFIX(float* p, const float* g, float* m, float* v, T* copy, i64 n,   \
                                            double lr, double beta1, double beta2, double weight_decay,    \
                                            double eps, float bias_correction1, float bias_correction2_sqrt, \
                                            const float* grad_scale) {                                     \
    adamw<T>(p, g, m, v, copy, n, lr, beta1, beta2, weight_decay, eps, bias_correction1,                    \
             bias_correction2_sqrt, grad_scale);                                                           \
  }

UA_ENTRY_POINTS(float, f32)
UA_ENTRY_POINTS(bf16, bf16)
UA_ENTRY_POINTS(f16, f16)
