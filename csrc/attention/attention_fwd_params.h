// Host-side arguments of the forward attention kernels: raw pointers, sizes and element strides only,
// so that csrc/api/attention.cu and every arch path share one plain struct (no CuTe, no torch).
//
//   out[b, i, h, :] = sum_j softmax_j(scale * q[b, i, h, :] . k[b, j, h, :]) v[b, j, h, :]
//   lse[b, h, i]    = log sum_j exp(scale * q[b, i, h, :] . k[b, j, h, :])        (natural log, fp32)
//
// with j < seqlens_k[b] when seqlens_k is given (per-batch key lengths), else j < seqlen_k.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastdit::attention {

struct FwdArguments {
  const void* q = nullptr;          // [B, Sq, H, D], element strides below, last dim contiguous
  const void* k = nullptr;          // [B, Sk, H, D]
  const void* v = nullptr;          // [B, Sk, H, D]
  void* out = nullptr;              // [B, Sq, H, D], written fully (rows past Sq never touched)
  float* lse = nullptr;             // [B, H, Sq] contiguous, or null
  // [B] keys used per batch (each in [0, Sk]), or null. Keys past the length are loaded (TMA bounds are
  // per tensor, not per batch) and get weight 0: they must be finite, since 0 * NaN = NaN in P V.
  const int32_t* seqlens_k = nullptr;
  int batch = 0, seqlen_q = 0, seqlen_k = 0, num_heads = 0, head_dim = 0;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  float softmax_scale = 0.f;        // usually 1/sqrt(D)
  int num_sms = 0;                  // multiprocessors of the device (persistent grid size)
  // Split tail (sm90 tile scheduler): fp32 scratch for the partial results and one int flag per SM, zero
  // before the launch (each launch leaves them zero). Null, or fewer floats than the plan needs: no split.
  // One workspace serves one stream: two launches running at once must not share it.
  float* workspace = nullptr;
  int* workspace_flags = nullptr;
  int64_t workspace_floats = 0;
};

}  // namespace fastdit::attention
