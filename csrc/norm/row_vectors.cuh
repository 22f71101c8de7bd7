// Register-resident rows for the norm kernels: each thread holds several 16-byte vectors of its row.
//
// A row of `chunks` 16-byte vectors (8 half-precision elements each) is spread over threads_per_row <= 128
// threads, thread t holding chunks t, t + threads_per_row, ... (`vecs` of them, a template argument so
// that they live in registers). A block is 128 threads: one row, or several narrower rows.
//
// Why this shape (H100, 2026-11-24, scratch experiment of 18 layouts x 3 cache hints, bf16, cold L2,
// times against cudaMemcpy of the same bytes): one vector per thread in rows of 384-640 threads reached
// 37-97% of that copy (the layer norms worst: two block-wide reductions per row with nothing in flight);
// the persistent cp.async pipeline of commit 1eb53e5 57-92% of the 1 GiB copy. Rows of 96-128 threads
// with 2-5 vectors each reached 93-104% of the same-size copy for rms_norm, layer_norm_modulate and
// gated_residual_norm_modulate at FLUX (4608 x 3072), Wan-1.3B (32760 x 1536) and Wan-14B (75600 x 5120)
// rows: each thread has all of its loads in flight at once and a reduction spans at most 4 warps.
// Cache hints (evict-first, L1::no_allocate) changed nothing beyond noise and are not used.
#pragma once

#include <cstdint>
#include <type_traits>

#include "row_layout.cuh"

namespace fastdit {

constexpr int kVecRowThreads = 128;  // the most threads per row, and the block size the layout aims at
constexpr int kVecRowMaxVecs = 8;    // 128 threads x 8 vectors x 8 elements = kMaxRowElems (8192)

struct VecRowLayout {
  int vecs;             // vectors per thread: 1, 2, 3, 4, 5, 6 or 8 (the instantiated kernels)
  int threads_per_row;  // a power of two, <= 128
  int rows_per_block;
  int block_threads() const { return threads_per_row * rows_per_block; }
};

// Rows of at most 32 chunks: one vector per thread, threads_per_row the next power of two, several rows per
// block. Wider rows: threads_per_row 128, 64 or 32 (whole warps, a power of two) and vecs = chunks /
// threads_per_row rounded up (7 -> 8, at most 8), the choice that leaves the fewest thread slots idle,
// ties to more threads. Not 96 threads: the H100 run of 705c465 (scratch experiment on the production
// kernels, 2026-11-24) had layer_norm_modulate at Wan-1.3B rows (192 chunks) at 86.8% of a same-size copy
// in rows of 96 threads x 2 vectors and 96.6% in 64 x 3 (rms_norm and the gated norm: equal within 1%).
// chunks <= 1024 (dim <= 8192, checked by the exports).
inline VecRowLayout make_vec_row_layout(int64_t chunks) {
  if (chunks <= 32) {
    int tpr = 1;
    while (tpr < chunks) tpr *= 2;
    return {1, tpr, kVecRowThreads / tpr};
  }
  VecRowLayout best{kVecRowMaxVecs, kVecRowThreads, 1};
  int64_t best_idle = -1;
  for (int tpr = kVecRowThreads; tpr >= 32; tpr /= 2) {
    int vecs = int((chunks + tpr - 1) / tpr);
    if (vecs == 7) vecs = 8;
    if (vecs > kVecRowMaxVecs) break;
    const int64_t idle = int64_t(vecs) * tpr - chunks;
    if (best_idle < 0 || idle < best_idle) {
      best = {vecs, tpr, kVecRowThreads / tpr};
      best_idle = idle;
    }
  }
  return best;
}

// Chan's merge of two partial (count, mean, M2 = sum of squared deviations) statistics: exact in real
// arithmetic and stable in fp32 (no sum-of-squares minus squared-sum cancellation).
__device__ __forceinline__ void merge_stats(float& n, float& mean, float& m2, float nb, float mean_b, float m2_b) {
  const float n_ab = n + nb;
  if (n_ab == 0.f) return;
  const float delta = mean_b - mean;
  // Counts are exact small integers, where the fast divide is within 2 ulp; the IEEE one is a longer
  // sequence on every merge of the reduction (layer_norm_modulate at FLUX rows, H100, bench/gpu_ab.sh,
  // 3 rounds: 26.4/26.6/26.6 -> 26.4/26.2/26.1 us).
  const float frac_b = __fdividef(nb, n_ab);
  mean += delta * frac_b;
  m2 += m2_b + delta * delta * n * frac_b;
  n = n_ab;
}

// Merges (n, mean, m2) over the threads of this thread's row; every thread of the block must call it.
// `scratch` holds 3 floats per warp of the block (rows of more than 32 threads only).
__device__ __forceinline__ void row_stats(float& n, float& mean, float& m2, int threads_per_row, float* scratch) {
  const int width = threads_per_row < 32 ? threads_per_row : 32;
  for (int offset = width / 2; offset > 0; offset /= 2) {
    const float nb = __shfl_xor_sync(0xffffffffu, n, offset);
    const float mean_b = __shfl_xor_sync(0xffffffffu, mean, offset);
    const float m2_b = __shfl_xor_sync(0xffffffffu, m2, offset);
    merge_stats(n, mean, m2, nb, mean_b, m2_b);
  }
  if (threads_per_row <= 32) return;
  const int warp = threadIdx.x / 32;
  const int warps_per_row = threads_per_row / 32;
  const int first_warp = warp / warps_per_row * warps_per_row;
  if (threadIdx.x % 32 == 0) {
    scratch[3 * warp] = n;
    scratch[3 * warp + 1] = mean;
    scratch[3 * warp + 2] = m2;
  }
  __syncthreads();
  n = scratch[3 * first_warp];
  mean = scratch[3 * first_warp + 1];
  m2 = scratch[3 * first_warp + 2];
  for (int w = first_warp + 1; w < first_warp + warps_per_row; ++w) {
    merge_stats(n, mean, m2, scratch[3 * w], scratch[3 * w + 1], scratch[3 * w + 2]);
  }
  __syncthreads();  // scratch is reused by the next row
}

// Calls fn(i, c) for each of this thread's vectors i < kVecs whose chunk c = t + i * threads_per_row lies
// in the row (row_ok and c < chunks): the loop a register-row kernel runs over its row, unrolled.
template <int kVecs, typename Fn>
__device__ __forceinline__ void for_each_vec(int t, int threads_per_row, int chunks, bool row_ok, Fn&& fn) {
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int c = t + i * threads_per_row;
    if (row_ok && c < chunks) fn(i, c);
  }
}

// Calls fn(std::integral_constant<int, V>) with the layout's vector count as a compile-time constant.
template <typename Fn>
inline void dispatch_vecs(int vecs, Fn&& fn) {
  switch (vecs) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 5: fn(std::integral_constant<int, 5>{}); break;
    case 6: fn(std::integral_constant<int, 6>{}); break;
    default: fn(std::integral_constant<int, 8>{}); break;
  }
}

}  // namespace fastdit
