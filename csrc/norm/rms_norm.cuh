// rms_norm: y = x * rsqrt(mean(x^2) + eps) * weight over the last dim, fp32 math, one read and one
// write of x. x rows may be strided (row_stride elements apart); the last dim is contiguous.
// rms_norm_silu (kSiLU): y = silu(rms_norm(x + pre_bias) * weight), pre_bias [dim] optional and added in
// fp32 before the statistics: a preceding conv's bias folded in (Wan's VAE), so that conv's output is
// never rewritten just to add it; out rows may be strided too (a slice of a padded buffer).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../elementwise/vector_io.cuh"
#include "row_layout.cuh"
#include "row_vectors.cuh"

namespace fastdit {

template <typename T>
struct RmsNormParams {
  const T* x;          // [rows, dim], rows x_row_stride elements apart
  const T* weight;     // [dim] or nullptr
  T* out;              // [rows, dim], rows out_row_stride elements apart
  int64_t rows;
  int64_t dim;         // multiple of 8, <= kMaxRowElems
  int64_t x_row_stride;
  float eps;
  const T* pre_bias = nullptr;  // [dim] or nullptr (kSiLU kernels only)
  int64_t out_row_stride = 0;   // 0: dim
};

// One row per threads_per_row threads (row_vectors.cuh), kVecs packed vectors of it per thread: all of
// a thread's loads are issued before the one reduction; the weight ([dim], L2-resident) is read after
// it, so its latency does not delay the sum.
template <typename T, int kVecs, bool kSiLU>
__global__ void __launch_bounds__(kVecRowThreads) rms_norm_kernel(RmsNormParams<T> p, VecRowLayout layout) {
  __shared__ float scratch[kVecRowThreads / 32];
  const int t = threadIdx.x % layout.threads_per_row;
  const int64_t row = int64_t(blockIdx.x) * layout.rows_per_block + threadIdx.x / layout.threads_per_row;
  const bool row_ok = row < p.rows;
  const int chunks = int(p.dim / kVecElems);
  const T* x = p.x + (row_ok ? row : 0) * p.x_row_stride;
  auto each_vec = [&](auto&& fn) { for_each_vec<kVecs>(t, layout.threads_per_row, chunks, row_ok, fn); };
  uint4 v_raw[kVecs];
  each_vec([&](int i, int c) { v_raw[i] = load_raw(x + c * kVecElems); });
  // this thread's vector i (chunk c) in fp32, plus pre_bias in the SiLU kernels when there is one
  auto value = [&](int i, int c, float (&v)[kVecElems]) {
    unpack8<T>(v_raw[i], v);
    if (kSiLU && p.pre_bias != nullptr) {
      float b[kVecElems];
      load8_readonly(p.pre_bias + c * kVecElems, b);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] += b[e];
    }
  };
  float sum_sq = 0.f;
  each_vec([&](int i, int c) {
    float v[kVecElems];
    value(i, c, v);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) sum_sq += v[e] * v[e];
  });
  const float inv_rms = rsqrtf(row_sum(sum_sq, layout.threads_per_row, scratch) / float(p.dim) + p.eps);
  T* out = p.out + row * (p.out_row_stride > 0 ? p.out_row_stride : p.dim);
  each_vec([&](int i, int c) {
    float v[kVecElems];
    value(i, c, v);
    if (p.weight != nullptr) {
      float w[kVecElems];
      load8_readonly(p.weight + c * kVecElems, w);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] = v[e] * inv_rms * w[e];
    } else {
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] *= inv_rms;
    }
    if (kSiLU) {  // v * sigmoid(v) as one ex2 and one fast divide (gelu_tanh.cuh's form; -0 for v << 0)
      constexpr float kLog2e = 1.4426950408889634f;
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] = __fdividef(v[e], 1.f + exp2f(-kLog2e * v[e]));
    }
    store8(out + c * kVecElems, v);
  });
}

template <typename T>
void launch_rms_norm(const RmsNormParams<T>& p, bool silu, cudaStream_t stream) {
  const VecRowLayout layout = make_vec_row_layout(p.dim / kVecElems);
  const int64_t blocks = (p.rows + layout.rows_per_block - 1) / layout.rows_per_block;
  dispatch_vecs(layout.vecs, [&](auto vecs) {
    constexpr int kVecs = decltype(vecs)::value;
    if (silu) {
      rms_norm_kernel<T, kVecs, true><<<dim3(unsigned(blocks)), layout.block_threads(), 0, stream>>>(p, layout);
    } else {
      rms_norm_kernel<T, kVecs, false><<<dim3(unsigned(blocks)), layout.block_threads(), 0, stream>>>(p, layout);
    }
  });
}

}  // namespace fastdit
