// Launchers of the emulator's self-test kernels (selftest_kernels.cu).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace npht_selftest {
cudaError_t shfl_cuda(const float* in, float* out, int n, int mode, int arg, int width);
cudaError_t early_exit_cuda(float* out, int n, int threads);
cudaError_t index_cuda(float* out, const unsigned* grid, const unsigned* block);
cudaError_t block_sum_cuda(const float* in, float* out, unsigned blocks, unsigned threads);
cudaError_t early_sync_cuda(float* out, int n, unsigned threads);
cudaError_t order_cuda(double* seq, double* counter, unsigned blocks, unsigned threads);
cudaError_t visit_cuda(float* counts, double* total, int64_t n, unsigned blocks, unsigned threads);
}  // namespace npht_selftest
