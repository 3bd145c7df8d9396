// Exact nearest-neighbour search in a static kd-tree with tight node boxes, written once for
// the CPU backend and the CUDA kernel (one query per thread). float64 throughout.
//
// Tree layout (built by knn_build, csrc/knn/knn_cpu.cpp): a complete binary tree of depth D
// in heap order (node i has children 2i+1 and 2i+2; the 2^D leaves are nodes 2^D-1 ..
// 2^(D+1)-2). Leaf j holds the permuted reference points [leaf_start[j], leaf_start[j+1]);
// an internal node holds the union of its children, split at the median of the widest axis.
// bounds[6 i .. 6 i + 5] = (min x, min y, min z, max x, max y, max z) of node i's points:
// tight boxes of the data, not the cells of a space partition. That matters for surface
// samples queried from another surface: scipy's cKDTree prunes with partition cells, which
// reach into the empty space between the surfaces, so its cost grows with the squared
// distance (measured: ~120 us per query 0.03 apart on 2.5M points); tight boxes stay near
// the surface.
#pragma once

#include <stdint.h>

#include "npht/hd.h"

namespace npht {
namespace knn {

constexpr int kMaxDepth = 40;  // 2^40 leaves: more than any point set in memory

// dx^2 + dy^2 + dz^2 rounded after every operation on both sides: nvcc would otherwise fuse
// multiply-adds (setup.py builds the host code for baseline x86-64: no FMA to contract to),
// and the CPU and CUDA searches could then break near-ties differently. With this, both
// return the same neighbour and distance bit for bit.
NPHT_HD double sum_sq(double dx, double dy, double dz) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(__dadd_rn(__dmul_rn(dx, dx), __dmul_rn(dy, dy)), __dmul_rn(dz, dz));
#else
  return dx * dx + dy * dy + dz * dz;
#endif
}

// Squared distance from (x, y, z) to the box b = (min xyz, max xyz); an empty box (min > max
// everywhere, from +inf/-inf) is infinitely far.
NPHT_HD double box_dist2(const double* b, double x, double y, double z) {
  const double dx = fmax(fmax(b[0] - x, x - b[3]), 0.0);
  const double dy = fmax(fmax(b[1] - y, y - b[4]), 0.0);
  const double dz = fmax(fmax(b[2] - z, z - b[5]), 0.0);
  return sum_sq(dx, dy, dz);
}

// Nearest point of pts [M, 3] (the tree's permuted points) to q: depth-first search, the
// nearer child first, a subtree skipped when its box is farther than the best so far. Writes
// the squared distance and the permuted index; among points at the same distance the smallest
// permuted index wins, so the answer does not depend on the search order. `hint`: a point
// index (or -1) whose distance starts the search as its bound, e.g. the previous query's
// neighbour when queries come in spatial order (same answer, found sooner).
NPHT_HD void nearest(const double* q, const double* pts, const double* bounds,
                     const int64_t* leaf_start, int depth, int64_t hint, double* best_d2,
                     int64_t* best_i) {
  const double x = q[0], y = q[1], z = q[2];
  const int64_t first_leaf = (int64_t(1) << depth) - 1;
  int64_t stack_node[kMaxDepth + 1];
  double stack_d2[kMaxDepth + 1];
  int sp = 0;
  double best = INFINITY;
  int64_t arg = -1;
  if (hint >= 0) {
    const double dx = pts[3 * hint] - x, dy = pts[3 * hint + 1] - y, dz = pts[3 * hint + 2] - z;
    best = sum_sq(dx, dy, dz);
    arg = hint;
  }
  int64_t node = 0;
  bool have = box_dist2(bounds, x, y, z) <= best;
  while (have) {
    if (node >= first_leaf) {
      const int64_t j = node - first_leaf;
      for (int64_t p = leaf_start[j]; p < leaf_start[j + 1]; ++p) {
        const double dx = pts[3 * p] - x, dy = pts[3 * p + 1] - y, dz = pts[3 * p + 2] - z;
        const double d2 = sum_sq(dx, dy, dz);
        if (d2 < best || (d2 == best && (arg < 0 || p < arg))) {  // arg < 0: all so far overflowed to inf
          best = d2;
          arg = p;
        }
      }
    } else {
      int64_t a = 2 * node + 1, b = a + 1;
      double da = box_dist2(bounds + 6 * a, x, y, z), db = box_dist2(bounds + 6 * b, x, y, z);
      if (db < da) {
        const int64_t tn = a;
        a = b;
        b = tn;
        const double td = da;
        da = db;
        db = td;
      }
      if (da <= best) {
        if (db <= best) {
          stack_node[sp] = b;
          stack_d2[sp] = db;
          ++sp;
        }
        node = a;
        continue;
      }
    }
    // pop the nearest pending subtree that can still hold a closer point
    have = false;
    while (sp > 0) {
      --sp;
      if (stack_d2[sp] <= best) {
        node = stack_node[sp];
        have = true;
        break;
      }
    }
  }
  *best_d2 = best;
  *best_i = arg;
}

}  // namespace knn
}  // namespace npht
