// qk_norm_rope: RMSNorm of q and k (per head or across heads), then rotary embedding, in place.
//
// q, k: [tokens, heads, head_dim] with heads packed (head stride = head_dim) and tokens token_stride
// elements apart (so q and k may be views into one fused QKV projection). One row = one token's
// heads * head_dim elements.
//   norm per_head:     x * rsqrt(mean over head_dim (x^2) + eps) * weight[head_dim]     (FLUX)
//   norm across_heads: x * rsqrt(mean over heads*head_dim (x^2) + eps) * weight[heads*head_dim]  (Wan)
//   rope interleaved:  pairs (2i, 2i+1) rotate by angle i (FLUX, Wan as diffusers computes them)
//   rope half:         pairs (i, i + head_dim/2) rotate by angle i (NeoX style)
// cos, sin: [seq, head_dim/2] fp32, token's position s = token % seq. Norm and rotation in fp32, one
// rounding to T at the store, as the reference; both kernels compute x * (inv_rms * weight), then rotate.
// Two kernels: interleaved rows in registers (row_vectors.cuh: a pair never leaves its 8-element chunk,
// so every chunk rotates on its own), half rows in the persistent cp.async pipeline (row_pipeline.cuh:
// a pair spans two chunks, exchanged between lanes).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../elementwise/vector_io.cuh"
#include "../norm/row_layout.cuh"
#include "../norm/row_pipeline.cuh"
#include "../norm/row_vectors.cuh"

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

// ---- interleaved style: rows in registers ----------------------------------------------------------

// Rotates pairs (2m, 2m+1) of 8 normalized values by the chunk's 4 angles (cos c, sin s).
__device__ __forceinline__ void rotate_interleaved8(float (&v)[kVecElems], const float4& c, const float4& s) {
  const float cs[4] = {c.x, c.y, c.z, c.w}, sn[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    const float x1 = v[2 * m], x2 = v[2 * m + 1];
    v[2 * m] = x1 * cs[m] - x2 * sn[m];
    v[2 * m + 1] = x1 * sn[m] + x2 * cs[m];
  }
}

// One token's q row AND k row per threads_per_row threads (make_vec_row_layout(heads * head_dim / 8)),
// kVecs packed vectors of each per thread; thread t holds chunks t, t + threads_per_row, ...
// Why q and k in one block (not blockIdx.y = q/k as the half kernel): the token's cos/sin (4 * head_dim
// bytes, 8% of a Wan-1.3B q row's read + write traffic) are loaded once for both, and each thread has
// twice the loads in flight before its reduction; in a (blocks, 2) grid the k blocks would in practice
// be dispatched after all q blocks (x first), their cos/sin long gone from L2. The reductions of q and k
// share their shuffles and barriers. The price is registers (ptxas -v sm_90a, 2026-11-24: 54-72 at 3
// vectors, 78-106 at 5, 120-157 at 8, no spills), i.e. fewer resident blocks than rms_norm, but about
// the same bytes of loads in flight per SM (e.g. 3 vectors: 7 blocks x 128 threads x 96 B against
// rms_norm's 16 x 128 x 48 B). H100, 2026-11-24 (bench/ops.py, commit ea7e9a9): 88% / 96% / 100% of the
// 1 GiB copy bandwidth at FLUX / Wan-1.3B / Wan-14B rows (99-101% of a same-size copy), from 81-89% with
// the persistent pipeline below.
// Why one cos/sin pair and one per-head weight chunk per thread: threads_per_row is a multiple of
// head_dim/8 for every row this op takes (host check of all heads x head_dim 64/128/256 <= 8192 wide:
// tpr is a power of two >= chunks, or 32/64/128 with head_dim/8 <= 32), so a thread's chunks all sit at
// position t % (head_dim/8) of their heads, and at each vector slot the head_dim/8 aligned lanes of a
// group hold one whole head (or nothing: chunks is a multiple of head_dim/8) — the per-head sum is a
// shuffle over that group, no shared memory.
// All loads (q, k, cos, sin, the per-head weight) are issued before the reductions; the across-heads
// weight ([heads * head_dim], L2-resident) after them, as rms_norm does.
template <typename T, int kVecs, QkNorm kNorm>
__global__ void __launch_bounds__(kVecRowThreads) qk_norm_rope_interleaved_kernel(QkNormRopeParams<T> p, VecRowLayout layout) {
  __shared__ float scratch[2 * kVecRowThreads / 32];
  const int t = threadIdx.x % layout.threads_per_row;
  const int64_t token = int64_t(blockIdx.x) * layout.rows_per_block + threadIdx.x / layout.threads_per_row;
  const bool token_ok = token < p.tokens;
  const int chunks_per_head = p.head_dim / kVecElems;
  const int chunks = p.heads * chunks_per_head;
  const int pos = t % chunks_per_head;  // the place of each of this thread's chunks in its head
  T* const rows[2] = {p.q + (token_ok ? token : 0) * p.q_token_stride, p.k + (token_ok ? token : 0) * p.k_token_stride};
  const T* const weights[2] = {p.q_weight, p.k_weight};
  uint4 raw[2][kVecs];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int c = t + i * layout.threads_per_row;
    if (!(token_ok && c < chunks)) continue;
#pragma unroll
    for (int qk = 0; qk < 2; ++qk) raw[qk][i] = load_raw(rows[qk] + c * kVecElems);
  }
  const bool thread_ok = token_ok && t < chunks;
  float4 cos4 = make_float4(0.f, 0.f, 0.f, 0.f), sin4 = cos4;
  uint4 head_weight[2] = {};  // per_head: weight chunk `pos`, the same for every vector of the thread
  if (thread_ok) {
    const int64_t angles = int64_t(uint32_t(token) % uint32_t(p.seq)) * (p.head_dim / 2) + pos * 4;
    cos4 = __ldg(reinterpret_cast<const float4*>(p.cos + angles));
    sin4 = __ldg(reinterpret_cast<const float4*>(p.sin + angles));
    if constexpr (kNorm == QkNorm::kPerHead) {
#pragma unroll
      for (int qk = 0; qk < 2; ++qk) {
        if (weights[qk] != nullptr) head_weight[qk] = load_raw_readonly(weights[qk] + pos * kVecElems);
      }
    }
  }

  // inv_rms[qk * kVecs + i]: the factor of vector i of q (qk 0) or k (1); per_head: its head's;
  // across_heads: the row's, at i = 0. The shuffles and barriers run on every thread (sums of 0 for
  // slots outside the row).
  float inv_rms[2 * kVecs];
  if constexpr (kNorm != QkNorm::kNone) {
    float sum_sq[2 * kVecs];
#pragma unroll
    for (int j = 0; j < 2 * kVecs; ++j) {
      sum_sq[j] = 0.f;
      if (!(token_ok && t + (j % kVecs) * layout.threads_per_row < chunks)) continue;
      float v[kVecElems];
      unpack8<T>(raw[j / kVecs][j % kVecs], v);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) sum_sq[j] += v[e] * v[e];
    }
    if constexpr (kNorm == QkNorm::kPerHead) {
      group_sums(sum_sq, chunks_per_head);
#pragma unroll
      for (int j = 0; j < 2 * kVecs; ++j) inv_rms[j] = rsqrtf(sum_sq[j] / float(p.head_dim) + p.eps);
    } else {
      float row[2] = {0.f, 0.f};
#pragma unroll
      for (int j = 0; j < 2 * kVecs; ++j) row[j / kVecs] += sum_sq[j];
      row_sums<2>(row, layout.threads_per_row < 32 ? layout.threads_per_row : 32, layout.threads_per_row, scratch);
#pragma unroll
      for (int qk = 0; qk < 2; ++qk) inv_rms[qk * kVecs] = rsqrtf(row[qk] / float(chunks * kVecElems) + p.eps);
    }
  }

#pragma unroll
  for (int qk = 0; qk < 2; ++qk) {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int c = t + i * layout.threads_per_row;
      if (!(token_ok && c < chunks)) continue;
      float v[kVecElems];
      unpack8<T>(raw[qk][i], v);
      if constexpr (kNorm != QkNorm::kNone) {
        const float inv = inv_rms[qk * kVecs + (kNorm == QkNorm::kPerHead ? i : 0)];
        if (weights[qk] != nullptr) {
          float w[kVecElems];
          unpack8<T>(kNorm == QkNorm::kPerHead ? head_weight[qk] : load_raw_readonly(weights[qk] + c * kVecElems), w);
#pragma unroll
          for (int e = 0; e < kVecElems; ++e) v[e] *= inv * w[e];
        } else {
#pragma unroll
          for (int e = 0; e < kVecElems; ++e) v[e] *= inv;
        }
      }
      rotate_interleaved8(v, cos4, sin4);
      store8(rows[qk] + c * kVecElems, v);
    }
  }
}

// ---- half style: persistent cp.async pipeline ------------------------------------------------------

// Rotates the 8 normalized values of chunk `pos` (0 .. head_dim/8 - 1) of one head, half style: the
// partner chunk (pos +- head_dim/16) lives in lane (lane ^ head_dim/16), same vector slot.
__device__ __forceinline__ void rotate_half8(float (&v)[kVecElems], int pos, const float* cos_row,
                                             const float* sin_row, int head_dim) {
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

// Half style. One token row (q or k: blockIdx.y) per iteration of a persistent, pipelined loop (row_pipeline.cuh):
// every thread copies its chunk of the next kStages - 1 rows into shared memory with cp.async, and the
// first head_dim/8 threads of each row also copy that token's cos and sin rows (shared by all its heads),
// while the current row is normalized and rotated. Because a cos/sin row is read by threads other than
// the one that copied it, each iteration waits for its stage, then one block barrier (which also says
// every thread is done with the stage the next copies overwrite), then issues the next copies.
// The norm weight chunk (it depends on the thread's chunk only) sits in the thread's own slot.
// Shared memory: [kStages][threads] x chunks, [kStages][rows_per_block][head_dim] floats (cos then
// sin halves), then [threads] weight chunks.
// The norm is a template argument: the 32-register budget has no room for its runtime branches.
template <typename T, int kStages, QkNorm kNorm>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm) qk_norm_rope_half_kernel(QkNormRopeParams<T> p, RowLayout layout) {
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
    // Every lane takes part in the partner shuffle; an inactive lane reads staged cos/sin of a previous
    // row (or uninitialized floats) and its result is never stored.
    rotate_half8(v, pos, cos_row, cos_row + p.head_dim / 2, p.head_dim);
    if (active) store8(base + int64_t(token) * token_stride + t * kVecElems, v);
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }
  cp_async_wait<0>();
}

template <typename T>
void launch_qk_norm_rope_half(const QkNormRopeParams<T>& p, cudaStream_t stream) {
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
  switch (p.norm) {
    case QkNorm::kPerHead: launch(qk_norm_rope_half_kernel<T, kStages, QkNorm::kPerHead>); break;
    case QkNorm::kAcrossHeads: launch(qk_norm_rope_half_kernel<T, kStages, QkNorm::kAcrossHeads>); break;
    default: launch(qk_norm_rope_half_kernel<T, kStages, QkNorm::kNone>); break;
  }
}

template <typename T>
void launch_qk_norm_rope(const QkNormRopeParams<T>& p, cudaStream_t stream) {
  if (p.style == RopeStyle::kHalf) {
    launch_qk_norm_rope_half(p, stream);
    return;
  }
  const VecRowLayout layout = make_vec_row_layout(int64_t(p.heads) * p.head_dim / kVecElems);
  const int64_t blocks = (p.tokens + layout.rows_per_block - 1) / layout.rows_per_block;  // < 2^31
  dispatch_vecs(layout.vecs, [&](auto vecs) {
    constexpr int kVecs = decltype(vecs)::value;
    auto launch = [&](auto kernel) { kernel<<<dim3(unsigned(blocks)), layout.block_threads(), 0, stream>>>(p, layout); };
    switch (p.norm) {
      case QkNorm::kPerHead: launch(qk_norm_rope_interleaved_kernel<T, kVecs, QkNorm::kPerHead>); break;
      case QkNorm::kAcrossHeads: launch(qk_norm_rope_interleaved_kernel<T, kVecs, QkNorm::kAcrossHeads>); break;
      default: launch(qk_norm_rope_interleaved_kernel<T, kVecs, QkNorm::kNone>); break;
    }
  });
}

}  // namespace fastdit
