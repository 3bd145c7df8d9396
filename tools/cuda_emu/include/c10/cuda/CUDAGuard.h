// npht cuda emulator: stands in for c10's CUDA guard and stream in the torch glue of csrc's
// CUDA kernels (csrc/*/*_cuda.cpp), which build.py compiles for CPU tensors:
// - device guards and the current stream do nothing;
// - `is_cuda` is spelled `is_cpu` from here on (the glue's device checks accept CPU tensors);
// - TORCH_LIBRARY_IMPL(npht_C, CUDA, m) { m.impl("op", &fn); } makes `fn` the function `op`
//   of the emulator's Python module (tools/cuda_emu/module.cpp), prefixed by NPHT_EMU_PREFIX.
// Every torch header the glue needs is included before the renaming.
#pragma once

#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
struct OptionalCUDAGuard {
  explicit OptionalCUDAGuard(std::optional<c10::Device>) {}
};
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace cuda
}  // namespace c10
namespace at {
namespace cuda {
using c10::cuda::CUDAGuard;
using c10::cuda::CUDAStream;
using c10::cuda::getCurrentCUDAStream;
using c10::cuda::OptionalCUDAGuard;
}  // namespace cuda
}  // namespace at

namespace npht_emu {

struct __attribute__((visibility("hidden"))) Lib {
  pybind11::module_& module;
  const char* prefix;
  template <typename F>
  Lib& impl(const char* name, F* fn) {
    module.def((std::string(prefix) + name).c_str(), fn);
    return *this;
  }
};

inline std::vector<std::function<void(pybind11::module_&)>>& registry() {
  static std::vector<std::function<void(pybind11::module_&)>> r;
  return r;
}
inline bool add(void (*init)(Lib&), const char* prefix) {
  registry().push_back([init, prefix](pybind11::module_& m) {
    Lib lib{m, prefix};
    init(lib);
  });
  return true;
}

}  // namespace npht_emu

#ifndef NPHT_EMU_PREFIX
#define NPHT_EMU_PREFIX ""
#endif
#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, key, m) NPHT_EMU_IMPL_(m, __LINE__)
#define NPHT_EMU_IMPL_(m, line) NPHT_EMU_IMPL__(m, line)
#define NPHT_EMU_IMPL__(m, line)                                                              \
  static void npht_emu_init_##line(::npht_emu::Lib& m);                                       \
  [[maybe_unused]] static const bool npht_emu_registered_##line =                             \
      ::npht_emu::add(&npht_emu_init_##line, NPHT_EMU_PREFIX);                                \
  static void npht_emu_init_##line(::npht_emu::Lib& m)

#define is_cuda is_cpu
