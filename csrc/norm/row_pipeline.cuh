// Persistent, software-pipelined row loop, used by qk_norm_rope's "half" style (the norms and the
// interleaved qk_norm_rope moved to row_vectors.cuh: several vectors per thread in registers measured
// faster for them).
//
// Why: with one block per row, a block loads its row, then spends the rest of its life in two block-wide
// reductions and the store, with nothing in flight; a copy keeps the memory system busy all the time.
// On the H100 (2026-11-24, commit 38f5161) that left the one-row-per-block kernels at 57-73% of the copy
// bandwidth on FLUX rows (3072 wide: 6 KB per row, about 30 KB of loads in flight per SM at best).
// Here a grid of (SMs x resident blocks) walks the rows grid-stride. Every thread copies its
// own 16-byte chunk of the next kStages - 1 rows into shared memory with cp.async (no registers held)
// while it reduces the current row, so each SM has loads in flight during the reductions too.
// Per-sample vectors (rms_norm's weight, shift/scale/gate of shape [B, D]) are read from global memory
// once per block and sample into the thread's own shared-memory slot, not once per row.
//
// A thread only ever reads the shared-memory slots it wrote itself (its chunk, its row of the group), so
// the pipeline needs no block barrier: cp.async.wait_group makes a thread's own copies visible to it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "row_layout.cuh"

namespace fastdit {

// 16 bytes global -> shared without passing through registers (sm_80+); both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// The groups (of rows_per_block rows) of this block: begin, begin + step, ... below end (a grid-stride
// loop). Not a contiguous range per block: the H100 run of 1eb53e5 (contiguous ranges) was up to 10%
// slower than one block per row at Wan-1.3B rows, the resident blocks then reading hundreds of far-apart
// streams at once, where a grid-stride walk sweeps memory in order as a copy does.
struct GroupStride {
  int begin;
  int step;
  int end;
};

__device__ __forceinline__ GroupStride block_groups(int groups) {
  return {int(blockIdx.x), int(gridDim.x), groups};
}

// Blocks for a persistent launch: as many as the GPU holds at once (SMs x resident blocks of `kernel`
// at this size), at most one per group. Host-only calls, allowed during CUDA graph capture.
template <typename Kernel>
inline int persistent_blocks(Kernel kernel, int threads, size_t smem_bytes, int64_t groups) {
  int device = 0, sms = 0, per_sm = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (smem_bytes > 48 * 1024) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes));
  }
  // The grid is sized for every block to be resident at once, which needs the shared-memory carveout that
  // the occupancy API assumes (all of it: these kernels use no L1 besides the staging). Left to the
  // driver, a carveout sized for fewer blocks would run the "persistent" grid in several waves.
  cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared));
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes);
  const int64_t most = int64_t(sms > 0 ? sms : 1) * (per_sm > 0 ? per_sm : 1);
  return int(groups < most ? groups : most);
}

}  // namespace fastdit
