// CUDA kernels of the fused MLP backward's elementwise steps (npht/ops/mlp.py): one thread
// per element in a grid-stride loop, the per-element math of npht/softplus_math.h that the
// CPU backend runs. Memory bound: each reads three [M, W] arrays and writes two, or reads
// three and writes one; the unfused PyTorch sequences they replace make about 12 and 6
// passes.
#include <cuda_runtime.h>
#include <stdint.h>

#include "mlp/mlp_cuda.h"
#include "npht/softplus_math.h"

namespace npht {
namespace {

constexpr int kBlock = 256;

struct DevExp {
  __device__ __forceinline__ float operator()(float x) const { return expf(x); }
  __device__ __forceinline__ double operator()(double x) const { return exp(x); }
};

template <typename T>
__global__ void __launch_bounds__(kBlock)
    adjoint_kernel(T* __restrict__ ebar, T* __restrict__ e, const T* __restrict__ h, int64_t n, T beta,
                   T threshold) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T hadj, dbar;
    softplus::adjoint<T>(ebar[i], e[i], __ldg(h + i), beta, threshold, DevExp(), &hadj, &dbar);
    e[i] = hadj;
    ebar[i] = dbar;
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    backward_add_kernel(T* __restrict__ acc, const T* __restrict__ grad, const T* __restrict__ h, int64_t n,
                        T beta, T threshold) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc[i] += __ldg(grad + i) * softplus::derivs<T>(__ldg(h + i), beta, threshold, DevExp()).d1;
  }
}

unsigned blocks_for(int64_t n) {
  const int64_t nb = (n + kBlock - 1) / kBlock;
  return static_cast<unsigned>(nb < 65535 * 32 ? nb : 65535 * 32);  // the loop covers the rest
}

}  // namespace

cudaError_t softplus_adjoint_cuda(void* ebar, void* e, const void* h, int64_t M, int64_t W, double beta,
                                  double threshold, bool f64, cudaStream_t stream) {
  const int64_t n = M * W;
  if (n <= 0) return cudaSuccess;
  if (f64) {
    adjoint_kernel<double><<<blocks_for(n), kBlock, 0, stream>>>(
        static_cast<double*>(ebar), static_cast<double*>(e), static_cast<const double*>(h), n, beta, threshold);
  } else {
    adjoint_kernel<float><<<blocks_for(n), kBlock, 0, stream>>>(
        static_cast<float*>(ebar), static_cast<float*>(e), static_cast<const float*>(h), n,
        static_cast<float>(beta), static_cast<float>(threshold));
  }
  return cudaGetLastError();
}

cudaError_t softplus_backward_add_cuda(void* acc, const void* grad, const void* h, int64_t M, int64_t W,
                                       double beta, double threshold, bool f64, cudaStream_t stream) {
  const int64_t n = M * W;
  if (n <= 0) return cudaSuccess;
  if (f64) {
    backward_add_kernel<double><<<blocks_for(n), kBlock, 0, stream>>>(
        static_cast<double*>(acc), static_cast<const double*>(grad), static_cast<const double*>(h), n, beta,
        threshold);
  } else {
    backward_add_kernel<float><<<blocks_for(n), kBlock, 0, stream>>>(
        static_cast<float*>(acc), static_cast<const float*>(grad), static_cast<const float*>(h), n,
        static_cast<float>(beta), static_cast<float>(threshold));
  }
  return cudaGetLastError();
}

}  // namespace npht
