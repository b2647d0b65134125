// Times every algorithm cublasLt's heuristic offers for the decode step's projections at a
// given number of rows (tokens), weights rotated through more copies than L2 holds, each
// GEMM timed inside a CUDA graph of 200 (as the engine's step replays them).
// nvcc -O2 -arch=sm_90 ltsweep.cu -lcublasLt -o ltsweep; ./ltsweep 32
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { auto e = (x); if ((int)e != 0) { printf("%s:%d %s -> %d\n", __FILE__, __LINE__, #x, (int)e); exit(1); } } while (0)

struct Shape { const char *name; int n_out, k; };

int main(int argc, char **argv) {
  int m = argc > 1 ? atoi(argv[1]) : 32;
  Shape shapes[] = {{"qkv", 1152, 896}, {"vc", 1024, 896}, {"o", 896, 896},
                    {"gate_up", 9728, 896}, {"down", 896, 4864}};
  cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  cudaStream_t s; CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  size_t ws_max = 64 << 20; void *ws; CK(cudaMalloc(&ws, ws_max));
  const int launches = 200;
  for (auto &sh : shapes) {
    size_t wbytes = (size_t)sh.n_out * sh.k * 2;
    int copies = std::max<int>(2, (int)((256u << 20) / wbytes) + 1);
    std::vector<void *> w(copies);
    for (auto &p : w) { CK(cudaMalloc(&p, wbytes)); CK(cudaMemset(p, 0, wbytes)); }
    void *x, *y; CK(cudaMalloc(&x, (size_t)m * sh.k * 2)); CK(cudaMemset(x, 0, (size_t)m * sh.k * 2));
    CK(cudaMalloc(&y, (size_t)m * sh.n_out * 2));
    cublasLtMatmulDesc_t op; CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtMatrixLayout_t a, b, c;
    CK(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, sh.k, sh.n_out, sh.k));
    CK(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, sh.k, m, sh.k));
    CK(cublasLtMatrixLayoutCreate(&c, CUDA_R_16BF, sh.n_out, m, sh.n_out));
    float alpha = 1.f, beta = 0.f;
    for (size_t ws_limit : {(size_t)0, (size_t)1 << 20, (size_t)32 << 20}) {
      cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
      CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_limit, sizeof ws_limit));
      cublasLtMatmulHeuristicResult_t res[64]; int found = 0;
      CK(cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, c, c, pref, 64, res, &found));
      for (int i = 0; i < found; i++) {
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        bool ok = true;
        for (int l = 0; l < launches && ok; l++)
          ok = cublasLtMatmul(lt, op, &alpha, w[l % copies], a, x, b, &beta, y, c, y, c, &res[i].algo,
                              ws, res[i].workspaceSize, s) == CUBLAS_STATUS_SUCCESS;
        CK(cudaStreamEndCapture(s, &g));
        if (!ok) { printf("%s m=%d ws<=%zu algo %d: launch failed\n", sh.name, m, ws_limit, i); CK(cudaGraphDestroy(g)); continue; }
        CK(cudaGraphInstantiate(&ge, g, 0));
        cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
        CK(cudaGraphLaunch(ge, s));
        float best = 1e9;
        for (int r = 0; r < 5; r++) {
          CK(cudaEventRecord(e0, s)); CK(cudaGraphLaunch(ge, s)); CK(cudaEventRecord(e1, s));
          CK(cudaEventSynchronize(e1)); float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); best = std::min(best, ms);
        }
        int tile = 0, splitk = 0, stages = 0, id = 0; size_t sz;
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &sz);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &sz);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &sz);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &sz);
        double us = best * 1000.0 / launches;
        printf("%-8s m=%d n=%d k=%d ws<=%-9zu #%-2d id=%d tile=%d splitk=%d stages=%d ws=%zu  %.2f us  %.2f TB/s\n",
               sh.name, m, sh.n_out, sh.k, ws_limit, i, id, tile, splitk, stages, res[i].workspaceSize, us,
               wbytes / us / 1e6);
        CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
        CK(cudaEventDestroy(e0)); CK(cudaEventDestroy(e1));
      }
      CK(cublasLtMatmulPreferenceDestroy(pref));
    }
    for (auto p : w) CK(cudaFree(p));
    CK(cudaFree(x)); CK(cudaFree(y));
    CK(cublasLtMatrixLayoutDestroy(a)); CK(cublasLtMatrixLayoutDestroy(b)); CK(cublasLtMatrixLayoutDestroy(c));
    CK(cublasLtMatmulDescDestroy(op));
  }
  return 0;
}
