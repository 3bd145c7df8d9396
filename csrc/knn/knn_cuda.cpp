// Torch glue of the nearest-neighbour query kernel: registers knn_query of the `npht_C`
// library (schema and contract in csrc/bindings.cpp) for the CUDA dispatch key. The tree is
// built on the CPU (knn_build) and copied to the device by the caller (npht/ops/knn.py).
#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "knn/knn_cuda.h"
#include "knn/knn_glue.h"
#include "npht/check.h"

namespace {

std::tuple<at::Tensor, at::Tensor> knn_query_op(const at::Tensor& query, const at::Tensor& points,
                                                const at::Tensor& bounds, const at::Tensor& leaf_start) {
  const int depth = npht::knn::check_query(query, points, bounds, leaf_start, /*cuda=*/true);
  const int64_t N = query.size(0);
  at::Tensor dist = at::empty({N}, query.options());
  at::Tensor index = at::empty({N}, query.options().dtype(at::kLong));
  if (N == 0) return std::make_tuple(dist, index);
  const at::cuda::OptionalCUDAGuard guard(device_of(query));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = npht::knn_query_cuda(query.data_ptr<double>(), points.data_ptr<double>(),
                                               bounds.data_ptr<double>(), leaf_start.data_ptr<int64_t>(), depth,
                                               dist.data_ptr<double>(), index.data_ptr<int64_t>(), N, stream);
  NPHT_TORCH_CHECK(err == cudaSuccess, "npht_C (cuda): knn_query kernel launch failed: ", cudaGetErrorString(err));
  return std::make_tuple(dist, index);
}

}  // namespace

TORCH_LIBRARY_IMPL(npht_C, CUDA, m) { m.impl("knn_query", &knn_query_op); }
