// 16-byte vector loads and stores of 8 half-precision elements, converted to and from fp32.
// Every memory-bound kernel here moves data in these units: one 16-byte access per thread,
// coalesced across the warp, with the math in fp32 registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace fastdit {

constexpr int kVecElems = 8;  // 8 x 2-byte elements = one 16-byte access

template <typename T>
struct HalfTraits;

template <>
struct HalfTraits<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_float2(Pair p) { return __bfloat1622float2(p); }
  static __device__ __forceinline__ Pair from_float2(float2 f) { return __float22bfloat162_rn(f); }
  // A packed pair as one 32-bit word (element 0 in the low half). bf16 -> fp32 is a shift: exact, and
  // done on the word so the compiler keeps 16 bytes in 4 registers, not 8 split halves.
  static __device__ __forceinline__ float2 word_to_float2(uint32_t w) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  }
  static __device__ __forceinline__ uint32_t float2_to_word(float2 f) {
    const Pair p = __float22bfloat162_rn(f);
    return *reinterpret_cast<const uint32_t*>(&p);
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

template <>
struct HalfTraits<__half> {
  using Pair = __half2;
  static __device__ __forceinline__ float2 to_float2(Pair p) { return __half22float2(p); }
  static __device__ __forceinline__ Pair from_float2(float2 f) { return __float22half2_rn(f); }
  static __device__ __forceinline__ float2 word_to_float2(uint32_t w) {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
  }
  static __device__ __forceinline__ uint32_t float2_to_word(float2 f) {
    const Pair p = __float22half2_rn(f);
    return *reinterpret_cast<const uint32_t*>(&p);
  }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

// The 16-byte vector at p (16-byte aligned), still packed. Row kernels keep rows in this form between
// passes: 4 registers per 8 elements instead of 8, which keeps occupancy up; unpacking is exact.
template <typename T>
__device__ __forceinline__ uint4 load_raw(const T* p) {
  return *reinterpret_cast<const uint4*>(p);
}

// The same through the read-only (non-coherent) data path: for vectors every row of a kernel re-reads
// (weights, per-sample shift/scale/gate) and that nothing writes while it runs. On the H100 (2026-11-24,
// bench/ops.py at 4bd6302 against 705c465) it made no measurable difference to the norm kernels: the
// layer_norm_modulate gap it was tried for came from the row layout (row_vectors.cuh).
template <typename T>
__device__ __forceinline__ uint4 load_raw_readonly(const T* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// 8 packed elements of T -> fp32.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& raw, float (&out)[kVecElems]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = HalfTraits<T>::word_to_float2(words[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// 8 fp32 values rounded (to nearest even) and packed as T.
template <typename T>
__device__ __forceinline__ uint4 pack8(const float (&in)[kVecElems]) {
  uint4 raw;
  raw.x = HalfTraits<T>::float2_to_word(make_float2(in[0], in[1]));
  raw.y = HalfTraits<T>::float2_to_word(make_float2(in[2], in[3]));
  raw.z = HalfTraits<T>::float2_to_word(make_float2(in[4], in[5]));
  raw.w = HalfTraits<T>::float2_to_word(make_float2(in[6], in[7]));
  return raw;
}

// Loads 8 elements of T at p (16-byte aligned) into fp32.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&out)[kVecElems]) {
  unpack8<T>(load_raw(p), out);
}

// Loads 8 read-only elements of T at p (16-byte aligned) into fp32 (see load_raw_readonly).
template <typename T>
__device__ __forceinline__ void load8_readonly(const T* p, float (&out)[kVecElems]) {
  unpack8<T>(load_raw_readonly(p), out);
}

// Rounds 8 fp32 values to T and stores them at p (16-byte aligned).
template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&in)[kVecElems]) {
  *reinterpret_cast<uint4*>(p) = pack8<T>(in);
}

// Rounds one fp32 value through T, as the reference's `.to(dtype)` does between two ops.
template <typename T>
__device__ __forceinline__ float round_through(float v) {
  return HalfTraits<T>::to_float(HalfTraits<T>::from_float(v));
}

}  // namespace fastdit
