// How a row-wise kernel spreads one row (a token's features) over threads, and the in-row sum.
//
// A row of `dim` half-precision elements is `chunks = dim / 8` 16-byte vectors. `threads_per_row`
// threads share a row; thread t holds chunks t, t + threads_per_row, ... (at most kMaxVecsPerThread of
// them) packed in registers, so a row is read once and written once whatever the op does in between.
// Narrow rows (dim <= 256) pack several rows into one block of 256 threads; wide rows get one thread per
// chunk, up to 1024. One vector per thread keeps registers low (full occupancy: 2048 threads, each with
// its loads in flight, per SM); measured on the H100 (2026-11-24), 4 vectors per thread at 256 threads
// per row reached 1.9-2.3 TB/s on Wan-14B rows, against 3.0 TB/s for a copy.
// Used by qk_norm_rope's "half" style (a row there is one token's heads); the row sums also by
// the register-row kernels (row_vectors.cuh).
#pragma once

#include <cstdint>

namespace fastdit {

constexpr int kMaxVecsPerThread = 1;
constexpr int kMaxThreadsPerRow = 1024;
constexpr int kBlockThreads = 256;     // the block size when several narrow rows share a block
constexpr int kMaxBlockThreads = 1024;
// Every row kernel is compiled for 2 resident blocks of 1024 threads, i.e. at most 32 registers per
// thread, so that registers never cap the threads an SM holds. Without the cap ptxas gave the bf16
// modulated norm 54 registers: one 640-thread Wan-14B block per SM, 865 GB/s against 3.0 TB/s for a copy
// (H100, 2026-11-24), while rms_norm at 32 registers (three such blocks) reached 2.36 TB/s.
constexpr int kMinBlocksPerSm = 2;
// The widest row the register-resident kernels take: 1024 threads x 1 vector x 8 elements.
constexpr int64_t kMaxRowElems = int64_t(kMaxThreadsPerRow) * kMaxVecsPerThread * 8;

struct RowLayout {
  int threads_per_row;  // a power of two below 32, else a multiple of 32 (whole warps)
  int rows_per_block;
  int vecs_per_thread;  // <= kMaxVecsPerThread
  int block_threads() const { return threads_per_row * rows_per_block; }
};

inline RowLayout make_row_layout(int64_t chunks) {
  RowLayout layout;
  if (chunks <= 32) {
    int tpr = 1;
    while (tpr < chunks) tpr *= 2;
    layout.threads_per_row = tpr;
  } else {
    int64_t rounded = (chunks + 31) / 32 * 32;
    layout.threads_per_row = int(rounded < kMaxThreadsPerRow ? rounded : kMaxThreadsPerRow);
  }
  layout.rows_per_block = layout.threads_per_row >= kBlockThreads ? 1 : kBlockThreads / layout.threads_per_row;
  layout.vecs_per_thread = int((chunks + layout.threads_per_row - 1) / layout.threads_per_row);
  return layout;
}

// Sums of N values at once over the lanes of an aligned group of `width` lanes (a power of two <= 32): the
// N butterflies interleaved, so the shuffles of independent sums overlap instead of running as N dependent
// chains. Every lane of the warp must call it, whether or not its row exists: the shuffles use the full mask.
template <int N>
__device__ __forceinline__ void group_sums(float (&v)[N], int width) {
#pragma unroll
  for (int offset = width / 2; offset > 0; offset /= 2) {
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] += __shfl_xor_sync(0xffffffffu, v[j], offset);
  }
}

__device__ __forceinline__ float group_sum(float v, int width) {
  float sums[1] = {v};
  group_sums<1>(sums, width);
  return sums[0];
}

// Sums of N values at once over the threads of this thread's row: one pass of shuffles and one pair of
// barriers for all. `width` is min(threads_per_row, 32), a constant where the caller knows it (the shuffle
// steps then unroll). `scratch` holds N floats per warp of the block. Every thread of the block must call
// it (it synchronizes the block when a row spans several warps).
template <int N>
__device__ __forceinline__ void row_sums(float (&v)[N], int width, int threads_per_row, float* scratch) {
  group_sums<N>(v, width);
  if (threads_per_row <= 32) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps_per_row = threads_per_row / 32;
  // The row's first warp: a mask when warps_per_row is a power of two (every register-row layout), where
  // a division is ~15 instructions.
  const int first_warp = (warps_per_row & (warps_per_row - 1)) == 0 ? warp & ~(warps_per_row - 1)
                                                                     : warp / warps_per_row * warps_per_row;
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < N; ++j) scratch[N * warp + j] = v[j];
  }
  __syncthreads();
  // Lane l of every warp of the row takes warp l's partials and the warp sums them with shuffles: one
  // shared-memory read per value and 5 shuffle steps, where a loop over up to 32 partials was a chain of
  // dependent loads that left the SM idle while only a few blocks (rows) are resident.
#pragma unroll
  for (int j = 0; j < N; ++j) v[j] = lane < warps_per_row ? scratch[N * (first_warp + lane) + j] : 0.f;
  group_sums<N>(v, 32);
  __syncthreads();  // scratch is reused by the next reduction
}

__device__ __forceinline__ float row_sum(float v, int threads_per_row, float* scratch) {
  float sums[1] = {v};
  row_sums<1>(sums, threads_per_row < 32 ? threads_per_row : 32, threads_per_row, scratch);
  return sums[0];
}

}  // namespace fastdit
