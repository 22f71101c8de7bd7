// comm_pack: out[n, q, p, :] = x[n, p, q, :] — the pack/unpack copy on both sides of a Ulysses all-to-all
// (python/fastdit/distributed/ulysses.py). x [N, P, Q, R] and out [N, Q, P, R] are strided views whose
// rows of R elements are contiguous; the copy moves opaque units of 16, 8, 4, 2 or 1 bytes (the widest
// that the row size, every stride and both base pointers allow), so one kernel serves every dtype.
//
// Threads walk the OUTPUT in memory order: writes stream, and reads are contiguous along each row.
// Index math: two integer divisions per unit. At 16-byte units that is ~60 instructions per 32 bytes
// moved, far below what an H100 issues per byte of HBM bandwidth, so the copy stays memory-bound.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastdit {

struct CommPackParams {
  const void* x;
  void* out;
  int64_t n, p, q, r_units;                  // sizes; the row length counted in copy units
  int64_t x_stride_n, x_stride_p, x_stride_q;  // in copy units (0 allowed: a broadcast input)
  int64_t out_stride_n, out_stride_q, out_stride_p;
};

// Each thread moves kUnroll units; all loads are issued before the stores so they overlap.
template <typename Unit, typename Index, int kUnroll>
__global__ void comm_pack_kernel(CommPackParams params) {
  static_assert(kUnroll >= 1 && kUnroll <= 8, "kUnroll: 1..8 units per thread");
  const Unit* __restrict__ x = static_cast<const Unit*>(params.x);
  Unit* __restrict__ out = static_cast<Unit*>(params.out);
  const Index total = Index(params.n) * Index(params.q) * Index(params.p) * Index(params.r_units);
  const Index r = Index(params.r_units), P = Index(params.p), Q = Index(params.q);
  const Index base = Index(blockIdx.x) * kUnroll * blockDim.x + threadIdx.x;
  Unit vals[kUnroll];
  int64_t dst[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const Index i = base + Index(u) * blockDim.x;
    dst[u] = -1;
    if (i < total) {
      const Index col = i % r;
      const Index row = i / r;  // output row in (n, q, p) order
      const Index pp = row % P;
      const Index rest = row / P;
      const Index qq = rest % Q;
      const Index nn = rest / Q;
      vals[u] = x[int64_t(nn) * params.x_stride_n + int64_t(pp) * params.x_stride_p + int64_t(qq) * params.x_stride_q +
                  int64_t(col)];
      dst[u] = int64_t(nn) * params.out_stride_n + int64_t(qq) * params.out_stride_q + int64_t(pp) * params.out_stride_p +
               int64_t(col);
    }
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (dst[u] >= 0) out[dst[u]] = vals[u];
  }
}

template <typename Unit>
void launch_comm_pack(const CommPackParams& params, cudaStream_t stream) {
  constexpr int kThreads = 256;
  constexpr int kUnroll = 4;
  const int64_t total = params.n * params.q * params.p * params.r_units;
  const int64_t per_block = int64_t(kThreads) * kUnroll;
  const dim3 grid(unsigned((total + per_block - 1) / per_block));
  // 32-bit index math when the whole copy fits (every realistic activation does): cheaper divisions.
  if (total < (int64_t(1) << 32) - per_block) {
    comm_pack_kernel<Unit, uint32_t, kUnroll><<<grid, kThreads, 0, stream>>>(params);
  } else {
    comm_pack_kernel<Unit, uint64_t, kUnroll><<<grid, kThreads, 0, stream>>>(params);
  }
}

}  // namespace fastdit
