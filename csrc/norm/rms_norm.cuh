// rms_norm: y = x * rsqrt(mean(x^2) + eps) * weight over the last dim, fp32 math, one read and one
// write of x. x rows may be strided (row_stride elements apart); the last dim is contiguous.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../elementwise/vector_io.cuh"
#include "row_layout.cuh"

namespace fastdit {

template <typename T>
struct RmsNormParams {
  const T* x;          // [rows, dim], rows x_row_stride elements apart
  const T* weight;     // [dim] or nullptr
  T* out;              // [rows, dim] contiguous
  int64_t rows;
  int64_t dim;         // multiple of 8, <= kMaxRowElems
  int64_t x_row_stride;
  float eps;
};

template <typename T>
__global__ void __launch_bounds__(kBlockThreads) rms_norm_kernel(RmsNormParams<T> p, RowLayout layout) {
  __shared__ float scratch[kBlockThreads / 32];
  const int t = threadIdx.x % layout.threads_per_row;
  const int64_t row = int64_t(blockIdx.x) * layout.rows_per_block + threadIdx.x / layout.threads_per_row;
  const bool row_ok = row < p.rows;
  const int64_t chunks = p.dim / kVecElems;
  const T* x = p.x + row * p.x_row_stride;

  float v[kMaxVecsPerThread][kVecElems];
  float sum_sq = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (row_ok && i < layout.vecs_per_thread && c < chunks) {
      load8(x + c * kVecElems, v[i]);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) sum_sq += v[i][e] * v[i][e];
    }
  }
  sum_sq = row_sum(sum_sq, layout.threads_per_row, scratch);
  const float inv_rms = rsqrtf(sum_sq / float(p.dim) + p.eps);

#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (!(row_ok && i < layout.vecs_per_thread && c < chunks)) continue;
    float w[kVecElems];
    if (p.weight != nullptr) {
      load8(p.weight + c * kVecElems, w);
    } else {
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) w[e] = 1.f;
    }
    float y[kVecElems];
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) y[e] = v[i][e] * inv_rms * w[e];
    store8(p.out + row * p.dim + c * kVecElems, y);
  }
}

template <typename T>
void launch_rms_norm(const RmsNormParams<T>& p, cudaStream_t stream) {
  const RowLayout layout = make_row_layout(p.dim / kVecElems);
  const int64_t blocks = (p.rows + layout.rows_per_block - 1) / layout.rows_per_block;
  rms_norm_kernel<T><<<dim3(unsigned(blocks)), layout.block_threads(), 0, stream>>>(p, layout);
}

}  // namespace fastdit
