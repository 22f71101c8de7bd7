// One instantiation of the sm90 forward attention: fp16, head dim 64.
#include "attention_fwd_sm90.h"
#include "attention_fwd_sm90_tma_wgmma_ws.cuh"

namespace fastdit::attention::sm90 {
template cudaError_t launch_attention_fwd_sm90<cutlass::half_t, 64>(FwdArguments const&, cudaStream_t);
template int64_t attention_fwd_sm90_workspace_floats<cutlass::half_t, 64>(FwdArguments const&);
}  // namespace fastdit::attention::sm90
