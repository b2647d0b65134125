// How fast can a block stream a decode step's keys and values into shared memory? (issue 17)
//
// The decode attention kernel's tensor-core form (crates/uniattn/cuda/kernels.cu) stages 128-key
// sub-tiles of keys and values (16 KB each for heads of 64) with 16-byte cp.async copies, two
// stages a block, two 8-warp blocks an SM. Under ncu at batch 32 / 8k it moved 2.90 TB/s with an
// L2 hit rate of 50% and half of its global sectors "excessive". This probe copies the same
// bytes in the same shape with nothing else in the way, one mechanism at a time (its stages
// aligned to 1,024 bytes). On an H200 (2026-12-01) every form moved the 134 MB in 34-35 us
// under ncu with one L2 request a 128-byte line; the kernel's extra sectors came from its
// stages sitting 16 bytes past a 32-byte line (docs/benchmarks.md):
//   cg       cp.async.cg 16 B
//   cg_zfill cp.async.cg 16 B with a src-size register (zero-filling; the kernel's form until
//            2026-12-01: the register comes from a comparison the compiler cannot fold)
//   cg_l2    cp.async.cg.L2::128B (CUTLASS's form)
//   ca       cp.async.ca 16 B
//   tma      cp.async.bulk.tensor.2d, a 128-row x 128-byte box with the 128-byte swizzle (the
//            kernel's tile_offset layout), one thread issues, an mbarrier a stage
//   bulk     cp.async.bulk (1-D), the same 16 KB unswizzled
// and consumes each stage the way the kernel does (every thread reads it, two barriers).
//
//   nvcc -O3 -arch=sm_90a -o load_probe load_probe.cu -lcuda
//   ./load_probe                      # every mechanism x stages x blocks an SM x splits
//   ./load_probe cg 2 2 4 3           # one: mechanism stages blocks-per-SM splits launches
#include <cuda.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CHECK(x)                                                                     \
  do {                                                                               \
    cudaError_t e = (x);                                                             \
    if (e != cudaSuccess) {                                                          \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

constexpr int PAIRS = 64, KEYS = 8192, ROW = 128, TILE = 128, TILE_BYTES = TILE * ROW, THREADS = 256;
enum Mode { CG = 0, CG_ZFILL, CG_L2, CA, TMA, BULK };
const char* NAMES[] = {"cg", "cg_zfill", "cg_l2", "ca", "tma", "bulk"};

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ int tile_offset(int r, int col) { return r * ROW + ((col ^ (r & 7)) << 4); }

template <int MODE>
__device__ __forceinline__ void copy16(unsigned s, const void* g, bool valid) {
  if constexpr (MODE == CG_ZFILL) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(g), "r"(valid ? 16 : 0) : "memory");
  } else if constexpr (MODE == CG) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(g) : "memory");
  } else if constexpr (MODE == CG_L2) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;" ::"r"(s), "l"(g) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(s), "l"(g) : "memory");
  }
}

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  asm volatile(
      "{\n .reg .pred done;\n"
      "WAIT:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT;\n}" ::"r"(bar),
      "r"(parity)
      : "memory");
}

template <int MODE>
__global__ void __launch_bounds__(THREADS) probe(const __grid_constant__ CUtensorMap k_map,
                                                  const __grid_constant__ CUtensorMap v_map, const uint4* k,
                                                  const uint4* v, unsigned* out, int stages, int splits, int rows) {
  extern __shared__ unsigned char raw[];
  // 1,024-byte alignment for the 128-byte swizzle; the barriers sit below the stages.
  unsigned char* base = raw + ((1024 - (smem_addr(raw) & 1023)) & 1023);
  unsigned long long* bars = reinterpret_cast<unsigned long long*>(base);
  unsigned char* stage0 = base + 1024;
  const int t = threadIdx.x;
  const int pair = blockIdx.x / splits, split = blockIdx.x % splits;
  const int per = KEYS / splits, subs = per / TILE;
  const long long first_row = (long long)pair * KEYS + (long long)split * per;
  const unsigned char* kb = reinterpret_cast<const unsigned char*>(k) + first_row * ROW;
  const unsigned char* vb = reinterpret_cast<const unsigned char*>(v) + first_row * ROW;
  if (MODE >= TMA && t == 0) {
    for (int s = 0; s < stages; ++s) mbar_init(smem_addr(bars + s), 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  const auto issue = [&](int sub) {
    const int s = sub % stages;
    unsigned char* ks = stage0 + s * 2 * TILE_BYTES;
    unsigned char* vs = ks + TILE_BYTES;
    if constexpr (MODE < TMA) {
      for (int i = 0; i < TILE_BYTES / 16 / THREADS; ++i) {
        const int c = t + i * THREADS, r = c / 8, col = c % 8;
        const long long at = (long long)(sub * TILE + r) * ROW + col * 16;
        copy16<MODE>(smem_addr(ks + tile_offset(r, col)), kb + at, r < rows);
        copy16<MODE>(smem_addr(vs + tile_offset(r, col)), vb + at, r < rows);
      }
      asm volatile("cp.async.commit_group;" ::: "memory");
    } else if (t == 0) {
      const unsigned bar = smem_addr(bars + s);
      mbar_expect(bar, 2 * TILE_BYTES);
      if constexpr (MODE == TMA) {
        const int row = (int)(first_row + sub * TILE);
        asm volatile(
            "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
                smem_addr(ks)),
            "l"(&k_map), "r"(0), "r"(row), "r"(bar)
            : "memory");
        asm volatile(
            "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
                smem_addr(vs)),
            "l"(&v_map), "r"(0), "r"(row), "r"(bar)
            : "memory");
      } else {
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                         smem_addr(ks)),
                     "l"(kb + (long long)sub * TILE_BYTES), "r"(TILE_BYTES), "r"(bar)
                     : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                         smem_addr(vs)),
                     "l"(vb + (long long)sub * TILE_BYTES), "r"(TILE_BYTES), "r"(bar)
                     : "memory");
      }
    }
  };
  for (int sub = 0; sub < stages - 1; ++sub) {
    if (sub < subs) {
      issue(sub);
    } else if (MODE < TMA) {
      asm volatile("cp.async.commit_group;" ::: "memory");
    }
  }
  unsigned acc = 0;
  for (int sub = 0; sub < subs; ++sub) {
    const int ahead = sub + stages - 1;
    if (ahead < subs) {
      issue(ahead);
    } else if (MODE < TMA) {
      asm volatile("cp.async.commit_group;" ::: "memory");
    }
    if constexpr (MODE < TMA) {
      // stages - 1 groups may stay in flight: the ones issued after this sub-tile's.
      switch (stages) {
        case 2: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
        case 3: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
        default: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
      }
    } else {
      mbar_wait(smem_addr(bars + sub % stages), (sub / stages) & 1);
    }
    __syncthreads();
    const uint4* st = reinterpret_cast<const uint4*>(stage0 + (sub % stages) * 2 * TILE_BYTES);
    for (int i = t; i < 2 * TILE_BYTES / 16; i += THREADS) {
      const uint4 x = st[i];
      acc += x.x + x.w;
    }
    __syncthreads();
    if constexpr (MODE >= TMA) asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  out[blockIdx.x * THREADS + t] = acc;
}

using Kernel = void (*)(CUtensorMap, CUtensorMap, const uint4*, const uint4*, unsigned*, int, int, int);
Kernel kernel_of(int mode) {
  switch (mode) {
    case CG: return probe<CG>;
    case CG_ZFILL: return probe<CG_ZFILL>;
    case CG_L2: return probe<CG_L2>;
    case CA: return probe<CA>;
    case TMA: return probe<TMA>;
    default: return probe<BULK>;
  }
}

CUtensorMap tensor_map(void* base) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {ROW / 2, (cuuint64_t)PAIRS * KEYS};
  const cuuint64_t strides[1] = {ROW};
  const cuuint32_t box[2] = {ROW / 2, TILE}, elem[2] = {1, 1};
  CUresult r = cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, dims, strides, box, elem,
                                      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    fprintf(stderr, "cuTensorMapEncodeTiled: %d\n", (int)r);
    exit(1);
  }
  return map;
}

int main(int argc, char** argv) {
  const size_t bytes = (size_t)PAIRS * KEYS * ROW;
  void *k, *v;
  unsigned* out;
  CHECK(cudaMalloc(&k, bytes));
  CHECK(cudaMalloc(&v, bytes));
  CHECK(cudaMalloc(&out, (size_t)PAIRS * 64 * THREADS * 4));
  CHECK(cudaMemset(k, 1, bytes));
  CHECK(cudaMemset(v, 2, bytes));
  // A buffer as large as L2 and more, written between launches, so each launch reads from DRAM.
  void* flush;
  const size_t flush_bytes = 256u << 20;
  CHECK(cudaMalloc(&flush, flush_bytes));
  const CUtensorMap k_map = tensor_map(k), v_map = tensor_map(v);
  int sms = 0, max_smem = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, 0));
  struct Case { int mode, stages, per_sm, splits; };
  std::vector<Case> cases;
  int launches = 20;
  if (argc >= 5) {
    int mode = -1;
    for (int m = 0; m <= BULK; ++m) if (!strcmp(argv[1], NAMES[m])) mode = m;
    if (mode < 0) { fprintf(stderr, "unknown mechanism %s\n", argv[1]); return 2; }
    cases.push_back({mode, atoi(argv[2]), atoi(argv[3]), atoi(argv[4])});
    if (argc >= 6) launches = atoi(argv[5]);
  } else {
    for (int mode = 0; mode <= BULK; ++mode)
      for (int stages : {2, 3, 4})
        for (int per_sm : {1, 2, 3})
          for (int splits : {4, 8})
            if (stages * 2 * TILE_BYTES + 2048 <= max_smem / per_sm - 1024) cases.push_back({mode, stages, per_sm, splits});
  }
  printf("| mechanism | stages | blocks/SM | splits | blocks | us | TB/s |\n| --- | --- | --- | --- | --- | --- | --- |\n");
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (const Case& c : cases) {
    Kernel f = kernel_of(c.mode);
    // Shared memory a block: its stages, or enough to allow only per_sm blocks an SM.
    const int need = c.stages * 2 * TILE_BYTES + 2048;
    const int smem = std::max(need, max_smem / c.per_sm - 1024);
    CHECK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const int blocks = PAIRS * c.splits;
    float total = 0.0f;
    for (int i = 0; i < launches + 2; ++i) {
      CHECK(cudaMemset(flush, i, flush_bytes));
      CHECK(cudaEventRecord(a));
      f<<<blocks, THREADS, smem>>>(k_map, v_map, (const uint4*)k, (const uint4*)v, out, c.stages, c.splits, TILE);
      CHECK(cudaEventRecord(b));
      CHECK(cudaEventSynchronize(b));
      CHECK(cudaGetLastError());
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      if (i >= 2) total += ms;
    }
    const double us = 1e3 * total / launches;
    int active = 0;
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&active, f, THREADS, smem));
    // Each thread adds two words of each of its 8 16-byte reads a stage: 4 of keys (bytes 1), 4
    // of values (bytes 2); a stage left unfilled or filled from elsewhere shows here.
    std::vector<unsigned> host(blocks * THREADS);
    CHECK(cudaMemcpy(host.data(), out, host.size() * 4, cudaMemcpyDeviceToHost));
    const unsigned expect = (unsigned)(KEYS / c.splits / TILE) * 8u * 0x03030303u;
    int wrong = 0;
    for (unsigned x : host) wrong += x != expect;
    if (wrong) printf("WRONG: %d threads' sums differ from %u\n", wrong, expect);
    printf("| %s | %d | %d (%d) | %d | %d | %.1f | %.2f |\n", NAMES[c.mode], c.stages, c.per_sm, active, c.splits, blocks,
           us, 2.0 * bytes / us / 1e6);
  }
  printf("%d SMs, %d bytes of shared memory an SM\n", sms, max_smem);
  return 0;
}
