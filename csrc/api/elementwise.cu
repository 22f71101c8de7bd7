// C-ABI exports of the elementwise ops: gelu_tanh, add_bias_residual and timestep_embedding.
// validate -> device guard -> stream -> dtype dispatch -> launch -> check the error.
#include <cmath>

#include "../elementwise/bias_residual.cuh"
#include "../elementwise/gelu_tanh.cuh"
#include "../elementwise/timestep_embedding.cuh"
#include "library.h"

// out[n] = gelu_tanh(x[n]); x and out 16-byte aligned.
FASTDIT_EXPORT int fastdit_gelu_tanh(const void* x, void* out, int64_t n, int dtype, int device, void* stream) {
  const char* op = "gelu_tanh";
  FASTDIT_REQUIRE(op, n >= 0, "n must be >= 0");
  FASTDIT_REQUIRE(op, x && out && fastdit::aligned16(x) && fastdit::aligned16(out),
                  "x and out must be non-null and 16-byte aligned");
  if (n == 0) return FASTDIT_OK;
  FASTDIT_DEVICE_GUARD(op, device);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int status = fastdit::dispatch_half(op, dtype, [&](auto tag) {
    using T = decltype(tag);
    fastdit::launch_gelu_tanh<T>({static_cast<const T*>(x), static_cast<T*>(out), n}, s);
  });
  if (status != FASTDIT_OK) return status;
  return fastdit::check_launch(op);
}

// out[n] = y[n] + residual[n] + bias[i % dim]; every pointer 16-byte aligned, n a multiple of dim, dim of 8.
FASTDIT_EXPORT int fastdit_add_bias_residual(const void* y, const void* residual, const void* bias, void* out, int64_t n,
                                             int64_t dim, int dtype, int device, void* stream) {
  const char* op = "add_bias_residual";
  FASTDIT_REQUIRE(op, dim > 0 && dim % fastdit::kVecElems == 0 && n >= 0 && n % dim == 0,
                  "dim must be a positive multiple of 8 and n a multiple of dim");
  FASTDIT_REQUIRE(op, y && residual && bias && out && fastdit::aligned16(y) && fastdit::aligned16(residual) &&
                          fastdit::aligned16(bias) && fastdit::aligned16(out),
                  "y, residual, bias and out must be non-null and 16-byte aligned");
  if (n == 0) return FASTDIT_OK;
  FASTDIT_DEVICE_GUARD(op, device);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int status = fastdit::dispatch_half(op, dtype, [&](auto tag) {
    using T = decltype(tag);
    fastdit::launch_add_bias_residual<T>({static_cast<const T*>(y), static_cast<const T*>(residual),
                                          static_cast<const T*>(bias), static_cast<T*>(out), n, dim}, s);
  });
  if (status != FASTDIT_OK) return status;
  return fastdit::check_launch(op);
}

// out[n, dim] (fp32) = the sinusoidal embedding of t[n] (fp32).
FASTDIT_EXPORT int fastdit_timestep_embedding(const float* t, float* out, int64_t n, int dim, int flip_sin_to_cos,
                                              float downscale_freq_shift, float scale, float max_period, int device,
                                              void* stream) {
  const char* op = "timestep_embedding";
  FASTDIT_REQUIRE(op, n >= 0 && dim > 0, "n must be >= 0 and dim > 0");
  FASTDIT_REQUIRE(op, t && out, "t and out must be non-null");
  FASTDIT_REQUIRE(op, max_period > 0.f, "max_period must be > 0");
  if (n == 0) return FASTDIT_OK;
  FASTDIT_DEVICE_GUARD(op, device);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // -ln(max_period) is computed in double and rounded once, as the reference's Python float is.
  const float neg_log_max_period = float(-std::log(double(max_period)));
  fastdit::launch_timestep_embedding(
      {t, out, n, dim, flip_sin_to_cos != 0, downscale_freq_shift, scale, neg_log_max_period}, s);
  return fastdit::check_launch(op);
}
