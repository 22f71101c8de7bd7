// Tile shapes of the sm90 forward kernel, as tiny pure functions of the head dim.
//
// The CTA holds kBlockM = 128 query rows: two consumer warpgroups of 64 rows each (the wgmma M),
// plus one producer warpgroup. kBlockN keys per pipeline stage; two stages of K and V.
// Shared memory (bf16) = Q 128*D*2 + (K + V) kBlockN*D*2*kStages:
//   D = 128, kBlockN = 128: 32 KiB + 128 KiB = 160 KiB   (fits the 227 KiB opt-in limit)
//   D = 128, kBlockN = 176: 32 KiB + 176 KiB = 208 KiB   (FA3's choice; fits)
//   D =  64, kBlockN = 128: 16 KiB +  64 KiB =  80 KiB
// Registers per consumer thread (240 after setmaxnreg): O 64*D/128 + S 64*kBlockN/128 fp32 + P in bf16:
//   D = 128, kBlockN = 176: 64 + 88 + 44 = 196, tight; kBlockN = 128: 64 + 64 + 32 = 160.
// Measured on the H100 (2026-11-24, bench/attention.py): see bench/RESULTS.md; the block sizes here are
// the ones that compiled without spills (nvcc 13.0 -Xptxas -v: 0 bytes spill) and ran fastest there.
#pragma once

namespace fastdit::attention::sm90 {

constexpr int kBlockM = 128;
constexpr int kStages = 2;

#ifndef FASTDIT_ATTENTION_SM90_BLOCK_N_D128
#define FASTDIT_ATTENTION_SM90_BLOCK_N_D128 128
#endif

// Keys per stage.
constexpr int block_n(int head_dim) { return head_dim <= 64 ? 128 : FASTDIT_ATTENTION_SM90_BLOCK_N_D128; }

}  // namespace fastdit::attention::sm90
