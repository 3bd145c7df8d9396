// Per-element math of tri-plane bilinear sampling, written once for the CPU and the
// CUDA sources (no torch headers here, so nvcc can compile kernels without torch).
//
// Conventions (identical to F.grid_sample, mode="bilinear"):
//   plane k is sampled at (p[axis_u[k]], p[axis_v[k]]) * scale; the first coordinate runs
//   along W (x), the second along H (y). Pixel coordinates:
//     align_corners:  ix = (g + 1) / 2 * (W - 1)
//     otherwise:      ix = ((g + 1) * W - 1) / 2
//   padding "border" clamps ix to [0, W - 1] (the gradient is 0 where it clamps);
//   corners outside the plane read as 0.
// Non-finite coordinates: +-inf obey the padding mode (zeros: 0, border: the edge).
// A NaN in the two coordinates a plane reads gives NaN features from that plane, and
// that (point, plane) pair contributes no gradient to the planes or to the point.
//
// Corner order j: 0 = (x0, y0), 1 = (x0 + 1, y0), 2 = (x0, y0 + 1), 3 = (x0 + 1, y0 + 1).
// With tx = ix - x0, ty = iy - y0 the sample of one channel is
//     v = sum_j w_j f_j,  w = ((1-tx)(1-ty), tx(1-ty), (1-tx)ty, tx ty)
// and its derivatives, exact inside a cell:
//     dv/dix = sum_j wx_j f_j,  wx = (-(1-ty), 1-ty, -ty, ty)
//     dv/diy = sum_j wy_j f_j,  wy = (-(1-tx), -tx, 1-tx, tx)
//     d2v/dix diy = f_0 - f_1 - f_2 + f_3,   d2v/dix2 = d2v/diy2 = 0.
#pragma once

#include <stdint.h>

#include "npht/hd.h"

namespace npht {

enum Aggregate : int { kAggSum = 0, kAggMean = 1, kAggConcat = 2 };
enum Padding : int { kPadZeros = 0, kPadBorder = 1 };

// Everything a kernel needs besides pointers and sizes; passed by value.
struct TriplaneParams {
  int axis_u[3];   // point coordinate read as the plane's x (along W)
  int axis_v[3];   // point coordinate read as the plane's y (along H)
  double scale;    // coordinates are multiplied by this first (EG3D: 2 / box_warp)
  int aggregate;   // Aggregate
  int padding;     // Padding
  bool align_corners;
};

// Weight of each plane in the aggregate (1 for sum and concat, 1/3 for mean).
template <typename T>
NPHT_HD T aggregate_weight(int aggregate) {
  return aggregate == kAggMean ? T(1) / T(3) : T(1);
}

template <typename T>
NPHT_HD bool is_nan(T x) {
  return x != x;
}

template <typename T>
NPHT_HD T floor_(T x) {
#if defined(__CUDA_ARCH__)
  return ::floor(x);
#else
  return std::floor(x);
#endif
}

// Grid coordinate g in [-1, 1] -> pixel coordinate, with d(pixel)/d(g) in *grad.
template <typename T>
NPHT_HD T source_index(T g, int size, bool align_corners, int padding, T* grad) {
  T ix;
  if (align_corners) {
    // size 1: every coordinate maps to pixel 0 (also +-inf, where inf * 0 would be NaN)
    ix = size > 1 ? (g + T(1)) / T(2) * T(size - 1) : T(0);
    *grad = T(size - 1) / T(2);
  } else {
    ix = ((g + T(1)) * T(size) - T(1)) / T(2);
    *grad = T(size) / T(2);
  }
  if (padding == kPadBorder) {
    if (ix <= T(0)) {
      ix = T(0);
      *grad = T(0);
    } else if (ix >= T(size - 1)) {
      ix = T(size - 1);
      *grad = T(0);
    }
  }
  return ix;
}

// The bilinear footprint of one point on one plane.
template <typename T>
struct PlaneSample {
  int64_t idx[4];  // pixel index y * W + x of each corner (valid corners only)
  bool valid[4];   // corner inside the plane
  T fill;          // added to every sample: 0, or NaN for a NaN coordinate
  T w[4];          // bilinear weights
  T wx[4];         // d w / d ix
  T wy[4];         // d w / d iy
  T dix;           // d ix / d p[axis_u]  (scale and border clamp included)
  T diy;           // d iy / d p[axis_v]
};

template <typename T>
NPHT_HD PlaneSample<T> plane_setup(T pu, T pv, int H, int W, T scale, bool align_corners,
                                   int padding) {
  PlaneSample<T> s;
  for (int j = 0; j < 4; ++j) {
    s.idx[j] = 0;
    s.valid[j] = false;
    s.w[j] = T(0);
    s.wx[j] = T(0);
    s.wy[j] = T(0);
  }
  s.dix = T(0);
  s.diy = T(0);
  s.fill = T(0);
  if (is_nan(pu) || is_nan(pv)) {
    s.fill = (pu - pu) + (pv - pv);  // NaN, made without <limits> (device-safe)
    return s;
  }

  T gx, gy;
  const T ix = source_index(pu * scale, W, align_corners, padding, &gx);
  const T iy = source_index(pv * scale, H, align_corners, padding, &gy);
  const T x0f = floor_(ix);
  const T y0f = floor_(iy);
  // Decide in floating point first: a far-away (or infinite) point has no corner on the
  // plane, and converting its coordinate to an integer would overflow.
  if (!(x0f >= T(-1) && x0f <= T(W - 1) && y0f >= T(-1) && y0f <= T(H - 1))) return s;

  const T tx = ix - x0f;
  const T ty = iy - y0f;
  const int64_t x0 = static_cast<int64_t>(x0f);
  const int64_t y0 = static_cast<int64_t>(y0f);
  const bool vx0 = x0 >= 0, vx1 = x0 + 1 < W;
  const bool vy0 = y0 >= 0, vy1 = y0 + 1 < H;
  s.valid[0] = vx0 && vy0;
  s.valid[1] = vx1 && vy0;
  s.valid[2] = vx0 && vy1;
  s.valid[3] = vx1 && vy1;
  s.idx[0] = y0 * W + x0;
  s.idx[1] = s.idx[0] + 1;
  s.idx[2] = s.idx[0] + W;
  s.idx[3] = s.idx[2] + 1;

  s.w[0] = (T(1) - tx) * (T(1) - ty);
  s.w[1] = tx * (T(1) - ty);
  s.w[2] = (T(1) - tx) * ty;
  s.w[3] = tx * ty;
  s.wx[0] = -(T(1) - ty);
  s.wx[1] = T(1) - ty;
  s.wx[2] = -ty;
  s.wx[3] = ty;
  s.wy[0] = -(T(1) - tx);
  s.wy[1] = -tx;
  s.wy[2] = T(1) - tx;
  s.wy[3] = tx;
  s.dix = gx * scale;
  s.diy = gy * scale;
  return s;
}

// Sign of each corner in the mixed second derivative d2v / dix diy.
template <typename T>
NPHT_HD T cross_sign(int j) {
  return (j == 0 || j == 3) ? T(1) : T(-1);
}

// ---- forward: one channel --------------------------------------------------------
// f[j]: corner values (0 for invalid corners).
template <typename T>
NPHT_HD T bilerp(const PlaneSample<T>& s, const T f[4]) {
  return s.w[0] * f[0] + s.w[1] * f[1] + s.w[2] * f[2] + s.w[3] * f[3] + s.fill;
}

// ---- its vjp: one channel with upstream gradient go -------------------------------
// Adds go * dv/dix and go * dv/diy to *g_ix, *g_iy. The gradient to corner j is
// go * s.w[j] (the caller scatters it).
template <typename T>
NPHT_HD void bilerp_vjp(const PlaneSample<T>& s, const T f[4], T go, T* g_ix, T* g_iy) {
  T dx = T(0), dy = T(0);
  for (int j = 0; j < 4; ++j) {
    dx += s.wx[j] * f[j];
    dy += s.wy[j] * f[j];
  }
  *g_ix += go * dx;
  *g_iy += go * dy;
}

// ---- the vjp of the vjp: one channel --------------------------------------------
// The first backward maps (go, f, p) to
//   grad_f[j] = go * w_j,    grad_ix = go * dv/dix(f),    grad_iy = go * dv/diy(f).
// Given upstream gradients G[j] for grad_f (from gg_planes) and qx, qy for grad_ix,
// grad_iy (gg_points[axis] * dix / diy), this returns the gradient to go, adds the
// gradient to the point's pixel coordinates into *g_ix, *g_iy; the gradient to corner j
// of the planes is go * (qx * wx[j] + qy * wy[j]) (bilerp_vjp_vjp_corner, scattered by
// the caller).
template <typename T>
NPHT_HD T bilerp_vjp_vjp(const PlaneSample<T>& s, const T f[4], const T G[4], T go, T qx,
                         T qy, T* g_ix, T* g_iy) {
  T vG = T(0), dxG = T(0), dyG = T(0), dxF = T(0), dyF = T(0), xyF = T(0);
  for (int j = 0; j < 4; ++j) {
    vG += s.w[j] * G[j];
    dxG += s.wx[j] * G[j];
    dyG += s.wy[j] * G[j];
    dxF += s.wx[j] * f[j];
    dyF += s.wy[j] * f[j];
    xyF += cross_sign<T>(j) * f[j];
  }
  *g_ix += go * (dxG + qy * xyF);
  *g_iy += go * (dyG + qx * xyF);
  return vG + qx * dxF + qy * dyF;
}

template <typename T>
NPHT_HD T bilerp_vjp_vjp_corner(const PlaneSample<T>& s, int j, T go, T qx, T qy) {
  return go * (qx * s.wx[j] + qy * s.wy[j]);
}

}  // namespace npht
