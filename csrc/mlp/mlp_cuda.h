// Torch-free launchers of the fused MLP backward's elementwise CUDA kernels
// (mlp_kernels.cu). The torch glue (mlp_cuda.cpp) checks the inputs (mlp_glue.h) and calls
// these on the current stream. Every pointer is device memory of contiguous [M, W] rows;
// `f64` selects double, else float. Math: csrc/include/npht/softplus_math.h.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace npht {

// e <- ebar e q(h) (= ebar d s''(h) for e = d s'(h)), then ebar <- ebar s'(h).
cudaError_t softplus_adjoint_cuda(void* ebar, void* e, const void* h, int64_t M, int64_t W, double beta,
                                  double threshold, bool f64, cudaStream_t stream);

// acc <- acc + grad s'(h).
cudaError_t softplus_backward_add_cuda(void* acc, const void* grad, const void* h, int64_t M, int64_t W,
                                       double beta, double threshold, bool f64, cudaStream_t stream);

}  // namespace npht
