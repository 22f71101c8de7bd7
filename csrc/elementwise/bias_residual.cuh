// add_bias_residual: out = y + residual + bias[c] over rows of dim channels (c = the index in the row), fp32
// math, one rounding. Wan's VAE residual blocks: y is conv2's output computed without its bias, so the bias
// costs no pass of its own (torch adds a channels-last conv's bias in a separate kernel). out may be y.
// 16-byte vectors, two per thread; dim is a multiple of 8, so no vector straddles two rows.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "vector_io.cuh"

namespace fastdit {

template <typename T>
struct BiasResidualParams {
  const T* y;         // [n], 16-byte aligned
  const T* residual;  // [n], 16-byte aligned
  const T* bias;      // [dim], 16-byte aligned
  T* out;             // [n], 16-byte aligned (may equal y)
  int64_t n;          // a multiple of dim
  int64_t dim;        // a multiple of 8
};

constexpr int kBiasResidualThreads = 256;
constexpr int kBiasResidualVecsPerThread = 2;

template <typename T>
__global__ void __launch_bounds__(kBiasResidualThreads) add_bias_residual_kernel(BiasResidualParams<T> p) {
  const int64_t vectors = p.n / kVecElems;
  const int64_t row_vectors = p.dim / kVecElems;
  const int64_t first = int64_t(blockIdx.x) * kBiasResidualThreads * kBiasResidualVecsPerThread + threadIdx.x;
  uint4 y_raw[kBiasResidualVecsPerThread], r_raw[kBiasResidualVecsPerThread];
#pragma unroll
  for (int i = 0; i < kBiasResidualVecsPerThread; ++i) {
    const int64_t v = first + int64_t(i) * kBiasResidualThreads;
    if (v < vectors) {
      y_raw[i] = load_raw(p.y + v * kVecElems);
      r_raw[i] = load_raw(p.residual + v * kVecElems);
    }
  }
#pragma unroll
  for (int i = 0; i < kBiasResidualVecsPerThread; ++i) {
    const int64_t v = first + int64_t(i) * kBiasResidualThreads;
    if (v >= vectors) continue;
    float a[kVecElems], b[kVecElems], c[kVecElems];
    unpack8<T>(y_raw[i], a);
    unpack8<T>(r_raw[i], b);
    load8_readonly(p.bias + (v % row_vectors) * kVecElems, c);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) a[e] = a[e] + b[e] + c[e];
    store8(p.out + v * kVecElems, a);
  }
}

template <typename T>
void launch_add_bias_residual(const BiasResidualParams<T>& p, cudaStream_t stream) {
  const int64_t per_block = int64_t(kBiasResidualThreads) * kBiasResidualVecsPerThread * kVecElems;
  const int64_t blocks = (p.n + per_block - 1) / per_block;
  add_bias_residual_kernel<T><<<dim3(unsigned(blocks)), kBiasResidualThreads, 0, stream>>>(p);
}

}  // namespace fastdit
