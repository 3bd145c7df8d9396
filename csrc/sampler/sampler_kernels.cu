// CUDA kernels of the error-bound sampler's per-ray math and the torch-free launchers
// declared in sampler_cuda.h. The math is npht/sampler_math.h (shared with the CPU
// backend); this file only maps it onto threads: one thread per ray (a grid-stride loop
// over rays), each running the same per-ray function as the CPU backend. Rows are read
// by one thread each (not coalesced): the work per ray (iters * n exponentials for the
// bisection) dominates, and rays of a warp take similar paths.
#include <cuda_runtime.h>
#include <stdint.h>

#include "npht/sampler_math.h"
#include "sampler/sampler_cuda.h"

namespace npht {
namespace {

constexpr int kBlock = 128;  // threads (rays) per block

template <typename S>
__global__ void __launch_bounds__(kBlock)
    eb_bisect_beta_kernel(const S* __restrict__ z, const S* __restrict__ sdf, S beta0,
                          const S* __restrict__ beta_hi, S* __restrict__ beta, double eps,
                          int64_t iters, int64_t R, int64_t n) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < R;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    beta[r] = eb::bisect_beta_ray<S>(z + r * n, sdf + r * n, n, beta0, beta_hi[r], eps, iters);
  }
}

template <typename S>
__global__ void __launch_bounds__(kBlock)
    eb_upsample_kernel(const S* __restrict__ z, const S* __restrict__ sdf,
                       const S* __restrict__ beta, const S* __restrict__ u, S* __restrict__ out,
                       double* __restrict__ cdf, int64_t R, int64_t n, int64_t k, int mode,
                       double add_tiny) {
  // the CDF scratch is per thread (rows = the grid's threads), not per ray
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  double* scratch = cdf + t * n;
  for (int64_t r = t; r < R; r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    eb::upsample_ray<S>(z + r * n, sdf + r * n, beta[r], u + r * k, out + r * k, scratch, n, k,
                        mode, add_tiny);
  }
}

template <typename S>
__global__ void __launch_bounds__(kBlock)
    eb_merge_kernel(const S* __restrict__ z, const S* __restrict__ samples, S* __restrict__ merged,
                    int64_t* __restrict__ order, int64_t R, int64_t n, int64_t k) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < R;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    eb::merge_ray<S>(z + r * n, n, samples + r * k, k, merged + r * (n + k), order + r * (n + k));
  }
}

// Blocks for R rays (capped: the kernels loop over the rest).
unsigned blocks_for(int64_t R, int64_t cap = 65535) {
  const int64_t nb = (R + kBlock - 1) / kBlock;
  return static_cast<unsigned>(nb < cap ? nb : cap);
}

// eb_upsample's grid is capped lower, since each of its threads holds a CDF row of n
// doubles in global memory: 1024 blocks of 128 threads already exceed what an H100 keeps
// resident at its ~72 registers per thread, and at n = 320 (the thesis preset after ten
// rounds) the scratch stays at 0.34 GB whatever R (4 x 512^2 rays would need 2.7 GB).
constexpr int64_t kUpsampleMaxBlocks = 1024;

template <typename S>
cudaError_t launch_bisect(const void* z, const void* sdf, double beta0, const void* beta_hi,
                          void* beta, double eps, int64_t iters, int64_t R, int64_t n,
                          cudaStream_t stream) {
  eb_bisect_beta_kernel<S><<<blocks_for(R), kBlock, 0, stream>>>(
      static_cast<const S*>(z), static_cast<const S*>(sdf), static_cast<S>(beta0),
      static_cast<const S*>(beta_hi), static_cast<S*>(beta), eps, iters, R, n);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_upsample(const void* z, const void* sdf, const void* beta, const void* u,
                            void* out, void* cdf, int64_t R, int64_t n, int64_t k, int mode,
                            double add_tiny, cudaStream_t stream) {
  eb_upsample_kernel<S><<<blocks_for(R, kUpsampleMaxBlocks), kBlock, 0, stream>>>(
      static_cast<const S*>(z), static_cast<const S*>(sdf), static_cast<const S*>(beta),
      static_cast<const S*>(u), static_cast<S*>(out), static_cast<double*>(cdf), R, n, k, mode,
      add_tiny);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_merge(const void* z, const void* samples, void* merged, int64_t* order,
                         int64_t R, int64_t n, int64_t k, cudaStream_t stream) {
  eb_merge_kernel<S><<<blocks_for(R), kBlock, 0, stream>>>(
      static_cast<const S*>(z), static_cast<const S*>(samples), static_cast<S*>(merged), order, R,
      n, k);
  return cudaGetLastError();
}

}  // namespace

// ---- the launchers of sampler_cuda.h ------------------------------------------------

cudaError_t eb_bisect_beta_cuda(const void* z, const void* sdf, double beta0, const void* beta_hi,
                                void* beta, double eps, int64_t iters, int64_t R, int64_t n,
                                bool is_double, cudaStream_t stream) {
  if (R <= 0) return cudaSuccess;
  return is_double ? launch_bisect<double>(z, sdf, beta0, beta_hi, beta, eps, iters, R, n, stream)
                   : launch_bisect<float>(z, sdf, beta0, beta_hi, beta, eps, iters, R, n, stream);
}

int64_t eb_upsample_scratch_rows(int64_t R) {
  return R <= 0 ? 0 : static_cast<int64_t>(blocks_for(R, kUpsampleMaxBlocks)) * kBlock;
}

cudaError_t eb_upsample_cuda(const void* z, const void* sdf, const void* beta, const void* u,
                             void* out, void* cdf, int64_t R, int64_t n, int64_t k, int mode,
                             double add_tiny, bool is_double, cudaStream_t stream) {
  if (R <= 0 || k <= 0) return cudaSuccess;
  return is_double ? launch_upsample<double>(z, sdf, beta, u, out, cdf, R, n, k, mode, add_tiny,
                                             stream)
                   : launch_upsample<float>(z, sdf, beta, u, out, cdf, R, n, k, mode, add_tiny,
                                            stream);
}

cudaError_t eb_merge_cuda(const void* z, const void* samples, void* merged, int64_t* order,
                          int64_t R, int64_t n, int64_t k, bool is_double, cudaStream_t stream) {
  if (R <= 0 || n + k <= 0) return cudaSuccess;
  return is_double ? launch_merge<double>(z, samples, merged, order, R, n, k, stream)
                   : launch_merge<float>(z, samples, merged, order, R, n, k, stream);
}

}  // namespace npht
