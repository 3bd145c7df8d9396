// Kernels that test npht's CUDA emulator itself (tests/test_cuda_emu.py): the CUDA semantics
// it claims (thread / block indices, shuffles, atomics, launch limits) on known answers, and
// the errors it must raise. Compiled by build.py like csrc's kernels (launches rewritten).
#include <cuda_runtime.h>
#include <stdint.h>

#include "selftest_cuda.h"

namespace npht_selftest {
namespace {

// out[t] = the value of the lane that __shfl_*_sync(mode) reads for thread t.
__global__ void shfl_kernel(const float* in, float* out, int mode, int arg, int width) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const float v = in[t];
  float r = 0.f;
  if (mode == 0) r = __shfl_xor_sync(0xffffffffu, v, arg, width);
  if (mode == 1) r = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(arg), width);
  if (mode == 2) r = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned>(arg), width);
  if (mode == 3) r = __shfl_sync(0xffffffffu, v, arg, width);
  out[t] = r;
}

// Sum over the warp by xor shuffles after threads t >= n returned: undefined on a GPU when
// a warp is partly exited, an error in the emulator.
__global__ void early_exit_kernel(float* out, int n) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (t >= n) return;
  float v = 1.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[t] = v;
}

// Each thread writes its indices: out[linear thread id] = (tx, ty, tz, bx, by, bz).
__global__ void index_kernel(float* out) {
  const int64_t block = (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t thread = (static_cast<int64_t>(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  float* o = out + 6 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
  o[0] = threadIdx.x, o[1] = threadIdx.y, o[2] = threadIdx.z;
  o[3] = blockIdx.x, o[4] = blockIdx.y, o[5] = blockIdx.z;
}

// A grid-stride loop adding 1 to counts[i] for every i < n, by atomics (float and double).
__global__ void visit_kernel(float* counts, double* total, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    atomicAdd(counts + i, 1.f);
    atomicAdd(total, 1.0);
  }
}

// out[block] = the sum of the block's values by a tree in shared memory (blockDim.x a power
// of two): every step needs the block's previous step (without __syncthreads the emulator
// would run thread 0 to its end on values nobody has written yet).
__global__ void block_sum_kernel(const float* in, float* out) {
  __shared__ float buf[1024];
  const unsigned t = threadIdx.x;
  buf[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) buf[t] += buf[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// __syncthreads after threads t >= n returned: undefined on a GPU, an error here.
__global__ void early_sync_kernel(float* out, int n) {
  const int t = static_cast<int>(threadIdx.x);
  if (t >= n) return;
  __syncthreads();
  out[t] = 1.f;
}

// seq[thread] = the order in which the threads ran (an atomic counter's old value).
__global__ void order_kernel(double* seq, double* counter) {
  seq[blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x] = atomicAdd(counter, 1.0);
}

}  // namespace

cudaError_t block_sum_cuda(const float* in, float* out, unsigned blocks, unsigned threads) {
  block_sum_kernel<<<blocks, threads, 0, nullptr>>>(in, out);
  return cudaGetLastError();
}

cudaError_t early_sync_cuda(float* out, int n, unsigned threads) {
  early_sync_kernel<<<1, threads, 0, nullptr>>>(out, n);
  return cudaGetLastError();
}

cudaError_t order_cuda(double* seq, double* counter, unsigned blocks, unsigned threads) {
  order_kernel<<<blocks, threads, 0, nullptr>>>(seq, counter);
  return cudaGetLastError();
}

cudaError_t shfl_cuda(const float* in, float* out, int n, int mode, int arg, int width) {
  shfl_kernel<<<n / 32, 32, 0, nullptr>>>(in, out, mode, arg, width);
  return cudaGetLastError();
}

cudaError_t early_exit_cuda(float* out, int n, int threads) {
  early_exit_kernel<<<1, threads, 0, nullptr>>>(out, n);
  return cudaGetLastError();
}

cudaError_t index_cuda(float* out, const unsigned* grid, const unsigned* block) {
  index_kernel<<<dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), 0, nullptr>>>(out);
  return cudaGetLastError();
}

cudaError_t visit_cuda(float* counts, double* total, int64_t n, unsigned blocks, unsigned threads) {
  visit_kernel<<<blocks, threads, 0, nullptr>>>(counts, total, n);
  return cudaGetLastError();
}

}  // namespace npht_selftest
