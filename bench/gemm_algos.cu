// cuBLASLt's candidate algorithms for one GEMM, for bench/flux_floor.py --lt-algos: which of them is fastest when the
// GPU runs at its power cap (a FLUX step does) rather than at boost clock (where cuBLAS's heuristic ranks).
//
//   out[M, N] = act(x[M, K] @ w[N, K]^T + bias[N])      epilogue 0: none, 1: bias, 2: bias + GELU(tanh)
//   out[M, N] += x[M, K] @ w[N, K]^T                    epilogue 3: accumulate (beta = 1)
//
// w's rows may be strided (ldw >= K: a column slice of a wider weight, as FLUX's single-block proj_out).
// Built here, run on the device (it links the libcublasLt.so.13 that torch brings):
//   nvcc -O2 -std=c++17 -shared -Xcompiler -fPIC -I<nvidia/cu13/include> bench/gemm_algos.cu \
//        -L<nvidia/cu13/lib> -l:libcublasLt.so.13 -o build/gemm_algos.so
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

cublasLtHandle_t handle = nullptr;
std::vector<cublasLtMatmulHeuristicResult_t> found;  // the last gemm_algos_find's candidates

struct Problem {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t w = nullptr, x = nullptr, out = nullptr;
  ~Problem() {
    if (op) cublasLtMatmulDescDestroy(op);
    if (w) cublasLtMatrixLayoutDestroy(w);
    if (x) cublasLtMatrixLayoutDestroy(x);
    if (out) cublasLtMatrixLayoutDestroy(out);
  }
};

// Column-major view of the row-major problem: out^T [N, M] = w [N, K] (stored [K, N], ld ldw, transposed)
// times x^T [K, M] (ld K). The bias is then a per-row vector of out^T, as the epilogue wants.
int describe(Problem& p, int m, int n, int k, int ldw, int epilogue, const void* bias) {
  if (cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F)) return 1;
  cublasOperation_t t = CUBLAS_OP_T, nt = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t));
  cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof(nt));
  cublasLtEpilogue_t epi = epilogue == 1   ? CUBLASLT_EPILOGUE_BIAS
                           : epilogue == 2 ? CUBLASLT_EPILOGUE_GELU_BIAS
                                           : CUBLASLT_EPILOGUE_DEFAULT;
  cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
  if (epilogue == 1 || epilogue == 2) {
    cudaDataType_t bias_type = CUDA_R_16BF;
    cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type));
    cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
  }
  if (cublasLtMatrixLayoutCreate(&p.w, CUDA_R_16BF, k, n, ldw)) return 1;
  if (cublasLtMatrixLayoutCreate(&p.x, CUDA_R_16BF, k, m, k)) return 1;
  if (cublasLtMatrixLayoutCreate(&p.out, CUDA_R_16BF, n, m, n)) return 1;
  return 0;
}

int config(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  size_t written = 0;
  if (attr == CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID || attr == CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID) {
    uint16_t value = 0;  // the two uint16_t attributes (the rest are 32-bit)
    cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &value, sizeof(value), &written);
    return value;
  }
  int32_t value = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &value, sizeof(value), &written);
  return value;
}

}  // namespace

// Asks cuBLASLt's heuristic for up to `want` algorithms for this problem; returns how many it gave (< 0:
// an error). The candidates stay here for gemm_algos_describe / gemm_algos_run.
EXPORT int gemm_algos_find(int m, int n, int k, int ldw, int epilogue, const void* bias, size_t workspace_bytes,
                           int want) {
  if (!handle && cublasLtCreate(&handle)) return -1;
  Problem p;
  if (describe(p, m, n, k, ldw, epilogue, bias)) return -2;
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                       sizeof(workspace_bytes));
  found.assign(want, {});
  int count = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.w, p.x, p.out, p.out, pref, want,
                                                     found.data(), &count);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS) return -3;
  found.resize(count);
  return count;
}

// Every configuration cuBLASLt can run for this problem, not only the heuristic's picks: for each algorithm id
// of bf16 x bf16 -> bf16 with fp32 compute, every (tile, stages, custom option) its capabilities list, cluster
// shape automatic, no split-K, that cublasLtMatmulAlgoCheck accepts within the workspace. Up to `most` of them
// stay as the candidates (replacing gemm_algos_find's); returns how many (< 0: an error).
EXPORT int gemm_algos_enumerate(int m, int n, int k, int ldw, int epilogue, const void* bias, size_t workspace_bytes,
                                int most) {
  if (!handle && cublasLtCreate(&handle)) return -1;
  Problem p;
  if (describe(p, m, n, k, ldw, epilogue, bias)) return -2;
  int ids[256], id_count = 0;
  if (cublasLtMatmulAlgoGetIds(handle, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                               CUDA_R_16BF, 256, ids, &id_count))
    return -3;
  found.clear();
  for (int a = 0; a < id_count; ++a) {
    cublasLtMatmulAlgo_t algo;
    if (cublasLtMatmulAlgoInit(handle, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                               CUDA_R_16BF, ids[a], &algo))
      continue;
    uint32_t tiles[1024], stages[1024];
    size_t tile_bytes = 0, stage_bytes = 0;
    int custom_max = 0;
    size_t written = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_TILE_IDS, tiles, sizeof(tiles), &tile_bytes))
      continue;
    if (cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_STAGES_IDS, stages, sizeof(stages), &stage_bytes))
      stage_bytes = 0;
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX, &custom_max, sizeof(custom_max),
                                      &written);
    int tile_count = static_cast<int>(tile_bytes / sizeof(uint32_t));
    int stage_count = stage_bytes ? static_cast<int>(stage_bytes / sizeof(uint32_t)) : 1;
    if (!stage_bytes) stages[0] = 0;  // CUBLASLT_MATMUL_STAGES_UNDEFINED
    for (int t = 0; t < tile_count; ++t) {
      for (int s = 0; s < stage_count; ++s) {
        for (int c = 0; c <= custom_max; ++c) {
          cublasLtMatmulAlgo_t trial = algo;
          cublasLtMatmulAlgoConfigSetAttribute(&trial, CUBLASLT_ALGO_CONFIG_TILE_ID, &tiles[t], sizeof(tiles[t]));
          cublasLtMatmulAlgoConfigSetAttribute(&trial, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages[s], sizeof(stages[s]));
          cublasLtMatmulAlgoConfigSetAttribute(&trial, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &c, sizeof(c));
          cublasLtMatmulHeuristicResult_t result = {};
          if (cublasLtMatmulAlgoCheck(handle, p.op, p.w, p.x, p.out, p.out, &trial, &result) != CUBLAS_STATUS_SUCCESS)
            continue;
          if (result.workspaceSize > workspace_bytes) continue;
          result.algo = trial;
          found.push_back(result);
          if (static_cast<int>(found.size()) >= most) return most;
        }
      }
    }
  }
  return static_cast<int>(found.size());
}

// "algo=<id> tile=<id> stages=<id> splitk=<n> reduction=<id> swizzle=<n> custom=<n> cluster=<id> ws=<bytes>
// waves=<x>" for candidate i.
EXPORT int gemm_algos_describe(int i, char* text, int size) {
  if (i < 0 || i >= static_cast<int>(found.size())) return 1;
  const cublasLtMatmulAlgo_t& a = found[i].algo;
  snprintf(text, size, "algo=%d tile=%d stages=%d splitk=%d reduction=%d swizzle=%d custom=%d cluster=%d ws=%zu waves=%.2f",
           config(a, CUBLASLT_ALGO_CONFIG_ID), config(a, CUBLASLT_ALGO_CONFIG_TILE_ID),
           config(a, CUBLASLT_ALGO_CONFIG_STAGES_ID), config(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
           config(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME), config(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
           config(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION), config(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
           found[i].workspaceSize, found[i].wavesCount);
  return 0;
}

// Runs candidate i once on `stream` (capturable). Returns 0 on success.
EXPORT int gemm_algos_run(int i, int m, int n, int k, int ldw, int epilogue, const void* x, const void* w,
                          const void* bias, void* out, void* workspace, size_t workspace_bytes, void* stream) {
  if (i < 0 || i >= static_cast<int>(found.size())) return 1;
  Problem p;
  if (describe(p, m, n, k, ldw, epilogue, bias)) return 2;
  float alpha = 1.0f, beta = epilogue == 3 ? 1.0f : 0.0f;
  cublasStatus_t st = cublasLtMatmul(handle, p.op, &alpha, w, p.w, x, p.x, &beta, out, p.out, out, p.out,
                                     &found[i].algo, workspace, workspace_bytes,
                                     static_cast<cudaStream_t>(stream));
  return st == CUBLAS_STATUS_SUCCESS ? 0 : 100 + static_cast<int>(st);
}
