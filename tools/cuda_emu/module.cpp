// The Python module of npht's CUDA emulator: every op that the torch glue of csrc's CUDA
// kernels registers (TORCH_LIBRARY_IMPL(npht_C, CUDA, m), see include/c10/cuda/CUDAGuard.h)
// becomes a function of this module that runs on CPU tensors; `stats()` counts launches
// and emulated threads.
#include <c10/cuda/CUDAGuard.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  for (auto& init : npht_emu::registry()) init(m);
  m.def("stats", [] {
    const auto& s = npht_emu::stats();
    return std::make_pair(s.launches, s.threads);
  });
}
