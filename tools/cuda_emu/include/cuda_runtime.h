// npht's CUDA emulator (tools/cuda_emu): the part of the CUDA runtime and device language
// that csrc's kernels use, on the host. The lanes of a warp are fibers on the calling thread:
// each runs until it finishes or reaches a warp-synchronous operation (__shfl_*_sync,
// __syncwarp), which releases once every lane of the warp has reached it and then exchanges
// the values as on a GPU. Warps and blocks run one after the other, lanes in lane order
// (deterministic; NPHT_CUDA_EMU_ORDER=reverse reverses blocks, warps and lanes). Atomics are atomics; half / bfloat16 are c10's types (same bits,
// round-to-nearest-even conversions); `__CUDA_ARCH__` is whatever the translation unit
// defines after including this header (tools/cuda_emu/build.py: 900, and 800).
//
// What it checks: thread and block index arithmetic, grid-stride loops, launch
// configurations (the limits of a real launch), the torch glue (argument marshalling,
// output allocation), warp shuffles (a full-mask shuffle that an exited lane of the warp does
// not reach is an error here, undefined behaviour on a GPU), the accumulation by atomics.
// What it does not: timing, memory coalescing, nvcc's code generation and fast-math
// intrinsics, races between threads (lanes switch only at warp-synchronous operations, warps never
// overlap), shared memory and __syncthreads (csrc's kernels use neither; a kernel that does
// fails to compile here). Out-of-bounds accesses: with build.py's AddressSanitizer build
// (`build.py --asan-pytest ...`), reads and writes past a tensor abort with a report.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// ---- the device language's keywords -------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

// ---- runtime API ----------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef struct npht_emu_stream* cudaStream_t;

namespace npht_emu {
inline thread_local cudaError_t last_error = cudaSuccess;
}  // namespace npht_emu

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = npht_emu::last_error;
  npht_emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return npht_emu::last_error; }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

// ---- device functions -------------------------------------------------------------------------
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline double __dadd_rn(double a, double b) { return a + b; }  // built with -ffp-contract=off
inline double __dmul_rn(double a, double b) { return a * b; }

typedef c10::Half __half;
typedef c10::BFloat16 __nv_bfloat16;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }

namespace npht_emu {

template <typename T, typename U>
T atomic_add_bits(T* p, T v) {
  static_assert(sizeof(T) == sizeof(U), "bit type");
  U* q = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(q, __ATOMIC_RELAXED);
  for (;;) {
    T o;
    memcpy(&o, &old, sizeof(T));
    const T n = o + v;
    U nb;
    memcpy(&nb, &n, sizeof(T));
    if (__atomic_compare_exchange_n(q, &old, nb, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return o;
  }
}

}  // namespace npht_emu

inline float atomicAdd(float* p, float v) { return npht_emu::atomic_add_bits<float, uint32_t>(p, v); }
inline double atomicAdd(double* p, double v) { return npht_emu::atomic_add_bits<double, uint64_t>(p, v); }
// sm_90's vector atomics: each element atomically (as on the GPU, not the vector as a whole).
// Declared for every architecture (this header is included before build.py defines
// __CUDA_ARCH__, which c10's Half.h must not see); the kernels guard their use themselves.
inline float2 atomicAdd(float2* p, float2 v) {
  return {atomicAdd(&p->x, v.x), atomicAdd(&p->y, v.y)};
}
inline float4 atomicAdd(float4* p, float4 v) {
  return {atomicAdd(&p->x, v.x), atomicAdd(&p->y, v.y), atomicAdd(&p->z, v.z), atomicAdd(&p->w, v.w)};
}

// ---- warps ----------------------------------------------------------------------------------
// The 32 lanes of a warp are fibers (ucontext) on the launching thread: each runs until it
// finishes or reaches a warp-synchronous operation; when every lane waits there, all are
// released. Deterministic (lanes resume in lane order) and cheap (no OS threads).
namespace npht_emu {

struct Warp {
  static constexpr size_t kStack = 256 * 1024;  // per lane, below a guard page
  int lanes = 32;
  ucontext_t scheduler;
  ucontext_t ctx[32];
  bool waiting[32], done[32];
  uint3 idx[32];
  const std::function<void()>* body = nullptr;
  std::string error;
  alignas(16) unsigned char slot[32][16];

  static unsigned char* stacks() {  // one set per host thread, reused by every warp
    static thread_local unsigned char* s = nullptr;
    if (!s) {
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      void* m = mmap(nullptr, 32 * (kStack + page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) throw std::runtime_error("npht cuda emulator: no memory for the lanes' stacks");
      s = static_cast<unsigned char*>(m);
      for (int l = 0; l < 32; ++l) mprotect(s + l * (kStack + page), page, PROT_NONE);  // overflow -> SIGSEGV
    }
    return s;
  }
};

// NPHT_CUDA_EMU_ORDER=reverse: blocks, the warps of a block and the lanes of a warp run in
// reverse order (a kernel whose results depend on the order of its threads beyond float
// rounding -- a race -- then gives other values).
inline bool reversed_order() {
  const char* v = getenv("NPHT_CUDA_EMU_ORDER");
  return v && strcmp(v, "reverse") == 0;
}

inline thread_local Warp* this_warp = nullptr;
inline thread_local int this_lane = 0;

inline void lane_entry() {
  Warp* w = this_warp;
  try {
    (*w->body)();
  } catch (const std::exception& e) {
    if (w->error.empty()) w->error = std::string("exception in a thread: ") + e.what();
  } catch (...) {
    if (w->error.empty()) w->error = "unknown exception in a thread";
  }
  w->done[this_lane] = true;
  swapcontext(&w->ctx[this_lane], &w->scheduler);
}

// Runs `body` as the lanes of one warp; returns an error message or "".
inline std::string run_warp(Warp& w, const std::function<void()>& body) {
  unsigned char* stacks = Warp::stacks();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  w.body = &body;
  for (int l = 0; l < w.lanes; ++l) {
    getcontext(&w.ctx[l]);
    w.ctx[l].uc_stack.ss_sp = stacks + l * (Warp::kStack + page) + page;
    w.ctx[l].uc_stack.ss_size = Warp::kStack;
    w.ctx[l].uc_link = nullptr;
    makecontext(&w.ctx[l], lane_entry, 0);
    w.waiting[l] = w.done[l] = false;
  }
  Warp* const outer = this_warp;
  const int outer_lane = this_lane;
  const uint3 outer_idx = threadIdx;
  this_warp = &w;
  for (;;) {
    for (int i = 0; i < w.lanes && w.error.empty(); ++i) {
      const int l = reversed_order() ? w.lanes - 1 - i : i;
      if (w.done[l] || w.waiting[l]) continue;
      this_lane = l;
      threadIdx = w.idx[l];
      swapcontext(&w.scheduler, &w.ctx[l]);
    }
    if (!w.error.empty()) break;
    int n_done = 0, n_wait = 0;
    for (int l = 0; l < w.lanes; ++l) n_done += w.done[l], n_wait += w.waiting[l];
    if (n_done == w.lanes) break;
    if (n_done > 0) {
      w.error = "a full-mask warp operation was reached by " + std::to_string(n_wait) + " lanes: " +
                std::to_string(n_done) + " lanes of the warp had exited";
      break;
    }
    for (int l = 0; l < w.lanes; ++l) w.waiting[l] = false;  // every lane arrived: release
  }
  this_warp = outer;
  this_lane = outer_lane;
  threadIdx = outer_idx;
  return w.error;
}

// Every lane of the warp waits here for the others (a full-mask *_sync).
inline void warp_sync() {
  Warp* w = this_warp;
  w->waiting[this_lane] = true;
  swapcontext(&w->ctx[this_lane], &w->scheduler);
}

[[noreturn]] inline void warp_fail(const std::string& msg) {
  Warp* w = this_warp;
  if (w->error.empty()) w->error = msg;
  w->done[this_lane] = true;
  swapcontext(&w->ctx[this_lane], &w->scheduler);
  std::abort();  // never resumed
}

template <typename T>
T shfl(unsigned mask, T v, int src_of_lane(int lane, int arg, int width), int arg, int width, const char* what) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle of this type");
  if (mask != 0xffffffffu) warp_fail(std::string(what) + ": only the full mask is emulated");
  if (width <= 0 || width > 32 || (width & (width - 1)))
    warp_fail(std::string(what) + ": width must be a power of two <= 32");
  Warp* w = this_warp;
  memcpy(w->slot[this_lane], &v, sizeof(T));
  warp_sync();
  T r;
  memcpy(&r, w->slot[src_of_lane(this_lane, arg, width)], sizeof(T));
  warp_sync();  // nobody overwrites its slot before every lane has read
  return r;
}

inline int xor_lane(int lane, int m, int width) {
  const int base = lane & ~(width - 1);
  const int s = lane ^ m;
  return s >= base + width ? lane : s;  // outside the lane's segment: own value (as CUDA)
}
inline int down_lane(int lane, int d, int width) {
  const int base = lane & ~(width - 1);
  return lane + d < base + width ? lane + d : lane;
}
inline int up_lane(int lane, int d, int width) {
  const int base = lane & ~(width - 1);
  return lane - d >= base ? lane - d : lane;
}
inline int idx_lane(int lane, int src, int width) { return (lane & ~(width - 1)) + (src & (width - 1)); }

}  // namespace npht_emu

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return npht_emu::shfl(mask, v, npht_emu::xor_lane, lane_mask, width, "__shfl_xor_sync");
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return npht_emu::shfl(mask, v, npht_emu::down_lane, static_cast<int>(delta), width, "__shfl_down_sync");
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return npht_emu::shfl(mask, v, npht_emu::up_lane, static_cast<int>(delta), width, "__shfl_up_sync");
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return npht_emu::shfl(mask, v, npht_emu::idx_lane, src, width, "__shfl_sync");
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) npht_emu::warp_fail("__syncwarp: only the full mask is emulated");
  npht_emu::warp_sync();
}

// ---- launches -------------------------------------------------------------------------------
namespace npht_emu {

struct Stats {
  uint64_t launches = 0, threads = 0;
};
inline Stats& stats() {
  static Stats s;
  return s;
}

// `kernel<<<grid, block, shmem, stream>>>(args...)` is rewritten by build.py to
// `::npht_emu::launch(kernel, grid, block, shmem, stream)(args...)`.
template <typename F>
struct Launch {
  F* kernel;
  dim3 grid, block;
  size_t shmem;

  template <typename... Args>
  void operator()(Args... args) const {
    const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
    // the limits of a launch on sm_80 / sm_90
    if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        nthreads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
        grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535 || shmem > 48 * 1024) {
      last_error = cudaErrorInvalidConfiguration;
      return;
    }
    ++stats().launches;
    stats().threads += nthreads * grid.x * grid.y * grid.z;
    std::string failure;
    const bool rev = reversed_order();
    const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z, nwarps = (nthreads + 31) / 32;
    for (uint64_t i = 0; i < nblocks && failure.empty(); ++i) {
      const uint64_t blk = rev ? nblocks - 1 - i : i;
      const uint3 b{unsigned(blk % grid.x), unsigned(blk / grid.x % grid.y), unsigned(blk / (uint64_t(grid.x) * grid.y))};
      for (uint64_t j = 0; j < nwarps && failure.empty(); ++j)
        failure = run_warp(b, 32 * (rev ? nwarps - 1 - j : j), nthreads, args...);
    }
    if (!failure.empty()) throw std::runtime_error("npht cuda emulator: kernel failed: " + failure);
  }

  template <typename... Args>
  std::string run_warp(uint3 b, uint64_t w0, uint64_t nthreads, const Args&... args) const {
    Warp warp;
    warp.lanes = static_cast<int>(nthreads - w0 < 32 ? nthreads - w0 : 32);
    for (int l = 0; l < warp.lanes; ++l) {
      const uint64_t t = w0 + l;
      warp.idx[l] = uint3{unsigned(t % block.x), unsigned(t / block.x % block.y),
                          unsigned(t / (uint64_t(block.x) * block.y))};
    }
    blockIdx = b;
    blockDim = block;
    gridDim = grid;
    const std::function<void()> body = [&] { kernel(args...); };
    const std::string error = npht_emu::run_warp(warp, body);
    if (error.empty()) return error;
    return error + " (block " + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " +
           std::to_string(b.z) + ", warp " + std::to_string(w0 / 32) + ")";
  }
};

inline dim3 as_dim3(dim3 d) { return d; }
template <typename I, typename = std::enable_if_t<std::is_integral<I>::value>>
dim3 as_dim3(I n) {
  return dim3(static_cast<unsigned>(n));
}

template <typename F, typename G, typename B>
Launch<F> launch(F* kernel, G grid, B block, size_t shmem = 0, cudaStream_t = nullptr) {
  return Launch<F>{kernel, as_dim3(grid), as_dim3(block), shmem};
}

}  // namespace npht_emu
