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
