// CPU backend of tri-plane sampling (at::parallel_for). Same math as the CUDA kernels:
// every per-element step calls csrc/include/npht/triplane_math.h.
//
// Parallel plan: point-wise outputs (features, point gradients, grad of grad_out) are
// computed in parallel over points; plane gradients (a scatter) are computed in
// parallel over the B * 3 planes, each plane written by one task only, so no atomics.
// When the first backward needs both gradients, one pass per plane does both
// (bwd_fused_impl): it reads each point's upstream gradient and footprint once.
// It is used when there are at least as many planes as threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "npht/check.h"
#include "npht/triplane_math.h"

namespace npht {
namespace {

#define CHECK_CPU(x) NPHT_TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor, got ", (x).device())
#define CHECK_CONTIGUOUS(x) NPHT_TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define CHECK_SHAPE(x, ...)                                                              \
  NPHT_TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape ",   \
              at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())
#define CHECK_DTYPE(x, dt) \
  NPHT_TORCH_CHECK((x).scalar_type() == (dt), #x " must be ", (dt), ", got ", (x).scalar_type())

constexpr int64_t kPointGrain = 256;  // points per parallel chunk

struct Geometry {
  int64_t B, N;
  int H, W, C;
  int64_t out_c;  // channels of the output: C, or 3C for concat
  int64_t plane_numel() const { return static_cast<int64_t>(H) * W * C; }
};

TriplaneParams make_params(at::IntArrayRef axes, double scale, int64_t aggregate,
                           int64_t padding, bool align_corners) {
  NPHT_TORCH_CHECK(axes.size() == 6, "axes must have 6 entries [u0, v0, u1, v1, u2, v2], got ",
              axes.size());
  NPHT_TORCH_CHECK(aggregate >= 0 && aggregate <= 2, "aggregate must be 0 (sum), 1 (mean) or 2 (concat), got ", aggregate);
  NPHT_TORCH_CHECK(padding == 0 || padding == 1, "padding must be 0 (zeros) or 1 (border), got ", padding);
  TriplaneParams p;
  for (int k = 0; k < 3; ++k) {
    NPHT_TORCH_CHECK(axes[2 * k] >= 0 && axes[2 * k] < 3 && axes[2 * k + 1] >= 0 && axes[2 * k + 1] < 3,
                "axes entries must be 0, 1 or 2, got ", axes);
    p.axis_u[k] = static_cast<int>(axes[2 * k]);
    p.axis_v[k] = static_cast<int>(axes[2 * k + 1]);
  }
  p.scale = scale;
  p.aggregate = static_cast<int>(aggregate);
  p.padding = static_cast<int>(padding);
  p.align_corners = align_corners;
  return p;
}

Geometry check_inputs(const at::Tensor& planes,  // [B, 3, H, W, C]
                      const at::Tensor& points,  // [B, N, 3]
                      const TriplaneParams& p) {
  CHECK_CPU(planes);
  CHECK_CPU(points);
  CHECK_CONTIGUOUS(planes);
  CHECK_CONTIGUOUS(points);
  NPHT_TORCH_CHECK(planes.dim() == 5 && planes.size(1) == 3, "planes must be [B, 3, H, W, C], got ", planes.sizes());
  NPHT_TORCH_CHECK(points.dim() == 3 && points.size(2) == 3, "points must be [B, N, 3], got ", points.sizes());
  NPHT_TORCH_CHECK(points.size(0) == planes.size(0), "points and planes must have the same batch size, got ",
              points.size(0), " and ", planes.size(0));
  const auto pt = planes.scalar_type();
  NPHT_TORCH_CHECK(pt == at::kFloat || pt == at::kDouble || pt == at::kHalf || pt == at::kBFloat16,
              "planes must be float32, float64, float16 or bfloat16, got ", pt);
  CHECK_DTYPE(points, pt == at::kDouble ? at::kDouble : at::kFloat);
  Geometry g;
  g.B = planes.size(0);
  g.N = points.size(1);
  g.H = static_cast<int>(planes.size(2));
  g.W = static_cast<int>(planes.size(3));
  g.C = static_cast<int>(planes.size(4));
  g.out_c = p.aggregate == kAggConcat ? 3 * static_cast<int64_t>(g.C) : g.C;
  return g;
}

// The three plane footprints of one point.
template <typename acc_t>
inline void setup_point(const acc_t* pt, const Geometry& g, const TriplaneParams& p,
                        PlaneSample<acc_t> s[3]) {
  for (int k = 0; k < 3; ++k)
    s[k] = plane_setup<acc_t>(pt[p.axis_u[k]], pt[p.axis_v[k]], g.H, g.W,
                              static_cast<acc_t>(p.scale), p.align_corners, p.padding);
}

// Rows of the 4 corners (C channels each); invalid corners read the zero row.
template <typename scalar_t, typename acc_t>
inline void corner_rows(const scalar_t* plane, const PlaneSample<acc_t>& s, int C,
                        const scalar_t* zero_row, const scalar_t* rows[4]) {
  for (int j = 0; j < 4; ++j) rows[j] = s.valid[j] ? plane + s.idx[j] * C : zero_row;
}

template <typename scalar_t, typename acc_t>
inline void load4(const scalar_t* const rows[4], int c, acc_t f[4]) {
  for (int j = 0; j < 4; ++j) f[j] = static_cast<acc_t>(rows[j][c]);
}

template <typename scalar_t, typename acc_t>
void fwd_impl(const scalar_t* planes, const acc_t* points, scalar_t* out, Geometry g,
              TriplaneParams p) {
  const acc_t aw = aggregate_weight<acc_t>(p.aggregate);
  const bool concat = p.aggregate == kAggConcat;
  const std::vector<scalar_t> zero_row(g.C, scalar_t(0));
  at::parallel_for(0, g.B * g.N, kPointGrain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(g.C);
    PlaneSample<acc_t> s[3];
    const scalar_t* rows[4];
    acc_t f[4];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / g.N;
      setup_point(points + i * 3, g, p, s);
      scalar_t* o = out + i * g.out_c;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int k = 0; k < 3; ++k) {
        corner_rows(planes + (b * 3 + k) * g.plane_numel(), s[k], g.C, zero_row.data(), rows);
        if (concat) {
          for (int c = 0; c < g.C; ++c) {
            load4(rows, c, f);
            o[k * g.C + c] = static_cast<scalar_t>(bilerp(s[k], f));
          }
        } else {
          for (int c = 0; c < g.C; ++c) {
            load4(rows, c, f);
            acc[c] += bilerp(s[k], f);
          }
        }
      }
      if (!concat)
        for (int c = 0; c < g.C; ++c) o[c] = static_cast<scalar_t>(acc[c] * aw);
    }
  });
}

// grad_points[i] from the point gradients of the three planes.
template <typename acc_t>
inline void write_point_grad(acc_t* gp, const PlaneSample<acc_t> s[3], const TriplaneParams& p,
                             const acc_t g_ix[3], const acc_t g_iy[3], acc_t aw) {
  acc_t acc[3] = {acc_t(0), acc_t(0), acc_t(0)};
  for (int k = 0; k < 3; ++k) {
    acc[p.axis_u[k]] += aw * s[k].dix * g_ix[k];
    acc[p.axis_v[k]] += aw * s[k].diy * g_iy[k];
  }
  for (int a = 0; a < 3; ++a) gp[a] = acc[a];
}

template <typename scalar_t, typename acc_t>
void bwd_points_impl(const scalar_t* grad_out, const scalar_t* planes, const acc_t* points,
                     acc_t* grad_points, Geometry g, TriplaneParams p) {
  const acc_t aw = aggregate_weight<acc_t>(p.aggregate);
  const bool concat = p.aggregate == kAggConcat;
  const std::vector<scalar_t> zero_row(g.C, scalar_t(0));
  at::parallel_for(0, g.B * g.N, kPointGrain, [&](int64_t begin, int64_t end) {
    PlaneSample<acc_t> s[3];
    const scalar_t* rows[4];
    acc_t f[4];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / g.N;
      setup_point(points + i * 3, g, p, s);
      acc_t g_ix[3], g_iy[3];
      for (int k = 0; k < 3; ++k) {
        const scalar_t* go = grad_out + i * g.out_c + (concat ? k * g.C : 0);
        corner_rows(planes + (b * 3 + k) * g.plane_numel(), s[k], g.C, zero_row.data(), rows);
        g_ix[k] = acc_t(0);
        g_iy[k] = acc_t(0);
        for (int c = 0; c < g.C; ++c) {
          load4(rows, c, f);
          bilerp_vjp(s[k], f, static_cast<acc_t>(go[c]), &g_ix[k], &g_iy[k]);
        }
      }
      write_point_grad(grad_points + i * 3, s, p, g_ix, g_iy, aw);
    }
  });
}

// Scatter into the planes' gradient, one task per plane. corner_coef(s, j, go_c) gives the
// coefficient of corner j for channel c (first backward: go * w_j).
template <typename scalar_t, typename acc_t, typename Coef>
void scatter_planes(const scalar_t* grad_out, const acc_t* points, acc_t* grad_planes,
                    Geometry g, TriplaneParams p, Coef corner_coef) {
  const acc_t aw = aggregate_weight<acc_t>(p.aggregate);
  const bool concat = p.aggregate == kAggConcat;
  at::parallel_for(0, g.B * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / 3;
      const int k = static_cast<int>(bk % 3);
      acc_t* gplane = grad_planes + bk * g.plane_numel();
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t i = b * g.N + n;
        const acc_t* pt = points + i * 3;
        const PlaneSample<acc_t> s =
            plane_setup<acc_t>(pt[p.axis_u[k]], pt[p.axis_v[k]], g.H, g.W,
                               static_cast<acc_t>(p.scale), p.align_corners, p.padding);
        const scalar_t* go = grad_out + i * g.out_c + (concat ? k * g.C : 0);
        for (int j = 0; j < 4; ++j) {
          if (!s.valid[j]) continue;
          acc_t* row = gplane + s.idx[j] * g.C;
          corner_coef(s, j, i, k, go, aw, row);
        }
      }
    }
  });
}

// Both gradients of the first backward in one pass over the points, one task per plane
// (b, k): the task scatters go * w_j into its plane's gradient (which it zeroes first, so
// the pages are touched by the thread that uses them) and writes the point's pixel-space
// gradient from this plane, (dix * dv/dix . go, diy * dv/diy . go), into `part`. A second
// pass sums the three planes' parts into grad_points. Points go in blocks so that `part`
// stays small ([B, 3, block, 2]).
constexpr int64_t kFusedBlock = int64_t(1) << 15;

template <typename scalar_t, typename acc_t>
void bwd_fused_impl(const scalar_t* grad_out, const scalar_t* planes, const acc_t* points,
                    acc_t* grad_planes, acc_t* grad_points, Geometry g, TriplaneParams p) {
  const acc_t aw = aggregate_weight<acc_t>(p.aggregate);
  const bool concat = p.aggregate == kAggConcat;
  const std::vector<scalar_t> zero_row(g.C, scalar_t(0));
  const int64_t block = std::min(g.N, kFusedBlock);
  std::vector<acc_t> part(static_cast<size_t>(g.B * 3 * block * 2));
  for (int64_t n0 = 0; n0 < g.N; n0 += block) {
    const int64_t nb = std::min(block, g.N - n0);
    at::parallel_for(0, g.B * 3, 1, [&](int64_t begin, int64_t end) {
      const scalar_t* rows[4];
      acc_t f[4];
      for (int64_t bk = begin; bk < end; ++bk) {
        const int64_t b = bk / 3;
        const int k = static_cast<int>(bk % 3);
        acc_t* gplane = grad_planes + bk * g.plane_numel();
        if (n0 == 0) std::fill(gplane, gplane + g.plane_numel(), acc_t(0));
        const scalar_t* plane = planes + bk * g.plane_numel();
        acc_t* pk = part.data() + bk * block * 2;
        for (int64_t n = 0; n < nb; ++n) {
          const int64_t i = b * g.N + n0 + n;
          const acc_t* pt = points + i * 3;
          const PlaneSample<acc_t> s =
              plane_setup<acc_t>(pt[p.axis_u[k]], pt[p.axis_v[k]], g.H, g.W,
                                 static_cast<acc_t>(p.scale), p.align_corners, p.padding);
          const scalar_t* go = grad_out + i * g.out_c + (concat ? k * g.C : 0);
          corner_rows(plane, s, g.C, zero_row.data(), rows);
          acc_t* grows[4];
          for (int j = 0; j < 4; ++j) grows[j] = s.valid[j] ? gplane + s.idx[j] * g.C : nullptr;
          const acc_t w[4] = {aw * s.w[0], aw * s.w[1], aw * s.w[2], aw * s.w[3]};
          acc_t g_ix = acc_t(0), g_iy = acc_t(0);
          for (int c = 0; c < g.C; ++c) {
            const acc_t goc = static_cast<acc_t>(go[c]);
            load4(rows, c, f);
            bilerp_vjp(s, f, goc, &g_ix, &g_iy);
          }
          for (int j = 0; j < 4; ++j) {
            if (!grows[j]) continue;
            acc_t* row = grows[j];
            const acc_t wj = w[j];
            for (int c = 0; c < g.C; ++c) row[c] += wj * static_cast<acc_t>(go[c]);
          }
          pk[2 * n] = aw * s.dix * g_ix;
          pk[2 * n + 1] = aw * s.diy * g_iy;
        }
      }
    });
    at::parallel_for(0, g.B * nb, kPointGrain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / nb;
        const int64_t n = t % nb;
        acc_t acc[3] = {acc_t(0), acc_t(0), acc_t(0)};
        for (int k = 0; k < 3; ++k) {
          const acc_t* pk = part.data() + ((b * 3 + k) * block + n) * 2;
          acc[p.axis_u[k]] += pk[0];
          acc[p.axis_v[k]] += pk[1];
        }
        acc_t* gp = grad_points + (b * g.N + n0 + n) * 3;
        for (int a = 0; a < 3; ++a) gp[a] = acc[a];
      }
    });
  }
}

template <typename scalar_t, typename acc_t>
void bwd2_points_impl(const scalar_t* gg_planes, const acc_t* gg_points,
                      const scalar_t* grad_out, const scalar_t* planes, const acc_t* points,
                      scalar_t* g_grad_out, acc_t* g_points, Geometry g, TriplaneParams p) {
  const acc_t aw = aggregate_weight<acc_t>(p.aggregate);
  const bool concat = p.aggregate == kAggConcat;
  const std::vector<scalar_t> zero_row(g.C, scalar_t(0));
  at::parallel_for(0, g.B * g.N, kPointGrain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(g.out_c);
    PlaneSample<acc_t> s[3];
    const scalar_t* rows[4];
    const scalar_t* grows[4] = {zero_row.data(), zero_row.data(), zero_row.data(), zero_row.data()};
    acc_t f[4], G[4];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / g.N;
      setup_point(points + i * 3, g, p, s);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      acc_t g_ix[3], g_iy[3];
      for (int k = 0; k < 3; ++k) {
        const int64_t off = concat ? k * g.C : 0;
        const scalar_t* go = grad_out + i * g.out_c + off;
        const int64_t plane_off = (b * 3 + k) * g.plane_numel();
        corner_rows(planes + plane_off, s[k], g.C, zero_row.data(), rows);
        if (gg_planes) corner_rows(gg_planes + plane_off, s[k], g.C, zero_row.data(), grows);
        const acc_t qx = gg_points ? gg_points[i * 3 + p.axis_u[k]] * s[k].dix : acc_t(0);
        const acc_t qy = gg_points ? gg_points[i * 3 + p.axis_v[k]] * s[k].diy : acc_t(0);
        g_ix[k] = acc_t(0);
        g_iy[k] = acc_t(0);
        for (int c = 0; c < g.C; ++c) {
          load4(rows, c, f);
          load4(grows, c, G);
          acc[off + c] +=
              bilerp_vjp_vjp(s[k], f, G, static_cast<acc_t>(go[c]), qx, qy, &g_ix[k], &g_iy[k]);
        }
      }
      if (g_grad_out) {
        scalar_t* o = g_grad_out + i * g.out_c;
        for (int64_t c = 0; c < g.out_c; ++c) o[c] = static_cast<scalar_t>(acc[c] * aw);
      }
      if (g_points) write_point_grad(g_points + i * 3, s, p, g_ix, g_iy, aw);
    }
  });
}

at::Tensor planes_grad_like(const at::Tensor& planes, const at::Tensor& acc) {
  return acc.scalar_type() == planes.scalar_type() ? acc : acc.to(planes.scalar_type());
}

at::Tensor triplane_fwd_cpu(const at::Tensor& planes,  // [B, 3, H, W, C]
                            const at::Tensor& points,  // [B, N, 3]
                            at::IntArrayRef axes, double scale, int64_t aggregate,
                            int64_t padding, bool align_corners) {
  const TriplaneParams p = make_params(axes, scale, aggregate, padding, align_corners);
  const Geometry g = check_inputs(planes, points, p);
  at::Tensor out = at::empty({g.B, g.N, g.out_c}, planes.options());  // [B, N, C or 3C]
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    fwd_impl<scalar_t, acc_t>(planes.data_ptr<scalar_t>(), points.data_ptr<acc_t>(),
                              out.data_ptr<scalar_t>(), g, p);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_bwd_cpu(
    const at::Tensor& grad_out,  // [B, N, C or 3C]
    const at::Tensor& planes,    // [B, 3, H, W, C]
    const at::Tensor& points,    // [B, N, 3]
    at::IntArrayRef axes, double scale, int64_t aggregate, int64_t padding,
    bool align_corners, bool need_planes, bool need_points) {
  const TriplaneParams p = make_params(axes, scale, aggregate, padding, align_corners);
  const Geometry g = check_inputs(planes, points, p);
  CHECK_CPU(grad_out);
  CHECK_CONTIGUOUS(grad_out);
  CHECK_SHAPE(grad_out, g.B, g.N, g.out_c);
  CHECK_DTYPE(grad_out, planes.scalar_type());
  const auto acc_type = points.scalar_type();
  at::Tensor grad_planes = planes.new_empty({0});
  at::Tensor grad_points = points.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // The fused pass runs B * 3 tasks; with fewer planes than threads (B = 1 on a many-core
    // machine) the separate passes keep every thread busy on the point gradients. Both
    // ways give bitwise the same gradients (same operations in the same order).
    if (need_points && need_planes && g.N > 0 && g.B * 3 >= at::get_num_threads()) {
      grad_points = at::empty_like(points);                                         // [B, N, 3]
      at::Tensor acc = at::empty(planes.sizes(), planes.options().dtype(acc_type));  // [B, 3, H, W, C]
      bwd_fused_impl<scalar_t, acc_t>(grad_out.data_ptr<scalar_t>(), planes.data_ptr<scalar_t>(),
                                      points.data_ptr<acc_t>(), acc.data_ptr<acc_t>(),
                                      grad_points.data_ptr<acc_t>(), g, p);
      grad_planes = planes_grad_like(planes, acc);
      return;
    }
    if (need_points) {
      grad_points = at::zeros_like(points);  // [B, N, 3]
      if (g.N > 0)
        bwd_points_impl<scalar_t, acc_t>(grad_out.data_ptr<scalar_t>(), planes.data_ptr<scalar_t>(),
                                         points.data_ptr<acc_t>(), grad_points.data_ptr<acc_t>(), g, p);
    }
    if (need_planes) {
      at::Tensor acc = at::zeros(planes.sizes(), planes.options().dtype(acc_type));  // [B, 3, H, W, C]
      if (g.N > 0)
        scatter_planes<scalar_t, acc_t>(
            grad_out.data_ptr<scalar_t>(), points.data_ptr<acc_t>(), acc.data_ptr<acc_t>(), g, p,
            [&](const PlaneSample<acc_t>& s, int j, int64_t, int, const scalar_t* go, acc_t aw,
                acc_t* row) {
              const acc_t wj = aw * s.w[j];
              for (int c = 0; c < g.C; ++c) row[c] += wj * static_cast<acc_t>(go[c]);
            });
      grad_planes = planes_grad_like(planes, acc);
    }
  });
  return {grad_planes, grad_points};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> triplane_bwd2_cpu(
    const c10::optional<at::Tensor>& gg_planes_opt,  // [B, 3, H, W, C] or None
    const c10::optional<at::Tensor>& gg_points_opt,  // [B, N, 3] or None
    const at::Tensor& grad_out,                      // [B, N, C or 3C]
    const at::Tensor& planes,                        // [B, 3, H, W, C]
    const at::Tensor& points,                        // [B, N, 3]
    at::IntArrayRef axes, double scale, int64_t aggregate, int64_t padding,
    bool align_corners, bool need_grad_out, bool need_planes, bool need_points) {
  const TriplaneParams p = make_params(axes, scale, aggregate, padding, align_corners);
  const Geometry g = check_inputs(planes, points, p);
  CHECK_CPU(grad_out);
  CHECK_CONTIGUOUS(grad_out);
  CHECK_SHAPE(grad_out, g.B, g.N, g.out_c);
  CHECK_DTYPE(grad_out, planes.scalar_type());
  const at::Tensor gg_planes = gg_planes_opt.has_value() ? *gg_planes_opt : at::Tensor();
  const at::Tensor gg_points = gg_points_opt.has_value() ? *gg_points_opt : at::Tensor();
  if (gg_planes.defined()) {
    CHECK_CPU(gg_planes);
    CHECK_CONTIGUOUS(gg_planes);
    NPHT_TORCH_CHECK(gg_planes.sizes() == planes.sizes(), "gg_planes must have the shape of planes ",
                planes.sizes(), ", got ", gg_planes.sizes());
    CHECK_DTYPE(gg_planes, planes.scalar_type());
  }
  if (gg_points.defined()) {
    CHECK_CPU(gg_points);
    CHECK_CONTIGUOUS(gg_points);
    CHECK_SHAPE(gg_points, g.B, g.N, 3);
    CHECK_DTYPE(gg_points, points.scalar_type());
  }
  const auto acc_type = points.scalar_type();
  at::Tensor g_grad_out = grad_out.new_empty({0});
  at::Tensor g_planes = planes.new_empty({0});
  at::Tensor g_points = points.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_bwd2_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ggp = gg_planes.defined() ? gg_planes.data_ptr<scalar_t>() : nullptr;
    const acc_t* ggx = gg_points.defined() ? gg_points.data_ptr<acc_t>() : nullptr;
    if (need_grad_out) g_grad_out = at::zeros_like(grad_out);  // [B, N, C or 3C]
    if (need_points) g_points = at::zeros_like(points);        // [B, N, 3]
    if ((need_grad_out || need_points) && g.N > 0 && (ggp || ggx))
      bwd2_points_impl<scalar_t, acc_t>(ggp, ggx, grad_out.data_ptr<scalar_t>(),
                                        planes.data_ptr<scalar_t>(), points.data_ptr<acc_t>(),
                                        need_grad_out ? g_grad_out.data_ptr<scalar_t>() : nullptr,
                                        need_points ? g_points.data_ptr<acc_t>() : nullptr, g, p);
    if (need_planes) {
      at::Tensor acc = at::zeros(planes.sizes(), planes.options().dtype(acc_type));  // [B, 3, H, W, C]
      // grad_planes of the first backward does not depend on planes: only gg_points acts.
      if (ggx && g.N > 0)
        scatter_planes<scalar_t, acc_t>(
            grad_out.data_ptr<scalar_t>(), points.data_ptr<acc_t>(), acc.data_ptr<acc_t>(), g, p,
            [&](const PlaneSample<acc_t>& s, int j, int64_t i, int k, const scalar_t* go, acc_t aw,
                acc_t* row) {
              const acc_t qx = ggx[i * 3 + p.axis_u[k]] * s.dix;
              const acc_t qy = ggx[i * 3 + p.axis_v[k]] * s.diy;
              for (int c = 0; c < g.C; ++c)
                row[c] += aw * bilerp_vjp_vjp_corner(s, j, static_cast<acc_t>(go[c]), qx, qy);
            });
      g_planes = planes_grad_like(planes, acc);
    }
  });
  return {g_grad_out, g_planes, g_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(npht_C, CPU, m) {
  m.impl("triplane_fwd", &triplane_fwd_cpu);
  m.impl("triplane_bwd", &triplane_bwd_cpu);
  m.impl("triplane_bwd2", &triplane_bwd2_cpu);
}

}  // namespace npht
