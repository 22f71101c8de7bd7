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
