// Epilogue of the sm90 forward kernel: O (already normalized, fp32 accumulator) -> out in the input
// dtype, and the optional LSE, straight from registers to global memory.
//
// Each thread owns rows r and r+8 of its warp's 16 rows and, per 8-column chunk, 2 adjacent columns:
// 4-byte stores, predicated on row < seqlen_q. Not staged through shared memory: O is written once per
// tile (FLUX-1024: 32 KiB per ~60 us of math), and keeping smem free lets the producer refill K/V and
// Q of the next tile during this store.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

#include "attention_fwd_params.h"
#include "attention_fwd_sm90_softmax.cuh"
#include "attention_fwd_sm90_tile_scheduler.cuh"

namespace fastdit::attention::sm90 {

using namespace cute;

template <class Element, int kHeadDim, int kBlockM>
struct FwdEpilogue {
  struct Params {
    Element* out;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    float* lse;  // [B, H, Sq] or null
    int seqlen_q, num_heads;
  };

  static Params make_params(FwdArguments const& a) {
    return {static_cast<Element*>(a.out), a.o_batch_stride, a.o_row_stride, a.o_head_stride,
            a.lse, a.seqlen_q, a.num_heads};
  }

  // tOrO: this thread's ((2, 2, D/8), 1, 1) accumulator slice; lse: its 2 rows' log-sum-exp.
  template <class FragO, class TiledMma>
  __device__ static void store(Params const& p, FragO const& tOrO, float const (&lse)[2],
                               TiledMma const& tiled_mma, int mma_thread_idx, TileCoord tile) {
    auto thread_mma = tiled_mma.get_thread_slice(mma_thread_idx);
    Tensor cO = thread_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Element* out = p.out + tile.batch * p.o_batch_stride + tile.head * p.o_head_stride;
    int const row0 = tile.m_block * kBlockM;
    cutlass::NumericArrayConverter<Element, float, 2> convert;
    CUTE_UNROLL
    for (int i = 0; i < size(tOrO); i += 2) {  // (i, i+1) are adjacent columns of one row
      int const row = row0 + get<0>(cO(i));
      if (row < p.seqlen_q) {
        cutlass::Array<float, 2> pair{};
        pair[0] = tOrO(i);
        pair[1] = tOrO(i + 1);
        *reinterpret_cast<cutlass::Array<Element, 2>*>(out + row * p.o_row_stride + get<1>(cO(i))) = convert(pair);
      }
    }
    if (p.lse != nullptr && get<1>(cO(0)) == 0) {  // the quad's first thread holds column 0
      float* lse_row = p.lse + (int64_t(tile.batch) * p.num_heads + tile.head) * p.seqlen_q;
      CUTE_UNROLL
      for (int mi = 0; mi < 2; ++mi) {
        int const row = row0 + get<0>(cO(2 * mi));  // value (0, mi, 0): row + 8*mi
        if (row < p.seqlen_q) lse_row[row] = lse[mi];
      }
    }
  }

  // Split tail (see the tile scheduler): a contribution is this thread's normalized O fragment and its
  // 2 rows' LSE in the CTA's workspace slot, as float4 chunks interleaved over the consumer threads
  // (chunk j of thread t at (slot * kChunks + j) * kThreads + t: coalesced), the LSE in the last
  // chunk. The owner's thread t reads back exactly what the peer's thread t wrote (same fragment).
  template <class FragO>
  struct Partial {
    static constexpr int kThreads = 2 * cutlass::NumThreadsPerWarpGroup;
    static constexpr int kFrag = decltype(size(FragO{}))::value;
    static_assert(kFrag % 4 == 0, "the O fragment is stored as float4 chunks");
    static constexpr int kChunks = kFrag / 4 + 1;
    static constexpr int kFloatsPerSlot = kChunks * 4 * kThreads;
  };

  // Writes the contribution, then counts this thread into the slot's flag (the owner waits for all
  // kThreads). __threadfence orders the chunk stores before the count for any observer on the GPU.
  template <class FragO>
  __device__ static void store_partial(float4* workspace, int* flags, int slot, FragO const& tOrO,
                                       float const (&lse)[2], int mma_thread_idx) {
    using P = Partial<FragO>;
    float4* dst = workspace + static_cast<int64_t>(slot) * P::kChunks * P::kThreads + mma_thread_idx;
    CUTE_UNROLL
    for (int j = 0; j < P::kFrag / 4; ++j) {
      float const* v = tOrO.data() + 4 * j;  // register offsets: the owner indexes the same way
      dst[j * P::kThreads] = make_float4(v[0], v[1], v[2], v[3]);
    }
    dst[(P::kChunks - 1) * P::kThreads] = make_float4(lse[0], lse[1], 0.f, 0.f);
    __threadfence();
    atomicAdd(flags + slot, 1);
  }

  // Merges the contributions of slots [first, last] into this thread's normalized O and LSE:
  //   lse' = log(e^lse + e^lse_p),  O' = O e^(lse - lse') + O_p e^(lse_p - lse')   per row.
  // Spins until each slot's flag counts every writer (acquire), and reads around L1 (ld.global.cg). Then
  // each reader counts itself in too, and the last of them sets the flag back to 0, so the flags are zero
  // again when the launch ends (the next launch reuses them without a memset). A reader never sees the
  // flag drop below kThreads before it has passed its own wait: it only drops after all readers counted.
  template <class FragO>
  __device__ static void merge_partials(float4 const* workspace, int* flags, int first, int last, FragO& tOrO,
                                        float (&lse)[2], int mma_thread_idx) {
    using P = Partial<FragO>;
    Tensor o = make_tensor(tOrO.data(), acc_layout_rowcol(tOrO.layout()));
    for (int slot = first; slot <= last; ++slot) {
      int count = 0;
      do {
        asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(count) : "l"(flags + slot) : "memory");
      } while (count < P::kThreads);
      float4 const* src = workspace + static_cast<int64_t>(slot) * P::kChunks * P::kThreads + mma_thread_idx;
      float peer[P::kFrag];
      CUTE_UNROLL
      for (int j = 0; j < P::kFrag / 4; ++j) {
        float4 const c = __ldcg(src + j * P::kThreads);
        peer[4 * j] = c.x, peer[4 * j + 1] = c.y, peer[4 * j + 2] = c.z, peer[4 * j + 3] = c.w;
      }
      float4 const lse_peer = __ldcg(src + (P::kChunks - 1) * P::kThreads);
      float const lp[2] = {lse_peer.x, lse_peer.y};
      if (atomicAdd(flags + slot, 1) == 2 * P::kThreads - 1) flags[slot] = 0;  // the last reader resets it
      CUTE_UNROLL
      for (int mi = 0; mi < 2; ++mi) {
        float const m = fmaxf(lse[mi], lp[mi]);
        if (m == -INFINITY) continue;  // both empty: nothing to add
        float const a = expf(lse[mi] - m), b = expf(lp[mi] - m);
        float const inv = 1.f / (a + b);
        lse[mi] = m + logf(a + b);
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(o); ++ni) {
          int const idx = o.layout()(mi, ni);
          tOrO.data()[idx] = (tOrO.data()[idx] * a + peer[idx] * b) * inv;
        }
      }
    }
  }

  // A tile with no keys (seqlens_k[b] == 0): out = 0, lse = -inf (the empty sum).
  template <class FragO, class TiledMma>
  __device__ static void store_empty(Params const& p, FragO& tOrO, TiledMma const& tiled_mma,
                                     int mma_thread_idx, TileCoord tile) {
    clear(tOrO);
    float const lse[2] = {-INFINITY, -INFINITY};
    store(p, tOrO, lse, tiled_mma, mma_thread_idx, tile);
  }
};

}  // namespace fastdit::attention::sm90
