// FlashAttention-3-style forward attention for sm_90a: warp-specialized, TMA + wgmma, persistent.
// This file only wires the roles; the work lives in
//   attention_fwd_sm90_mainloop_tma_wgmma.cuh   load (producer) and mma (consumers)
//   attention_fwd_sm90_softmax.cuh              online softmax (exp2, scale folded)
//   attention_fwd_sm90_epilogue.cuh             O and LSE stores
//   attention_fwd_sm90_tile_scheduler.cuh       static persistent tile order, split tail
//   attention_fwd_sm90_heuristics.h             tile sizes
//
// CTA = 3 warpgroups (384 threads). Warpgroup 0 is the producer: it gives registers back
// (setmaxnreg 24) and one warp issues all TMA loads. Warpgroups 1 and 2 are consumers (setmaxnreg 240),
// each owning 64 of the tile's 128 query rows.
#pragma once

#include <atomic>

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "attention_fwd_params.h"
#include "attention_fwd_sm90_epilogue.cuh"
#include "attention_fwd_sm90_heuristics.h"
#include "attention_fwd_sm90_mainloop_tma_wgmma.cuh"
#include "attention_fwd_sm90_tile_scheduler.cuh"

namespace fastdit::attention::sm90 {

template <class Element, int kHeadDim>
struct FwdKernel {
  using Mainloop = FwdMainloop<Element, kHeadDim, kBlockM, block_n(kHeadDim), kStages>;
  using Epilogue = FwdEpilogue<Element, kHeadDim, kBlockM>;
  using Scheduler = StaticPersistentTileScheduler;
  static constexpr int kNumThreads = cutlass::NumThreadsPerWarpGroup + Mainloop::kNumMmaThreads;
  // 24 + 2 * 240 = 504 registers per 4-thread slot over 3 warpgroups: <= 512 (65536 / 128).
  static constexpr uint32_t kProducerRegisters = 24;
  static constexpr uint32_t kConsumerRegisters = 240;
  static_assert(kProducerRegisters + Mainloop::kNumMmaWarpGroups * kConsumerRegisters <= 512,
                "setmaxnreg budget: the register file holds 64K registers for 384 threads");

  struct SharedStorage {
    typename Mainloop::TensorStorage tensors;
    alignas(16) uint64_t barrier_q[2];  // one per Q half (consumer warpgroup)
    alignas(16) typename Mainloop::MainloopPipeline::SharedStorage pipeline_k;
    alignas(16) typename Mainloop::MainloopPipeline::SharedStorage pipeline_v;
  };
  static constexpr int kSharedBytes = sizeof(SharedStorage);
  static_assert(kSharedBytes <= 227 * 1024, "sm90 opt-in shared memory limit is 227 KiB per CTA");

  struct Params {
    typename Mainloop::Params mainloop;
    typename Epilogue::Params epilogue;
    typename Scheduler::Params scheduler;
    float4* workspace;  // split tail: one contribution slot per CTA (Epilogue::Partial)
    int* flags;         // [grid] zero at launch (each launch leaves them zero); a slot's flag counts its writers
  };

  using FragO = decltype(partition_fragment_C(typename Mainloop::TiledMmaPV{},
                                              select<0, 1>(typename Mainloop::TileShapePV{})));
  // Floats of workspace per CTA slot for the split tail.
  static constexpr int kWorkspaceFloatsPerSlot = Epilogue::template Partial<FragO>::kFloatsPerSlot;

  // The split tail is planned when the workspace is big enough for a slot per SM (and the keys per
  // batch are uniform); see the tile scheduler.
  static Params make_params(FwdArguments const& a) {
    int const m_blocks = (a.seqlen_q + kBlockM - 1) / kBlockM;
    int const n_blocks = a.seqlens_k != nullptr ? 0 : (a.seqlen_k + Mainloop::kBlockN - 1) / Mainloop::kBlockN;
    bool const workspace_ok = a.workspace != nullptr && a.workspace_flags != nullptr &&
                              a.workspace_floats >= int64_t(a.num_sms) * kWorkspaceFloatsPerSlot;
    return {Mainloop::make_params(a), Epilogue::make_params(a),
            Scheduler::make_params(m_blocks, a.num_heads, a.batch, n_blocks, a.num_sms, workspace_ok),
            reinterpret_cast<float4*>(a.workspace), a.workspace_flags};
  }

  // Workspace floats this call's plan uses (0: no split tail).
  static int64_t workspace_floats(FwdArguments const& a) {
    int const m_blocks = (a.seqlen_q + kBlockM - 1) / kBlockM;
    int const n_blocks = a.seqlens_k != nullptr ? 0 : (a.seqlen_k + Mainloop::kBlockN - 1) / Mainloop::kBlockN;
    auto const sched = Scheduler::make_params(m_blocks, a.num_heads, a.batch, n_blocks, a.num_sms, true);
    return Scheduler::split(sched) ? int64_t(a.num_sms) * kWorkspaceFloatsPerSlot : 0;
  }

  __device__ static void run(Params const& params, char* smem_buf) {
    using Pipeline = typename Mainloop::MainloopPipeline;
    auto& smem = *reinterpret_cast<SharedStorage*>(smem_buf);
    int const warp_group = cutlass::canonical_warp_group_idx();
    int const warp_idx = cutlass::canonical_warp_idx_sync();

    if (warp_idx == 0 && cute::elect_one_sync()) {
      Mainloop::prefetch_tma_descriptors(params.mainloop);
      cutlass::arch::ClusterTransactionBarrier::init(&smem.barrier_q[0], 1);
      cutlass::arch::ClusterTransactionBarrier::init(&smem.barrier_q[1], 1);
    }
    typename Pipeline::Params pipeline_params;
    pipeline_params.transaction_bytes = Mainloop::kTmaBytesKV;
    pipeline_params.role = warp_group == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
    pipeline_params.is_leader = threadIdx.x % cutlass::NumThreadsPerWarpGroup == 0;
    pipeline_params.num_consumers = Mainloop::kNumMmaThreads;
    Pipeline pipeline_k(smem.pipeline_k, pipeline_params, Shape<_1, _1, _1>{});
    Pipeline pipeline_v(smem.pipeline_v, pipeline_params, Shape<_1, _1, _1>{});
    __syncthreads();  // barrier inits visible to every thread

    Mainloop mainloop;
    if (warp_group == 0) {
      producer(params, mainloop, pipeline_k, pipeline_v, smem, warp_idx);
    } else {
      consumer(params, mainloop, pipeline_k, pipeline_v, smem, warp_group - 1);
    }
  }

 private:
  using Pipeline = typename Mainloop::MainloopPipeline;

  __device__ static void producer(Params const& params, Mainloop& mainloop, Pipeline& pipeline_k,
                                  Pipeline& pipeline_v, SharedStorage& smem, int warp_idx) {
    cutlass::arch::warpgroup_reg_dealloc<kProducerRegisters>();
    if (warp_idx != 0) return;  // one producer warp issues every TMA
    auto write = cutlass::make_producer_start_state<Pipeline>();
    WorkItem w;
    for (int i = 0; Scheduler::get(params.scheduler, blockIdx.x, i, w); ++i) {
      int const n_end = w.n_end >= 0 ? w.n_end : Mainloop::num_n_blocks(params.mainloop, w.tile.batch);
      if (n_end == w.n_begin) continue;
      mainloop.load(params.mainloop, pipeline_k, pipeline_v, write, smem.barrier_q, smem.tensors, w.tile,
                    w.n_begin, n_end);
    }
    // Keep the CTA alive until the consumers released every stage the producer filled.
    if (cute::elect_one_sync()) {
      pipeline_k.producer_tail(write);
      pipeline_v.producer_tail(write);
    }
  }

  __device__ static void consumer(Params const& params, Mainloop& mainloop, Pipeline& pipeline_k,
                                  Pipeline& pipeline_v, SharedStorage& smem, int wg) {
    cutlass::arch::warpgroup_reg_alloc<kConsumerRegisters>();
    int const mma_thread_idx = threadIdx.x - cutlass::NumThreadsPerWarpGroup;
    typename Mainloop::TiledMmaPV tiled_mma_pv;
    typename Mainloop::PipelineState read;
    Mainloop::mma_init(wg);
    int q_phase = 0;
    WorkItem w;
    CUTE_NO_UNROLL
    for (int i = 0; Scheduler::get(params.scheduler, blockIdx.x, i, w); ++i) {
      Tensor tOrO = partition_fragment_C(tiled_mma_pv, select<0, 1>(typename Mainloop::TileShapePV{}));
      int const seqlen_k = Mainloop::seqlen_k(params.mainloop, w.tile.batch);
      int const n_end = w.n_end >= 0 ? w.n_end : (seqlen_k + Mainloop::kBlockN - 1) / Mainloop::kBlockN;
      if (n_end == 0) {
        Epilogue::store_empty(params.epilogue, tOrO, tiled_mma_pv, mma_thread_idx, w.tile);
        continue;
      }
      OnlineSoftmax<2> softmax(params.mainloop.scale_log2);
      mainloop.mma(params.mainloop, pipeline_k, pipeline_v, read, smem.barrier_q, q_phase, smem.tensors,
                   tOrO, softmax, mma_thread_idx, w.n_begin, n_end, seqlen_k);
      q_phase ^= 1;
      float o_scale[2], lse[2];
      softmax.finalize(o_scale, lse);
      OnlineSoftmax<2>::rescale(tOrO, o_scale);
      if (w.role == WorkItem::kContribute) {
        Epilogue::store_partial(params.workspace, params.flags, blockIdx.x, tOrO, lse, mma_thread_idx);
        continue;
      }
      if (w.role == WorkItem::kOwnMerge) {
        Epilogue::merge_partials(params.workspace, params.flags, w.peer_first, w.peer_last, tOrO, lse,
                                 mma_thread_idx);
      }
      Epilogue::store(params.epilogue, tOrO, lse, tiled_mma_pv, mma_thread_idx, w.tile);
    }
  }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::kNumThreads, 1)
    attention_fwd_sm90_kernel(CUTE_GRID_CONSTANT typename Kernel::Params const params) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) char smem_buf[];
  Kernel::run(params, smem_buf);
#endif
}

// Host launch: builds the TMA descriptors, sizes the persistent grid, launches on `stream`.
template <class Element, int kHeadDim>
cudaError_t launch_attention_fwd_sm90(FwdArguments const& args, cudaStream_t stream) {
  using Kernel = FwdKernel<Element, kHeadDim>;
  auto params = Kernel::make_params(args);
  auto kernel = attention_fwd_sm90_kernel<Kernel>;
  // The shared-memory opt-in is per device: set it once per device (a host call per launch costs
  // microseconds, and this path also runs under CUDA graph capture).
  static std::atomic<uint64_t> smem_opted_in{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  uint64_t const bit = uint64_t(1) << (device & 63);
  if ((smem_opted_in.load(std::memory_order_relaxed) & bit) == 0) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Kernel::kSharedBytes);
    if (err != cudaSuccess) return err;
    smem_opted_in.fetch_or(bit, std::memory_order_relaxed);
  }
  int const grid = Kernel::Scheduler::grid_size(params.scheduler);
  kernel<<<grid, Kernel::kNumThreads, Kernel::kSharedBytes, stream>>>(params);
  return cudaGetLastError();
}

template <class Element, int kHeadDim>
int64_t attention_fwd_sm90_workspace_floats(FwdArguments const& args) {
  return FwdKernel<Element, kHeadDim>::workspace_floats(args);
}

}  // namespace fastdit::attention::sm90
