// The adaLN family: layer_norm_modulate and gated_residual_norm_modulate, one kernel.
//
//   layer_norm_modulate:           y = LN(x) * (1 + scale) + shift
//   gated_residual_norm_modulate:  r = round(residual + gate * x);  y = LN(r) * (1 + scale) + shift
//
// LN has no affine, statistics in fp32 (two passes over the registers: mean, then centred variance).
// r is rounded to T before the norm, as the reference computes it. x, residual, r and y are contiguous
// [batch, seq, dim]. shift/scale/gate are ModulationViews: [batch, dim] per sample (seq_stride 0) or
// [batch, seq, dim] per token, with any batch/seq strides, so the strided views of temb.chunk(6, dim=1)
// are read where they lie, without a copy.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../elementwise/vector_io.cuh"
#include "row_layout.cuh"

namespace fastdit {

template <typename T>
struct ModulationView {
  const T* ptr;
  int64_t batch_stride;  // elements
  int64_t seq_stride;    // elements; 0 when one vector per sample
  __device__ __forceinline__ const T* at(int64_t b, int64_t s) const { return ptr + b * batch_stride + s * seq_stride; }
};

template <typename T>
struct ModulatedNormParams {
  const T* x;          // [batch, seq, dim]
  const T* residual;   // [batch, seq, dim], or nullptr for layer_norm_modulate
  ModulationView<T> gate;  // unused without residual
  ModulationView<T> shift;
  ModulationView<T> scale;
  T* r_out;            // [batch, seq, dim], or nullptr without residual
  T* y_out;            // [batch, seq, dim]
  int64_t batch;
  int64_t seq;
  int64_t dim;         // multiple of 8, <= kMaxRowElems
  float eps;
};

template <typename T, bool kHasResidual>
__global__ void __launch_bounds__(kBlockThreads)
    modulated_layer_norm_kernel(ModulatedNormParams<T> p, RowLayout layout) {
  __shared__ float scratch[kBlockThreads / 32];
  const int t = threadIdx.x % layout.threads_per_row;
  const int64_t row = int64_t(blockIdx.x) * layout.rows_per_block + threadIdx.x / layout.threads_per_row;
  const bool row_ok = row < p.batch * p.seq;
  const int64_t b = row_ok ? row / p.seq : 0;
  const int64_t s = row_ok ? row % p.seq : 0;
  const int64_t chunks = p.dim / kVecElems;
  const int64_t row_offset = row * p.dim;

  float v[kMaxVecsPerThread][kVecElems];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (!(row_ok && i < layout.vecs_per_thread && c < chunks)) continue;
    load8(p.x + row_offset + c * kVecElems, v[i]);
    if constexpr (kHasResidual) {
      float res[kVecElems], gate[kVecElems];
      load8(p.residual + row_offset + c * kVecElems, res);
      load8(p.gate.at(b, s) + c * kVecElems, gate);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[i][e] = round_through<T>(res[e] + gate[e] * v[i][e]);
      store8(p.r_out + row_offset + c * kVecElems, v[i]);
    }
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) sum += v[i][e];
  }
  const float mean = row_sum(sum, layout.threads_per_row, scratch) / float(p.dim);

  float sum_sq = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (!(row_ok && i < layout.vecs_per_thread && c < chunks)) continue;
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) sum_sq += (v[i][e] - mean) * (v[i][e] - mean);
  }
  const float rstd = rsqrtf(row_sum(sum_sq, layout.threads_per_row, scratch) / float(p.dim) + p.eps);

#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (!(row_ok && i < layout.vecs_per_thread && c < chunks)) continue;
    float shift[kVecElems], scale[kVecElems], y[kVecElems];
    load8(p.shift.at(b, s) + c * kVecElems, shift);
    load8(p.scale.at(b, s) + c * kVecElems, scale);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) y[e] = (v[i][e] - mean) * rstd * (1.f + scale[e]) + shift[e];
    store8(p.y_out + row_offset + c * kVecElems, y);
  }
}

template <typename T, bool kHasResidual>
void launch_modulated_layer_norm(const ModulatedNormParams<T>& p, cudaStream_t stream) {
  const RowLayout layout = make_row_layout(p.dim / kVecElems);
  const int64_t rows = p.batch * p.seq;
  const int64_t blocks = (rows + layout.rows_per_block - 1) / layout.rows_per_block;
  modulated_layer_norm_kernel<T, kHasResidual>
      <<<dim3(unsigned(blocks)), layout.block_threads(), 0, stream>>>(p, layout);
}

template <typename T>
void launch_layer_norm_modulate(const ModulatedNormParams<T>& p, cudaStream_t stream) {
  launch_modulated_layer_norm<T, false>(p, stream);
}

template <typename T>
void launch_gated_residual_norm_modulate(const ModulatedNormParams<T>& p, cudaStream_t stream) {
  launch_modulated_layer_norm<T, true>(p, stream);
}

}  // namespace fastdit
