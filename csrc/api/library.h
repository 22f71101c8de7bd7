// The C ABI shared by every export in csrc/api/: status codes, dtype enum, the last-error text,
// the device guard and the launch check. Plain C types only: Python mirrors these constants in
// python/fastdit/ops/_library.py, and nothing here includes a torch or Python header.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#define FASTDIT_EXPORT extern "C" __attribute__((visibility("default")))

// Status codes returned by every export (0 = success). Mirrored in _library.py.
enum FastditStatus : int {
  FASTDIT_OK = 0,
  FASTDIT_ERROR_INVALID_ARGUMENT = 1,
  FASTDIT_ERROR_CUDA = 2,
};

// Element types. Mirrored in _library.py (DTYPE_CODES).
enum FastditDtype : int {
  FASTDIT_FLOAT32 = 0,
  FASTDIT_BFLOAT16 = 1,
  FASTDIT_FLOAT16 = 2,
};

namespace fastdit {

// Records "<op>: <message>" as this thread's last error and returns `status`.
int set_error(const char* op, const std::string& message, int status);

// Sets the current device for the scope of one export and restores the caller's afterwards, so that a
// launch on device 1 from a thread whose current device is 0 neither fails nor changes that thread.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&previous_);
    ok_ = (device == previous_) || cudaSetDevice(device) == cudaSuccess;
  }
  ~DeviceGuard() {
    int current = -1;
    cudaGetDevice(&current);
    if (current != previous_) cudaSetDevice(previous_);
  }
  bool ok() const { return ok_; }

 private:
  int previous_ = 0;
  bool ok_ = false;
};

// The last step of every export: did the launch succeed? cudaGetLastError also clears a sticky
// launch error so that the next call starts clean.
inline int check_launch(const char* op) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return set_error(op, std::string("kernel launch failed: ") + cudaGetErrorString(err), FASTDIT_ERROR_CUDA);
  }
  return FASTDIT_OK;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The dtype-dispatch step: calls launch(T{}) with T = __nv_bfloat16 or __half for the half-precision
// kernels; any other code is an error naming the op.
template <typename Launch>
int dispatch_half(const char* op, int dtype, Launch&& launch) {
  switch (dtype) {
    case FASTDIT_BFLOAT16:
      launch(__nv_bfloat16{});
      return FASTDIT_OK;
    case FASTDIT_FLOAT16:
      launch(__half{});
      return FASTDIT_OK;
    default:
      return set_error(op, "dtype code " + std::to_string(dtype) + " is not bfloat16 (1) or float16 (2)",
                       FASTDIT_ERROR_INVALID_ARGUMENT);
  }
}

}  // namespace fastdit

// Validation inside an export: on failure record the message and return INVALID_ARGUMENT.
#define FASTDIT_REQUIRE(op, cond, message) \
  do {                                     \
    if (!(cond)) return ::fastdit::set_error(op, message, FASTDIT_ERROR_INVALID_ARGUMENT); \
  } while (0)

// The device-guard step of every export.
#define FASTDIT_DEVICE_GUARD(op, device)                                                         \
  ::fastdit::DeviceGuard device_guard_(device);                                                  \
  if (!device_guard_.ok()) {                                                                     \
    return ::fastdit::set_error(op, "cannot set the CUDA device " + std::to_string(device),     \
                                FASTDIT_ERROR_CUDA);                                             \
  }
