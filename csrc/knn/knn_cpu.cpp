// CPU backend of the nearest-neighbour ops: knn_build (the kd-tree of csrc/include/npht/
// knn_math.h, built here for both backends) and knn_query (at::parallel_for over queries, each
// running the same search as the CUDA kernel). Schemas and contract: csrc/bindings.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "knn/knn_glue.h"
#include "npht/check.h"
#include "npht/knn_math.h"

namespace npht {
namespace {

// A reference point and its index, moved together while the tree is built (the records are
// sorted in place: no indirection, so nth_element streams through memory).
struct Rec {
  double p[3];
  int64_t i;
};

struct Builder {
  Rec* rec;             // [M], ends in tree order
  int64_t* leaf_start;  // [2^D + 1]
  int depth;

  // Orders rec[lo, hi) around its median along the widest axis of those points; returns the
  // split position. Ties are ordered by index, so the tree does not depend on threads.
  int64_t median(int64_t lo, int64_t hi) const {
    const int64_t mid = lo + (hi - lo) / 2;
    if (hi - lo < 2) return mid;
    double mn[3] = {INFINITY, INFINITY, INFINITY}, mx[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int64_t k = lo; k < hi; ++k)
      for (int a = 0; a < 3; ++a) {
        mn[a] = std::min(mn[a], rec[k].p[a]);
        mx[a] = std::max(mx[a], rec[k].p[a]);
      }
    int axis = 0;
    for (int a = 1; a < 3; ++a)
      if (mx[a] - mn[a] > mx[axis] - mn[axis]) axis = a;
    std::nth_element(rec + lo, rec + mid, rec + hi, [axis](const Rec& u, const Rec& v) {
      return u.p[axis] < v.p[axis] || (u.p[axis] == v.p[axis] && u.i < v.i);
    });
    return mid;
  }

  // Splits the subtree of `node` (at `level`, holding rec[lo, hi)) down to its leaves.
  void split(int64_t node, int level, int64_t lo, int64_t hi) const {
    if (level == depth) {
      leaf_start[node - ((int64_t(1) << depth) - 1)] = lo;
      return;
    }
    const int64_t mid = median(lo, hi);
    split(2 * node + 1, level + 1, lo, mid);
    split(2 * node + 2, level + 1, mid, hi);
  }
};

// (points [M, 3] permuted, perm [M], bounds [2^(D+1) - 1, 6], leaf_start [2^D + 1]) for
// ref [M, 3] float64: D is the smallest depth whose leaves hold <= leaf_size points.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> knn_build_cpu(const at::Tensor& ref,
                                                                         int64_t leaf_size) {
  const char* where = "npht_C (cpu): knn_build: ";
  NPHT_TORCH_CHECK(ref.device().is_cpu(), where, "ref must be a CPU tensor, got one on ", ref.device());
  NPHT_TORCH_CHECK(ref.scalar_type() == at::kDouble, where, "ref must be float64, got ", ref.scalar_type());
  NPHT_TORCH_CHECK(ref.dim() == 2 && ref.size(1) == 3, where, "ref must be [M, 3], got shape ", ref.sizes());
  NPHT_TORCH_CHECK(ref.size(0) >= 1, where, "ref must not be empty");
  NPHT_TORCH_CHECK(leaf_size >= 1, where, "leaf_size must be >= 1, got ", leaf_size);
  const at::Tensor r = ref.contiguous();
  const double* rp = r.data_ptr<double>();
  const int64_t M = r.size(0);
  for (int64_t i = 0; i < 3 * M; ++i)
    NPHT_TORCH_CHECK(std::isfinite(rp[i]), where, "ref must be finite (point ", i / 3, " is not)");

  int depth = 0;
  while (depth < knn::kMaxDepth && ((M + (int64_t(1) << depth) - 1) >> depth) > leaf_size) ++depth;
  const int64_t leaves = int64_t(1) << depth, nodes = 2 * leaves - 1;

  std::vector<Rec> rec(M);
  at::parallel_for(0, M, 65536, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) rec[k] = Rec{{rp[3 * k], rp[3 * k + 1], rp[3 * k + 2]}, k};
  });
  at::Tensor leaf_start = at::empty({leaves + 1}, r.options().dtype(at::kLong));
  int64_t* ls = leaf_start.data_ptr<int64_t>();
  ls[leaves] = M;
  const Builder b{rec.data(), ls, depth};

  // The top levels one node at a time, then the subtrees below in parallel.
  const int top = std::min(depth, 6);
  std::vector<int64_t> lo{0}, hi{M};
  for (int level = 0; level < top; ++level) {
    std::vector<int64_t> lo2, hi2;
    for (size_t k = 0; k < lo.size(); ++k) {
      const int64_t mid = b.median(lo[k], hi[k]);
      lo2.insert(lo2.end(), {lo[k], mid});
      hi2.insert(hi2.end(), {mid, hi[k]});
    }
    lo.swap(lo2);
    hi.swap(hi2);
  }
  const int64_t first = (int64_t(1) << top) - 1;
  at::parallel_for(0, static_cast<int64_t>(lo.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) b.split(first + k, top, lo[k], hi[k]);
  });

  // Points in tree order, then tight boxes: leaves from their points, parents from children.
  at::Tensor points = at::empty({M, 3}, r.options());
  at::Tensor perm = at::empty({M}, leaf_start.options());
  double* pt = points.data_ptr<double>();
  int64_t* pp = perm.data_ptr<int64_t>();
  at::parallel_for(0, M, 65536, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      for (int a = 0; a < 3; ++a) pt[3 * k + a] = rec[k].p[a];
      pp[k] = rec[k].i;
    }
  });
  at::Tensor bounds = at::empty({nodes, 6}, r.options());
  double* bd = bounds.data_ptr<double>();
  at::parallel_for(0, leaves, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      double* box = bd + 6 * (leaves - 1 + j);
      for (int a = 0; a < 3; ++a) {
        box[a] = INFINITY;
        box[a + 3] = -INFINITY;
      }
      for (int64_t p = ls[j]; p < ls[j + 1]; ++p)
        for (int a = 0; a < 3; ++a) {
          box[a] = std::min(box[a], pt[3 * p + a]);
          box[a + 3] = std::max(box[a + 3], pt[3 * p + a]);
        }
    }
  });
  for (int64_t i = leaves - 2; i >= 0; --i) {
    const double *c0 = bd + 6 * (2 * i + 1), *c1 = bd + 6 * (2 * i + 2);
    for (int a = 0; a < 3; ++a) {
      bd[6 * i + a] = std::min(c0[a], c1[a]);
      bd[6 * i + a + 3] = std::max(c0[a + 3], c1[a + 3]);
    }
  }
  return {points, perm, bounds, leaf_start};
}

std::tuple<at::Tensor, at::Tensor> knn_query_cpu(const at::Tensor& query, const at::Tensor& points,
                                                 const at::Tensor& bounds, const at::Tensor& leaf_start) {
  const int depth = knn::check_query(query, points, bounds, leaf_start, /*cuda=*/false);
  const int64_t N = query.size(0);
  at::Tensor dist = at::empty({N}, query.options());
  at::Tensor index = at::empty({N}, query.options().dtype(at::kLong));
  const double *qp = query.data_ptr<double>(), *pt = points.data_ptr<double>(), *bd = bounds.data_ptr<double>();
  const int64_t* ls = leaf_start.data_ptr<int64_t>();
  double* dp = dist.data_ptr<double>();
  int64_t* ip = index.data_ptr<int64_t>();
  // Each task walks its queries in order, starting each search from the previous neighbour
  // (same result, found sooner when the queries come in spatial order).
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    int64_t hint = -1;
    for (int64_t n = begin; n < end; ++n) {
      double d2;
      knn::nearest(qp + 3 * n, pt, bd, ls, depth, hint, &d2, ip + n);
      dp[n] = std::sqrt(d2);
      hint = ip[n];
    }
  });
  return {dist, index};
}

}  // namespace
}  // namespace npht

TORCH_LIBRARY_IMPL(npht_C, CPU, m) {
  m.impl("knn_build", &npht::knn_build_cpu);
  m.impl("knn_query", &npht::knn_query_cpu);
}
