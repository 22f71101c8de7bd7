// Tile shapes of the sm90 forward kernel, as tiny pure functions of the head dim.
//
// The CTA holds kBlockM = 128 query rows: two consumer warpgroups of 64 rows each (the wgmma M),
// plus one producer warpgroup. kBlockN keys per pipeline stage; two stages of K and V.
// Shared memory (bf16) = Q 128*D*2 + (K + V) kBlockN*D*2*kStages, limit 227 KiB:
//   D = 128, kBlockN = 192: 32 KiB + 192 KiB = 224 KiB
//   D = 128, kBlockN = 128: 32 KiB + 128 KiB = 160 KiB
//   D =  64, kBlockN = 128: 16 KiB +  64 KiB =  80 KiB
// Registers per consumer thread (setmaxnreg 240): O 64*D/128 + S 64*kBlockN/128 fp32 + P 16-bit:
//   D = 128, kBlockN = 192: 64 + 96 + 48 = 208 -- no spills (nvcc 13.0, -Xptxas -v; no LDL/STL in SASS).
//
// H100 SXM, 2026-11-24, bench/attention.py (bf16, TFLOP/s, cold L2), same run:
//   kBlockN    FLUX-1024  FLUX-2048  Wan-1.3B  Wan-14B     (S = 4608, 16896, 32760, 75600)
//     128        630.0      671.2     651.9     623.9
//     192        643.0      705.4     690.2     648.9      cuDNN: 645.6 668.5 596.2 569.1
// 192 also divides 4608 and 16896 exactly (no partial key block). 176 (FA3's choice) was not
// measured: this CUTLASS's ss_op_selector lowers N = 176 to 11 wgmma of N = 16.
//
// One CTA per cluster. Clusters of two CTAs on query blocks 2m and 2m + 1 of a head, each loading half of
// every K and V block and multicasting it to both (FA3's option for D = 128), passed every attention test
// and were slower on the H100 (2026-11-24, bench/gpu_ab.sh, 2 rounds, TFLOP/s without -> with):
// FLUX-1024 683.8/682.7 -> 666.4/663.4, FLUX-2048 754.7/753.6 -> 731.8/714.4, Wan-1.3B 752.0/752.7 ->
// 736.4/730.4, Wan-14B 659.0/662.2 -> 664.5/668.8. Halving the L2 -> SMEM traffic of K and V buys nothing
// here, while each stage now waits for the slower of two CTAs' consumers before it is refilled.
#pragma once

namespace fastdit::attention::sm90 {

constexpr int kBlockM = 128;
constexpr int kStages = 2;

// Keys per stage. D = 64 keeps 128 (not measured against other sizes).
constexpr int block_n(int head_dim) { return head_dim <= 64 ? 128 : 192; }

}  // namespace fastdit::attention::sm90
