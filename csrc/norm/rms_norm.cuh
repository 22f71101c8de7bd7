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
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm) rms_norm_kernel(RmsNormParams<T> p, RowLayout layout) {
  __shared__ float scratch[kMaxBlockThreads / 32];
  const int t = threadIdx.x % layout.threads_per_row;
  const int64_t row = int64_t(blockIdx.x) * layout.rows_per_block + threadIdx.x / layout.threads_per_row;
  const bool row_ok = row < p.rows;
  const int64_t chunks = p.dim / kVecElems;
  const T* x = p.x + row * p.x_row_stride;

  // Every load of the row (x and weight) is issued before the reduction; values stay packed.
  uint4 x_raw[kMaxVecsPerThread], w_raw[kMaxVecsPerThread];
  float sum_sq = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (row_ok && i < layout.vecs_per_thread && c < chunks) {
      x_raw[i] = load_raw(x + c * kVecElems);
      if (p.weight != nullptr) w_raw[i] = load_raw(p.weight + c * kVecElems);
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (row_ok && i < layout.vecs_per_thread && c < chunks) {
      float v[kVecElems];
      unpack8<T>(x_raw[i], v);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) sum_sq += v[e] * v[e];
    }
  }
  sum_sq = row_sum(sum_sq, layout.threads_per_row, scratch);
  const float inv_rms = rsqrtf(sum_sq / float(p.dim) + p.eps);

#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (!(row_ok && i < layout.vecs_per_thread && c < chunks)) continue;
    float v[kVecElems], w[kVecElems];
    unpack8<T>(x_raw[i], v);
    if (p.weight != nullptr) {
      unpack8<T>(w_raw[i], w);
    } else {
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) w[e] = 1.f;
    }
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) v[e] = v[e] * inv_rms * w[e];
    store8(p.out + row * p.dim + c * kVecElems, v);
  }
}

template <typename T>
void launch_rms_norm(const RmsNormParams<T>& p, cudaStream_t stream) {
  const RowLayout layout = make_row_layout(p.dim / kVecElems);
  const int64_t blocks = (p.rows + layout.rows_per_block - 1) / layout.rows_per_block;
  rms_norm_kernel<T><<<dim3(unsigned(blocks)), layout.block_threads(), 0, stream>>>(p, layout);
}

}  // namespace fastdit
