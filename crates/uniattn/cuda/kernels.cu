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
    float a;
    if (gelu) {
      const float beta = 0.7978845608028654f;  // sqrt(2 / pi)
      const float inner = beta * (g + 0.044715f * g * g * g);
      a = 0.5f * g * (1.0f + tanhf(inner));
    } else {
      a = g / (1.0f + expf(-g));
    }
    out[i] = from_float<T>(__fmul_rn(round_to<T>(a), u));
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
// One score's way from the score GEMM's output `raw` (already of type T) to the softmax's
// input, with the composition's roundings: times scale, soft-capped, plus the additive mask.
template <typename T>
__device__ __forceinline__ float masked_value(float raw, float mask, float scale, float softcap) {
  float x = round_to<T>(__fmul_rn(raw, scale));
  if (softcap > 0.0f) {
    x = round_to<T>(__fmul_rn(round_to<T>(tanhf(round_to<T>(__fdiv_rn(x, softcap)))), softcap));
  }
  return round_to<T>(__fadd_rn(x, mask));
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

// 16-byte loads and stores of a row's elements (8 bf16/f16 or 4 f32 at a time): the kernel
// reads the logits three times and writes them once, so it runs at memory speed only with
// wide accesses.
template <typename T>
__device__ __forceinline__ void load16(const T* p, float* out) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < (int)(16 / sizeof(T)); ++k) out[k] = to_float(e[k]);
}

template <typename T>
__device__ __forceinline__ void store16(T* p, const float* in) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int k = 0; k < (int)(16 / sizeof(T)); ++k) e[k] = from_float<T>(in[k]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Calls f(column, value) for every element of a row `x` of `v` elements, this thread's share,
// in 16-byte pieces where `wide` (then `x` is 16-byte aligned and v a multiple of the piece).
template <typename T, typename F>
__device__ __forceinline__ void for_each_in_row(const T* x, i64 v, bool wide, F f) {
  constexpr int N = 16 / sizeof(T);
  const i64 pieces = wide ? v / N : 0;
  for (i64 i = threadIdx.x; i < pieces; i += blockDim.x) {
    float e[N];
    load16<T>(x + i * N, e);
#pragma unroll
    for (int k = 0; k < N; ++k) f(i * N + k, e[k]);
  }
  for (i64 c = pieces * N + threadIdx.x; c < v; c += blockDim.x) f(c, to_float(x[c]));
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
  for_each_in_row<T>(x, v, wide, [&](i64, float xc) { mx = fmaxf(mx, capped(xc, softcap)); });
  mx = block_reduce<T>(mx, true, shared);
  float sum = 0.0f;
  for_each_in_row<T>(x, v, wide, [&](i64, float xc) { sum += expf(capped(xc, softcap) - mx); });
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
// Decode attention: one query token per sequence against the KV cache, in one kernel where
// libtorch runs cuDNN's two (dense layers) or a score GEMM, the softmax and a `P V` GEMM (a
// SuperBlock lead, which must hand its probabilities on). Flash-decoding: block (b, kv head,
// split) takes the G query heads that share the kv head over one slice of the keys, with an
// online softmax over tiles of DA_TILE keys; it leaves its partial output and its (max, sum)
// in a workspace, and the last block of (b, kv head) to finish (a ticket counter) combines the
// slices. Modes:
//   DA_ATTEND  softmax(q K^T * scale [softcapped] + mask) V;
//   DA_LEAD    the same, and the masked scores (f32 [n, H, k_len]) with each row's max and sum
//              (f32 [n, H, 2]) for the reuse layers of its block;
//   DA_REUSE   a reuse layer: p = exp(score - max) / sum from its lead's scores, stored as T as
//              the composition's probabilities are, then p V with its own values (no keys).
// The composition's roundings are kept where they are cheap (each score rounded to T as the
// score GEMM stores it, then masked_value's steps; DA_REUSE's probabilities rounded to T); the
// lead's own output uses the unrounded probabilities, as cuDNN's fused attention does.
// Cache element (b, head, pos, j) lives at b * slot_stride + head * head_stride + pos * d + j.
//
// Layout: a key row of D elements is read by LPK lanes, NE elements each, so a warp reads
// 32 / LPK whole rows per instruction (coalesced); each lane keeps the G heads' partial dot
// products over its elements, and a transposing butterfly leaves one head's full score per
// lane. A tile's key and value rows are loaded raw into registers at once, and the next tile's
// keys (values) are loaded as soon as this tile's are used, so loads overlap the arithmetic.
// GMAX (4 or 8) bounds G.
#define DA_TILE 128  // the most keys a tile has (64-wide heads); wider heads take fewer
#define DA_THREADS 256
#define DA_WARPS (DA_THREADS / 32)
#define DA_ROWS 8  // rows a lane holds per tile, of keys and of values
#define DA_ATTEND 0
#define DA_LEAD 1
#define DA_REUSE 2
#define DA_COUNTERS 65536
#define DA_MAX_SPLITS 64

// One ticket counter per (sequence, kv head) of a launch; zero at load, and the last block of
// each pair sets it back to zero, so captured replays find them ready.
__device__ unsigned int da_tickets[DA_COUNTERS];

// NE elements of T loaded raw in one instruction (NE * sizeof(T) is 8 or 16 bytes).
template <typename T, int NE>
struct alignas(NE * sizeof(T)) RawRow {
  T e[NE];
};

// Sums v[0..GMAX) over the LPK lanes of a key group (lane index r within it) and leaves each
// lane one sum: head `*head` (the halves kept at each step are chosen by r's bits). Lanes that
// end with the same head hold equal sums.
template <int GMAX, int LPK>
__device__ __forceinline__ float transpose_reduce(float (&v)[GMAX], int r, int* head) {
  int base = 0;
#pragma unroll
  for (int o = LPK / 2, count = GMAX; o >= 1; o >>= 1) {
    if (count > 1) {
      const int half = count / 2;
      const bool upper = (r & o) != 0;
#pragma unroll
      for (int i = 0; i < half; ++i) {
        const float send = upper ? v[i] : v[i + half];
        const float keep = upper ? v[i + half] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
      }
      if (upper) base += half;
      count = half;
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
    }
  }
  *head = base;
  return v[0];
}

template <typename T, int D, int GMAX>
__device__ void decode_attention(const T* q, const T* k_cache, const T* v_cache, i64 slot_stride,
                                 i64 head_stride, const T* mask, float* scores, float* stats, float* part_o,
                                 float* part_ml, T* out, int heads, int kv_heads, i64 k_len, int chunk,
                                 int mode, float scale, float softcap) {
  constexpr int LPK = D / 4 < 32 ? D / 4 : 32;  // lanes per key row
  constexpr int NE = D / LPK;                    // elements a lane holds of a row
  constexpr int KPW = 32 / LPK;                  // rows a warp reads at once
  constexpr int PER_WARP = DA_ROWS;              // row groups per warp and tile
  constexpr int TILE = DA_WARPS * KPW * DA_ROWS;
  constexpr int P_PER_THREAD = GMAX * TILE / DA_THREADS;
  static_assert(LPK * NE == D && KPW * LPK == 32 && GMAX <= LPK && TILE <= DA_TILE, "unsupported head width");
  static_assert(P_PER_THREAD * DA_THREADS == GMAX * TILE, "tile and block do not match");
  using Raw = RawRow<T, NE>;
  __shared__ __align__(16) float q_s[GMAX * D];
  __shared__ float p_s[GMAX][DA_TILE];
  __shared__ float o_s[GMAX * D];
  __shared__ float m_s[GMAX], l_s[GMAX], f_s[GMAX];
  __shared__ bool last;
  const int G = heads / kv_heads;
  const int S = (int)((k_len + chunk - 1) / chunk);
  const int split = (int)(blockIdx.x % S);
  const i64 pair = blockIdx.x / S;  // b * kv_heads + kv head
  const int kvh = (int)(pair % kv_heads);
  const i64 b = pair / kv_heads;
  const i64 h0 = b * heads + (i64)kvh * G;  // this block's first query head, as a row of [n, H]
  const i64 k0 = (i64)split * chunk, k1 = k0 + chunk < k_len ? k0 + chunk : k_len;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int r = lane % LPK, group = lane / LPK;  // lane within its row, row within the warp
  const T* keys = k_cache + b * slot_stride + kvh * head_stride;
  const T* values = v_cache + b * slot_stride + kvh * head_stride;
  // Row `it` of this lane's share of a tile: key t0 + row(it).
  auto row = [&](int it) { return (it * DA_WARPS + warp) * KPW + group; };
  auto load_rows = [&](const T* base, i64 t0, Raw(&raw)[PER_WARP]) {
    const T* tile = base + t0 * D + r * NE;
    const int left = (int)(k1 - t0 < TILE ? k1 - t0 : TILE);
#pragma unroll
    for (int it = 0; it < PER_WARP; ++it) {
      if (row(it) < left) raw[it] = *reinterpret_cast<const Raw*>(tile + row(it) * D);
    }
  };
  // A reuse layer's probabilities for the tile at t0: this thread's P_PER_THREAD of them.
  auto load_probs = [&](i64 t0, float(&pr)[P_PER_THREAD]) {
#pragma unroll
    for (int k = 0; k < P_PER_THREAD; ++k) {
      const int i = tid + k * DA_THREADS, g = i / TILE, c = i % TILE;
      pr[k] = g < G && t0 + c < k1 ? scores[(h0 + g) * k_len + t0 + c] : neg_inf();
    }
  };

  Raw kr[PER_WARP], vr[PER_WARP];
  float pr[P_PER_THREAD];
  if (mode == DA_REUSE) {
    load_probs(k0, pr);
  } else {
    load_rows(keys, k0, kr);
  }
  load_rows(values, k0, vr);
  for (int i = tid; i < GMAX * D; i += DA_THREADS) {
    q_s[i] = mode != DA_REUSE && i < G * D ? to_float(q[h0 * D + i]) : 0.0f;
    o_s[i] = 0.0f;
  }
  for (int i = tid; i < GMAX * TILE; i += DA_THREADS) p_s[i / TILE][i % TILE] = 0.0f;
  if (tid < GMAX) {
    m_s[tid] = neg_inf();
    l_s[tid] = 0.0f;
    f_s[tid] = 1.0f;
  }
  float acc[GMAX][NE];
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int e = 0; e < NE; ++e) acc[g][e] = 0.0f;
  __syncthreads();

  for (i64 t0 = k0; t0 < k1; t0 += TILE) {
    const i64 next = t0 + TILE;
    if (mode == DA_REUSE) {
      // Phase 1: the lead's probabilities for the tile, then the next tile's scores.
#pragma unroll
      for (int k = 0; k < P_PER_THREAD; ++k) {
        const int i = tid + k * DA_THREADS, g = i / TILE, c = i % TILE;
        float p = 0.0f;
        if (g < G && t0 + c < k1) {
          const float mx = stats[(h0 + g) * 2], sum = stats[(h0 + g) * 2 + 1];
          if (sum > 0.0f) p = round_to<T>(__fdiv_rn(expf(pr[k] - mx), sum));
        }
        p_s[g][c] = p;
      }
      if (next < k1) load_probs(next, pr);
    } else {
      // Phase 1: scores, then the next tile's keys.
#pragma unroll
      for (int it = 0; it < PER_WARP; ++it) {
        const i64 key = t0 + row(it);
        float dot[GMAX];
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
          dot[g] = 0.0f;
#pragma unroll
          for (int e = 0; e < NE; ++e) dot[g] = fmaf(to_float(kr[it].e[e]), q_s[g * D + r * NE + e], dot[g]);
        }
        int g;
        const float raw = transpose_reduce<GMAX, LPK>(dot, r, &g);
        // One lane per head writes: the others of its kind hold the same sum.
        if (r % (LPK / GMAX) == 0 && g < G) {
          float sc = neg_inf();
          if (key < k1) {
            sc = masked_value<T>(round_to<T>(raw), to_float(mask[b * k_len + key]), scale, softcap);
            if (mode == DA_LEAD) scores[(h0 + g) * k_len + key] = sc;
          }
          p_s[g][row(it)] = sc;
        }
      }
      if (next < k1) load_rows(keys, next, kr);
      __syncthreads();
      // The tile's max per query head (one warp per head), the running max and sum, and the
      // factor by which the accumulated output shrinks.
      for (int g = warp; g < G; g += DA_WARPS) {
        float mx = neg_inf();
        for (int i = lane; i < TILE; i += 32) mx = fmaxf(mx, p_s[g][i]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float m_new = fmaxf(m_s[g], mx);
        float sum = 0.0f;
        for (int i = lane; i < TILE; i += 32) {
          const float p = m_new == neg_inf() ? 0.0f : expf(p_s[g][i] - m_new);
          p_s[g][i] = p;
          sum += p;
        }
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) {
          const float f = m_new == neg_inf() ? 1.0f : expf(m_s[g] - m_new);
          f_s[g] = f;
          l_s[g] = l_s[g] * f + sum;
          m_s[g] = m_new;
        }
      }
    }
    __syncthreads();
    // Phase 2: p V over the tile, rows as in phase 1, each lane its NE columns of every head;
    // then the next tile's values.
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      const float f = f_s[g];
#pragma unroll
      for (int e = 0; e < NE; ++e) acc[g][e] *= f;
    }
#pragma unroll
    for (int it = 0; it < PER_WARP; ++it) {
      if (t0 + row(it) < k1) {
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
          const float p = p_s[g][row(it)];
#pragma unroll
          for (int e = 0; e < NE; ++e) acc[g][e] = fmaf(p, to_float(vr[it].e[e]), acc[g][e]);
        }
      }
    }
    if (next < k1) load_rows(values, next, vr);
    __syncthreads();
  }

  // The block's partial output: the row groups' sums within each warp, then the warps' in a
  // fixed order (deterministic).
#pragma unroll
  for (int o = LPK; o < 32; o <<= 1)
#pragma unroll
    for (int g = 0; g < GMAX; ++g)
#pragma unroll
      for (int e = 0; e < NE; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
  for (int w = 0; w < DA_WARPS; ++w) {
    if (warp == w && group == 0) {
#pragma unroll
      for (int g = 0; g < GMAX; ++g)
#pragma unroll
        for (int e = 0; e < NE; ++e) o_s[g * D + r * NE + e] += acc[g][e];
    }
    __syncthreads();
  }
  const i64 slot = pair * S + split;
  for (int i = tid; i < G * D; i += DA_THREADS) part_o[slot * G * D + i] = o_s[i];
  if (tid < G) {
    part_ml[(slot * G + tid) * 2] = m_s[tid];
    part_ml[(slot * G + tid) * 2 + 1] = l_s[tid];
  }
  // The last block of the pair to finish combines the slices.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    last = atomicAdd(&da_tickets[pair], 1u) == (unsigned)(S - 1);
    if (last) da_tickets[pair] = 0;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  // Each slice's weight exp(m_s - max) per query head (one warp per head; S <= DA_MAX_SPLITS
  // = 2 slices a lane, and the weights fit where the tile's probabilities were), then the
  // weighted sum of the slices' outputs. Other blocks' partials are read past L1 (volatile).
  const volatile float* po = part_o + pair * S * G * D;
  const volatile float* pml = part_ml + pair * S * G * 2;
  float* weight = &p_s[0][0];
  for (int g = warp; g < G; g += DA_WARPS) {
    float m[2], l[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int s = lane + 32 * k;
      const bool has = s < S && mode != DA_REUSE;
      m[k] = has ? pml[(s * G + g) * 2] : neg_inf();
      l[k] = has ? pml[(s * G + g) * 2 + 1] : 0.0f;
    }
    float mx = fmaxf(m[0], m[1]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int s = lane + 32 * k;
      const float w = mode == DA_REUSE ? 1.0f : (mx == neg_inf() ? 0.0f : expf(m[k] - mx));
      sum += w * l[k];
      if (s < S) weight[s * G + g] = w;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) {
      m_s[g] = mx;
      l_s[g] = mode == DA_REUSE ? 1.0f : sum;
      if (mode == DA_LEAD) {
        stats[(h0 + g) * 2] = mx;
        stats[(h0 + g) * 2 + 1] = sum;
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < G * D; i += DA_THREADS) {
    const int g = i / D;
    float o = 0.0f;
#pragma unroll 16
    for (int s = 0; s < S; ++s) o += weight[s * G + g] * po[s * G * D + i];
    out[h0 * D + i] = from_float<T>(l_s[g] > 0.0f ? o / l_s[g] : 0.0f);
  }
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
// acc += g over n elements (f32 += T): the gradient of a weight cast to T for the matrix
// products, added into the weight's f32 gradient (the trainer's WeightCast, train.cpp) in one
// pass, 16 bytes of g at a time (the caller checks that both are 16-byte aligned).
template <typename T>
__device__ void accumulate_f32(const T* g, float* acc, i64 n) {
  constexpr int N = 16 / sizeof(T);
  const i64 pieces = n % N == 0 ? n / N : 0;
  for (i64 i = global_index(); i < pieces; i += global_stride()) {
    float v[N];
    load16<T>(g + i * N, v);
#pragma unroll
    for (int k = 0; k < N; k += 4) {
      float4 a = *reinterpret_cast<const float4*>(acc + i * N + k);
      a.x += v[k];
      a.y += v[k + 1];
      a.z += v[k + 2];
      a.w += v[k + 3];
      *reinterpret_cast<float4*>(acc + i * N + k) = a;
    }
  }
  for (i64 i = pieces * N + global_index(); i < n; i += global_stride()) acc[i] += to_float(g[i]);
}

// ---------------------------------------------------------------------------------------------
// Entry points, one per element type: <name>_<f32|bf16|f16>.
// decode_attention_<d64|d128|d256>_g<4|8>_<type>: one per head width and bound on the query
// heads per kv head (the kernel keeps partial sums for GMAX heads).
#define UA_DECODE_ATTENTION(T, SUFFIX, D, GMAX)                                                           \
  extern "C" __global__ void __launch_bounds__(DA_THREADS, 2) decode_attention_d##D##_g##GMAX##_##SUFFIX(    \
      const T* q, const T* k_cache, const T* v_cache, i64 slot_stride, i64 head_stride, const T* mask,    \
      float* scores, float* stats, float* part_o, float* part_ml, T* out, int heads, int kv_heads,       \
      i64 k_len, int chunk, int mode, float scale, float softcap) {                                       \
    decode_attention<T, D, GMAX>(q, k_cache, v_cache, slot_stride, head_stride, mask, scores, stats,      \
                                 part_o, part_ml, out, heads, kv_heads, k_len, chunk, mode, scale,        \
                                 softcap);                                                                 \
  }
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
  UA_DECODE_ATTENTION(T, SUFFIX, 64, 4)                                                                    \
  UA_DECODE_ATTENTION(T, SUFFIX, 64, 8)                                                                    \
  UA_DECODE_ATTENTION(T, SUFFIX, 128, 4)                                                                   \
  UA_DECODE_ATTENTION(T, SUFFIX, 128, 8)                                                                   \
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
  extern "C" __global__ void accumulate_f32_##SUFFIX(const T* g, float* acc, i64 n) {                      \
    accumulate_f32<T>(g, acc, n);                                                                          \
  }

UA_ENTRY_POINTS(float, f32)
UA_ENTRY_POINTS(bf16, bf16)
UA_ENTRY_POINTS(f16, f16)
// 256-wide heads in 16-bit types only (an f32 row is 64 lanes of 16 bytes).
UA_DECODE_ATTENTION(bf16, bf16, 256, 4)
UA_DECODE_ATTENTION(bf16, bf16, 256, 8)
UA_DECODE_ATTENTION(f16, f16, 256, 4)
UA_DECODE_ATTENTION(f16, f16, 256, 8)
