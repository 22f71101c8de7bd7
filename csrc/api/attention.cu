// C-ABI export of forward attention. Python (fastdit/ops/attention.py) allocates out and lse, checks
// shapes and dtypes, and mirrors FastditAttentionFwdArgs with ctypes.
//
//   fastdit_attention_fwd(args, device, stream): validate -> device guard -> stream -> dtype/head-dim
//   dispatch -> launch -> check the launch error.
//   fastdit_attention_fwd_workspace(args, device, floats, flags): the scratch the split tail of that
//   launch would use (0 floats: none); Python allocates it once per device and stream (flags zeroed once).
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "attention/attention_fwd_params.h"
#include "attention/attention_fwd_sm90.h"
#include "library.h"

// Plain C mirror of fastdit::attention::FwdArguments plus the dtype. Field order is the ABI.
struct FastditAttentionFwdArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;                 // [B, H, Sq] fp32 or null
  const int32_t* seqlens_k;   // [B] int32 or null
  int32_t dtype;              // FASTDIT_BFLOAT16 or FASTDIT_FLOAT16
  int32_t batch, seqlen_q, seqlen_k, num_heads, head_dim;
  int64_t q_strides[3];       // (batch, row, head) in elements; the head dim is contiguous
  int64_t k_strides[3];
  int64_t v_strides[3];
  int64_t o_strides[3];
  float softmax_scale;
  float* workspace;           // split-tail scratch (fastdit_attention_fwd_workspace's floats) or null
  int32_t* workspace_flags;   // as many int32 zeros as that call said, or null
  int64_t workspace_floats;
};

namespace {

using fastdit::attention::FwdArguments;

// TMA: global strides are multiples of 16 bytes, the base address 16-byte aligned.
bool tma_strides_ok(const int64_t (&strides)[3]) {
  for (int64_t s : strides) {
    if (s <= 0 || (s * 2) % 16 != 0) return false;
  }
  return true;
}

std::string validate(const FastditAttentionFwdArgs& a) {
  if (a.q == nullptr || a.k == nullptr || a.v == nullptr || a.out == nullptr) return "q, k, v and out must be non-null";
  if (a.dtype != FASTDIT_BFLOAT16 && a.dtype != FASTDIT_FLOAT16) return "dtype must be bfloat16 or float16";
  if (a.head_dim != 64 && a.head_dim != 128) return "head_dim " + std::to_string(a.head_dim) + " is not supported (allowed: 64, 128)";
  if (a.batch < 1 || a.seqlen_q < 1 || a.seqlen_k < 1 || a.num_heads < 1) return "batch, seqlen_q, seqlen_k and num_heads must be >= 1";
  if (!fastdit::aligned16(a.q) || !fastdit::aligned16(a.k) || !fastdit::aligned16(a.v) || !fastdit::aligned16(a.out))
    return "q, k, v and out must be 16-byte aligned";
  if (!tma_strides_ok(a.q_strides) || !tma_strides_ok(a.k_strides) || !tma_strides_ok(a.v_strides))
    return "q, k and v strides must be positive multiples of 8 elements (16 bytes)";
  if (a.o_strides[0] <= 0 || a.o_strides[1] <= 0 || a.o_strides[2] <= 0 || a.o_strides[1] % 2 != 0 || a.o_strides[2] % 2 != 0)
    return "out strides must be positive and even";
  if (!(a.softmax_scale > 0.f)) return "softmax_scale must be > 0";
  return "";
}

FwdArguments to_arguments(const FastditAttentionFwdArgs& a, int num_sms) {
  FwdArguments r;
  r.q = a.q; r.k = a.k; r.v = a.v; r.out = a.out; r.lse = a.lse; r.seqlens_k = a.seqlens_k;
  r.batch = a.batch; r.seqlen_q = a.seqlen_q; r.seqlen_k = a.seqlen_k; r.num_heads = a.num_heads;
  r.head_dim = a.head_dim;
  r.q_batch_stride = a.q_strides[0]; r.q_row_stride = a.q_strides[1]; r.q_head_stride = a.q_strides[2];
  r.k_batch_stride = a.k_strides[0]; r.k_row_stride = a.k_strides[1]; r.k_head_stride = a.k_strides[2];
  r.v_batch_stride = a.v_strides[0]; r.v_row_stride = a.v_strides[1]; r.v_head_stride = a.v_strides[2];
  r.o_batch_stride = a.o_strides[0]; r.o_row_stride = a.o_strides[1]; r.o_head_stride = a.o_strides[2];
  r.softmax_scale = a.softmax_scale;
  r.num_sms = num_sms;
  r.workspace = a.workspace;
  r.workspace_flags = a.workspace_flags;
  r.workspace_floats = a.workspace != nullptr && a.workspace_flags != nullptr ? a.workspace_floats : 0;
  return r;
}

cudaError_t dispatch_sm90(const FwdArguments& args, int dtype, cudaStream_t stream) {
  using namespace fastdit::attention::sm90;
  if (dtype == FASTDIT_BFLOAT16) {
    return args.head_dim == 64 ? launch_attention_fwd_sm90<cutlass::bfloat16_t, 64>(args, stream)
                               : launch_attention_fwd_sm90<cutlass::bfloat16_t, 128>(args, stream);
  }
  return args.head_dim == 64 ? launch_attention_fwd_sm90<cutlass::half_t, 64>(args, stream)
                             : launch_attention_fwd_sm90<cutlass::half_t, 128>(args, stream);
}

int64_t workspace_sm90(const FwdArguments& args, int dtype) {
  using namespace fastdit::attention::sm90;
  if (dtype == FASTDIT_BFLOAT16) {
    return args.head_dim == 64 ? attention_fwd_sm90_workspace_floats<cutlass::bfloat16_t, 64>(args)
                               : attention_fwd_sm90_workspace_floats<cutlass::bfloat16_t, 128>(args);
  }
  return args.head_dim == 64 ? attention_fwd_sm90_workspace_floats<cutlass::half_t, 64>(args)
                             : attention_fwd_sm90_workspace_floats<cutlass::half_t, 128>(args);
}

// Compute capability major and multiprocessor count, queried once per device (each query is a driver
// call; this export runs once per attention layer and step).
bool device_properties(int device, int* major, int* num_sms) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices][2] = {};
  if (device < 0 || device >= kMaxDevices) return false;
  if (cached[device][1].load(std::memory_order_relaxed) == 0) {
    int m = 0, n = 0;
    if (cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return false;
    }
    cached[device][0].store(m, std::memory_order_relaxed);
    cached[device][1].store(n, std::memory_order_relaxed);
  }
  *major = cached[device][0].load(std::memory_order_relaxed);
  *num_sms = cached[device][1].load(std::memory_order_relaxed);
  return true;
}

}  // namespace

// Returns FASTDIT_OK, or a status with fastdit_last_error() saying why. Runs on Hopper (sm_90) only.
FASTDIT_EXPORT int fastdit_attention_fwd(const FastditAttentionFwdArgs* args, int device, void* stream) {
  const char* op = "fastdit_attention_fwd";
  FASTDIT_REQUIRE(op, args != nullptr, "args is null");
  std::string problem = validate(*args);
  FASTDIT_REQUIRE(op, problem.empty(), problem);
  FASTDIT_DEVICE_GUARD(op, device);
  int major = 0, num_sms = 0;
  if (!device_properties(device, &major, &num_sms)) {
    cudaGetLastError();
    return fastdit::set_error(op, "cannot query device " + std::to_string(device), FASTDIT_ERROR_CUDA);
  }
  FASTDIT_REQUIRE(op, major == 9, "needs an sm_90 (Hopper) GPU, device " + std::to_string(device) +
                                      " has compute capability " + std::to_string(major) + ".x");
  auto s = static_cast<cudaStream_t>(stream);
  cudaError_t err = dispatch_sm90(to_arguments(*args, num_sms), args->dtype, s);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return fastdit::set_error(op, std::string("launch failed: ") + cudaGetErrorString(err), FASTDIT_ERROR_CUDA);
  }
  return fastdit::check_launch(op);
}

// The split-tail scratch of the launch `args` describes (its pointers are not read): *floats fp32 values
// and *flags int32 flags (zeroed once by the caller; each launch leaves them zero), both 0 when the launch would
// not split its tail.
FASTDIT_EXPORT int fastdit_attention_fwd_workspace(const FastditAttentionFwdArgs* args, int device, int64_t* floats,
                                                   int32_t* flags) {
  const char* op = "fastdit_attention_fwd_workspace";
  FASTDIT_REQUIRE(op, args != nullptr && floats != nullptr && flags != nullptr,
                  "args, floats and flags must be non-null");
  int major = 0, num_sms = 0;
  if (!device_properties(device, &major, &num_sms)) {
    cudaGetLastError();
    return fastdit::set_error(op, "cannot query device " + std::to_string(device), FASTDIT_ERROR_CUDA);
  }
  *floats = 0;
  *flags = 0;
  if (major != 9 || (args->head_dim != 64 && args->head_dim != 128)) return FASTDIT_OK;
  *floats = workspace_sm90(to_arguments(*args, num_sms), args->dtype);
  *flags = *floats > 0 ? num_sms : 0;
  return FASTDIT_OK;
}
