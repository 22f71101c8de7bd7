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
#include "../norm/row_pipeline.cuh"

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

// One token row (q or k: blockIdx.y) per iteration of a persistent, pipelined loop (row_pipeline.cuh):
// every thread copies its chunk of the next kStages - 1 rows into shared memory with cp.async, and the
// first head_dim/8 threads of each row also copy that token's cos and sin rows (shared by all its heads),
// while the current row is normalized and rotated. Because a cos/sin row is read by threads other than
// the one that copied it, each iteration waits for its stage, then one block barrier (which also says
// every thread is done with the stage the next copies overwrite), then issues the next copies.
// The norm weight chunk (it depends on the thread's chunk only) sits in the thread's own slot.
// Shared memory: [kStages][threads] x chunks, [kStages][rows_per_block][head_dim] floats (cos then
// sin halves), then [threads] weight chunks.
// Style and norm are template arguments: the 32-register budget has no room for their runtime branches.
template <typename T, int kStages, RopeStyle kStyle, QkNorm kNorm>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm) qk_norm_rope_kernel(QkNormRopeParams<T> p, RowLayout layout) {
  extern __shared__ uint4 smem[];
  __shared__ float scratch[kMaxBlockThreads / 32];
  const bool is_k = blockIdx.y == 1;
  T* const base = is_k ? p.k : p.q;
  const int64_t token_stride = is_k ? p.k_token_stride : p.q_token_stride;
  const int threads = int(blockDim.x);
  const int t = threadIdx.x % layout.threads_per_row;
  const int slot_row = threadIdx.x / layout.threads_per_row;
  const int chunks_per_head = p.head_dim / kVecElems;
  const int chunks = p.heads * chunks_per_head;
  const bool chunk_ok = t < chunks;  // one vector per thread (kMaxVecsPerThread == 1)
  const int pos = t % chunks_per_head;
  const int tokens = int(p.tokens);  // < 2^31, checked by the export
  const GroupStride range = block_groups((tokens + layout.rows_per_block - 1) / layout.rows_per_block);
  // cos/sin staging: head_dim floats per row slot (cos: the first head_dim/2, sin: the rest).
  float* const trig = reinterpret_cast<float*>(smem + kStages * threads);
  const int trig_stage = layout.rows_per_block * p.head_dim;  // floats per stage
  uint4* const weight_slot = smem + kStages * threads + (kStages * trig_stage) / 4 + threadIdx.x;
  if (chunk_ok) {
    // No weight (or no norm): a slot of ones, so the row loop has no branch for it.
    const T* weight = kNorm == QkNorm::kNone ? nullptr : (is_k ? p.k_weight : p.q_weight);
    float ones[kVecElems];
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) ones[e] = 1.f;
    *weight_slot = weight != nullptr ? load_raw(weight + (kNorm == QkNorm::kPerHead ? pos : t) * kVecElems)
                                     : pack8<T>(ones);
  }

  auto issue = [&](int g, int stage) {
    const int token = g < range.end ? g * layout.rows_per_block + slot_row : tokens;
    if (token < tokens) {
      if (chunk_ok) cp_async16(smem + stage * threads + threadIdx.x, base + int64_t(token) * token_stride + t * kVecElems);
      if (t < chunks_per_head) {  // head_dim / 2 floats of cos and of sin = chunks_per_head chunks each
        const int64_t s = uint32_t(token) % uint32_t(p.seq);
        float* dst = trig + stage * trig_stage + slot_row * p.head_dim;
        cp_async16(dst + t * 4, p.cos + s * (p.head_dim / 2) + t * 4);
        cp_async16(dst + p.head_dim / 2 + t * 4, p.sin + s * (p.head_dim / 2) + t * 4);
      }
    }
    cp_async_commit();  // always, so that cp.async.wait_group counts iterations
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue(range.begin + s * range.step, s);

  int stage = 0;
  for (int g = range.begin; g < range.end; g += range.step) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    issue(g + (kStages - 1) * range.step, stage == 0 ? kStages - 1 : stage - 1);
    const int token = g * layout.rows_per_block + slot_row;
    const bool active = token < tokens && chunk_ok;
    float v[kVecElems];
    unpack8<T>(active ? smem[stage * threads + threadIdx.x] : make_uint4(0, 0, 0, 0), v);
    float sq = 0.f;
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) sq += v[e] * v[e];
    // The normalization factor. Shuffles and barriers run on every thread (uniform branches).
    float inv = 1.f;
    if constexpr (kNorm == QkNorm::kPerHead) {
      // A head's chunks sit in an aligned group of chunks_per_head lanes (threads_per_row is a multiple).
      inv = rsqrtf(group_sum(sq, chunks_per_head) / float(p.head_dim) + p.eps);
    } else if constexpr (kNorm == QkNorm::kAcrossHeads) {
      inv = rsqrtf(row_sum(sq, layout.threads_per_row, scratch) / float(chunks * kVecElems) + p.eps);
    }
    if (active) {
      float w[kVecElems];
      unpack8<T>(*weight_slot, w);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) v[e] *= inv * w[e];
    }
    const float* cos_row = trig + stage * trig_stage + slot_row * p.head_dim;
    // half: every lane takes part in the partner shuffle; an inactive lane reads staged cos/sin of a
    // previous row (or uninitialized floats) and its result is never stored.
    if (active || kStyle == RopeStyle::kHalf) rotate8<T>(v, pos, cos_row, cos_row + p.head_dim / 2, p.head_dim, kStyle);
    if (active) store8(base + int64_t(token) * token_stride + t * kVecElems, v);
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }
  cp_async_wait<0>();
}

template <typename T>
void launch_qk_norm_rope(const QkNormRopeParams<T>& p, cudaStream_t stream) {
  constexpr int kStages = 3;
  const RowLayout layout = make_row_layout(int64_t(p.heads) * p.head_dim / kVecElems);
  const int64_t groups = (p.tokens + layout.rows_per_block - 1) / layout.rows_per_block;
  const int threads = layout.block_threads();
  const size_t smem = size_t(kStages + 1) * threads * sizeof(uint4) +
                      size_t(kStages) * layout.rows_per_block * p.head_dim * sizeof(float);
  auto launch = [&](auto kernel) {
    // q and k (blockIdx.y) share the GPU: half of the resident blocks each.
    const int resident = persistent_blocks(kernel, threads, smem, 2 * groups);
    const int blocks = resident / 2 > 0 ? resident / 2 : 1;
    kernel<<<dim3(unsigned(blocks), 2), threads, smem, stream>>>(p, layout);
  };
  constexpr RopeStyle kI = RopeStyle::kInterleaved, kH = RopeStyle::kHalf;
  constexpr QkNorm kP = QkNorm::kPerHead, kA = QkNorm::kAcrossHeads, kN = QkNorm::kNone;
  const bool half = p.style == kH;
  switch (p.norm) {
    case kP: half ? launch(qk_norm_rope_kernel<T, kStages, kH, kP>) : launch(qk_norm_rope_kernel<T, kStages, kI, kP>); break;
    case kA: half ? launch(qk_norm_rope_kernel<T, kStages, kH, kA>) : launch(qk_norm_rope_kernel<T, kStages, kI, kA>); break;
    default: half ? launch(qk_norm_rope_kernel<T, kStages, kH, kN>) : launch(qk_norm_rope_kernel<T, kStages, kI, kN>); break;
  }
}

}  // namespace fastdit
