// Mainloop of the sm90 forward kernel: the producer's TMA loads (`load`) and the consumer
// warpgroups' wgmma + softmax loop (`mma`), FA3's recipe written for our fixed case
// (non-causal, optional per-batch key lengths).
//
// Per query tile of kBlockM rows, key blocks [n_begin, n_end) are visited from the last (the only one
// that can be partial, masked) down to n_begin (a whole tile: n_begin = 0, n_end = its block count;
// a segment of the split tail: part of that range, see the tile scheduler). K and V have separate
// kStages-deep TMA pipelines; V of block n is loaded one step after K of block n because the consumer
// uses it one step later ("intra-warpgroup overlap"):
//
//   S_n   = Q K_n^T                       (wgmma SS, issued async)
//   O    *= exp2(M_{n+2} - M_{n+1})       (the rescale softmax(S_{n+1}) computed, while S_n runs)
//   O    += P_{n+1} V_{n+1}               (wgmma RS: P straight from registers, issued async)
//   softmax(S_n) -> P_n                   (while the second GEMM still runs)
//
// (M_k: the running row maximum over the blocks visited up to block k, scaled by softmax_scale*log2 e.)
//
// The two consumer warpgroups take turns issuing their GEMMs (the WarpScheduler named barriers,
// "ping-pong"), so that one warpgroup's softmax overlaps the other's GEMMs.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>
#include <cutlass/gemm/collective/builders/sm90_common.inl>
#include <cutlass/numeric_conversion.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "attention_fwd_params.h"
#include "attention_fwd_sm90_softmax.cuh"
#include "attention_fwd_sm90_tile_scheduler.cuh"

namespace fastdit::attention::sm90 {

using namespace cute;

// Named barrier ids (offset by CUTLASS's reserved ids inside NamedBarrier's user interface).
enum class FwdBarrier : uint32_t {
  WarpSchedulerWG1 = 0,  // ping-pong: consumer warpgroup 1 may issue its GEMMs
  WarpSchedulerWG2 = 1,  // ping-pong: consumer warpgroup 2 may issue its GEMMs
  QueryEmptyWG1 = 2,     // consumer warpgroup 1 -> producer: its half of smem Q may take the next tile's
  QueryEmptyWG2 = 3,     // consumer warpgroup 2 -> producer: the same for its half
};

template <class Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_>
struct FwdMainloop {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kNumMmaWarpGroups = kBlockM / 64;
  static constexpr int kNumMmaThreads = kNumMmaWarpGroups * cutlass::NumThreadsPerWarpGroup;

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dim 64 or 128");
  static_assert(kBlockM == 128, "two consumer warpgroups of 64 rows (the ping-pong needs exactly two)");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "kBlockN is the wgmma N of Q K^T and the K of P V");
  static_assert(kStages >= 2, "the intra-warpgroup overlap holds K_n and V_{n+1} at once");

  // Q as two 64-row halves, one per consumer warpgroup, each loaded by its own TMA and barrier: a
  // warpgroup's next Q half is loaded as soon as that warpgroup's last Q K^T is done, so the warpgroup
  // ahead in the ping-pong starts the next tile while the other finishes this one, and the two stay half
  // a period apart across tiles (one shared Q made both wait for the later one and restart in step, their
  // first softmax with no GEMM to hide behind). S = Q K^T is therefore one warpgroup's GEMM on its half.
  static constexpr int kBlockMHalf = kBlockM / 2;
  using TileShapeQK = Shape<Int<kBlockMHalf>, Int<kBlockN>, Int<kHeadDim>>;  // (M, N, K) of one warpgroup's S
  using TileShapePV = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;      // (M, N, K) of O = P V
  using AtomLayoutMNK = Layout<Shape<Int<kNumMmaWarpGroups>, _1, _1>>;        // warpgroups split M
  using TiledMmaQK = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, TileShapeQK>()));
  // V is [keys, D] with D contiguous: as the B operand of P V (N = D) it is MN-major.
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, TileShapePV, GMMA::Major::K, GMMA::Major::MN>(),
      AtomLayoutMNK{}));

  using SmemLayoutAtomQ = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                                   GMMA::Major::K, Element, Int<kBlockM>, Int<kHeadDim>>());
  using SmemLayoutQHalf = decltype(tile_to_shape(SmemLayoutAtomQ{}, Shape<Int<kBlockMHalf>, Int<kHeadDim>>{}));
  static constexpr int kSmemQHalfElems = cute::cosize_v<SmemLayoutQHalf>;
  using SmemLayoutAtomK = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                                   GMMA::Major::K, Element, Int<kBlockN>, Int<kHeadDim>>());
  using SmemLayoutK = decltype(tile_to_shape(SmemLayoutAtomK{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutAtomVt = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                                    GMMA::Major::MN, Element, Int<kHeadDim>, Int<kBlockN>>());
  using SmemLayoutVt = decltype(tile_to_shape(SmemLayoutAtomVt{},
                                              Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                                              Step<_2, _1, _3>{}));  // (D, keys, stage)

  struct TensorStorage : cute::aligned_struct<128, _0> {
    cute::array_aligned<Element, 2 * kSmemQHalfElems, 1024> smem_q;  // warpgroup 1's half, then 2's
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> smem_k;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutVt>, 1024> smem_v;
  };

  using MainloopPipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = cutlass::PipelineState<kStages>;

  static constexpr uint32_t kTmaBytesQHalf = kBlockMHalf * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesKV = kBlockN * kHeadDim * sizeof(Element);

  // Global tensors as TMA sees them: Q/K (seqlen, D, head, batch), V (D, seqlen, head, batch).
  using ShapeQKV = Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideQK = Stride<int64_t, _1, int64_t, int64_t>;
  using StrideVt = Stride<_1, int64_t, int64_t, int64_t>;
  using TmaQ = decltype(make_tma_copy(
      SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideQK{}),
      SmemLayoutQHalf{}, Shape<Int<kBlockMHalf>, Int<kHeadDim>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(
      SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideQK{}),
      take<0, 2>(SmemLayoutK{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  using TmaV = decltype(make_tma_copy(
      SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideVt{}),
      take<0, 2>(SmemLayoutVt{}), Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{}));

  struct Params {
    ShapeQKV shape_q, shape_k, shape_vt;
    TmaQ tma_q;
    TmaK tma_k;
    TmaV tma_v;
    int32_t const* seqlens_k;  // [B] or null
    float scale_log2;          // softmax_scale * log2(e)
  };

  static Params make_params(FwdArguments const& a) {
    auto const* q = static_cast<Element const*>(a.q);
    auto const* k = static_cast<Element const*>(a.k);
    auto const* v = static_cast<Element const*>(a.v);
    ShapeQKV shape_q = make_shape(a.seqlen_q, a.head_dim, a.num_heads, a.batch);
    ShapeQKV shape_k = make_shape(a.seqlen_k, a.head_dim, a.num_heads, a.batch);
    ShapeQKV shape_vt = make_shape(a.head_dim, a.seqlen_k, a.num_heads, a.batch);
    auto mq = make_tensor(make_gmem_ptr(q), shape_q, make_stride(a.q_row_stride, _1{}, a.q_head_stride, a.q_batch_stride));
    auto mk = make_tensor(make_gmem_ptr(k), shape_k, make_stride(a.k_row_stride, _1{}, a.k_head_stride, a.k_batch_stride));
    auto mv = make_tensor(make_gmem_ptr(v), shape_vt, make_stride(_1{}, a.v_row_stride, a.v_head_stride, a.v_batch_stride));
    return {shape_q, shape_k, shape_vt,
            make_tma_copy(SM90_TMA_LOAD{}, mq, SmemLayoutQHalf{}, Shape<Int<kBlockMHalf>, Int<kHeadDim>>{}, _1{}),
            make_tma_copy(SM90_TMA_LOAD{}, mk, take<0, 2>(SmemLayoutK{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}),
            make_tma_copy(SM90_TMA_LOAD{}, mv, take<0, 2>(SmemLayoutVt{}), Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{}),
            a.seqlens_k, a.softmax_scale * float(M_LOG2E)};
  }

  __device__ static void prefetch_tma_descriptors(Params const& p) {
    cute::prefetch_tma_descriptor(p.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(p.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(p.tma_v.get_tma_descriptor());
  }

  // Keys this batch attends to, and how many key blocks that is (0: nothing to load or compute).
  __device__ static int seqlen_k(Params const& p, int batch) {
    return p.seqlens_k == nullptr ? get<0>(p.shape_k) : min(p.seqlens_k[batch], get<0>(p.shape_k));
  }
  __device__ static int num_n_blocks(Params const& p, int batch) {
    return (seqlen_k(p, batch) + kBlockN - 1) / kBlockN;
  }

  // Producer: one warp. Lane 0 (the pipelines' leader thread) issues every TMA; the whole warp joins
  // the QueryEmpty barriers. Returns after issuing all loads of key blocks [n_begin, n_end) of this tile.
  __device__ void load(Params const& p, MainloopPipeline& pipeline_k, MainloopPipeline& pipeline_v,
                       PipelineState& write, uint64_t* barrier_q, TensorStorage& smem, TileCoord tile,
                       int n_begin, int n_end) {
    Tensor sK = make_tensor(make_smem_ptr(smem.smem_k.data()), SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(smem.smem_v.data()), SmemLayoutVt{});

    Tensor mQ = p.tma_q.get_tma_tensor(p.shape_q)(_, _, tile.head, tile.batch);    // (Sq, D)
    Tensor mK = p.tma_k.get_tma_tensor(p.shape_k)(_, _, tile.head, tile.batch);    // (Sk, D)
    Tensor mVt = p.tma_v.get_tma_tensor(p.shape_vt)(_, _, tile.head, tile.batch);  // (D, Sk)
    Tensor gQ = local_tile(mQ, Shape<Int<kBlockMHalf>, Int<kHeadDim>>{}, make_coord(_, _0{}));  // (64, D, m)
    Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));   // (N, D, n)
    Tensor gVt = local_tile(mVt, Shape<Int<kHeadDim>, Int<kBlockN>>{}, make_coord(_0{}, _));  // (D, N, n)

    auto tma_q = p.tma_q.get_slice(_0{});
    auto tma_k = p.tma_k.get_slice(_0{});
    auto tma_v = p.tma_v.get_slice(_0{});
    Tensor tQgQ = group_modes<0, 3>(tma_q.partition_S(gQ));    // (TMA, half tile m)
    Tensor tKgK = group_modes<0, 3>(tma_k.partition_S(gK));    // (TMA, n)
    Tensor tKsK = group_modes<0, 3>(tma_k.partition_D(sK));    // (TMA, stage)
    Tensor tVgV = group_modes<0, 3>(tma_v.partition_S(gVt));   // (TMA, n)
    Tensor tVsV = group_modes<0, 3>(tma_v.partition_D(sVt));   // (TMA, stage)

    bool const leader = cute::elect_one_sync();
    auto load_k = [&](int n, PipelineState const& state) {
      pipeline_k.producer_acquire(state);
      copy(p.tma_k.with(*pipeline_k.producer_get_barrier(state), 0, TMA::CacheHintSm90::EVICT_LAST),
           tKgK(_, n), tKsK(_, state.index()));
    };
    auto load_v = [&](int n, PipelineState const& state) {
      pipeline_v.producer_acquire(state);
      copy(p.tma_v.with(*pipeline_v.producer_get_barrier(state), 0, TMA::CacheHintSm90::EVICT_LAST),
           tVgV(_, n), tVsV(_, state.index()));
    };

    int n = n_end - 1;
    if (leader) load_k(n, write);
    // A warpgroup's Q half may be overwritten once it finished the previous tile's Q K^T.
    CUTE_UNROLL
    for (int half = 0; half < 2; ++half) {
      cutlass::arch::NamedBarrier::sync(cutlass::NumThreadsPerWarpGroup + cutlass::NumThreadsPerWarp,
                                        query_empty_barrier(half));
      if (leader) {
        Tensor sQ = make_tensor(make_smem_ptr(smem.smem_q.data() + half * kSmemQHalfElems), SmemLayoutQHalf{});
        cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&barrier_q[half], kTmaBytesQHalf);
        copy(p.tma_q.with(barrier_q[half], 0, TMA::CacheHintSm90::EVICT_FIRST),
             tQgQ(_, 2 * tile.m_block + half), group_modes<0, 3>(tma_q.partition_D(sQ)));
      }
    }
    for (--n; n >= n_begin; --n) {
      PipelineState write_v = write;  // V runs one block behind K
      ++write;
      if (leader) {
        load_k(n, write);
        load_v(n + 1, write_v);
      }
    }
    if (leader) load_v(n_begin, write);
    ++write;
  }

  // Consumer warpgroup: S = Q K^T, online softmax, O += P V over key blocks [n_begin, n_end) of the
  // tile. Returns the softmax state (row max, thread-partial row sums); O is unnormalized.
  template <class FragO, class Softmax>
  __device__ void mma(Params const& p, MainloopPipeline& pipeline_k, MainloopPipeline& pipeline_v,
                      PipelineState& read, uint64_t* barrier_q, int q_phase, TensorStorage& smem,
                      FragO& tOrO, Softmax& softmax, int mma_thread_idx, int n_begin, int n_end, int seqlen_k) {
    int const wg = mma_thread_idx / cutlass::NumThreadsPerWarpGroup;  // 0 or 1 among consumers
    Tensor sQ = make_tensor(make_smem_ptr(smem.smem_q.data() + wg * kSmemQHalfElems), SmemLayoutQHalf{});
    Tensor sK = make_tensor(make_smem_ptr(smem.smem_k.data()), SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(smem.smem_v.data()), SmemLayoutVt{});

    TiledMmaQK tiled_mma_qk;  // this warpgroup's 64 rows only
    TiledMmaPV tiled_mma_pv;
    auto wg_mma_qk = tiled_mma_qk.get_slice(0);
    auto wg_mma_pv = tiled_mma_pv.get_slice(wg * cutlass::NumThreadsPerWarpGroup);
    Tensor tSrQ = wg_mma_qk.partition_fragment_A(sQ);   // smem descriptors
    Tensor tSrK = wg_mma_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage)
    Tensor tOrV = wg_mma_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)

    auto wait = [](MainloopPipeline& pipeline, PipelineState const& state) {
      pipeline.consumer_wait(state, pipeline.consumer_try_wait(state));
    };
    // Mask keys >= seqlen_k: only the first visited block (the last one) can be partial.
    auto thread_mma_qk = tiled_mma_qk.get_thread_slice(mma_thread_idx % cutlass::NumThreadsPerWarpGroup);
    Tensor cS = thread_mma_qk.partition_C(make_identity_tensor(select<0, 1>(TileShapeQK{})));
    auto mask_keys = [&](auto& tSrS, int n) {
      int const limit = seqlen_k - n * kBlockN;
      if (limit >= kBlockN) return;
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); ++i) {
        if (get<1>(cS(i)) >= limit) tSrS(i) = -INFINITY;
      }
    };

    cutlass::arch::ClusterTransactionBarrier::wait(&barrier_q[wg], q_phase);

    // First block: S, softmax, P. No O yet.
    int n = n_end - 1;
    Tensor tSrS = partition_fragment_C(tiled_mma_qk, select<0, 1>(TileShapeQK{}));
    wait(pipeline_k, read);
    gemm<true>(tiled_mma_qk, tSrQ, tSrK(_, _, _, read.index()), tSrS);
    warpgroup_wait<0>();
    pipeline_k.consumer_release(read);
    mask_keys(tSrS, n);
    softmax.first(tSrS);
    Tensor tOrP = make_tensor_like<Element>(acc_layout_as_a_operand(tSrS.layout()));
    convert_p(tSrS, tOrP);
    clear(tOrO);
    // O's rescale for the latest max, applied just before the next P V accumulates into O: after the
    // next Q K^T is issued, so that the multiplies overlap it instead of lengthening the softmax.
    float o_scale[2] = {1.f, 1.f};

    for (--n; n >= n_begin; --n) {
      PipelineState read_v = read;  // P and V of block n+1
      ++read;
      Tensor tSrS = partition_fragment_C(tiled_mma_qk, select<0, 1>(TileShapeQK{}));
      wait(pipeline_k, read);
      scheduler_barrier_sync(wg);
      gemm<true>(tiled_mma_qk, tSrQ, tSrK(_, _, _, read.index()), tSrS);
      Softmax::rescale(tOrO, o_scale);
      wait(pipeline_v, read_v);
      gemm<false>(tiled_mma_pv, tOrP, tOrV(_, _, _, read_v.index()), tOrO);
      scheduler_barrier_arrive(wg);
      warpgroup_wait<1>();  // S done, P V may still run
      pipeline_k.consumer_release(read);
      softmax.next(tSrS, o_scale);
      warpgroup_wait<0>();  // P V done: tOrP and V's stage are free
      pipeline_v.consumer_release(read_v);
      convert_p(tSrS, tOrP);
    }
    // This warpgroup's Q K^T of this tile have completed: the producer may load its next Q half.
    cutlass::arch::NamedBarrier::arrive(cutlass::NumThreadsPerWarpGroup + cutlass::NumThreadsPerWarp,
                                        query_empty_barrier(wg));
    Softmax::rescale(tOrO, o_scale);
    wait(pipeline_v, read);
    gemm<false>(tiled_mma_pv, tOrP, tOrV(_, _, _, read.index()), tOrO);
    warpgroup_wait<0>();
    pipeline_v.consumer_release(read);
    ++read;
  }

  // Lets consumer warpgroup 1 issue first; called once per CTA before the first tile.
  __device__ static void mma_init(int wg) {
    cutlass::arch::NamedBarrier::arrive(cutlass::NumThreadsPerWarpGroup + cutlass::NumThreadsPerWarp,
                                        query_empty_barrier(wg));
    if (wg == 0) {
      cutlass::arch::NamedBarrier::arrive(2 * cutlass::NumThreadsPerWarpGroup,
                                          static_cast<uint32_t>(FwdBarrier::WarpSchedulerWG1));
    }
  }

 private:
  __device__ static uint32_t query_empty_barrier(int wg) {
    return static_cast<uint32_t>(FwdBarrier::QueryEmptyWG1) + wg;
  }
  __device__ static void scheduler_barrier_sync(int wg) {
    cutlass::arch::NamedBarrier::sync(2 * cutlass::NumThreadsPerWarpGroup,
                                      static_cast<uint32_t>(FwdBarrier::WarpSchedulerWG1) + wg);
  }
  __device__ static void scheduler_barrier_arrive(int wg) {
    cutlass::arch::NamedBarrier::arrive(2 * cutlass::NumThreadsPerWarpGroup,
                                        static_cast<uint32_t>(FwdBarrier::WarpSchedulerWG1) + (1 - wg));
  }

  // P (fp32, in the S accumulator) -> 16-bit A operand, two values per cvt.
  template <class TensorS, class TensorP>
  __device__ static void convert_p(TensorS const& tSrS, TensorP& tOrP) {
    static_assert(decltype(size(tSrS))::value == decltype(size(tOrP))::value, "P has S's values");
    cutlass::NumericArrayConverter<Element, float, 2> convert;
    auto const* src = reinterpret_cast<cutlass::Array<float, 2> const*>(tSrS.data());
    auto* dst = reinterpret_cast<cutlass::Array<Element, 2>*>(tOrP.data());
    CUTE_UNROLL
    for (int i = 0; i < size(tSrS) / 2; ++i) dst[i] = convert(src[i]);
  }

  // One warpgroup GEMM over the whole K extent, committed as one batch and not waited for.
  template <bool kZeroInit, class TiledMma, class TA, class TB, class TC>
  __device__ static void gemm(TiledMma& tiled_mma, TA const& tCrA, TB const& tCrB, TC& tCrC) {
    constexpr bool kRegisterA = !cute::is_base_of<GMMA::DescriptorIterator, typename TiledMma::FrgTypeA>::value;
    if constexpr (kRegisterA) warpgroup_fence_operand(const_cast<TA&>(tCrA));
    warpgroup_fence_operand(tCrC);
    warpgroup_arrive();
    if constexpr (kZeroInit) tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
    CUTE_UNROLL
    for (int k = 0; k < size<2>(tCrA); ++k) {
      cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), tCrC);
      tiled_mma.accumulate_ = GMMA::ScaleOut::One;
    }
    warpgroup_commit_batch();
    warpgroup_fence_operand(tCrC);
    if constexpr (kRegisterA) warpgroup_fence_operand(const_cast<TA&>(tCrA));
  }
};

}  // namespace fastdit::attention::sm90
