// qk_norm_rope: RMSNorm of q and k (per head or across heads), then rotary embedding, in place.
//
// q, k: [tokens, heads, head_dim] with heads packed (head stride = head_dim) and tokens token_stride
// elements apart (so q and k may be views into one fused QKV projection). One row = one token's
// heads * head_dim elements (see row_layout.cuh); blockIdx.y picks q (0) or k (1).
//   norm per_head:     x * rsqrt(mean over head_dim (x^2) + eps) * weight[head_dim]     (FLUX)
//   norm across_heads: x * rsqrt(mean over heads*head_dim (x^2) + eps) * weight[heads*head_dim]  (Wan)
//   rope interleaved:  pairs (2i, 2i+1) rotate by angle i (FLUX, Wan as diffusers computes them)
//   rope half:         pairs (i, i + head_dim/2) rotate by angle i (NeoX style)
// cos, sin: [seq, head_dim/2] fp32, token's position s = token % seq. Norm and rotation in fp32, one
// rounding to T at the store, as the reference.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../elementwise/vector_io.cuh"
#include "../norm/row_layout.cuh"

namespace fastdit {

enum class RopeStyle : int { kInterleaved = 0, kHalf = 1 };
enum class QkNorm : int { kPerHead = 0, kAcrossHeads = 1, kNone = 2 };

template <typename T>
struct QkNormRopeParams {
  T* q;
  T* k;
  const T* q_weight;  // [head_dim] (per_head) or [heads * head_dim] (across_heads) or nullptr
  const T* k_weight;
  const float* cos;   // [seq, head_dim / 2]
  const float* sin;
  int64_t q_token_stride;  // elements
  int64_t k_token_stride;
  int64_t tokens;      // batch * seq
  int64_t seq;
  int heads;
  int head_dim;        // 64, 128 or 256
  float eps;
  RopeStyle style;
  QkNorm norm;
};

// Rotates the 8 normalized values of chunk `pos` (0 .. head_dim/8 - 1) of one head.
template <typename T>
__device__ __forceinline__ void rotate8(float (&v)[kVecElems], int pos, const float* cos_row,
                                        const float* sin_row, int head_dim, RopeStyle style) {
  if (style == RopeStyle::kInterleaved) {
    const float4 c = *reinterpret_cast<const float4*>(cos_row + pos * 4);
    const float4 s = *reinterpret_cast<const float4*>(sin_row + pos * 4);
    const float cs[4] = {c.x, c.y, c.z, c.w}, sn[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const float x1 = v[2 * m], x2 = v[2 * m + 1];
      v[2 * m] = x1 * cs[m] - x2 * sn[m];
      v[2 * m + 1] = x1 * sn[m] + x2 * cs[m];
    }
    return;
  }
  // half: the partner chunk (pos +- head_dim/16) lives in lane (lane ^ head_dim/16), same vector slot.
  const int partner_lanes = head_dim / 16;
  const bool first_half = pos < partner_lanes;
  const int angle = (first_half ? pos : pos - partner_lanes) * kVecElems;
  float partner[kVecElems];
#pragma unroll
  for (int m = 0; m < kVecElems; ++m) partner[m] = __shfl_xor_sync(0xffffffffu, v[m], partner_lanes);
#pragma unroll
  for (int m = 0; m < kVecElems; ++m) {
    const float c = cos_row[angle + m], s = sin_row[angle + m];
    v[m] = first_half ? v[m] * c - partner[m] * s : partner[m] * s + v[m] * c;
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm) qk_norm_rope_kernel(QkNormRopeParams<T> p, RowLayout layout) {
  __shared__ float scratch[kMaxBlockThreads / 32];
  const bool is_k = blockIdx.y == 1;
  T* base = is_k ? p.k : p.q;
  const T* weight = is_k ? p.k_weight : p.q_weight;
  const int64_t token_stride = is_k ? p.k_token_stride : p.q_token_stride;

  const int t = threadIdx.x % layout.threads_per_row;
  const int64_t token = int64_t(blockIdx.x) * layout.rows_per_block + threadIdx.x / layout.threads_per_row;
  const bool row_ok = token < p.tokens;
  // Tokens number below 2^31 (the export checks): a 32-bit remainder, where a 64-bit one is a call.
  const int64_t s = row_ok ? uint32_t(token) % uint32_t(p.seq) : 0;
  const int chunks_per_head = p.head_dim / kVecElems;
  const int64_t chunks = int64_t(p.heads) * chunks_per_head;
  T* row = base + token * token_stride;

  // The token's chunks stay packed in registers. The norm weights, cos and sin (L2-resident) are loaded
  // after the reduction: registers are capped at 32 (row_layout.cuh) and the row is what must be in
  // flight early.
  const bool has_weight = p.norm != QkNorm::kNone && weight != nullptr;
  uint4 v_raw[kMaxVecsPerThread];
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    v_raw[i] = make_uint4(0, 0, 0, 0);  // zeros: an absent chunk adds nothing to the sums
    if (row_ok && i < layout.vecs_per_thread && c < chunks) v_raw[i] = load_raw(row + c * kVecElems);
  }
  float sq[kMaxVecsPerThread];
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    float v[kVecElems];
    unpack8<T>(v_raw[i], v);
    sq[i] = 0.f;
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) sq[i] += v[e] * v[e];
  }

  // The normalization factor of each held chunk. Shuffles run on every lane (uniform branches).
  float inv[kMaxVecsPerThread];
  if (p.norm == QkNorm::kPerHead) {
    // A head's chunks sit in an aligned group of chunks_per_head lanes (threads_per_row is a multiple).
#pragma unroll
    for (int i = 0; i < kMaxVecsPerThread; ++i) {
      if (i < layout.vecs_per_thread) inv[i] = rsqrtf(group_sum(sq[i], chunks_per_head) / float(p.head_dim) + p.eps);
    }
  } else if (p.norm == QkNorm::kAcrossHeads) {
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxVecsPerThread; ++i) total += sq[i];
    total = row_sum(total, layout.threads_per_row, scratch);
    const float r = rsqrtf(total / float(chunks * kVecElems) + p.eps);
#pragma unroll
    for (int i = 0; i < kMaxVecsPerThread; ++i) inv[i] = r;
  } else {
#pragma unroll
    for (int i = 0; i < kMaxVecsPerThread; ++i) inv[i] = 1.f;
  }

  const float* cos_row = p.cos + s * (p.head_dim / 2);
  const float* sin_row = p.sin + s * (p.head_dim / 2);
#pragma unroll
  for (int i = 0; i < kMaxVecsPerThread; ++i) {
    if (i >= layout.vecs_per_thread) continue;  // uniform across the block
    const int64_t c = t + int64_t(i) * layout.threads_per_row;
    const bool active = row_ok && c < chunks;
    const int pos = int(c) % chunks_per_head;  // c < 1024: 32-bit
    float v[kVecElems];
    unpack8<T>(v_raw[i], v);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) v[e] *= inv[i];
    if (active && has_weight) {
      const int64_t w_offset = p.norm == QkNorm::kPerHead ? int64_t(pos) * kVecElems : c * kVecElems;
      float w[kVecElems];
      unpack8<T>(load_raw(weight + w_offset), w);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] *= w[e];
    }
    if (active || p.style == RopeStyle::kHalf) rotate8<T>(v, pos, cos_row, sin_row, p.head_dim, p.style);
    if (active) store8(row + c * kVecElems, v);
  }
}

template <typename T>
void launch_qk_norm_rope(const QkNormRopeParams<T>& p, cudaStream_t stream) {
  const RowLayout layout = make_row_layout(int64_t(p.heads) * p.head_dim / kVecElems);
  const int64_t blocks = (p.tokens + layout.rows_per_block - 1) / layout.rows_per_block;
  qk_norm_rope_kernel<T><<<dim3(unsigned(blocks), 2), layout.block_threads(), 0, stream>>>(p, layout);
}

}  // namespace fastdit
