// Session 38: does the joint decode attention's tensor-core work slow its streaming, and do
// TMA copies in the layouts that kernel needs keep stream.cu's gain? The joint launch's bytes
// at batch 32 / 8k (five arrays of 32 x 2 x 8256 rows of 128 bytes, 338 MB), 256 blocks of 256
// threads, each a contiguous run of 2064 rows of every array, sub-tiles of 64 rows, 2 stages:
//   cp.async                 16 bytes a thread (the joint form's copies), as stream.cu;
//   cp.async + N mma         the same, each warp issuing N mma.sync.m16n8k16 (bf16, f32 sums)
//                            a sub-tile on operands read from the stage (the joint form issues
//                            ~44 a warp a sub-tile at D = 64 with four outputs);
//   tma 8 KB                 one bulk copy an array a stage, as stream.cu (no swizzle);
//   tma rows padded          a bulk copy a 128-byte row into rows 144 bytes apart (a layout
//                            whose ldmatrix reads hit eight bank groups, as the swizzle does);
//   tma map swizzled         a tensor-map copy of 64 rows an array a stage with the 128-byte
//                            swizzle (chunk ^ row % 8: kernels.cu's tile_offset).
// Built with: nvcc -O2 -arch=sm_90a -o stream2 stream2.cu
#include <cstdio>
#include <cuda.h>
#include <cuda_runtime.h>
#include <cstdint>
constexpr int ARRAYS = 5, ROWS = 32 * 2 * 8256, ROW = 128, BLOCKS = 256, THREADS = 256;
constexpr int PER_BLOCK = ROWS / BLOCKS * ROW;  // bytes of an array a block (2064 rows)
constexpr int TILE = 64 * ROW;                  // 8 KB
constexpr int PADDED_ROW = 144, PADDED_TILE = 64 * PADDED_ROW;
struct Arrays { const char* a[ARRAYS]; };
struct Maps { CUtensorMap m[ARRAYS]; };

__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

__global__ void __launch_bounds__(THREADS, 2) cp_async_kernel(Arrays x, int* sink) {
  extern __shared__ __align__(128) char sm[];
  const int subs = (PER_BLOCK + TILE - 1) / TILE;
  auto stage = [&](int sub, int s) {
    for (int i = threadIdx.x; i < ARRAYS * TILE / 16; i += THREADS) {
      const int arr = i / (TILE / 16), c = i % (TILE / 16);
      const long off = (long)blockIdx.x * PER_BLOCK + (long)sub * TILE + c * 16;
      const bool ok = (long)sub * TILE + c * 16 < PER_BLOCK;
      unsigned d = smem_u32(sm + s * ARRAYS * TILE + arr * TILE + c * 16);
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(x.a[arr] + off), "r"(ok ? 16 : 0) : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  };
  stage(0, 0);
  int acc = 0;
  for (int sub = 0; sub < subs; ++sub) {
    if (sub + 1 < subs) { stage(sub + 1, (sub + 1) & 1); asm volatile("cp.async.wait_group 1;" ::: "memory"); }
    else asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncthreads();
    acc += sm[(sub & 1) * ARRAYS * TILE + threadIdx.x * 16];
    __syncthreads();
  }
  if (acc == 12345) *sink = acc;
}

template <int MMAS>
__global__ void __launch_bounds__(THREADS, 2) cp_async_mma_kernel(Arrays x, int* sink) {
  extern __shared__ __align__(128) char sm[];
  const int subs = (PER_BLOCK + TILE - 1) / TILE;
  auto stage = [&](int sub, int s) {
    for (int i = threadIdx.x; i < ARRAYS * TILE / 16; i += THREADS) {
      const int arr = i / (TILE / 16), c = i % (TILE / 16);
      const long off = (long)blockIdx.x * PER_BLOCK + (long)sub * TILE + c * 16;
      const bool ok = (long)sub * TILE + c * 16 < PER_BLOCK;
      unsigned d = smem_u32(sm + s * ARRAYS * TILE + arr * TILE + c * 16);
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(x.a[arr] + off), "r"(ok ? 16 : 0) : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  };
  stage(0, 0);
  float acc[4][4] = {};
  const int lane = threadIdx.x & 31;
  for (int sub = 0; sub < subs; ++sub) {
    if (sub + 1 < subs) { stage(sub + 1, (sub + 1) & 1); asm volatile("cp.async.wait_group 1;" ::: "memory"); }
    else asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncthreads();
    const uint32_t* w = reinterpret_cast<const uint32_t*>(sm + (sub & 1) * ARRAYS * TILE) + (threadIdx.x >> 5) * 32 + lane;
    const uint32_t a0 = w[0], a1 = w[256], a2 = w[512], a3 = w[768], b0 = w[1024], b1 = w[1280];
#pragma unroll
    for (int i = 0; i < MMAS; ++i) {
      float* d = acc[i & 3];
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                   : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0 + i), "r"(b1));
    }
    __syncthreads();
  }
  float s = 0;
  for (int i = 0; i < 4; ++i) for (int j = 0; j < 4; ++j) s += acc[i][j];
  if (s == 12345.0f) *sink = (int)s;
}

template <int STAGES>
__global__ void __launch_bounds__(THREADS, 2) tma_kernel(Arrays x, int* sink) {
  extern __shared__ __align__(128) char sm[];
  __shared__ __align__(8) uint64_t bar[STAGES];
  const int subs = (PER_BLOCK + TILE - 1) / TILE;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(&bar[s])));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  auto stage = [&](int sub, int s) {
    if (threadIdx.x != 0) return;
    const int bytes = min(TILE, PER_BLOCK - sub * TILE);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(&bar[s])), "r"(ARRAYS * bytes) : "memory");
    for (int arr = 0; arr < ARRAYS; ++arr) {
      const char* src = x.a[arr] + (long)blockIdx.x * PER_BLOCK + (long)sub * TILE;
      asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                   ::"r"(smem_u32(sm + s * ARRAYS * TILE + arr * TILE)), "l"(src), "r"(bytes), "r"(smem_u32(&bar[s])) : "memory");
    }
  };
  for (int s = 0; s < STAGES - 1 && s < subs; ++s) stage(s, s);
  int acc = 0;
  for (int sub = 0; sub < subs; ++sub) {
    const int s = sub % STAGES;
    if (sub + STAGES - 1 < subs) stage(sub + STAGES - 1, (sub + STAGES - 1) % STAGES);
    const unsigned phase = (sub / STAGES) & 1;
    unsigned done = 0;
    while (!done) {
      asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                   : "=r"(done) : "r"(smem_u32(&bar[s])), "r"(phase) : "memory");
    }
    acc += sm[s * ARRAYS * TILE + threadIdx.x * 16];
    __syncthreads();
  }
  if (acc == 12345) *sink = acc;
}

__device__ __forceinline__ void wait_parity(uint64_t* bar, unsigned phase) {
  unsigned done = 0;
  while (!done) {
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done) : "r"(smem_u32(bar)), "r"(phase) : "memory");
  }
}

// A bulk copy a row (warp 0, ten a lane), rows PADDED_ROW apart.
__global__ void __launch_bounds__(THREADS, 2) tma_rows_kernel(Arrays x, int* sink) {
  extern __shared__ __align__(128) char sm[];
  __shared__ __align__(8) uint64_t bar[2];
  const int subs = (PER_BLOCK + TILE - 1) / TILE, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < 2; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(&bar[s])));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  auto stage = [&](int sub, int s) {
    if (threadIdx.x >= 32) return;
    const int rows = min(TILE, PER_BLOCK - sub * TILE) / ROW;
    if (lane == 0) {
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(&bar[s])), "r"(ARRAYS * rows * ROW) : "memory");
    }
    __syncwarp();
    for (int i = lane; i < ARRAYS * rows; i += 32) {
      const int arr = i / rows, r = i % rows;
      const char* src = x.a[arr] + (long)blockIdx.x * PER_BLOCK + (long)sub * TILE + r * ROW;
      asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                   ::"r"(smem_u32(sm + s * ARRAYS * PADDED_TILE + arr * PADDED_TILE + r * PADDED_ROW)), "l"(src), "r"(ROW), "r"(smem_u32(&bar[s])) : "memory");
    }
  };
  stage(0, 0);
  int acc = 0;
  for (int sub = 0; sub < subs; ++sub) {
    const int s = sub & 1;
    if (sub + 1 < subs) stage(sub + 1, s ^ 1);
    wait_parity(&bar[s], (sub >> 1) & 1);
    acc += sm[s * ARRAYS * PADDED_TILE + threadIdx.x * 16];
    __syncthreads();
  }
  if (acc == 12345) *sink = acc;
}

// A tensor-map copy of 64 rows an array a stage, 128-byte swizzle (stages 1 KB aligned).
__global__ void __launch_bounds__(THREADS, 2) tma_map_kernel(const __grid_constant__ Maps maps, int* sink) {
  extern __shared__ __align__(1024) char sm[];
  __shared__ __align__(8) uint64_t bar[2];
  const int subs = (PER_BLOCK + TILE - 1) / TILE;
  if (threadIdx.x == 0) {
    for (int s = 0; s < 2; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(&bar[s])));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  // The swizzled copies need their destination 1 KB aligned: the launch gives 1 KB more.
  char* base = sm + ((1024 - (smem_u32(sm) & 1023)) & 1023);
  auto stage = [&](int sub, int s) {
    if (threadIdx.x != 0) return;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(&bar[s])), "r"(ARRAYS * TILE) : "memory");
    const int row0 = blockIdx.x * (PER_BLOCK / ROW) + sub * 64;
    for (int arr = 0; arr < ARRAYS; ++arr) {
      asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                   ::"r"(smem_u32(base + s * ARRAYS * TILE + arr * TILE)), "l"(&maps.m[arr]), "r"(0), "r"(row0),
                   "r"(smem_u32(&bar[s])) : "memory");
    }
  };
  stage(0, 0);
  int acc = 0;
  for (int sub = 0; sub < subs; ++sub) {
    const int s = sub & 1;
    if (sub + 1 < subs) stage(sub + 1, s ^ 1);
    wait_parity(&bar[s], (sub >> 1) & 1);
    acc += base[s * ARRAYS * TILE + threadIdx.x * 16];
    __syncthreads();
  }
  if (acc == 12345) *sink = acc;
}

template <typename K, typename A>
void measure(const char* name, K kernel, int smem, A x, int* sink) {
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) kernel<<<BLOCKS, THREADS, smem>>>(x, sink);
  const int reps = 50;
  cudaEventRecord(a);
  for (int i = 0; i < reps; ++i) kernel<<<BLOCKS, THREADS, smem>>>(x, sink);
  cudaEventRecord(b); cudaEventSynchronize(b);
  float ms; cudaEventElapsedTime(&ms, a, b);
  const double us = ms * 1000 / reps, bytes = (double)ARRAYS * ROWS * ROW;
  printf("%-28s %7.1f us  %5.2f TB/s  (%s)\n", name, us, bytes / us / 1e6, cudaGetErrorString(cudaGetLastError()));
}

int main() {
  Arrays x; int* sink; cudaMalloc(&sink, 4);
  for (int i = 0; i < ARRAYS; ++i) { char* p; cudaMalloc(&p, (size_t)ROWS * ROW); cudaMemset(p, i, (size_t)ROWS * ROW); x.a[i] = p; }
  measure("cp.async 2 stages", cp_async_kernel, 2 * ARRAYS * TILE, x, sink);
  measure("cp.async + 16 mma", cp_async_mma_kernel<16>, 2 * ARRAYS * TILE, x, sink);
  measure("cp.async + 48 mma", cp_async_mma_kernel<48>, 2 * ARRAYS * TILE, x, sink);
  measure("cp.async + 128 mma", cp_async_mma_kernel<128>, 2 * ARRAYS * TILE, x, sink);
  measure("tma 8 KB 2 stages", tma_kernel<2>, 2 * ARRAYS * TILE, x, sink);
  measure("tma rows padded 2 stages", tma_rows_kernel, 2 * ARRAYS * PADDED_TILE, x, sink);
  // Tensor maps: each array a 2D tensor of ROWS rows of 64 bf16, boxes of 64 x 64, swizzled.
  void* fn = nullptr; cudaDriverEntryPointQueryResult q;
  cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q);
  auto encode = reinterpret_cast<decltype(&cuTensorMapEncodeTiled)>(fn);
  Maps maps;
  for (int i = 0; i < ARRAYS; ++i) {
    cuuint64_t dims[2] = {64, (cuuint64_t)ROWS}, strides[1] = {ROW};
    cuuint32_t box[2] = {64, 64}, elem[2] = {1, 1};
    CUresult r = encode(&maps.m[i], CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void*)x.a[i], dims, strides, box, elem,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) printf("cuTensorMapEncodeTiled: %d\n", (int)r);
  }
  cudaFuncSetAttribute(tma_map_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 2 * ARRAYS * TILE + 1024);
  measure("tma map swizzled 2 stages", tma_map_kernel, 2 * ARRAYS * TILE + 1024, maps, sink);
  measure("cp.async 2 stages again", cp_async_kernel, 2 * ARRAYS * TILE, x, sink);
  return 0;
}
