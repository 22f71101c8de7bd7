// C-ABI exports of the norm family: rms_norm, rms_norm_silu, layer_norm_modulate, gated_residual_norm_modulate.
// Each: validate -> device guard -> stream -> dtype dispatch -> launch -> check the error.
// Python (fastdit/ops/<op>.py) allocates every output and mirrors the structs below with ctypes.
#include "../norm/modulated_layer_norm.cuh"
#include "../norm/rms_norm.cuh"
#include "library.h"

// One shift/scale/gate operand: [batch, dim] (seq_stride 0) or [batch, seq, dim], last dim contiguous.
typedef struct {
  const void* ptr;
  int64_t batch_stride;  // elements
  int64_t seq_stride;    // elements
} fastdit_modulation_t;

typedef struct {
  const void* x;         // [batch, seq, dim] contiguous
  const void* residual;  // [batch, seq, dim] contiguous; nullptr for layer_norm_modulate
  fastdit_modulation_t gate;
  fastdit_modulation_t shift;
  fastdit_modulation_t scale;
  void* r_out;  // [batch, seq, dim]; nullptr for layer_norm_modulate
  void* y_out;  // [batch, seq, dim]
  int64_t batch;
  int64_t seq;
  int64_t dim;
  float eps;
} fastdit_modulated_norm_params;

namespace {

bool modulation_ok(const fastdit_modulation_t& m) {
  return m.ptr != nullptr && fastdit::aligned16(m.ptr) && m.batch_stride % fastdit::kVecElems == 0 &&
         m.seq_stride % fastdit::kVecElems == 0;
}

template <typename T>
fastdit::ModulationView<T> view(const fastdit_modulation_t& m) {
  return {static_cast<const T*>(m.ptr), m.batch_stride, m.seq_stride};
}

const char* validate_row_width(int64_t dim) {
  if (dim <= 0 || dim % fastdit::kVecElems != 0) return "dim must be a positive multiple of 8";
  if (dim > fastdit::kMaxRowElems) return "dim must be at most 8192";
  return nullptr;
}

int modulated_norm(const char* op, const fastdit_modulated_norm_params* p, bool has_residual, int dtype,
                   int device, void* stream) {
  FASTDIT_REQUIRE(op, p != nullptr, "params is null");
  const char* width_error = validate_row_width(p->dim);
  FASTDIT_REQUIRE(op, width_error == nullptr, width_error ? width_error : "");
  FASTDIT_REQUIRE(op, p->batch >= 0 && p->seq > 0, "batch must be >= 0 and seq > 0");
  FASTDIT_REQUIRE(op, p->batch * p->seq <= INT32_MAX, "batch * seq must be below 2^31 rows");
  FASTDIT_REQUIRE(op, p->x && p->y_out && fastdit::aligned16(p->x) && fastdit::aligned16(p->y_out),
                  "x and y_out must be non-null and 16-byte aligned");
  FASTDIT_REQUIRE(op, modulation_ok(p->shift) && modulation_ok(p->scale),
                  "shift and scale must be 16-byte aligned with strides that are multiples of 8");
  if (has_residual) {
    FASTDIT_REQUIRE(op, p->residual && p->r_out && fastdit::aligned16(p->residual) && fastdit::aligned16(p->r_out),
                    "residual and r_out must be non-null and 16-byte aligned");
    FASTDIT_REQUIRE(op, modulation_ok(p->gate), "gate must be 16-byte aligned with strides that are multiples of 8");
  }
  if (p->batch == 0) return FASTDIT_OK;
  FASTDIT_DEVICE_GUARD(op, device);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int status = fastdit::dispatch_half(op, dtype, [&](auto tag) {
    using T = decltype(tag);
    fastdit::ModulatedNormParams<T> params{static_cast<const T*>(p->x),
                                           static_cast<const T*>(p->residual),
                                           view<T>(p->gate),
                                           view<T>(p->shift),
                                           view<T>(p->scale),
                                           static_cast<T*>(p->r_out),
                                           static_cast<T*>(p->y_out),
                                           p->batch,
                                           p->seq,
                                           p->dim,
                                           p->eps};
    if (has_residual) {
      fastdit::launch_gated_residual_norm_modulate<T>(params, s);
    } else {
      fastdit::launch_layer_norm_modulate<T>(params, s);
    }
  });
  if (status != FASTDIT_OK) return status;
  return fastdit::check_launch(op);
}

// rms_norm and rms_norm_silu (silu = true): validate -> device guard -> stream -> dtype dispatch -> launch ->
// check. The plain norm passes out_row_stride = dim and no pre_bias.
int rms_norm_export(const char* op, const void* x, int64_t x_row_stride, const void* pre_bias, const void* weight,
                    void* out, int64_t out_row_stride, int64_t rows, int64_t dim, float eps, bool silu, int dtype,
                    int device, void* stream) {
  const char* width_error = validate_row_width(dim);
  FASTDIT_REQUIRE(op, width_error == nullptr, width_error ? width_error : "");
  FASTDIT_REQUIRE(op, rows >= 0 && rows <= INT32_MAX, "rows must be >= 0 and below 2^31");
  FASTDIT_REQUIRE(op, x && out && fastdit::aligned16(x) && fastdit::aligned16(out),
                  "x and out must be non-null and 16-byte aligned");
  FASTDIT_REQUIRE(op, x_row_stride % fastdit::kVecElems == 0 && x_row_stride >= dim,
                  "x_row_stride must be a multiple of 8 and >= dim");
  FASTDIT_REQUIRE(op, out_row_stride % fastdit::kVecElems == 0 && out_row_stride >= dim,
                  "out_row_stride must be a multiple of 8 and >= dim");
  FASTDIT_REQUIRE(op, weight == nullptr || fastdit::aligned16(weight), "weight must be 16-byte aligned");
  FASTDIT_REQUIRE(op, pre_bias == nullptr || fastdit::aligned16(pre_bias), "pre_bias must be 16-byte aligned");
  if (rows == 0) return FASTDIT_OK;
  FASTDIT_DEVICE_GUARD(op, device);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int status = fastdit::dispatch_half(op, dtype, [&](auto tag) {
    using T = decltype(tag);
    fastdit::RmsNormParams<T> params{static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<T*>(out),
                                     rows, dim, x_row_stride, eps, static_cast<const T*>(pre_bias), out_row_stride};
    fastdit::launch_rms_norm<T>(params, silu, s);
  });
  if (status != FASTDIT_OK) return status;
  return fastdit::check_launch(op);
}

}  // namespace

// y[rows, dim] = rms_norm(x) * weight. x rows are x_row_stride elements apart; weight may be null.
FASTDIT_EXPORT int fastdit_rms_norm(const void* x, int64_t x_row_stride, const void* weight, void* out, int64_t rows,
                                    int64_t dim, float eps, int dtype, int device, void* stream) {
  return rms_norm_export("rms_norm", x, x_row_stride, nullptr, weight, out, dim, rows, dim, eps, false, dtype, device,
                         stream);
}

FASTDIT_EXPORT int fastdit_layer_norm_modulate(const fastdit_modulated_norm_params* p, int dtype, int device,
                                               void* stream) {
  return modulated_norm("layer_norm_modulate", p, false, dtype, device, stream);
}

FASTDIT_EXPORT int fastdit_gated_residual_norm_modulate(const fastdit_modulated_norm_params* p, int dtype, int device,
                                                        void* stream) {
  return modulated_norm("gated_residual_norm_modulate", p, true, dtype, device, stream);
}

// y[rows, dim] = silu(rms_norm(x + pre_bias) * weight), y rows out_row_stride elements apart (a slice of a
// larger buffer, e.g. the frames after a causal conv's time padding). pre_bias and weight may be null.
FASTDIT_EXPORT int fastdit_rms_norm_silu(const void* x, int64_t x_row_stride, const void* pre_bias, const void* weight,
                                         void* out, int64_t out_row_stride, int64_t rows, int64_t dim, float eps,
                                         int dtype, int device, void* stream) {
  return rms_norm_export("rms_norm_silu", x, x_row_stride, pre_bias, weight, out, out_row_stride, rows, dim, eps, true,
                         dtype, device, stream);
}
