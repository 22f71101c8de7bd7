// The adaLN family: layer_norm_modulate and gated_residual_norm_modulate, one kernel.
//
//   layer_norm_modulate:           y = LN(x) * (1 + scale) + shift
//   gated_residual_norm_modulate:  r = round(residual + gate * x);  y = LN(r) * (1 + scale) + shift
//
// LN has no affine, statistics in fp32: each thread sums v - k and (v - k)^2 over its own elements (one pass
// over its registers; k = the mean of the row's first 8 elements, the same in every thread), and one
// reduction per row adds the partial sums up (row_sums<2>, row_layout.cuh); see the kernel for why k.
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

// n / d for 0 <= n < 2^31 and a d in [1, 2^31) fixed for the launch, as a multiply-high, an add and a shift
// (Granlund and Montgomery), where a 32-bit division is ~15 dependent instructions. With l = ceil(log2 d)
// and m = floor(2^32 (2^l - d) / d) + 1 (< 2^32): n / d = (umulhi(m, n) + n) >> l, exact for every
// n < 2^31 (the sum stays below 2^32 there; checked exhaustively over small d and at random up to 2^31).
struct RowDivider {
  uint32_t multiplier;
  uint32_t shift;
  static RowDivider make(uint32_t d) {
    uint32_t l = 0;
    while (l < 32 && (uint64_t(1) << l) < d) ++l;
    const uint64_t m = ((uint64_t(1) << 32) * ((uint64_t(1) << l) - d)) / d + 1;
    return {uint32_t(m), l};
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(multiplier, n) + n) >> shift; }
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
  RowDivider seq_divider;  // RowDivider::make(seq), set by the launcher
};

// r = round(residual + gate * x) for one vector of 8, packed as T: the gated norm's r (the norm reads the
// rounded r, as the reference does), and the r its shift k is taken from.
template <typename T>
__device__ __forceinline__ uint4 gated_residual8(uint4 x_raw, uint4 residual_raw, uint4 gate_raw) {
  float v[kVecElems], res[kVecElems], g[kVecElems];
  unpack8<T>(x_raw, v);
  unpack8<T>(residual_raw, res);
  unpack8<T>(gate_raw, g);
#pragma unroll
  for (int e = 0; e < kVecElems; ++e) v[e] = fmaf(g[e], v[e], res[e]);
  return pack8<T>(v);
}

// Vectors per thread up to which the gated norm loads gate/shift/scale with the row (see the kernel).
constexpr int kPrefetchVecs = 4;

// Registers: at 3 vectors per thread (FLUX, Wan-1.3B rows) ptxas gives the plain norm 48 (10 blocks of 128
// per SM) and the gated one 78 (6 blocks). Capping them has been slower each time it was tried on the H100
// (bench/gpu_ab.sh): 16 and 8 blocks (32 and 64 registers, 24-28 bytes of spills; 2026-11-24) took FLUX rows
// 26.7 -> 28.5 us and 44.3 -> 47.7 us; 12 blocks for the plain norm (40 registers, 4 bytes of spills;
// 2026-11-25) 21.3 -> 21.6 us back to back.
template <typename T, bool kHasResidual, int kVecs>
__global__ void __launch_bounds__(kVecRowThreads) modulated_layer_norm_kernel(ModulatedNormParams<T> p, VecRowLayout layout) {
  __shared__ float scratch[2 * kVecRowThreads / 32];
  // threads_per_row is a power of two: shifts and masks, where a runtime division is ~15 instructions
  // (the kernel is instruction-bound at FLUX rows, see below).
  const int t = threadIdx.x & (layout.threads_per_row - 1);
  const int64_t row = int64_t(blockIdx.x) * layout.rows_per_block + (threadIdx.x >> (__ffs(layout.threads_per_row) - 1));
  const bool row_ok = row < p.batch * p.seq;
  // Rows number below 2^31 (the export checks).
  const uint32_t row32 = row_ok ? uint32_t(row) : 0u;
  const uint32_t b = p.seq_divider.div(row32);
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
      v_raw[i] = gated_residual8<T>(v_raw[i], res_raw[i], modulation(gate_raw, gate, i, c));
      *reinterpret_cast<uint4*>(p.r_out + row_offset + c * kVecElems) = v_raw[i];
    });
  }

  // Statistics in one pass over the thread's elements, shifted by k, the mean of the row's first 8 elements
  // (every thread loads that vector and computes k alike; for the gated norm from r, computed as thread 0
  // computes it). Shifting by a sample of the row keeps s2 - s1^2 / dim from cancelling the way a raw sum
  // of squares would on rows far from zero: (k - mean)^2 <= m2 / 8, so the error stays within ~dim / 8 ulp
  // of m2 even when one of those 8 is an outlier thousands of standard deviations out (a single element as
  // k measured 1 fp16 ulp of error there: the outlier tests in tests/ops). With one shift for the whole row
  // the partial sums simply add up (row_sums: 2 values, no divide), where per-thread shifts took a Chan
  // merge (a divide and ~15 instructions) at each of 5 shuffle steps and across the warps. 4 instructions
  // an element. The kernel is instruction-bound at FLUX rows (Nsight Compute, RESULTS.md): with this, the
  // shift/mask row indexing and the multiply-high divide above, 880 -> 544 instructions in the FLUX-row
  // kernel's SASS, and on the H100 (bench/gpu_ab.sh, 2 rounds each, 2026-11-25) FLUX rows 22.6 -> 21.3 us
  // back to back (83% -> 88% of copy) with one element as k, 21.5 us with the mean of 8; two passes
  // (mean, then centred squares: exact, two reductions) 21.7 us.
  float first[kVecElems];  // the row's first 8 elements (of r for the gated norm, computed as thread 0 does)
  if constexpr (kHasResidual) {
    unpack8<T>(gated_residual8<T>(load_raw(p.x + row_offset), load_raw(p.residual + row_offset),
                                  load_raw_readonly(p.gate.at(b, s))), first);
  } else {
    unpack8<T>(load_raw(p.x + row_offset), first);
  }
  float k = 0.f;
#pragma unroll
  for (int e = 0; e < kVecElems; ++e) k += first[e];
  k *= 1.f / kVecElems;
  float sums[2] = {0.f, 0.f};  // sum (v - k), sum (v - k)^2
  each_vec([&](int i, int) {
    float v[kVecElems];
    unpack8<T>(v_raw[i], v);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) {
      const float d = v[e] - k;
      sums[0] += d;
      sums[1] = fmaf(d, d, sums[1]);
    }
  });
  // Rows of several vectors per thread span whole warps (make_vec_row_layout): a constant width there.
  const int width = kVecs > 1 ? 32 : layout.threads_per_row < 32 ? layout.threads_per_row : 32;
  row_sums<2>(sums, width, layout.threads_per_row, scratch);
  const float inv_dim = __fdividef(1.f, float(p.dim));
  const float mean = k + sums[0] * inv_dim;
  const float m2 = fmaxf(sums[1] - sums[0] * sums[0] * inv_dim, 0.f);
  const float rstd = rsqrtf(m2 * inv_dim + p.eps);
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
void launch_modulated_layer_norm(ModulatedNormParams<T> p, cudaStream_t stream) {
  p.seq_divider = RowDivider::make(uint32_t(p.seq));
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
