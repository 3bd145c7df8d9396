// Input checks shared by the CPU and CUDA torch glue of knn_query (contract in
// csrc/bindings.cpp). Only .cpp files include this (it uses ATen).
#pragma once

#include <ATen/ATen.h>

#include "npht/check.h"
#include "npht/knn_math.h"

namespace npht {
namespace knn {

// Checks query [N, 3], points [M, 3], bounds [2^(D+1) - 1, 6] (float64) and leaf_start
// [2^D + 1] (int64), all contiguous on one device of the backend; returns D.
inline int check_query(const at::Tensor& query, const at::Tensor& points, const at::Tensor& bounds,
                       const at::Tensor& leaf_start, bool cuda) {
  const char* where = cuda ? "npht_C (cuda): knn_query: " : "npht_C (cpu): knn_query: ";
  const at::Tensor* all[] = {&query, &points, &bounds, &leaf_start};
  const char* names[] = {"query", "points", "bounds", "leaf_start"};
  for (int i = 0; i < 4; ++i) {
    const at::Tensor& x = *all[i];
    NPHT_TORCH_CHECK(x.device().is_cuda() == cuda && (cuda || x.device().is_cpu()), where, names[i],
                     " must be a ", cuda ? "CUDA" : "CPU", " tensor, got one on ", x.device());
    NPHT_TORCH_CHECK(x.device() == query.device(), where, names[i], " must be on the device of query (",
                     query.device(), "), got ", x.device());
    NPHT_TORCH_CHECK(x.is_contiguous(), where, names[i], " must be contiguous");
    NPHT_TORCH_CHECK(x.scalar_type() == (i == 3 ? at::kLong : at::kDouble), where, names[i], " must be ",
                     i == 3 ? "int64" : "float64", ", got ", x.scalar_type());
    NPHT_TORCH_CHECK(x.dim() == (i == 3 ? 1 : 2), where, names[i], " must have ", i == 3 ? 1 : 2,
                     " dimensions, got shape ", x.sizes());
  }
  NPHT_TORCH_CHECK(query.size(1) == 3 && points.size(1) == 3, where, "query and points must be [n, 3], got ",
                   query.sizes(), " and ", points.sizes());
  const int64_t leaves = leaf_start.size(0) - 1;
  NPHT_TORCH_CHECK(leaves >= 1 && (leaves & (leaves - 1)) == 0, where,
                   "leaf_start must have 2^D + 1 entries, got ", leaf_start.size(0));
  int depth = 0;
  while ((int64_t(1) << depth) < leaves) ++depth;
  NPHT_TORCH_CHECK(depth <= kMaxDepth, where, "tree depth ", depth, " exceeds ", kMaxDepth);
  NPHT_TORCH_CHECK(bounds.size(0) == 2 * leaves - 1 && bounds.size(1) == 6, where, "bounds must be [",
                   2 * leaves - 1, ", 6] for ", leaves, " leaves, got ", bounds.sizes());
  NPHT_TORCH_CHECK(points.size(0) >= 1, where, "points must not be empty");
  return depth;
}

}  // namespace knn
}  // namespace npht
