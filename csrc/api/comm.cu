// C-ABI export of comm_pack (the Ulysses all-to-all pack/unpack copy).
// validate -> device guard -> stream -> unit-width dispatch -> launch -> check the error.
#include <string>

#include "../comm/comm_pack.cuh"
#include "library.h"

namespace {

// The widest unit (16..1 bytes) dividing the row, every stride and both pointers, all in bytes.
int unit_bytes(const void* x, const void* out, int64_t row_bytes, const int64_t* strides_bytes, int count) {
  for (int width = 16; width > 1; width /= 2) {
    bool ok = row_bytes % width == 0 && reinterpret_cast<uintptr_t>(x) % width == 0 &&
              reinterpret_cast<uintptr_t>(out) % width == 0;
    for (int i = 0; ok && i < count; ++i) ok = strides_bytes[i] % width == 0;
    if (ok) return width;
  }
  return 1;
}

}  // namespace

// out[n, q, p, :] = x[n, p, q, :]. shape = {N, P, Q, R}; x_strides = {n, p, q}; out_strides = {n, q, p}
// (strides in elements; the last dim of both is contiguous); elem_bytes = 1, 2, 4 or 8.
FASTDIT_EXPORT int fastdit_comm_pack(const void* x, void* out, const int64_t* shape, const int64_t* x_strides,
                                     const int64_t* out_strides, int elem_bytes, int device, void* stream) {
  const char* op = "comm_pack";
  FASTDIT_REQUIRE(op, shape && x_strides && out_strides, "shape and strides must be non-null");
  FASTDIT_REQUIRE(op, elem_bytes == 1 || elem_bytes == 2 || elem_bytes == 4 || elem_bytes == 8,
                  "elem_bytes " + std::to_string(elem_bytes) + " is not 1, 2, 4 or 8");
  for (int i = 0; i < 4; ++i) FASTDIT_REQUIRE(op, shape[i] >= 0, "sizes must be >= 0");
  for (int i = 0; i < 3; ++i) {
    FASTDIT_REQUIRE(op, x_strides[i] >= 0 && out_strides[i] >= 0, "strides must be >= 0");
  }
  const int64_t total = shape[0] * shape[1] * shape[2] * shape[3];
  if (total == 0) return FASTDIT_OK;
  FASTDIT_REQUIRE(op, x && out, "x and out must be non-null");
  FASTDIT_DEVICE_GUARD(op, device);
  cudaStream_t s = static_cast<cudaStream_t>(stream);

  int64_t strides_bytes[6];
  for (int i = 0; i < 3; ++i) {
    strides_bytes[i] = x_strides[i] * elem_bytes;
    strides_bytes[3 + i] = out_strides[i] * elem_bytes;
  }
  const int width = unit_bytes(x, out, shape[3] * elem_bytes, strides_bytes, 6);
  fastdit::CommPackParams params{x,
                                 out,
                                 shape[0],
                                 shape[1],
                                 shape[2],
                                 shape[3] * elem_bytes / width,
                                 strides_bytes[0] / width,
                                 strides_bytes[1] / width,
                                 strides_bytes[2] / width,
                                 strides_bytes[3] / width,
                                 strides_bytes[4] / width,
                                 strides_bytes[5] / width};
  // Grid: one block per 1024 units (launch_comm_pack), at most 2^31 - 1 blocks.
  FASTDIT_REQUIRE(op, params.n * params.p * params.q * params.r_units / 1024 < (int64_t(1) << 31) - 1,
                  "the copy is larger than 2^41 units");
  switch (width) {
    case 16: fastdit::launch_comm_pack<uint4>(params, s); break;
    case 8: fastdit::launch_comm_pack<uint2>(params, s); break;
    case 4: fastdit::launch_comm_pack<uint32_t>(params, s); break;
    case 2: fastdit::launch_comm_pack<uint16_t>(params, s); break;
    default: fastdit::launch_comm_pack<uint8_t>(params, s); break;
  }
  return fastdit::check_launch(op);
}
