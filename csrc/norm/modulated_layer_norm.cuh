// The adaLN family: layer_norm_modulate and gated_residual_norm_modulate, one kernel.
//
//   layer_norm_modulate:           y = LN(x) * (1 + scale) + shift
//   gated_residual_norm_modulate:  r = round(residual + gate * x);  y = LN(r) * (1 + scale) + shift
//
// LN has no affine, statistics in fp32: each thread takes the mean and centred sum of squares of its own
// elements (one pass over its registers, shifted by its first element), then the row merges them (Chan's
// formula, row_vectors.cuh): one reduction per row.
// r is rounded to T before the norm, as the reference computes it. x, residual, r and y are contiguous
// [batch, seq, dim]. shift/scale/gate are ModulationViews: [batch, dim] per sample (seq_stride 0) or
// [batch, seq, dim] per token, with any batch/seq strides, so the strided views of temb.chunk(6, dim=1)
// are read where they lie, without a copy.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../elementwise/vector_io.cuh"
#include "row_layout.cuh"
#include "row_vectors.cuh"

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

// Vectors per thread up to which the gated norm loads gate/shift/scale with the row (see the kernel).
constexpr int kPrefetchVecs = 4;

// Registers: at 3 vectors per thread (FLUX, Wan-1.3B rows) ptxas gives the plain norm 38 (12 blocks of 128
// per SM) and the gated one 71 (7 blocks). Forcing 16 and 8 blocks (__launch_bounds__ minimum; 32 and 64
// registers, 24-28 bytes of spills) was slower on the H100 (2026-11-24, bench/gpu_ab.sh, 3 rounds): FLUX
// rows 26.7 -> 28.5 us and 44.3 -> 47.7 us, Wan-1.3B 73.9 -> 81.0 and 139.4 -> 147.7.
template <typename T, bool kHasResidual, int kVecs>
__global__ void __launch_bounds__(kVecRowThreads) modulated_layer_norm_kernel(ModulatedNormParams<T> p, VecRowLayout layout) {
  __shared__ float scratch[3 * kVecRowThreads / 32];
  const int t = threadIdx.x % layout.threads_per_row;
  const int64_t row = int64_t(blockIdx.x) * layout.rows_per_block + threadIdx.x / layout.threads_per_row;
  const bool row_ok = row < p.batch * p.seq;
  // Rows number below 2^31 (the export checks): a 32-bit division, where a 64-bit one is a call.
  const uint32_t row32 = row_ok ? uint32_t(row) : 0u;
  const uint32_t b = row32 / uint32_t(p.seq);
  const uint32_t s = row32 - b * uint32_t(p.seq);
  const int chunks = int(p.dim / kVecElems);
  const int64_t row_offset = int64_t(row32) * p.dim;

  // The row stays packed in registers (v_raw: x, or r once the gated residual is applied). x and residual
  // are loaded first, all of them, so that every load of the thread is in flight at once. The gated norm
  // on rows of at most kPrefetchVecs vectors per thread (FLUX, Wan-1.3B) also loads gate, shift and scale
  // up front, so that no load waits behind the row reduction: FLUX rows 45.7 -> 44.0 us, Wan-1.3B 140.4 ->
  // 139.6 (H100, bench/gpu_ab.sh, 2026-11-24). The plain norm gained nothing from it (Wan-1.3B rows 0.9%
  // slower; its registers went from 38 to 64 at 3 vectors), and wider rows (Wan-14B: 5) keep the old path.
  constexpr bool kPrefetch = kHasResidual && kVecs <= kPrefetchVecs;
  auto each_vec = [&](auto&& fn) { for_each_vec<kVecs>(t, layout.threads_per_row, chunks, row_ok, fn); };
  uint4 v_raw[kVecs];
  uint4 shift_raw[kPrefetch ? kVecs : 1], scale_raw[kPrefetch ? kVecs : 1];
  // Vector i (chunk c) of a modulation: the prefetched one, or loaded now.
  auto modulation = [&](const uint4* prefetched, const T* vec, int i, int c) {
    if constexpr (kPrefetch) return prefetched[i];
    else return load_raw_readonly(vec + c * kVecElems);
  };
  each_vec([&](int i, int c) { v_raw[i] = load_raw(p.x + row_offset + c * kVecElems); });
  if constexpr (kHasResidual) {
    uint4 res_raw[kVecs];
    uint4 gate_raw[kPrefetch ? kVecs : 1];
    each_vec([&](int i, int c) { res_raw[i] = load_raw(p.residual + row_offset + c * kVecElems); });
    const T* gate = p.gate.at(b, s);
    if constexpr (kPrefetch) {
      const T* shift = p.shift.at(b, s);
      const T* scale = p.scale.at(b, s);
      each_vec([&](int i, int c) {
        gate_raw[i] = load_raw_readonly(gate + c * kVecElems);
        shift_raw[i] = load_raw_readonly(shift + c * kVecElems);
        scale_raw[i] = load_raw_readonly(scale + c * kVecElems);
      });
    }
    each_vec([&](int i, int c) {
      float v[kVecElems], res[kVecElems], g[kVecElems];
      unpack8<T>(v_raw[i], v);
      unpack8<T>(res_raw[i], res);
      unpack8<T>(modulation(gate_raw, gate, i, c), g);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] = res[e] + g[e] * v[e];
      v_raw[i] = pack8<T>(v);  // r rounded to T: the norm below reads the rounded r, as the reference
      *reinterpret_cast<uint4*>(p.r_out + row_offset + c * kVecElems) = v_raw[i];
    });
  }

  // The thread's count, mean and M2 in one pass over its elements, shifted by its first element k (a sample
  // of the same data, so s2 - s1^2 / n does not cancel the way a raw sum of squares would): 4 instructions an
  // element where a mean pass and a centred pass took 5; the kernel is instruction-bound at FLUX rows at a
  // locked 1.56 GHz (Nsight Compute, bench/RESULTS.md). With the 3-instruction output below, on the H100 at
  // its own clocks (bench/gpu_ab.sh, 3 rounds): FLUX rows 26.4/26.2/26.5 -> 26.0/26.2/26.0 us, the gated
  // norm unchanged (43.9/43.7/43.9 -> 43.9/44.2/43.8).
  float n = 0.f, s1 = 0.f, s2 = 0.f, k = 0.f;
  each_vec([&](int i, int) {
    float v[kVecElems];
    unpack8<T>(v_raw[i], v);
    if (i == 0) k = v[0];
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) {
      const float d = v[e] - k;
      s1 += d;
      s2 = fmaf(d, d, s2);
    }
    n += float(kVecElems);
  });
  const float inv_n = n > 0.f ? 1.f / n : 0.f;
  float mean = k + s1 * inv_n;
  float m2 = fmaxf(s2 - s1 * s1 * inv_n, 0.f);
  row_stats(n, mean, m2, layout.threads_per_row, scratch);
  const float rstd = rsqrtf(m2 / float(p.dim) + p.eps);
  const float mean_rstd = -mean * rstd;  // y = (v * rstd - mean * rstd) * (1 + scale) + shift: 3 instructions

  // shift and scale: one vector per sample (L2-resident) or per token, read where they lie.
  const T* shift = p.shift.at(b, s);
  const T* scale = p.scale.at(b, s);
  each_vec([&](int i, int c) {
    float v[kVecElems], sh[kVecElems], sc[kVecElems];
    unpack8<T>(v_raw[i], v);
    unpack8<T>(modulation(shift_raw, shift, i, c), sh);
    unpack8<T>(modulation(scale_raw, scale, i, c), sc);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) v[e] = fmaf(fmaf(v[e], rstd, mean_rstd), 1.f + sc[e], sh[e]);
    store8(p.y_out + row_offset + c * kVecElems, v);
  });
}

template <typename T, bool kHasResidual>
void launch_modulated_layer_norm(const ModulatedNormParams<T>& p, cudaStream_t stream) {
  const VecRowLayout layout = make_vec_row_layout(p.dim / kVecElems);
  const int64_t rows = p.batch * p.seq;
  const int64_t blocks = (rows + layout.rows_per_block - 1) / layout.rows_per_block;
  dispatch_vecs(layout.vecs, [&](auto vecs) {
    modulated_layer_norm_kernel<T, kHasResidual, decltype(vecs)::value>
        <<<dim3(unsigned(blocks)), layout.block_threads(), 0, stream>>>(p, layout);
  });
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
