// Torch-free launchers of the tri-plane CUDA kernels (defined in triplane_kernels.cu).
// The torch glue (triplane_cuda.cpp) checks inputs, allocates outputs and calls these on
// the current stream. Sizes and layouts are those of csrc/bindings.cpp.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "npht/triplane_math.h"

namespace npht {

enum class DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

struct TriplaneSizes {
  int64_t B;  // batch
  int64_t N;  // points per batch element
  int H, W;   // plane height and width
  int C;      // channels per plane
};

// planes [B, 3, H, W, C] dtype dt; points [B, N, 3] (double if dt == kF64, else float);
// out [B, N, C] or [B, N, 3C] (concat) dtype dt.
cudaError_t triplane_fwd_cuda(const void* planes, const void* points, void* out, DType dt,
                              TriplaneSizes sz, TriplaneParams prm, cudaStream_t stream);

// grad_out like out. grad_planes_acc [B, 3, H, W, C] in the accumulation type (double if
// dt == kF64, else float), zeroed by the caller; nullptr when not needed. grad_points
// [B, N, 3] in the points' type, fully written; nullptr when not needed.
cudaError_t triplane_bwd_cuda(const void* grad_out, const void* planes, const void* points,
                              void* grad_planes_acc, void* grad_points, DType dt,
                              TriplaneSizes sz, TriplaneParams prm, cudaStream_t stream);

// gg_planes [B, 3, H, W, C] dtype dt or nullptr; gg_points [B, N, 3] points' type or
// nullptr. Outputs (nullptr when not needed): g_grad_out like grad_out (dtype dt, fully
// written), g_planes_acc as grad_planes_acc above (zeroed by the caller), g_points
// [B, N, 3] points' type (fully written).
cudaError_t triplane_bwd2_cuda(const void* gg_planes, const void* gg_points,
                               const void* grad_out, const void* planes, const void* points,
                               void* g_grad_out, void* g_planes_acc, void* g_points, DType dt,
                               TriplaneSizes sz, TriplaneParams prm, cudaStream_t stream);

}  // namespace npht
