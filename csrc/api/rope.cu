// C-ABI export of qk_norm_rope (RMSNorm of q and k, then rotary embedding, in place).
// validate -> device guard -> stream -> dtype dispatch -> launch -> check the error.
#include "../rope/qk_norm_rope.cuh"
#include "library.h"

// Mirrored in fastdit/ops/qk_norm_rope.py.
enum FastditRopeStyle : int { FASTDIT_ROPE_INTERLEAVED = 0, FASTDIT_ROPE_HALF = 1 };
enum FastditQkNorm : int { FASTDIT_QK_NORM_PER_HEAD = 0, FASTDIT_QK_NORM_ACROSS_HEADS = 1, FASTDIT_QK_NORM_NONE = 2 };

typedef struct {
  void* q;                // [tokens, heads, head_dim], heads packed, tokens q_token_stride apart
  void* k;                // same shape as q
  const void* q_weight;   // [head_dim] per_head, [heads * head_dim] across_heads, or nullptr
  const void* k_weight;
  const float* cos;       // [seq, head_dim / 2] fp32 contiguous
  const float* sin;
  int64_t q_token_stride;  // elements
  int64_t k_token_stride;
  int64_t tokens;          // batch * seq
  int64_t seq;
  int32_t heads;
  int32_t head_dim;
  float eps;
  int32_t style;  // FastditRopeStyle
  int32_t norm;   // FastditQkNorm
} fastdit_qk_norm_rope_params;

FASTDIT_EXPORT int fastdit_qk_norm_rope(const fastdit_qk_norm_rope_params* p, int dtype, int device, void* stream) {
  const char* op = "qk_norm_rope";
  FASTDIT_REQUIRE(op, p != nullptr, "params is null");
  FASTDIT_REQUIRE(op, p->head_dim == 64 || p->head_dim == 128 || p->head_dim == 256,
                  "head_dim " + std::to_string(p->head_dim) + " is not 64, 128 or 256");
  FASTDIT_REQUIRE(op, p->heads > 0 && int64_t(p->heads) * p->head_dim <= fastdit::kMaxRowElems,
                  "heads * head_dim must be in (0, 8192]");
  FASTDIT_REQUIRE(op, p->tokens >= 0 && p->seq > 0 && p->tokens % p->seq == 0,
                  "tokens must be a multiple of seq > 0");
  FASTDIT_REQUIRE(op, p->tokens <= INT32_MAX, "tokens must be below 2^31");
  FASTDIT_REQUIRE(op, p->style == FASTDIT_ROPE_INTERLEAVED || p->style == FASTDIT_ROPE_HALF,
                  "style code " + std::to_string(p->style) + " is not interleaved (0) or half (1)");
  FASTDIT_REQUIRE(op, p->norm >= FASTDIT_QK_NORM_PER_HEAD && p->norm <= FASTDIT_QK_NORM_NONE,
                  "norm code " + std::to_string(p->norm) + " is not per_head (0), across_heads (1) or none (2)");
  FASTDIT_REQUIRE(op, p->q && p->k && fastdit::aligned16(p->q) && fastdit::aligned16(p->k),
                  "q and k must be non-null and 16-byte aligned");
  FASTDIT_REQUIRE(op, p->q_token_stride % fastdit::kVecElems == 0 && p->k_token_stride % fastdit::kVecElems == 0,
                  "token strides must be multiples of 8");
  FASTDIT_REQUIRE(op, p->cos && p->sin && fastdit::aligned16(p->cos) && fastdit::aligned16(p->sin),
                  "cos and sin must be non-null and 16-byte aligned");
  FASTDIT_REQUIRE(op, (!p->q_weight || fastdit::aligned16(p->q_weight)) && (!p->k_weight || fastdit::aligned16(p->k_weight)),
                  "q_weight and k_weight must be 16-byte aligned");
  if (p->tokens == 0) return FASTDIT_OK;
  FASTDIT_DEVICE_GUARD(op, device);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int status = fastdit::dispatch_half(op, dtype, [&](auto tag) {
    using T = decltype(tag);
    fastdit::QkNormRopeParams<T> params{static_cast<T*>(p->q),
                                        static_cast<T*>(p->k),
                                        static_cast<const T*>(p->q_weight),
                                        static_cast<const T*>(p->k_weight),
                                        p->cos,
                                        p->sin,
                                        p->q_token_stride,
                                        p->k_token_stride,
                                        p->tokens,
                                        p->seq,
                                        p->heads,
                                        p->head_dim,
                                        p->eps,
                                        static_cast<fastdit::RopeStyle>(p->style),
                                        static_cast<fastdit::QkNorm>(p->norm)};
    fastdit::launch_qk_norm_rope<T>(params, s);
  });
  if (status != FASTDIT_OK) return status;
  return fastdit::check_launch(op);
}
