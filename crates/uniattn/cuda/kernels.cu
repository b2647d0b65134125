// Fused kernels for uniattn, compiled at first use through NVRTC (src/cuda/kernels.rs), so
// that building needs no CUDA compiler. Each replaces a chain of libtorch kernels and repeats
// its arithmetic step for step: every intermediate the chain would store is rounded to the
// tensor's type here too, and products and sums use the _rn intrinsics so that the compiler
// cannot contract them into fused multiply-adds the chain does not do. In f32 the results
// equal the chain's up to the order of reductions; in bf16/f16 up to that and `expf`.
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
// Round to nearest even, NaN kept quiet: c10's round_to_nearest_even.
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) {
  u32 u = __float_as_uint(x);
  bf16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = 0x7fc0;
  } else {
    r.bits = (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
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

__device__ __forceinline__ float gate_act(float g, int gelu) {
  if (gelu) {
    const float beta = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * g * (1.0f + tanhf(beta * (g + 0.044715f * g * g * g)));
  }
  return g / (1.0f + expf(-g));
}

// ---------------------------------------------------------------------------------------------
// Gated MLP activation: out[r, i] = act(gu[r, i]) * gu[r, inter + i], where `gu` is the fused
// gate|up projection ([rows, 2 * inter]). Replaces act (one kernel) and the product (another).
// act: SiLU (`gelu` = 0) as torch computes it, x / (1 + exp(-x)), or GELU's tanh form.
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

// ---------------------------------------------------------------------------------------------
// softmax(scores * scale [softcapped] + mask) over the last axis, in f32, stored as T: what
// `attention_probs` computes in four to seven kernels. `scores`: [b, heads, q, k] contiguous;
// `mask`: additive, [b, 1, q, k] contiguous. One block per row.
template <typename T>
__device__ __forceinline__ float masked_score(const T* s, const T* m, i64 c, float scale, float softcap) {
  float x = round_to<T>(__fmul_rn(to_float(s[c]), scale));
  if (softcap > 0.0f) {
    x = round_to<T>(__fmul_rn(round_to<T>(tanhf(round_to<T>(__fdiv_rn(x, softcap)))), softcap));
  }
  return round_to<T>(__fadd_rn(x, to_float(m[c])));
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

template <typename T>
__device__ void masked_softmax(const T* scores, const T* mask, T* out, i64 heads, i64 q, i64 k, float scale,
                               float softcap) {
  __shared__ float shared[32];
  const i64 row = blockIdx.x;
  const i64 b = row / (heads * q), tok = row % q;
  const T* s = scores + row * k;
  const T* m = mask + (b * q + tok) * k;
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
// Decode-sized projections: y[r, o] = sum_i a[r, i] W[o, i] (+ bias[o]) for a few rows r (at
// most GEMV_ROWS). The prologue makes `a` from the layer's input x ([rows, in]):
//   PROLOGUE_NORM: a = RMSNorm(x) with weight `norm_w` (+1 for Gemma), rounded to T as the
//                  normed tensor it replaces would be;
//   PROLOGUE_COPY: a = x;
// and the epilogue puts y:
//   EPILOGUE_STORE:    out[r, o] = y;
//   EPILOGUE_ADD_INTO: out[r, o] += y (the residual stream, as cuBLAS's beta = 1);
//   EPILOGUE_GATED:    W is the fused gate|up weight [2 * outs, in] and
//                      out[r, o] = act(y_gate) * y_up (SiLU, or GELU's tanh form),
// so that the norm and the activation cost no kernel of their own. A block of 8 warps takes
// 8 / `split` weight rows at a time (grid-stride over rows); each row's inputs are split over
// `split` warps, whose partial sums meet in shared memory, so that a long row keeps several
// warps' loads in flight. Each lane streams 16 bytes of a row at a time, and the block asks
// for its first rows in L2 before the prologue, so that their latency overlaps it.
#define GEMV_ROWS 4
#define GEMV_UNROLL 4
#define PROLOGUE_NORM 0
#define PROLOGUE_COPY 2
#define EPILOGUE_STORE 0
#define EPILOGUE_ADD_INTO 1
#define EPILOGUE_GATED 2

template <typename T> struct Vec16;
template <> struct Vec16<float> { static constexpr int n = 4; };
template <> struct Vec16<bf16> { static constexpr int n = 8; };
template <> struct Vec16<f16> { static constexpr int n = 8; };

template <typename T> __device__ __forceinline__ void unpack(const uint4& v, float* f);
template <> __device__ __forceinline__ void unpack<float>(const uint4& v, float* f) {
  f[0] = __uint_as_float(v.x); f[1] = __uint_as_float(v.y); f[2] = __uint_as_float(v.z); f[3] = __uint_as_float(v.w);
}
template <typename T> __device__ __forceinline__ void unpack16(const uint4& v, float* f) {
  const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    T lo, hi;
    lo.bits = (u16)(w[k] & 0xffffu);
    hi.bits = (u16)(w[k] >> 16);
    f[2 * k] = to_float(lo);
    f[2 * k + 1] = to_float(hi);
  }
}
template <> __device__ __forceinline__ void unpack<bf16>(const uint4& v, float* f) { unpack16<bf16>(v, f); }
template <> __device__ __forceinline__ void unpack<f16>(const uint4& v, float* f) { unpack16<f16>(v, f); }

template <typename T>
__device__ void decode_gemv(const T* x, int prologue, const T* norm_w, float eps, int plus_one, const T* w,
                            const T* bias, T* out, int epilogue, int gelu, int rows, int in, int outs, int split) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* a = reinterpret_cast<T*>(smem_raw);
  __shared__ float reduce[32];
  __shared__ float partial[8][2][GEMV_ROWS];
  constexpr int V = Vec16<T>::n;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int per_block = 8 / split, part = warp % split;
  const int halves = epilogue == EPILOGUE_GATED ? 2 : 1;
  {
    const int o = blockIdx.x * per_block + warp / split;
    if (o < outs) {
      for (int h = 0; h < halves; ++h) {
        const T* row = w + ((i64)h * outs + o) * in;
        for (int i = (part * 32 + lane) * V; i < in; i += split * 32 * V) {
          asm volatile("prefetch.global.L2 [%0];" ::"l"(row + i));
        }
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    const T* xr = x + (i64)r * in;
    if (prologue == PROLOGUE_NORM) {
      float ss = 0.0f;
      for (int i = threadIdx.x; i < in; i += blockDim.x) {
        const float v = to_float(xr[i]);
        ss += v * v;
      }
      ss = block_reduce<T>(ss, false, reduce);
      const float rstd = rsqrtf(ss / (float)in + eps);
      for (int i = threadIdx.x; i < in; i += blockDim.x) {
        float g = to_float(norm_w[i]);
        if (plus_one) g = round_to<T>(g + 1.0f);
        a[(i64)r * in + i] = from_float<T>(g * (rstd * to_float(xr[i])));
      }
    } else {
      for (int i = threadIdx.x; i < in; i += blockDim.x) a[(i64)r * in + i] = xr[i];
    }
  }
  __syncthreads();
  for (int base = blockIdx.x * per_block; base < outs; base += gridDim.x * per_block) {
    const int o = base + warp / split;
    float acc[2][GEMV_ROWS] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    if (o < outs) {
      // GEMV_UNROLL loads of each weight row in flight per lane before any arithmetic: the
      // bytes in flight, not the arithmetic, set the speed of a matrix-vector product.
      const int step = split * 32 * V;
      for (int i0 = (part * 32 + lane) * V; i0 < in; i0 += GEMV_UNROLL * step) {
        uint4 wv[2][GEMV_UNROLL];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int i = i0 + u * step;
            const bool live = h < halves && i < in;
            wv[h][u] = live ? __ldg(reinterpret_cast<const uint4*>(w + ((i64)h * outs + o) * in + i))
                            : make_uint4(0u, 0u, 0u, 0u);
          }
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
          const int i = i0 + u * step;
          if (i < in) {
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; ++r) {
              if (r < rows) {
                float af[V];
                unpack<T>(*reinterpret_cast<const uint4*>(a + (i64)r * in + i), af);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  if (h < halves) {
                    float wf[V];
                    unpack<T>(wv[h][u], wf);
#pragma unroll
                    for (int k = 0; k < V; ++k) acc[h][r] = fmaf(wf[k], af[k], acc[h][r]);
                  }
                }
              }
            }
          }
        }
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int r = 0; r < GEMV_ROWS; ++r) {
        for (int off = 16; off > 0; off >>= 1) acc[h][r] += __shfl_xor_sync(0xffffffffu, acc[h][r], off);
      }
    }
    if (split > 1) {
      if (lane == 0) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int r = 0; r < GEMV_ROWS; ++r) partial[warp][h][r] = acc[h][r];
        }
      }
      __syncthreads();
      if (part == 0) {
        for (int p = 1; p < split; ++p) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; ++r) acc[h][r] += partial[warp + p][h][r];
          }
        }
      }
      __syncthreads();
    }
    if (lane == 0 && part == 0 && o < outs) {
#pragma unroll
      for (int r = 0; r < GEMV_ROWS; ++r) {
        if (r < rows) {
          float v = acc[0][r];
          if (bias != nullptr) v = __fadd_rn(v, to_float(bias[o]));
          T* dst = out + (i64)r * outs + o;
          if (epilogue == EPILOGUE_GATED) {
            float u = acc[1][r];
            if (bias != nullptr) u = __fadd_rn(u, to_float(bias[outs + o]));
            v = __fmul_rn(round_to<T>(gate_act(round_to<T>(v), gelu)), round_to<T>(u));
          } else if (epilogue == EPILOGUE_ADD_INTO) {
            v = __fadd_rn(to_float(*dst), bias != nullptr ? round_to<T>(v) : v);
          }
          *dst = from_float<T>(v);
        }
      }
    }
  }
}



// ---------------------------------------------------------------------------------------------
// Entry points, one per element type: <name>_<f32|bf16|f16>.
#define UA_ENTRY_POINTS(T, SUFFIX)                                                                         \
  extern "C" __global__ void gated_act_##SUFFIX(const T* gu, T* out, i64 rows, i64 inter, int gelu) {     \
    gated_act<T>(gu, out, rows, inter, gelu);                                                              \
  }                                                                                                        \
  extern "C" __global__ void rope_kv_write_##SUFFIX(                                                       \
      const T* x, i64 row_stride, const i64* pos, const T* cos, const T* sin_signed, i64 rows, i64 t,     \
      int nq, int nk, int nv, int d, T* q_out, T* k_cache, T* v_cache, i64 slot_stride, i64 head_stride, \
      i64 capacity) {                                                                                      \
    rope_kv_write<T>(x, row_stride, pos, cos, sin_signed, rows, t, nq, nk, nv, d, q_out, k_cache, v_cache, \
                     slot_stride, head_stride, capacity);                                                  \
  }                                                                                                        \
  extern "C" __global__ void masked_softmax_##SUFFIX(const T* scores, const T* mask, T* out, i64 heads,   \
                                                     i64 q, i64 k, float scale, float softcap) {          \
    masked_softmax<T>(scores, mask, out, heads, q, k, scale, softcap);                                     \
  }                                                                                                        \
  extern "C" __global__ void decode_gemv_##SUFFIX(const T* x, int prologue, const T* norm_w, float eps,    \
                                                  int plus_one, const T* w, const T* bias, T* out,        \
                                                  int epilogue, int gelu, int rows, int in, int outs,    \
                                                  int split) {                                           \
    decode_gemv<T>(x, prologue, norm_w, eps, plus_one, w, bias, out, epilogue, gelu, rows, in, outs, split); \
  }

UA_ENTRY_POINTS(float, f32)
UA_ENTRY_POINTS(bf16, bf16)
UA_ENTRY_POINTS(f16, f16)
