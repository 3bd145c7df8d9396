// CUDA kernels of the fused compositing op: one thread per ray, running the per-ray
// functions of csrc/include/npht/composite_math.h (the same the CPU backend runs). No
// torch headers: `make cuda-check` compiles this file with nvcc alone.
#include <cuda_runtime.h>
#include <stdint.h>

#include "composite/composite_cuda.h"
#include "npht/composite_math.h"

namespace npht {
namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads) composite_fwd_kernel(const T* __restrict__ sdf, const T* __restrict__ z,
                                     const T* __restrict__ beta, const T* __restrict__ values,
                                     const int64_t* __restrict__ offsets, T* rendered, T* depth,
                                     T* opacity, T* weights, CompositeLaunch p) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= p.R) return;
  int64_t a, n;
  composite_ray_range(offsets, r, p.S, p.M, &a, &n);
  composite_ray_fwd<T>(sdf + a, z + a, values ? values + a * p.K : nullptr, n, p.K,
                       static_cast<double>(beta[p.per_ray_beta ? r : 0]), p.last_delta,
                       rendered + r * p.K, depth + r, opacity + r, weights + a);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) composite_bwd_kernel(const T* __restrict__ grad_rendered,
                                     const T* __restrict__ grad_depth,
                                     const T* __restrict__ grad_opacity,
                                     const T* __restrict__ grad_weights,
                                     const T* __restrict__ sdf, const T* __restrict__ z,
                                     const T* __restrict__ beta, const T* __restrict__ values,
                                     const T* __restrict__ saved,
                                     const int64_t* __restrict__ offsets, T* g_sdf, T* g_z,
                                     T* g_beta, T* g_values, CompositeLaunch p) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= p.R) return;
  int64_t a, n;
  composite_ray_range(offsets, r, p.S, p.M, &a, &n);
  CompositeGrads<T> g{grad_rendered ? grad_rendered + r * p.K : nullptr,
                      grad_depth ? grad_depth + r : nullptr,
                      grad_opacity ? grad_opacity + r : nullptr,
                      grad_weights ? grad_weights + a : nullptr};
  CompositeRayVjp<T> out{g_sdf ? g_sdf + a : nullptr, g_z ? g_z + a : nullptr,
                         g_beta ? g_beta + r : nullptr, g_values ? g_values + a * p.K : nullptr};
  composite_ray_bwd<T>(g, sdf + a, z + a, values ? values + a * p.K : nullptr,
                       saved ? saved + a : nullptr, n, p.K,
                       static_cast<double>(beta[p.per_ray_beta ? r : 0]), p.last_delta, out);
}

inline unsigned blocks_for(int64_t R) {
  return static_cast<unsigned>((R + kThreads - 1) / kThreads);
}

template <typename T>
cudaError_t launch_fwd(const void* sdf, const void* z, const void* beta, const void* values,
                       const int64_t* offsets, void* rendered, void* depth, void* opacity,
                       void* weights, CompositeLaunch p, cudaStream_t stream) {
  if (p.R == 0) return cudaSuccess;
  composite_fwd_kernel<T><<<blocks_for(p.R), kThreads, 0, stream>>>(
      static_cast<const T*>(sdf), static_cast<const T*>(z), static_cast<const T*>(beta),
      static_cast<const T*>(values), offsets, static_cast<T*>(rendered), static_cast<T*>(depth),
      static_cast<T*>(opacity), static_cast<T*>(weights), p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const void* grad_rendered, const void* grad_depth,
                       const void* grad_opacity, const void* grad_weights, const void* sdf,
                       const void* z, const void* beta, const void* values, const void* saved,
                       const int64_t* offsets, void* g_sdf, void* g_z, void* g_beta,
                       void* g_values, CompositeLaunch p, cudaStream_t stream) {
  if (p.R == 0) return cudaSuccess;
  composite_bwd_kernel<T><<<blocks_for(p.R), kThreads, 0, stream>>>(
      static_cast<const T*>(grad_rendered), static_cast<const T*>(grad_depth),
      static_cast<const T*>(grad_opacity), static_cast<const T*>(grad_weights),
      static_cast<const T*>(sdf), static_cast<const T*>(z), static_cast<const T*>(beta),
      static_cast<const T*>(values), static_cast<const T*>(saved), offsets,
      static_cast<T*>(g_sdf), static_cast<T*>(g_z),
      static_cast<T*>(g_beta), static_cast<T*>(g_values), p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t composite_fwd_cuda(const void* sdf, const void* z, const void* beta,
                               const void* values, const int64_t* offsets, void* rendered,
                               void* depth, void* opacity, void* weights, CompositeLaunch p,
                               cudaStream_t stream) {
  return p.f64 ? launch_fwd<double>(sdf, z, beta, values, offsets, rendered, depth, opacity,
                                    weights, p, stream)
               : launch_fwd<float>(sdf, z, beta, values, offsets, rendered, depth, opacity,
                                   weights, p, stream);
}

cudaError_t composite_bwd_cuda(const void* grad_rendered, const void* grad_depth,
                               const void* grad_opacity, const void* grad_weights,
                               const void* sdf, const void* z, const void* beta,
                               const void* values, const void* saved_weights,
                               const int64_t* offsets, void* g_sdf, void* g_z, void* g_beta,
                               void* g_values, CompositeLaunch p, cudaStream_t stream) {
  return p.f64 ? launch_bwd<double>(grad_rendered, grad_depth, grad_opacity, grad_weights, sdf,
                                    z, beta, values, saved_weights, offsets, g_sdf, g_z, g_beta,
                                    g_values, p, stream)
               : launch_bwd<float>(grad_rendered, grad_depth, grad_opacity, grad_weights, sdf,
                                   z, beta, values, saved_weights, offsets, g_sdf, g_z, g_beta,
                                   g_values, p, stream);
}

}  // namespace npht
