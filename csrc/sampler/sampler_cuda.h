// Torch-free launchers of the error-bound sampler's CUDA kernels (sampler_kernels.cu).
// The torch glue (sampler_cuda.cpp) checks inputs, allocates outputs and scratch, and calls
// these on the current stream. Sizes and layouts are those of csrc/bindings.cpp; every
// tensor is contiguous, float tensors are float (is_double false) or double.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace npht {

// z, sdf [R, n]; beta_hi, beta [R].
cudaError_t eb_bisect_beta_cuda(const void* z, const void* sdf, double beta0, const void* beta_hi,
                                void* beta, double eps, int64_t iters, int64_t R, int64_t n,
                                bool is_double, cudaStream_t stream);

// Rows of eb_upsample's CDF scratch for R rays: one per thread of its (capped) grid, which
// walks the rays in a grid-stride loop, so the scratch does not grow with R beyond that.
int64_t eb_upsample_scratch_rows(int64_t R);

// z, sdf [R, n]; beta [R]; u, out [R, k]; cdf scratch [eb_upsample_scratch_rows(R), n]
// double (any content).
cudaError_t eb_upsample_cuda(const void* z, const void* sdf, const void* beta, const void* u,
                             void* out, void* cdf, int64_t R, int64_t n, int64_t k, int mode,
                             double add_tiny, bool is_double, cudaStream_t stream);

// z [R, n], samples [R, k] -> merged [R, n + k] (float type), order [R, n + k] int64.
cudaError_t eb_merge_cuda(const void* z, const void* samples, void* merged, int64_t* order,
                          int64_t R, int64_t n, int64_t k, bool is_double, cudaStream_t stream);

}  // namespace npht
