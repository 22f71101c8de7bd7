// Declarations of the sm90 forward launches; each (dtype, head dim) is instantiated in its own
// attention_fwd_sm90_<dtype>_hdim<D>.cu so they compile in parallel and can be pruned from CMake.
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include "attention_fwd_params.h"

namespace fastdit::attention::sm90 {

template <class Element, int kHeadDim>
cudaError_t launch_attention_fwd_sm90(FwdArguments const& args, cudaStream_t stream);

// fp32 workspace floats the launch with these arguments would use for its split tail (0: none). The
// caller passes that many (and num_sms flags, zeroed once: every launch leaves them zero) in args.workspace /
// workspace_flags.
template <class Element, int kHeadDim>
int64_t attention_fwd_sm90_workspace_floats(FwdArguments const& args);

}  // namespace fastdit::attention::sm90
