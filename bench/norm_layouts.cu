// The production norm kernels (csrc/norm) timed at every row layout (vectors per thread x threads per row x
// rows per block) at FLUX (4608 x 3072), Wan-1.3B (32760 x 1536) and Wan-14B (75600 x 5120) rows, bf16, cold
// L2, median of 30, against cudaMemcpy of the same bytes; also the layout the launcher picks. How
// csrc/norm/row_vectors.cuh's layout rule was chosen (bench/RESULTS.md, issue 10). On a machine with nvcc:
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -o /tmp/norm_layouts bench/norm_layouts.cu && /tmp/norm_layouts
//
// Rows of more than 128 threads exceed the kernels' launch bounds and print "invalid argument".
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdio>
#include <vector>
#include "../csrc/norm/rms_norm.cuh"
#include "../csrc/norm/modulated_layer_norm.cuh"
using namespace fastdit;
using T = __nv_bfloat16;
static void* g_flush;
static const size_t kFlush = 200u << 20;
template <typename F> float time_ms(F f) {
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) f();
  std::vector<float> ts;
  for (int i = 0; i < 30; ++i) {
    cudaMemsetAsync(g_flush, i, kFlush); cudaEventRecord(a); f(); cudaEventRecord(b); cudaEventSynchronize(b);
    float ms; cudaEventElapsedTime(&ms, a, b); ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end()); return ts[ts.size() / 2];
}
template <int V> void run_layouts(int mode, int rows, int dim, const RmsNormParams<T>& rp, const ModulatedNormParams<T>& mp, float copy_ms) {
  const int chunks = dim / 8;
  const int per = (chunks + V - 1) / V;
  int tpr = 1;
  if (per <= 32) { while (tpr < per) tpr *= 2; } else tpr = (per + 31) / 32 * 32;
  if (tpr > 1024) return;
  for (int rpb : {1, 2, 4}) {
    if (tpr * rpb > 128 && rpb > 1) continue;
    if (tpr * rpb > 1024) continue;
    VecRowLayout L{V, tpr, rpb};
    const int blocks = (rows + rpb - 1) / rpb;
    float ms;
    if (mode == 0) ms = time_ms([&] { rms_norm_kernel<T, V, false><<<blocks, tpr * rpb>>>(rp, L); });
    else if (mode == 1) ms = time_ms([&] { modulated_layer_norm_kernel<T, false, V><<<blocks, tpr * rpb>>>(mp, L); });
    else ms = time_ms([&] { modulated_layer_norm_kernel<T, true, V><<<blocks, tpr * rpb>>>(mp, L); });
    cudaError_t e = cudaGetLastError();
    printf("%-5s dim=%5d V=%d tpr=%4d rpb=%d  %8.1f us  %5.1f%% of same-size copy %s\n", mode == 0 ? "rms" : mode == 1 ? "ln" : "gated",
           dim, V, tpr, rpb, ms * 1e3, 100 * copy_ms / ms, e == cudaSuccess ? "" : cudaGetErrorString(e));
  }
}
int main() {
  cudaMalloc(&g_flush, kFlush);
  int shapes[3][2] = {{4608, 3072}, {32760, 1536}, {75600, 5120}};
  for (auto& s : shapes) {
    const int rows = s[0], dim = s[1];
    const size_t n = size_t(rows) * dim;
    T *x, *res, *w, *mods, *r, *y;
    cudaMalloc(&x, n * 2); cudaMalloc(&res, n * 2); cudaMalloc(&r, n * 2); cudaMalloc(&y, n * 2);
    cudaMalloc(&w, dim * 2); cudaMalloc(&mods, 6 * dim * 2);
    cudaMemset(x, 0x3f, n * 2); cudaMemset(res, 0x3e, n * 2); cudaMemset(w, 0x3f, dim * 2); cudaMemset(mods, 0x3d, 6 * dim * 2);
    RmsNormParams<T> rp{x, w, y, rows, dim, dim, 1e-6f};
    ModulationView<T> shift{mods, 6 * dim, 0}, scale{mods + dim, 6 * dim, 0}, gate{mods + 2 * dim, 6 * dim, 0};
    ModulatedNormParams<T> mp{x, res, gate, shift, scale, r, y, 1, rows, dim, 1e-6f};
    for (int mode = 0; mode < 3; ++mode) {
      float copy_ms = time_ms([&] { cudaMemcpyAsync(y, x, n * 2, cudaMemcpyDeviceToDevice);
                                    if (mode == 2) cudaMemcpyAsync(r, res, n * 2, cudaMemcpyDeviceToDevice); });
      float prod = time_ms([&] {
        if (mode == 0) launch_rms_norm<T>(rp, false, 0);
        else if (mode == 1) launch_layer_norm_modulate<T>(mp, 0);
        else launch_gated_residual_norm_modulate<T>(mp, 0);
      });
      VecRowLayout L = make_vec_row_layout(dim / 8);
      printf("== mode %d dim %d: copy %.1f us; production launch (V=%d tpr=%d rpb=%d) %.1f us = %.1f%%\n", mode, dim,
             copy_ms * 1e3, L.vecs, L.threads_per_row, L.rows_per_block, prod * 1e3, 100 * copy_ms / prod);
      run_layouts<1>(mode, rows, dim, rp, mp, copy_ms); run_layouts<2>(mode, rows, dim, rp, mp, copy_ms);
      run_layouts<3>(mode, rows, dim, rp, mp, copy_ms); run_layouts<4>(mode, rows, dim, rp, mp, copy_ms);
      run_layouts<5>(mode, rows, dim, rp, mp, copy_ms); run_layouts<6>(mode, rows, dim, rp, mp, copy_ms);
      run_layouts<8>(mode, rows, dim, rp, mp, copy_ms);
    }
    cudaFree(x); cudaFree(res); cudaFree(r); cudaFree(y); cudaFree(w); cudaFree(mods);
  }
}
