// Torch glue of the emulator's self-test kernels: functions selftest_* of the emulator module.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "selftest_cuda.h"

namespace {

void check(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "launch failed: ", cudaGetErrorString(err));
}

at::Tensor selftest_shfl(const at::Tensor& in, int64_t mode, int64_t arg, int64_t width) {
  TORCH_CHECK(in.scalar_type() == at::kFloat && in.dim() == 1 && in.numel() % 32 == 0, "in: float [32 k]");
  at::Tensor x = in.contiguous(), out = at::empty_like(x);
  check(npht_selftest::shfl_cuda(x.data_ptr<float>(), out.data_ptr<float>(), static_cast<int>(x.numel()),
                                 static_cast<int>(mode), static_cast<int>(arg), static_cast<int>(width)));
  return out;
}

at::Tensor selftest_early_exit(int64_t n, int64_t threads) {
  at::Tensor out = at::zeros({threads}, at::kFloat);
  check(npht_selftest::early_exit_cuda(out.data_ptr<float>(), static_cast<int>(n), static_cast<int>(threads)));
  return out;
}

at::Tensor selftest_index(std::vector<int64_t> grid, std::vector<int64_t> block) {
  TORCH_CHECK(grid.size() == 3 && block.size() == 3, "grid, block: 3 sizes");
  const unsigned g[3] = {unsigned(grid[0]), unsigned(grid[1]), unsigned(grid[2])};
  const unsigned b[3] = {unsigned(block[0]), unsigned(block[1]), unsigned(block[2])};
  const int64_t total = grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2];
  at::Tensor out = at::full({total > 0 && total < (1 << 24) ? total : 0, 6}, -1.f);
  check(npht_selftest::index_cuda(out.data_ptr<float>(), g, b));
  return out;
}

std::tuple<at::Tensor, at::Tensor> selftest_visit(int64_t n, int64_t blocks, int64_t threads) {
  at::Tensor counts = at::zeros({n}, at::kFloat), total = at::zeros({1}, at::kDouble);
  check(npht_selftest::visit_cuda(counts.data_ptr<float>(), total.data_ptr<double>(), n,
                                  static_cast<unsigned>(blocks), static_cast<unsigned>(threads)));
  return {counts, total};
}

at::Tensor selftest_block_sum(const at::Tensor& in, int64_t threads) {
  TORCH_CHECK(in.scalar_type() == at::kFloat && in.dim() == 1 && in.numel() % threads == 0, "in: float [blocks * threads]");
  at::Tensor x = in.contiguous(), out = at::full({x.numel() / threads}, -1.f);
  check(npht_selftest::block_sum_cuda(x.data_ptr<float>(), out.data_ptr<float>(), static_cast<unsigned>(out.numel()),
                                      static_cast<unsigned>(threads)));
  return out;
}

at::Tensor selftest_early_sync(int64_t n, int64_t threads) {
  at::Tensor out = at::zeros({threads}, at::kFloat);
  check(npht_selftest::early_sync_cuda(out.data_ptr<float>(), static_cast<int>(n), static_cast<unsigned>(threads)));
  return out;
}

at::Tensor selftest_order(int64_t blocks, int64_t threads) {
  at::Tensor seq = at::full({blocks * threads}, -1.0, at::kDouble), counter = at::zeros({1}, at::kDouble);
  check(npht_selftest::order_cuda(seq.data_ptr<double>(), counter.data_ptr<double>(), static_cast<unsigned>(blocks),
                                  static_cast<unsigned>(threads)));
  return seq;
}

}  // namespace

TORCH_LIBRARY_IMPL(npht_emu_selftest, CUDA, m) {
  m.impl("selftest_shfl", &selftest_shfl);
  m.impl("selftest_early_exit", &selftest_early_exit);
  m.impl("selftest_index", &selftest_index);
  m.impl("selftest_visit", &selftest_visit);
  m.impl("selftest_order", &selftest_order);
  m.impl("selftest_block_sum", &selftest_block_sum);
  m.impl("selftest_early_sync", &selftest_early_sync);
}
