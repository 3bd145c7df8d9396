// Torch-free launcher of the nearest-neighbour query kernel (knn_kernels.cu). The torch glue
// (knn_cuda.cpp) checks the inputs (knn_glue.h), allocates the outputs and calls this on the
// current stream. Layouts: csrc/include/npht/knn_math.h; every pointer is device memory.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace npht {

// query [N, 3], points [M, 3], bounds [2^(depth+1) - 1, 6] (float64), leaf_start [2^depth + 1]
// -> dist [N] (Euclidean, float64), index [N] (into points).
cudaError_t knn_query_cuda(const double* query, const double* points, const double* bounds,
                           const int64_t* leaf_start, int depth, double* dist, int64_t* index, int64_t N,
                           cudaStream_t stream);

}  // namespace npht
