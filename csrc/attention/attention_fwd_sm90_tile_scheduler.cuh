// Static persistent tile scheduler with a split tail: gridDim.x CTAs (at most one per SM) walk the
// tiles t = blockIdx.x, blockIdx.x + gridDim.x, ... The producer warp runs ahead on the same sequence,
// so the next tile's K/V (and, once the consumers free it, Q) load while the current tile's epilogue
// runs.
//
// Tile order: query block fastest, then head, then batch. CTAs running at the same time then share
// one head's K and V, which stay in L2 (FLUX-1024: 36 query blocks per head, 132 SMs -> ~4 heads
// = 10 MB of K/V live; Wan-720p: 591 blocks per head -> one head).
//
// The tail. T tiles on P SMs take ceil(T / P) waves, and the last one runs T mod P tiles on P SMs:
// FLUX-1024 (864 tiles, 132 SMs) spends 7 waves on 6.55 waves of work, Wan-1.3B 480p (3072 tiles)
// 24 on 23.27. With a split tail the grid is P CTAs, each runs floor(T / P) whole tiles, and the
// r = T mod P tail tiles' key blocks (r * nb "units", nb key blocks per tile) are cut into P equal
// contiguous runs, one per CTA. A run covers the end of one tile, whole tiles, and the start of
// another; each piece is a segment [n_begin, n_end) of one tile's key blocks:
//   - a segment that ends the tile (n_end == nb) belongs to its CTA, the tile's OWNER, which merges
//     the partial results of the CTAs that hold the tile's earlier key blocks (its peers) and stores;
//   - a segment that does not end it is a CONTRIBUTION: normalized partial O and its LSE go to the
//     workspace slot of the CTA (one per CTA: only a run's last segment can stop short of its tile's
//     end), then the CTA raises its flag; the owner lowers it back to 0 once read, so the flags are all
//     zero between launches (Python zeroes them once, when it allocates them).
// Every CTA does its contribution first, before any segment it owns: an owner only ever waits for
// contributions, which never wait themselves, so there is no cycle (all P CTAs are resident: the
// grid is at most the SM count and the kernel runs one CTA per SM).
#pragma once

#include <cutlass/fast_math.h>

namespace fastdit::attention::sm90 {

struct TileCoord {
  int m_block, head, batch;
};

// One piece of a CTA's work: key blocks [n_begin, n_end) of one tile. role: what happens after the
// mainloop. Owners merge the contributions of CTAs [peer_first, peer_last] before they store.
struct WorkItem {
  enum Role { kWhole = 0, kContribute = 1, kOwnMerge = 2 };
  TileCoord tile;
  int n_begin, n_end;
  int role;
  int peer_first, peer_last;
};

// Segments of the split tail cost a Q load and an epilogue each, plus the partial's round trip:
// about two key blocks' worth (FLUX-1024: ~2.6 us per 192-key block). The split is used only when a
// CTA's share of the tail is at least kTailSplitMinSavedBlocks shorter than a whole tile, and a small
// tail goes to fewer CTAs so that no run is shorter than kTailMinRunBlocks.
constexpr int kTailSplitMinSavedBlocks = 4;
constexpr int kTailMinRunBlocks = 2;

struct StaticPersistentTileScheduler {
  struct Params {
    int num_tiles;
    cutlass::FastDivmod m_blocks_divmod;  // divides by the number of query blocks
    cutlass::FastDivmod heads_divmod;     // divides by the number of heads
    // Split tail (tail_units > 0): every CTA of the grid runs whole_per_cta whole tiles; CTAs
    // 0 .. tail_ctas-1 then run equal shares of the tail_units = (num_tiles - whole_tiles) * n_blocks
    // key blocks.
    int whole_tiles, whole_per_cta, n_blocks, tail_units, tail_ctas, grid;
  };

  // n_blocks: key blocks per tile, or 0 when they differ between batches (per-batch key lengths:
  // no split). allow_split: the caller gave a workspace for the partial results.
  static Params make_params(int num_m_blocks, int num_heads, int batch, int n_blocks, int num_sms, bool allow_split) {
    Params p{num_m_blocks * num_heads * batch, cutlass::FastDivmod(num_m_blocks), cutlass::FastDivmod(num_heads),
             0, 0, n_blocks, 0, 0, 0};
    p.grid = p.num_tiles < num_sms ? p.num_tiles : num_sms;
    p.whole_tiles = p.num_tiles;
    int const tail_tiles = p.num_tiles % num_sms;
    if (allow_split && n_blocks > 0 && tail_tiles > 0) {
      long long const units = static_cast<long long>(tail_tiles) * n_blocks;
      long long const share = (units + num_sms - 1) / num_sms;
      if (share + kTailSplitMinSavedBlocks <= n_blocks && units < (1LL << 30)) {
        p.grid = num_sms;
        p.whole_per_cta = p.num_tiles / num_sms;
        p.whole_tiles = p.whole_per_cta * num_sms;
        p.tail_units = static_cast<int>(units);
        long long const ctas = units / kTailMinRunBlocks;
        p.tail_ctas = ctas < 1 ? 1 : ctas < num_sms ? static_cast<int>(ctas) : num_sms;
      }
    }
    return p;
  }

  static bool split(Params const& p) { return p.tail_units > 0; }
  static int grid_size(Params const& p) { return p.grid; }

  CUTLASS_HOST_DEVICE static TileCoord coord(Params const& params, int tile) {
    int rest, m_block, batch, head;
    params.m_blocks_divmod(rest, m_block, tile);
    params.heads_divmod(batch, head, rest);
    return {m_block, head, batch};
  }

  // First tail unit of CTA c's run; CTA c runs units [run_begin(c), run_begin(c + 1)), at least
  // kTailMinRunBlocks of them for c < tail_ctas, none after.
  CUTLASS_HOST_DEVICE static int run_begin(Params const& p, int cta) {
    if (cta >= p.tail_ctas) return p.tail_units;
    return static_cast<int>(static_cast<long long>(cta) * p.tail_units / p.tail_ctas);
  }
  // The CTA whose run holds tail unit u (runs are never empty below tail_ctas).
  CUTLASS_HOST_DEVICE static int cta_of_unit(Params const& p, int u) {
    int c = static_cast<int>((static_cast<long long>(u) * p.tail_ctas) / p.tail_units);
    while (c + 1 < p.tail_ctas && run_begin(p, c + 1) <= u) ++c;
    while (c > 0 && run_begin(p, c) > u) --c;
    return c;
  }

  // The i-th work item of CTA `cta` (i = 0, 1, ...); false once there is none. Host-callable: a CPU
  // test walks every CTA's items (tests/ops/test_attention.py).
  CUTLASS_HOST_DEVICE static bool get(Params const& p, int cta, int i, WorkItem& w) {
    if (p.tail_units == 0) {  // no split: whole tiles t = cta + i * grid
      int const t = cta + i * p.grid;
      if (t >= p.num_tiles) return false;
      w = {coord(p, t), 0, -1, WorkItem::kWhole, 0, -1};  // n_end < 0: every key block of its batch
      return true;
    }
    if (i < p.whole_per_cta) {
      w = {coord(p, cta + i * p.grid), 0, p.n_blocks, WorkItem::kWhole, 0, -1};
      return true;
    }
    int const j = i - p.whole_per_cta;  // index among this CTA's tail segments
    int const u0 = run_begin(p, cta), u1 = run_begin(p, cta + 1);
    if (u0 == u1) return false;
    int const k0 = u0 / p.n_blocks, k1 = (u1 - 1) / p.n_blocks;  // first and last tail tile touched
    if (j > k1 - k0) return false;
    bool const contributes = u1 < (k1 + 1) * p.n_blocks;  // the run stops inside tile k1
    int const k = !contributes ? k0 + j : (j == 0 ? k1 : k0 + j - 1);
    int const tile_unit0 = k * p.n_blocks;
    int const n_begin = (u0 > tile_unit0 ? u0 : tile_unit0) - tile_unit0;
    int const n_end = (u1 < tile_unit0 + p.n_blocks ? u1 : tile_unit0 + p.n_blocks) - tile_unit0;
    w.tile = coord(p, p.whole_tiles + k);
    w.n_begin = n_begin;
    w.n_end = n_end;
    if (n_end < p.n_blocks) {
      w.role = WorkItem::kContribute;
      w.peer_first = 0, w.peer_last = -1;
    } else if (n_begin > 0) {
      w.role = WorkItem::kOwnMerge;
      w.peer_first = cta_of_unit(p, tile_unit0);
      w.peer_last = cta - 1;
    } else {
      w.role = WorkItem::kWhole;
      w.peer_first = 0, w.peer_last = -1;
    }
    return true;
  }
};

}  // namespace fastdit::attention::sm90
