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
#include "row_pipeline.cuh"

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
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    modulated_layer_norm_kernel(ModulatedNormParams<T> p, RowLayout layout) {
  __shared__ float scratch[kMaxBlockThreads / 32];
  const int t = threadIdx.x % layout.threads_per_row;
  const int64_t row = int64_t(blockIdx.x) * layout.rows_per_block + threadIdx.x / layout.threads_per_row;
  const bool row_ok = row < p.batch * p.seq;
  // Rows number below 2^31 (the export checks): a 32-bit division, where a 64-bit one is a call that
  // costs registers.
  const uint32_t row32 = row_ok ? uint32_t(row) : 0u;
  const uint32_t b = row32 / uint32_t(p.seq);
  const uint32_t s = row32 - b * uint32_t(p.seq);
  const int64_t chunks = p.dim / kVecElems;
  const int64_t row_offset = row * p.dim;

  // The row stays packed in registers (v_raw: x, or r once the gated residual is applied). Registers
  // are capped at 32 (row_layout.cuh), so at most 12 of them hold row data at a time: x, residual and
  // gate first; shift and scale (L2-resident, one vector per sample) are loaded after the mean, so that
  // their latency overlaps the variance reduction.
  uint4 v_raw[kMaxVecsPerThread];
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (!(row_ok && i < layout.vecs_per_thread && c < chunks)) continue;
    v_raw[i] = load_raw(p.x + row_offset + c * kVecElems);
    if constexpr (kHasResidual) {
      const uint4 res_raw = load_raw(p.residual + row_offset + c * kVecElems);
      const uint4 gate_raw = load_raw(p.gate.at(b, s) + c * kVecElems);
      float v[kVecElems], res[kVecElems], gate[kVecElems];
      unpack8<T>(v_raw[i], v);
      unpack8<T>(res_raw, res);
      unpack8<T>(gate_raw, gate);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] = res[e] + gate[e] * v[e];
      v_raw[i] = pack8<T>(v);  // r rounded to T: the norm below reads the rounded r, as the reference
      *reinterpret_cast<uint4*>(p.r_out + row_offset + c * kVecElems) = v_raw[i];
    }
  }

  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (!(row_ok && i < layout.vecs_per_thread && c < chunks)) continue;
    float v[kVecElems];
    unpack8<T>(v_raw[i], v);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) sum += v[e];
  }
  const float mean = row_sum(sum, layout.threads_per_row, scratch) / float(p.dim);

  const T* shift = p.shift.at(b, s);
  const T* scale = p.scale.at(b, s);
  uint4 shift_raw[kMaxVecsPerThread], scale_raw[kMaxVecsPerThread];
  float sum_sq = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (!(row_ok && i < layout.vecs_per_thread && c < chunks)) continue;
    shift_raw[i] = load_raw(shift + c * kVecElems);
    scale_raw[i] = load_raw(scale + c * kVecElems);
    float v[kVecElems];
    unpack8<T>(v_raw[i], v);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) sum_sq += (v[e] - mean) * (v[e] - mean);
  }
  const float rstd = rsqrtf(row_sum(sum_sq, layout.threads_per_row, scratch) / float(p.dim) + p.eps);

#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    if (!(row_ok && i < layout.vecs_per_thread && c < chunks)) continue;
    float v[kVecElems], sh[kVecElems], sc[kVecElems];
    unpack8<T>(v_raw[i], v);
    unpack8<T>(shift_raw[i], sh);
    unpack8<T>(scale_raw[i], sc);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) v[e] = (v[e] - mean) * rstd * (1.f + sc[e]) + sh[e];
    store8(p.y_out + row_offset + c * kVecElems, v);
  }
}

// The same op for per-sample shift/scale/gate ([B, D], seq_stride 0: FLUX and Wan 2.1), pipelined
// (row_pipeline.cuh): x (and residual) of the next kStages - 1 rows are in flight in shared memory while
// this row is reduced; shift/scale/gate sit in the thread's shared-memory slots, reloaded only when the
// row's sample changes. Shared memory: [kStages][kArrays][threads] then [kMods][threads] 16-byte chunks.
template <typename T, bool kHasResidual, int kStages>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    modulated_layer_norm_pipelined_kernel(ModulatedNormParams<T> p, RowLayout layout) {
  constexpr int kArrays = kHasResidual ? 2 : 1;
  extern __shared__ uint4 smem[];
  __shared__ float scratch[kMaxBlockThreads / 32];
  const int threads = int(blockDim.x);
  const int t = threadIdx.x % layout.threads_per_row;
  const int slot_row = threadIdx.x / layout.threads_per_row;
  const bool chunk_ok = t < int(p.dim / kVecElems);  // one vector per thread (kMaxVecsPerThread == 1)
  const int rows = int(p.batch * p.seq);             // < 2^31, checked by the export
  const GroupStride range = block_groups((rows + layout.rows_per_block - 1) / layout.rows_per_block);
  uint4* const mods = smem + kStages * kArrays * threads + threadIdx.x;  // shift, scale, gate slots

  // Copies this thread's chunk of x (and residual) of group g into stage `stage`; always commits a
  // group, so that cp.async.wait_group counts iterations.
  auto issue = [&](int g, int stage) {
    const int row = g < range.end ? g * layout.rows_per_block + slot_row : rows;
    if (row < rows && chunk_ok) {
      const int64_t offset = int64_t(row) * p.dim + t * kVecElems;
      cp_async16(smem + (stage * kArrays) * threads + threadIdx.x, p.x + offset);
      if constexpr (kHasResidual) cp_async16(smem + (stage * kArrays + 1) * threads + threadIdx.x, p.residual + offset);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue(range.begin + s * range.step, s);

  uint32_t sample = 0xffffffffu;
  int stage = 0;
  for (int g = range.begin; g < range.end; g += range.step) {
    issue(g + (kStages - 1) * range.step, stage == 0 ? kStages - 1 : stage - 1);
    cp_async_wait<kStages - 1>();
    const int row = g * layout.rows_per_block + slot_row;
    const bool active = row < rows && chunk_ok;
    const uint32_t b = active ? uint32_t(row) / uint32_t(p.seq) : 0u;
    if (active && b != sample) {
      sample = b;
      mods[0] = load_raw(p.shift.at(b, 0) + t * kVecElems);
      mods[threads] = load_raw(p.scale.at(b, 0) + t * kVecElems);
      if constexpr (kHasResidual) mods[2 * threads] = load_raw(p.gate.at(b, 0) + t * kVecElems);
    }
    const int64_t offset = int64_t(row) * p.dim + t * kVecElems;
    float v[kVecElems];
    float sum = 0.f;
    if (active) {
      uint4 v_raw = smem[(stage * kArrays) * threads + threadIdx.x];
      if constexpr (kHasResidual) {
        float res[kVecElems], gate[kVecElems];
        unpack8<T>(v_raw, v);
        unpack8<T>(smem[(stage * kArrays + 1) * threads + threadIdx.x], res);
        unpack8<T>(mods[2 * threads], gate);
#pragma unroll
        for (int e = 0; e < kVecElems; ++e) v[e] = res[e] + gate[e] * v[e];
        v_raw = pack8<T>(v);  // r rounded to T: the norm reads the rounded r, as the reference
        *reinterpret_cast<uint4*>(p.r_out + offset) = v_raw;
      }
      unpack8<T>(v_raw, v);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) sum += v[e];
    }
    const float mean = row_sum(sum, layout.threads_per_row, scratch) / float(p.dim);
    float sum_sq = 0.f;
    if (active) {
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) sum_sq += (v[e] - mean) * (v[e] - mean);
    }
    const float rstd = rsqrtf(row_sum(sum_sq, layout.threads_per_row, scratch) / float(p.dim) + p.eps);
    if (active) {
      float sh[kVecElems], sc[kVecElems];
      unpack8<T>(mods[0], sh);
      unpack8<T>(mods[threads], sc);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] = (v[e] - mean) * rstd * (1.f + sc[e]) + sh[e];
      store8(p.y_out + offset, v);
    }
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }
  cp_async_wait<0>();
}

template <typename T, bool kHasResidual>
void launch_modulated_layer_norm(const ModulatedNormParams<T>& p, cudaStream_t stream) {
  const RowLayout layout = make_row_layout(p.dim / kVecElems);
  const int64_t rows = p.batch * p.seq;
  const int64_t groups = (rows + layout.rows_per_block - 1) / layout.rows_per_block;
  const bool per_sample = p.shift.seq_stride == 0 && p.scale.seq_stride == 0 &&
                          (!kHasResidual || p.gate.seq_stride == 0);
  if (per_sample) {
    // Two stages (one row in flight beside the current one) with a residual: x and residual double the
    // staging, and 3 stages would let shared memory, not threads, cap the blocks per SM at Wan-14B.
    constexpr int kStages = kHasResidual ? 2 : 3;
    constexpr int kArrays = kHasResidual ? 2 : 1;
    constexpr int kMods = kHasResidual ? 3 : 2;
    const int threads = layout.block_threads();
    const size_t smem = size_t(kStages * kArrays + kMods) * threads * sizeof(uint4);
    auto kernel = modulated_layer_norm_pipelined_kernel<T, kHasResidual, kStages>;
    const int blocks = persistent_blocks(kernel, threads, smem, groups);
    kernel<<<dim3(unsigned(blocks)), threads, smem, stream>>>(p, layout);
    return;
  }
  modulated_layer_norm_kernel<T, kHasResidual><<<dim3(unsigned(groups)), layout.block_threads(), 0, stream>>>(p, layout);
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
