// timestep_embedding: the sinusoidal embedding of diffusion timesteps, as diffusers'
// get_timestep_embedding computes it:
//   freq_j = exp(-ln(max_period) * j / (half - downscale_freq_shift)),  arg = scale * t_i * freq_j,
//   emb[i] = [sin(arg), cos(arg)] ([cos, sin] when flip_sin_to_cos), zero-padded when dim is odd.
// Tiny (N x dim fp32): one thread per output element, accurate sinf/cosf (args reach ~1000).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastdit {

struct TimestepEmbeddingParams {
  const float* t;  // [n]
  float* out;      // [n, dim]
  int64_t n;
  int dim;
  bool flip_sin_to_cos;
  float downscale_freq_shift;
  float scale;
  float neg_log_max_period;  // -ln(max_period), rounded to fp32 as the reference does
};

__global__ void timestep_embedding_kernel(TimestepEmbeddingParams p) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.n * p.dim) return;
  const int64_t i = idx / p.dim;
  const int col = int(idx % p.dim);
  const int half = p.dim / 2;
  if (col >= 2 * half) {  // the zero pad of an odd dim
    p.out[idx] = 0.f;
    return;
  }
  const bool first = col < half;
  const int j = first ? col : col - half;
  const float freq = expf(p.neg_log_max_period * float(j) / (float(half) - p.downscale_freq_shift));
  const float arg = p.scale * p.t[i] * freq;
  const bool use_cos = first == p.flip_sin_to_cos;
  p.out[idx] = use_cos ? cosf(arg) : sinf(arg);
}

inline void launch_timestep_embedding(const TimestepEmbeddingParams& p, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t total = p.n * p.dim;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  timestep_embedding_kernel<<<dim3(unsigned(blocks > 0 ? blocks : 1)), kThreads, 0, stream>>>(p);
}

}  // namespace fastdit
