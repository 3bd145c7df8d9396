// Torch glue of the tri-plane CUDA kernels: registers triplane_fwd, triplane_bwd and
// triplane_bwd2 of the `npht_C` library (schemas and contract in csrc/bindings.cpp) for the
// CUDA dispatch key. Each op checks its inputs, allocates its outputs, and calls the
// torch-free launchers of triplane_kernels.cu on the current stream of the planes' device.
#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "npht/check.h"
#include "triplane/triplane_cuda.h"

#define NPHT_CHECK(cond, ...) NPHT_TORCH_CHECK(cond, "npht_C (cuda): ", __VA_ARGS__)
#define CHECK_CUDA(x) \
  NPHT_CHECK((x).is_cuda(), #x " must be a CUDA tensor, got one on ", (x).device())
#define CHECK_CONTIGUOUS(x) \
  NPHT_CHECK((x).is_contiguous(), #x " must be contiguous (call .contiguous() first)")
#define CHECK_DIM(x, d) \
  NPHT_CHECK((x).dim() == (d), #x " must have ", (d), " dimensions, got shape ", (x).sizes())
#define CHECK_SHAPE(x, ...)                                                               \
  NPHT_CHECK((x).sizes().vec() == std::vector<int64_t>({__VA_ARGS__}), #x " must have shape ", \
             at::IntArrayRef(std::vector<int64_t>({__VA_ARGS__})), ", got ", (x).sizes())
#define CHECK_DTYPE(x, dt)                                                                 \
  NPHT_CHECK((x).scalar_type() == (dt), #x " must have dtype ", (dt), ", got ", \
             (x).scalar_type())
#define CHECK_SAME_DEVICE(x, y)                                                       \
  NPHT_CHECK((x).device() == (y).device(), #x " and " #y " must be on the same device, got ", \
             (x).device(), " and ", (y).device())
#define CHECK_CUDA_ERR(err, what) \
  NPHT_CHECK((err) == cudaSuccess, what, " failed: ", cudaGetErrorString(err))

namespace {

// Sizes, kernel parameters and dtypes of one call, after the common checks.
struct Call {
  npht::TriplaneSizes sz;
  npht::TriplaneParams prm;
  npht::DType dt;
  int64_t c_out;  // channels of out / grad_out: C, or 3C for concat
};

Call check_common(const at::Tensor& planes,  // [B, 3, H, W, C]
                  const at::Tensor& points,  // [B, N, 3]
                  at::IntArrayRef axes,      // [u0, v0, u1, v1, u2, v2]
                  double scale, int64_t aggregate, int64_t padding, bool align_corners) {
  CHECK_CUDA(planes);
  CHECK_CUDA(points);
  CHECK_SAME_DEVICE(planes, points);
  CHECK_CONTIGUOUS(planes);
  CHECK_CONTIGUOUS(points);
  CHECK_DIM(planes, 5);
  CHECK_DIM(points, 3);
  NPHT_CHECK(planes.size(1) == 3, "planes must have shape [B, 3, H, W, C], got ",
             planes.sizes());

  Call call{};
  const at::ScalarType st = planes.scalar_type();
  switch (st) {
    case at::kFloat:
      call.dt = npht::DType::kF32;
      break;
    case at::kDouble:
      call.dt = npht::DType::kF64;
      break;
    case at::kHalf:
      call.dt = npht::DType::kF16;
      break;
    case at::kBFloat16:
      call.dt = npht::DType::kBF16;
      break;
    default:
      NPHT_CHECK(false, "planes must be float32, float64, float16 or bfloat16, got ", st);
  }
  CHECK_DTYPE(points, st == at::kDouble ? at::kDouble : at::kFloat);

  const int64_t B = planes.size(0), H = planes.size(2), W = planes.size(3),
                C = planes.size(4);
  const int64_t N = points.size(1);
  CHECK_SHAPE(points, B, N, 3);
  NPHT_CHECK(H <= INT_MAX && W <= INT_MAX && C <= INT_MAX,
             "plane sizes too large: ", planes.sizes());

  NPHT_CHECK(axes.size() == 6, "axes must have 6 entries [u0, v0, u1, v1, u2, v2], got ",
             axes);
  for (const int64_t a : axes) {
    NPHT_CHECK(a >= 0 && a < 3, "axes entries must be in [0, 3), got ", axes);
  }
  NPHT_CHECK(aggregate == npht::kAggSum || aggregate == npht::kAggMean ||
                 aggregate == npht::kAggConcat,
             "aggregate must be 0 (sum), 1 (mean) or 2 (concat), got ", aggregate);
  NPHT_CHECK(padding == npht::kPadZeros || padding == npht::kPadBorder,
             "padding must be 0 (zeros) or 1 (border), got ", padding);

  call.sz.B = B;
  call.sz.N = N;
  call.sz.H = static_cast<int>(H);
  call.sz.W = static_cast<int>(W);
  call.sz.C = static_cast<int>(C);
  for (int k = 0; k < 3; ++k) {
    call.prm.axis_u[k] = static_cast<int>(axes[2 * k]);
    call.prm.axis_v[k] = static_cast<int>(axes[2 * k + 1]);
  }
  call.prm.scale = scale;
  call.prm.aggregate = static_cast<int>(aggregate);
  call.prm.padding = static_cast<int>(padding);
  call.prm.align_corners = align_corners;
  call.c_out = aggregate == npht::kAggConcat ? 3 * C : C;
  return call;
}

// grad_out-like input (grad_out itself): [B, N, C] or [B, N, 3C], planes' dtype.
void check_grad_out(const at::Tensor& grad_out,  // [B, N, C_out]
                    const at::Tensor& planes,    // [B, 3, H, W, C]
                    const Call& call) {
  CHECK_CUDA(grad_out);
  CHECK_SAME_DEVICE(grad_out, planes);
  CHECK_CONTIGUOUS(grad_out);
  CHECK_DTYPE(grad_out, planes.scalar_type());
  CHECK_SHAPE(grad_out, call.sz.B, call.sz.N, call.c_out);
}

// The accumulation buffer of a planes gradient: zeroed, float64 for float64 planes, else
// float32. For float32 / float64 planes it is the gradient itself.
at::Tensor planes_acc(const at::Tensor& planes) {  // [B, 3, H, W, C]
  const at::ScalarType acc = planes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::zeros(planes.sizes(), planes.options().dtype(acc));
}

// The planes gradient from its accumulation buffer (a no-op for float32 / float64).
at::Tensor planes_grad(const at::Tensor& acc,       // [B, 3, H, W, C], float or double
                       const at::Tensor& planes) {  // [B, 3, H, W, C]
  return acc.scalar_type() == planes.scalar_type() ? acc : acc.to(planes.scalar_type());
}

void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// ---- triplane_fwd -------------------------------------------------------------------

at::Tensor triplane_fwd_op(const at::Tensor& planes,  // [B, 3, H, W, C]
                           const at::Tensor& points,  // [B, N, 3]
                           at::IntArrayRef axes, double scale, int64_t aggregate,
                           int64_t padding, bool align_corners) {
  const Call call = check_common(planes, points, axes, scale, aggregate, padding, align_corners);

  // [B, N, C] or [B, N, 3C], fully written by the kernel
  at::Tensor out = at::empty({call.sz.B, call.sz.N, call.c_out}, planes.options());

  const at::cuda::OptionalCUDAGuard guard(device_of(planes));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = npht::triplane_fwd_cuda(planes.data_ptr(), points.data_ptr(),
                                                  out.data_ptr(), call.dt, call.sz, call.prm,
                                                  stream);
  CHECK_CUDA_ERR(err, "triplane_fwd kernel launch");
  return out;
}

// ---- triplane_bwd -------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> triplane_bwd_op(
    const at::Tensor& grad_out,  // [B, N, C] or [B, N, 3C]
    const at::Tensor& planes,    // [B, 3, H, W, C]
    const at::Tensor& points,    // [B, N, 3]
    at::IntArrayRef axes, double scale, int64_t aggregate, int64_t padding, bool align_corners,
    bool need_planes, bool need_points) {
  const Call call = check_common(planes, points, axes, scale, aggregate, padding, align_corners);
  check_grad_out(grad_out, planes, call);

  at::Tensor grad_planes_acc;  // [B, 3, H, W, C] float / double, zeroed (if needed)
  at::Tensor grad_points;      // [B, N, 3] points' dtype, fully written (if needed)
  if (need_planes) grad_planes_acc = planes_acc(planes);
  if (need_points) grad_points = at::empty(points.sizes(), points.options());

  const at::cuda::OptionalCUDAGuard guard(device_of(planes));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = npht::triplane_bwd_cuda(
      grad_out.data_ptr(), planes.data_ptr(), points.data_ptr(), ptr_or_null(grad_planes_acc),
      ptr_or_null(grad_points), call.dt, call.sz, call.prm, stream);
  CHECK_CUDA_ERR(err, "triplane_bwd kernel launch");

  at::Tensor grad_planes =  // [B, 3, H, W, C] planes' dtype, or [0]
      need_planes ? planes_grad(grad_planes_acc, planes) : at::empty({0}, planes.options());
  if (!need_points) grad_points = at::empty({0}, points.options());  // [0]
  return std::make_tuple(grad_planes, grad_points);
}

// ---- triplane_bwd2 ------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> triplane_bwd2_op(
    const std::optional<at::Tensor>& gg_planes_opt,  // [B, 3, H, W, C] planes' dtype, or None
    const std::optional<at::Tensor>& gg_points_opt,  // [B, N, 3] points' dtype, or None
    const at::Tensor& grad_out,                      // [B, N, C] or [B, N, 3C]
    const at::Tensor& planes,                        // [B, 3, H, W, C]
    const at::Tensor& points,                        // [B, N, 3]
    at::IntArrayRef axes, double scale, int64_t aggregate, int64_t padding, bool align_corners,
    bool need_grad_out, bool need_planes, bool need_points) {
  const Call call = check_common(planes, points, axes, scale, aggregate, padding, align_corners);
  check_grad_out(grad_out, planes, call);

  at::Tensor gg_planes;  // [B, 3, H, W, C] or undefined
  at::Tensor gg_points;  // [B, N, 3] or undefined
  if (gg_planes_opt.has_value() && gg_planes_opt->defined()) {
    gg_planes = *gg_planes_opt;
    CHECK_CUDA(gg_planes);
    CHECK_SAME_DEVICE(gg_planes, planes);
    CHECK_CONTIGUOUS(gg_planes);
    CHECK_DTYPE(gg_planes, planes.scalar_type());
    CHECK_SHAPE(gg_planes, call.sz.B, 3, call.sz.H, call.sz.W, call.sz.C);
  }
  if (gg_points_opt.has_value() && gg_points_opt->defined()) {
    gg_points = *gg_points_opt;
    CHECK_CUDA(gg_points);
    CHECK_SAME_DEVICE(gg_points, planes);
    CHECK_CONTIGUOUS(gg_points);
    CHECK_DTYPE(gg_points, points.scalar_type());
    CHECK_SHAPE(gg_points, call.sz.B, call.sz.N, 3);
  }

  at::Tensor g_grad_out;    // [B, N, C_out] planes' dtype, fully written (if needed)
  at::Tensor g_planes_acc;  // [B, 3, H, W, C] float / double, zeroed (if needed)
  at::Tensor g_points;      // [B, N, 3] points' dtype, fully written (if needed)
  if (need_grad_out) g_grad_out = at::empty(grad_out.sizes(), planes.options());
  if (need_planes) g_planes_acc = planes_acc(planes);
  if (need_points) g_points = at::empty(points.sizes(), points.options());

  const at::cuda::OptionalCUDAGuard guard(device_of(planes));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = npht::triplane_bwd2_cuda(
      ptr_or_null(gg_planes), ptr_or_null(gg_points), grad_out.data_ptr(), planes.data_ptr(),
      points.data_ptr(), ptr_or_null(g_grad_out), ptr_or_null(g_planes_acc),
      ptr_or_null(g_points), call.dt, call.sz, call.prm, stream);
  CHECK_CUDA_ERR(err, "triplane_bwd2 kernel launch");

  if (!need_grad_out) g_grad_out = at::empty({0}, planes.options());  // [0]
  at::Tensor g_planes =  // [B, 3, H, W, C] planes' dtype, or [0]
      need_planes ? planes_grad(g_planes_acc, planes) : at::empty({0}, planes.options());
  if (!need_points) g_points = at::empty({0}, points.options());  // [0]
  return std::make_tuple(g_grad_out, g_planes, g_points);
}

}  // namespace

TORCH_LIBRARY_IMPL(npht_C, CUDA, m) {
  m.impl("triplane_fwd", &triplane_fwd_op);
  m.impl("triplane_bwd", &triplane_bwd_op);
  m.impl("triplane_bwd2", &triplane_bwd2_op);
}
