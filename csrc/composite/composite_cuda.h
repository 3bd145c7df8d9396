// Torch-free launchers of the compositing CUDA kernels (composite_kernels.cu). The torch
// glue (composite_cuda.cpp) checks inputs, allocates outputs and calls these on the current
// stream. Layouts are those of csrc/bindings.cpp; `f64` selects double tensors, else float.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace npht {

struct CompositeLaunch {
  int64_t R, S, M, K;  // rays, samples per ray (dense; 0 = packed), samples, channels
  bool per_ray_beta;   // beta [R] rather than [1]
  double last_delta;
  bool f64;
};

// sdf, z [M]; beta [1] or [R]; values [M, K] or nullptr; offsets [R + 1] or nullptr (dense).
// Outputs fully written: rendered [R, K], depth [R], opacity [R], weights [M].
cudaError_t composite_fwd_cuda(const void* sdf, const void* z, const void* beta,
                               const void* values, const int64_t* offsets, void* rendered,
                               void* depth, void* opacity, void* weights, CompositeLaunch p,
                               cudaStream_t stream);

// Upstream gradients grad_rendered [R, K], grad_depth [R], grad_opacity [R], grad_weights
// [M], each nullptr when zero; saved_weights [M] (the forward's) or nullptr. Outputs (nullptr when not needed) are fully written:
// g_sdf [M], g_z [M], g_beta [R] (per ray), g_values [M, K].
cudaError_t composite_bwd_cuda(const void* grad_rendered, const void* grad_depth,
                               const void* grad_opacity, const void* grad_weights,
                               const void* sdf, const void* z, const void* beta,
                               const void* values, const void* saved_weights,
                               const int64_t* offsets, void* g_sdf, void* g_z, void* g_beta,
                               void* g_values, CompositeLaunch p, cudaStream_t stream);

}  // namespace npht
