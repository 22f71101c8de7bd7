// Online softmax on wgmma accumulators, in base 2 with the softmax scale folded into one FFMA:
//   p = exp2(s * scale_log2 - m * scale_log2),   scale_log2 = scale * log2(e),
// where m is the running row maximum of the raw scores s. Each thread holds 2 rows of the 64-row
// warpgroup tile (rows lane/4 and lane/4 + 8 of its warp's 16), spread over the 4 threads of a quad;
// row reductions are a thread-local loop plus two xor-shuffles. The row sum stays thread-partial
// until finalize() (FA3 does the same: the quad reduction is needed only once per tile).
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

namespace fastdit::attention::sm90 {

using namespace cute;

// wgmma accumulator ((2, 2, N/8), MMA_M, MMA_N) -> (rows (2, MMA_M), cols (2, N/8, MMA_N)).
// Value mode (2, 2, N/8) = (column pair, row +8, 8-column chunk), see the GMMA CLayout.
template <class Layout0>
__device__ constexpr auto acc_layout_rowcol(Layout0 acc) {
  static_assert(decltype(rank(acc))::value == 3, "expected a ((2,2,V), MMA_M, MMA_N) accumulator");
  static_assert(decltype(rank<0>(acc))::value == 3, "expected a wgmma accumulator value mode (2,2,V)");
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                     make_layout(get<0, 0>(acc), get<0, 2>(acc), get<2>(acc)));
}

// 16-bit P as the register A operand of the next wgmma: ((2, 2, N/8), MMA_M, MMA_N) ->
// ((2, 2, 2), MMA_M, N/16). For 16-bit types the A fragment of k-chunk kk holds exactly the
// accumulator values of columns 16kk..16kk+15 in the same order, so this is a pure reshape.
template <class Layout0>
__device__ constexpr auto acc_layout_as_a_operand(Layout0 acc) {
  auto chunks = logical_divide(get<0, 2>(acc), Tile<_2>{});  // ((2, N/16))
  return make_layout(make_layout(get<0, 0>(acc), get<0, 1>(acc), get<0, 0>(chunks)), get<1>(acc),
                     coalesce(make_layout(get<0, 1>(chunks), get<2>(acc))));
}

// MUFU.EX2 alone. Without --use_fast_math (FA3 builds with it) exp2f compiles to ex2.approx.f32, the
// non-ftz form, for which ptxas adds a denormal-range guard around the MUFU: in the bf16 D=128 kernel's
// SASS (cuobjdump, nvcc 13.0) 198 MUFU.EX2 came with 205 FSETP and 662 FMUL, against 11 and 338 with
// ex2.approx.ftz: a compare and ~2 predicated multiplies more per element, in the loop that bounds the
// consumer's softmax. Results below 2^-126 flush to 0: they cannot move a row sum that holds the
// maximum's term 1.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Max over a thread's values of one row, in kChains independent chains (FMNMX is exact, so the
// order does not matter): 2 rows x 1 chain is a 48-deep dependent chain at kBlockN = 192.
template <int kChains, class Row>
__device__ __forceinline__ float row_max_chains(Row const& row, float init) {
  constexpr int kN = decltype(size(row))::value;
  static_assert(kN % kChains == 0, "chains split the row evenly");
  float m[kChains];
  CUTE_UNROLL
  for (int c = 0; c < kChains; ++c) m[c] = fmaxf(init, row(c));
  CUTE_UNROLL
  for (int i = kChains; i < kN; ++i) m[i % kChains] = fmaxf(m[i % kChains], row(i));
  CUTE_UNROLL
  for (int stride = kChains / 2; stride > 0; stride /= 2) {
    CUTE_UNROLL
    for (int c = 0; c < stride; ++c) m[c] = fmaxf(m[c], m[c + stride]);
  }
  return m[0];
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

template <int kRows>
struct OnlineSoftmax {
  static_assert(kRows == 2, "a wgmma m64 accumulator gives each thread 2 rows");
  static constexpr int kMaxChains = 4;  // per row: with 2 rows, 8 independent FMNMX chains
  float row_max[kRows];
  float row_sum[kRows];  // thread-partial until finalize()
  float const scale_log2;

  __device__ explicit OnlineSoftmax(float scale_log2_) : scale_log2(scale_log2_) {}

  // First key block: the row max, then p = exp2(s*c - m*c) in place, the partial row sums.
  template <class Tensor0>
  __device__ __forceinline__ void first(Tensor0& acc_s) {
    Tensor s = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));
    static_assert(decltype(size<0>(s))::value == kRows, "rows per thread");
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) row_max[mi] = quad_max(row_max_chains<kMaxChains>(s(mi, _), s(mi, 0)));
    exp_and_sum<true>(s);
  }

  // Later key blocks: returns each row's rescale factor exp2((m_old - m_new) * c) for the O
  // accumulator through `o_scale`, and leaves p in acc_s.
  template <class Tensor0>
  __device__ __forceinline__ void next(Tensor0& acc_s, float (&o_scale)[kRows]) {
    Tensor s = make_tensor(acc_s.data(), acc_layout_rowcol(acc_s.layout()));
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      float const m = quad_max(row_max_chains<kMaxChains>(s(mi, _), row_max[mi]));
      o_scale[mi] = exp2_ftz((row_max[mi] - m) * scale_log2);
      row_sum[mi] *= o_scale[mi];
      row_max[mi] = m;
    }
    exp_and_sum<false>(s);
  }

  // After the last block: returns 1/rowsum per row through `o_scale` and the natural-log LSE through
  // `lse` (rows whose sum is 0 -- never the case for a row with at least one key -- get -inf).
  __device__ __forceinline__ void finalize(float (&o_scale)[kRows], float (&lse)[kRows]) {
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      float sum = quad_sum(row_sum[mi]);
      bool empty = sum == 0.f || sum != sum;
      o_scale[mi] = empty ? 0.f : 1.f / sum;
      lse[mi] = empty ? -INFINITY : (row_max[mi] * scale_log2 + __log2f(sum)) * float(M_LN2);
    }
  }

  template <class Tensor1>
  __device__ __forceinline__ static void rescale(Tensor1& acc_o, float const (&o_scale)[kRows]) {
    Tensor o = make_tensor(acc_o.data(), acc_layout_rowcol(acc_o.layout()));
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(o); ++ni) o(mi, ni) *= o_scale[mi];
    }
  }

 private:
  template <bool kFirst, class TensorS>
  __device__ __forceinline__ void exp_and_sum(TensorS& s) {
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      float const max_scaled = row_max[mi] * scale_log2;
      float sum = kFirst ? 0.f : row_sum[mi];
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s); ++ni) {
        s(mi, ni) = exp2_ftz(s(mi, ni) * scale_log2 - max_scaled);  // one FFMA + MUFU.EX2
        sum += s(mi, ni);
      }
      row_sum[mi] = sum;
    }
  }
};

}  // namespace fastdit::attention::sm90
