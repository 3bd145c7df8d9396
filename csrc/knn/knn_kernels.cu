// CUDA kernel of knn_query: one thread per query (a grid-stride loop), each running the
// search of npht/knn_math.h that the CPU backend runs. Queries that are close in memory should
// be close in space (the caller may sort them) so that a warp walks similar paths.
#include <cuda_runtime.h>
#include <stdint.h>

#include "knn/knn_cuda.h"
#include "npht/knn_math.h"

namespace npht {
namespace {

constexpr int kBlock = 128;

__global__ void __launch_bounds__(kBlock)
    knn_query_kernel(const double* __restrict__ query, const double* __restrict__ points,
                     const double* __restrict__ bounds, const int64_t* __restrict__ leaf_start, int depth,
                     double* __restrict__ dist, int64_t* __restrict__ index, int64_t N) {
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double d2;
    knn::nearest(query + 3 * n, points, bounds, leaf_start, depth, -1, &d2, index + n);
    dist[n] = sqrt(d2);
  }
}

}  // namespace

cudaError_t knn_query_cuda(const double* query, const double* points, const double* bounds,
                           const int64_t* leaf_start, int depth, double* dist, int64_t* index, int64_t N,
                           cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  const int64_t nb = (N + kBlock - 1) / kBlock;
  knn_query_kernel<<<static_cast<unsigned>(nb < 65535 * 16 ? nb : 65535 * 16), kBlock, 0, stream>>>(
      query, points, bounds, leaf_start, depth, dist, index, N);
  return cudaGetLastError();
}

}  // namespace npht
