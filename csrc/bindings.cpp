// npht._C: raw kernels registered with torch.library under the namespace `npht_C`,
// dispatched by device (CPU always built, CUDA when built). The public, differentiable
// ops live in npht/ops (namespace `npht`) and call these.
//
// Tri-plane sampling contract, shared by the cpu, cuda and triton backends:
//   planes      [B, 3, H, W, C]  contiguous channels-last; float32, float64, float16, bfloat16
//   points      [B, N, 3]        contiguous; float64 when planes are float64, else float32
//   axes        [u0, v0, u1, v1, u2, v2]: plane k reads (points[..., uk], points[..., vk])
//   scale       coordinates are multiplied by it before sampling (EG3D: 2 / box_warp)
//   aggregate   0 sum, 1 mean, 2 concat;  padding 0 zeros, 1 border
//   out         [B, N, C] (sum, mean) or [B, N, 3C] (concat, plane-major), planes' dtype
// triplane_bwd returns (grad_planes, grad_points) in the dtypes of planes and points;
// triplane_bwd2 returns (grad_grad_out, grad_planes, grad_points): the vjp of triplane_bwd
// for upstream gradients gg_planes (of grad_planes) and gg_points (of grad_points), either
// of which may be None. Outputs whose need_* flag is false are empty tensors.
//
// VolSDF compositing contract (cpu, cuda, triton; reference in npht/reference/render.py):
//   dense:  sdf, z [R, S]; values [R, S, K] or None; offsets None
//   packed: sdf, z [M]; values [M, K] or None; offsets [R + 1] int64 (CSR, clamped to [0, M])
//   beta [1] (shared) or [R] (per ray); all float tensors float32 or float64, one dtype
//   composite_fwd -> (rendered [R, K], depth [R], opacity [R], weights like sdf)
//   composite_bwd -> (grad_sdf, grad_z, grad_beta [R] (per ray, the caller sums a shared
//   beta), grad_values); any upstream gradient may be None or empty (zero); outputs whose
//   need_* flag is false are empty. `weights` (optional, last): the forward's weights, which
//   spare the backward most of its transcendentals (backends may ignore it).
//   Math: csrc/include/npht/composite_math.h.
//
// Error-bound sampler contract (VolSDF Algorithm 1, per-ray math; the SDF evaluation between
// rounds stays with the caller), shared by the cpu, cuda and triton backends. A ray is a
// row; all float tensors have one dtype, float32 or float64 (computed in float64 inside);
// rows of z are sorted ascending, n >= 2:
//   eb_bisect_beta  z, sdf [R, n], beta_hi [R] -> beta [R]: beta0 where the opacity error
//                   bound at beta0 is <= eps, else `iters` bisection steps in
//                   [beta0, beta_hi] keeping the upper end (reference bisect_beta)
//   eb_upsample     z, sdf [R, n], beta [R], u [R, k] quantiles -> samples [R, k]:
//                   inverse-CDF sampling (reference sample_pdf) of a pdf over the n - 1
//                   intervals, plus add_tiny: mode 0 the opacity error bound per interval
//                   at beta, mode 1 the rendering weights of the first n - 1 samples
//   eb_merge        z [R, n], samples [R, k], both rows sorted -> (merged [R, n + k]
//                   sorted, order [R, n + k] int64): merged = cat([z, samples], -1)
//                   gathered at order (torch.sort's pair; equal values: z's first)
//
// Nearest-neighbour contract (metrics; tree layout in csrc/include/npht/knn_math.h):
//   knn_build  ref [M, 3] float64 CPU, leaf_size -> (points [M, 3] in tree order, perm [M]
//              int64 (tree order -> ref index), bounds [2^(D+1) - 1, 6], leaf_start [2^D + 1])
//   knn_query  query [N, 3], points, bounds, leaf_start (one device: cpu or cuda) ->
//              (dist [N] float64 Euclidean, index [N] int64 into points): exact; among equally
//              near points the smallest index into points
//
// Fused MLP backward, elementwise steps (npht/ops/mlp.py; math in
// csrc/include/npht/softplus_math.h), in place; all tensors one dtype (float32 or float64),
// contiguous, [M, W]; s', s'' the softplus(beta, threshold) derivatives of h:
//   softplus_adjoint_      e = d s'(h) (the MLP gradient pass' product), ebar its upstream
//                          gradient: e <- ebar d s''(h) = ebar e beta (1 - sigmoid(beta h))
//                          (0 where beta h >= threshold), then ebar <- ebar s'(h)
//   softplus_backward_add_ acc <- acc + grad s'(h)
#include <Python.h>
#include <torch/library.h>

#include <string>

TORCH_LIBRARY(npht_C, m) {
  m.def(
      "triplane_fwd(Tensor planes, Tensor points, int[] axes, float scale, int aggregate, "
      "int padding, bool align_corners) -> Tensor");
  m.def(
      "triplane_bwd(Tensor grad_out, Tensor planes, Tensor points, int[] axes, float scale, "
      "int aggregate, int padding, bool align_corners, bool need_planes, bool need_points) "
      "-> (Tensor, Tensor)");
  m.def(
      "triplane_bwd2(Tensor? gg_planes, Tensor? gg_points, Tensor grad_out, Tensor planes, "
      "Tensor points, int[] axes, float scale, int aggregate, int padding, bool align_corners, "
      "bool need_grad_out, bool need_planes, bool need_points) -> (Tensor, Tensor, Tensor)");
  m.def(
      "composite_fwd(Tensor sdf, Tensor z, Tensor beta, Tensor? values, Tensor? offsets, "
      "float last_delta) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "composite_bwd(Tensor? grad_rendered, Tensor? grad_depth, Tensor? grad_opacity, "
      "Tensor? grad_weights, Tensor sdf, Tensor z, Tensor beta, Tensor? values, Tensor? offsets, "
      "float last_delta, bool need_sdf, bool need_z, bool need_beta, bool need_values, "
      "Tensor? weights=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "eb_bisect_beta(Tensor z, Tensor sdf, float beta0, Tensor beta_hi, float eps, int iters) "
      "-> Tensor");
  m.def("eb_upsample(Tensor z, Tensor sdf, Tensor beta, Tensor u, int mode, float add_tiny) -> Tensor");
  m.def("eb_merge(Tensor z, Tensor samples) -> (Tensor, Tensor)");
  m.def("knn_build(Tensor ref, int leaf_size) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("knn_query(Tensor query, Tensor points, Tensor bounds, Tensor leaf_start) -> (Tensor, Tensor)");
  m.def(
      "softplus_adjoint_(Tensor(a!) ebar, Tensor(b!) e, Tensor h, float beta, float threshold) -> ()");
  m.def("softplus_backward_add_(Tensor(a!) acc, Tensor grad, Tensor h, float beta, float threshold) -> ()");
}

static std::string build_info() {
  // parsed by npht.build_info()
#ifdef NPHT_WITH_CUDA
  return "cuda=1";
#else
  return "cuda=0";
#endif
}

TORCH_LIBRARY_FRAGMENT(npht_C, m) { m.def("build_info() -> str", &build_info); }

// A plain extension module: importing npht._C loads the library and runs the
// registrations above.
static PyModuleDef npht_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                    "npht compiled kernels (torch.ops.npht_C.*)", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&npht_c_module); }
