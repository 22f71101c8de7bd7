// rms_norm: y = x * rsqrt(mean(x^2) + eps) * weight over the last dim, fp32 math, one read and one
// write of x. x rows may be strided (row_stride elements apart); the last dim is contiguous.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../elementwise/vector_io.cuh"
#include "row_layout.cuh"
#include "row_pipeline.cuh"

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

// Pipelined (row_pipeline.cuh): each block walks its row groups grid-stride with the
// x chunks of the next kStages - 1 rows in flight (cp.async into shared memory) while it reduces the
// current one; the weight chunk is read once per thread into its shared-memory slot. Shared memory:
// [kStages][threads] x chunks, then [threads] weight chunks.
template <typename T, int kStages>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    rms_norm_pipelined_kernel(RmsNormParams<T> p, RowLayout layout) {
  extern __shared__ uint4 smem[];
  __shared__ float scratch[kMaxBlockThreads / 32];
  const int threads = int(blockDim.x);
  const int t = threadIdx.x % layout.threads_per_row;
  const int slot_row = threadIdx.x / layout.threads_per_row;
  const bool chunk_ok = t < int(p.dim / kVecElems);  // one vector per thread (kMaxVecsPerThread == 1)
  const int rows = int(p.rows);                      // < 2^31, checked by the export
  const GroupStride range = block_groups((rows + layout.rows_per_block - 1) / layout.rows_per_block);
  uint4* const weight = smem + kStages * threads + threadIdx.x;
  if (chunk_ok) {
    // No weight: a slot of ones, so the row loop has no branch (and no pointer held) for it.
    float ones[kVecElems];
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) ones[e] = 1.f;
    *weight = p.weight != nullptr ? load_raw(p.weight + t * kVecElems) : pack8<T>(ones);
  }

  auto issue = [&](int g, int stage) {
    const int row = g < range.end ? g * layout.rows_per_block + slot_row : rows;
    if (row < rows && chunk_ok) {
      cp_async16(smem + stage * threads + threadIdx.x, p.x + int64_t(row) * p.x_row_stride + t * kVecElems);
    }
    cp_async_commit();  // always, so that cp.async.wait_group counts iterations
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue(range.begin + s * range.step, s);

  int stage = 0;
  for (int g = range.begin; g < range.end; g += range.step) {
    issue(g + (kStages - 1) * range.step, stage == 0 ? kStages - 1 : stage - 1);
    cp_async_wait<kStages - 1>();
    const int row = g * layout.rows_per_block + slot_row;
    const bool active = row < rows && chunk_ok;
    float v[kVecElems];
    float sum_sq = 0.f;
    if (active) {
      unpack8<T>(smem[stage * threads + threadIdx.x], v);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) sum_sq += v[e] * v[e];
    }
    const float inv_rms = rsqrtf(row_sum(sum_sq, layout.threads_per_row, scratch) / float(p.dim) + p.eps);
    if (active) {
      float w[kVecElems];
      unpack8<T>(*weight, w);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] = v[e] * inv_rms * w[e];
      store8(p.out + int64_t(row) * p.dim + t * kVecElems, v);
    }
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }
  cp_async_wait<0>();
}

template <typename T>
void launch_rms_norm(const RmsNormParams<T>& p, cudaStream_t stream) {
  constexpr int kStages = 3;
  const RowLayout layout = make_row_layout(p.dim / kVecElems);
  const int64_t groups = (p.rows + layout.rows_per_block - 1) / layout.rows_per_block;
  const int threads = layout.block_threads();
  const size_t smem = size_t(kStages + 1) * threads * sizeof(uint4);
  auto kernel = rms_norm_pipelined_kernel<T, kStages>;
  const int blocks = persistent_blocks(kernel, threads, smem, groups);
  kernel<<<dim3(unsigned(blocks)), threads, smem, stream>>>(p, layout);
}

}  // namespace fastdit
