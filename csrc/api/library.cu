// Library-wide exports: the last error text, the archs this file was built for, and whether the
// current GPU can run it. Python's loader (fastdit/ops/_library.py) calls these once at load.
#include "library.h"

#ifndef FASTDIT_ARCHS
#define FASTDIT_ARCHS "unknown"
#endif

// Bump when an export's signature or a Params struct changes; _library.py refuses a mismatch.
#define FASTDIT_ABI_VERSION 1

namespace fastdit {

namespace {
thread_local std::string last_error;
}

int set_error(const char* op, const std::string& message, int status) {
  last_error = std::string(op) + ": " + message;
  return status;
}

// A kernel that does nothing: cudaFuncGetAttributes on it fails when the fatbinary holds no image
// (SASS or PTX) the current device can run, which is the same test every other kernel would fail.
__global__ void probe_kernel() {}

}  // namespace fastdit

FASTDIT_EXPORT const char* fastdit_last_error() { return fastdit::last_error.c_str(); }

FASTDIT_EXPORT const char* fastdit_compiled_archs() { return FASTDIT_ARCHS; }

FASTDIT_EXPORT int fastdit_abi_version() { return FASTDIT_ABI_VERSION; }

// Returns FASTDIT_OK when `device` can run this library's kernels; the binary's arch (e.g. 90 for an
// sm_90a image) goes to *binary_arch.
FASTDIT_EXPORT int fastdit_device_supported(int device, int* binary_arch) {
  const char* op = "fastdit_device_supported";
  FASTDIT_REQUIRE(op, binary_arch != nullptr, "binary_arch is null");
  FASTDIT_DEVICE_GUARD(op, device);
  cudaFuncAttributes attributes;
  cudaError_t err = cudaFuncGetAttributes(&attributes, fastdit::probe_kernel);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return fastdit::set_error(op, std::string("no kernel image for this device (built for ") + FASTDIT_ARCHS +
                                      "): " + cudaGetErrorString(err),
                              FASTDIT_ERROR_CUDA);
  }
  *binary_arch = attributes.binaryVersion;
  return FASTDIT_OK;
}
