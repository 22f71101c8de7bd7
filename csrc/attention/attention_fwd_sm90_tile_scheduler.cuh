// Static persistent tile scheduler: gridDim.x = min(tiles, SMs) CTAs walk the tiles t = blockIdx.x,
// blockIdx.x + gridDim.x, ... The producer warp runs ahead on the same sequence, so the next tile's
// K/V (and, once the consumers free it, Q) load while the current tile's epilogue runs.
//
// Tile order: query block fastest, then head, then batch. CTAs running at the same time then share
// one head's K and V, which stay in L2 (FLUX-1024: 36 query blocks per head, 132 SMs -> ~4 heads
// = 10 MB of K/V live; Wan-720p: 591 blocks per head -> one head).
#pragma once

#include <cutlass/fast_math.h>

namespace fastdit::attention::sm90 {

struct TileCoord {
  int m_block, head, batch;
};

struct StaticPersistentTileScheduler {
  struct Params {
    int num_tiles;
    cutlass::FastDivmod m_blocks_divmod;  // divides by the number of query blocks
    cutlass::FastDivmod heads_divmod;     // divides by the number of heads
  };

  static Params make_params(int num_m_blocks, int num_heads, int batch) {
    return {num_m_blocks * num_heads * batch, cutlass::FastDivmod(num_m_blocks), cutlass::FastDivmod(num_heads)};
  }

  static int grid_size(Params const& params, int num_sms) {
    return params.num_tiles < num_sms ? params.num_tiles : num_sms;
  }

  __device__ static int first_tile() { return blockIdx.x; }
  __device__ static int next_tile(int tile) { return tile + gridDim.x; }
  __device__ static bool is_valid(Params const& params, int tile) { return tile < params.num_tiles; }

  __device__ static TileCoord coord(Params const& params, int tile) {
    int rest, m_block, batch, head;
    params.m_blocks_divmod(rest, m_block, tile);
    params.heads_divmod(batch, head, rest);
    return {m_block, head, batch};
  }
};

}  // namespace fastdit::attention::sm90
