// npht's CUDA emulator (tools/cuda_emu): the part of the CUDA runtime and device language
// that csrc's kernels use, on the host. The threads of a block are fibers on the calling
// thread: each runs until it finishes or reaches a barrier -- a warp-synchronous operation
// (__shfl_*_sync, __syncwarp) or __syncthreads -- which releases once every thread it names
// has reached it (shuffles then exchange the values as on a GPU). Blocks run one after the
// other, threads resume in thread order (deterministic; NPHT_CUDA_EMU_ORDER=reverse reverses
// blocks and threads). Atomics are atomics; __shared__ variables are shared by a block's
// threads (static; no dynamic shared memory); half / bfloat16 are c10's types (same bits,
// round-to-nearest-even conversions); `__CUDA_ARCH__` is whatever the translation unit
// defines after including this header (tools/cuda_emu/build.py: 900, and 800).
//
// What it checks: thread and block index arithmetic, grid-stride loops, launch
// configurations (the limits of a real launch), the torch glue (argument marshalling,
// output allocation), barriers (a full-mask shuffle or a __syncthreads that some threads
// never reach -- exited, or waiting at another barrier -- is an error here, undefined
// behaviour or a hang on a GPU), the accumulation by atomics.
// What it does not: timing, memory coalescing, nvcc's code generation and fast-math
// intrinsics, races between threads (threads switch only at barriers; blocks never
// overlap; NPHT_CUDA_EMU_ORDER=reverse exposes order dependence, not every race), dynamic
// shared memory. Out-of-bounds accesses: with build.py's AddressSanitizer build
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
#include <algorithm>
#include <functional>
#include <memory>
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
#define __shared__ static  // see "blocks and warps" below

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

// ---- blocks and warps ------------------------------------------------------------------------
// The threads of a block are fibers (ucontext) on the launching thread: each runs until it
// finishes or reaches a barrier -- its warp's (__shfl_*_sync, __syncwarp) or the block's
// (__syncthreads) -- which releases once every thread it names is there. Deterministic:
// fibers resume in thread order (NPHT_CUDA_EMU_ORDER=reverse: reversed). __shared__
// variables are function statics: one copy, which the threads of a block share and the
// blocks, running one after the other, reuse (uninitialised contents are as on a GPU:
// whatever the previous block left).
namespace npht_emu {

enum : char { kRunning = 0, kAtWarpBarrier = 1, kAtBlockBarrier = 2, kDone = 3 };

struct Block {
  static constexpr size_t kStack = 128 * 1024;  // per thread, below a guard page
  static constexpr int kMaxThreads = 1024;
  int threads = 0;
  ucontext_t scheduler;
  ucontext_t ctx[kMaxThreads];
  char state[kMaxThreads];
  uint3 idx[kMaxThreads];
  const std::function<void()>* body = nullptr;
  std::string error;
  alignas(16) unsigned char slot[kMaxThreads][16];

  static unsigned char* stacks() {  // one set per host thread, reused by every block
    static thread_local unsigned char* s = nullptr;
    if (!s) {
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      void* m = mmap(nullptr, kMaxThreads * (kStack + page), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) throw std::runtime_error("npht cuda emulator: no memory for the threads' stacks");
      s = static_cast<unsigned char*>(m);
      for (int t = 0; t < kMaxThreads; ++t) mprotect(s + t * (kStack + page), page, PROT_NONE);  // overflow: SIGSEGV
    }
    return s;
  }
};

// NPHT_CUDA_EMU_ORDER=reverse: blocks and the threads of a block run in reverse order (a
// kernel whose results depend on the order of its threads beyond float rounding -- a race --
// then gives other values).
inline bool reversed_order() {
  const char* v = getenv("NPHT_CUDA_EMU_ORDER");
  return v && strcmp(v, "reverse") == 0;
}

inline thread_local Block* this_block = nullptr;
inline thread_local int this_thread = 0;  // linear index in the block
inline int lane_of(int t) { return t & 31; }

inline void thread_entry() {
  Block* k = this_block;
  try {
    (*k->body)();
  } catch (const std::exception& e) {
    if (k->error.empty()) k->error = std::string("exception in a thread: ") + e.what();
  } catch (...) {
    if (k->error.empty()) k->error = "unknown exception in a thread";
  }
  k->state[this_thread] = kDone;
  swapcontext(&k->ctx[this_thread], &k->scheduler);
}

// Why no barrier can release: a warp operation or __syncthreads that some threads never reach.
inline std::string stuck(const Block& k) {
  const int warps = (k.threads + 31) / 32;
  for (int w = 0; w < warps; ++w) {
    int at = 0, done = 0, lanes = 0;
    for (int t = 32 * w; t < k.threads && t < 32 * w + 32; ++t, ++lanes)
      at += k.state[t] == kAtWarpBarrier, done += k.state[t] == kDone;
    if (at > 0 && at < lanes)
      return "a full-mask warp operation was reached by " + std::to_string(at) + " lanes: " +
             (done ? std::to_string(done) + " lanes of the warp had exited" :
                     std::to_string(lanes - at - done) + " lanes of the warp wait at __syncthreads") +
             " (warp " + std::to_string(w) + ")";
  }
  int at = 0, done = 0;
  for (int t = 0; t < k.threads; ++t) at += k.state[t] == kAtBlockBarrier, done += k.state[t] == kDone;
  return "__syncthreads reached by " + std::to_string(at) + " of the block's " + std::to_string(k.threads) +
         " threads (" + std::to_string(done) + " had exited)";
}

// Runs `body` as the threads of one block; returns an error message or "".
inline std::string run_block(Block& k, const std::function<void()>& body) {
  unsigned char* stacks = Block::stacks();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  k.body = &body;
  for (int t = 0; t < k.threads; ++t) {
    getcontext(&k.ctx[t]);
    k.ctx[t].uc_stack.ss_sp = stacks + t * (Block::kStack + page) + page;
    k.ctx[t].uc_stack.ss_size = Block::kStack;
    k.ctx[t].uc_link = nullptr;
    makecontext(&k.ctx[t], thread_entry, 0);
    k.state[t] = kRunning;
  }
  Block* const outer = this_block;
  const int outer_thread = this_thread;
  const uint3 outer_idx = threadIdx;
  this_block = &k;
  const bool rev = reversed_order();
  const int warps = (k.threads + 31) / 32;
  for (;;) {
    // Warp by warp: run a warp's threads until each has finished or waits at a barrier;
    // when all of them wait at the warp's barrier, release them and go on.
    for (int i = 0; i < warps && k.error.empty(); ++i) {
      const int w = rev ? warps - 1 - i : i;
      const int t0 = 32 * w, n = std::min(32, k.threads - t0);
      for (;;) {
        for (int j = 0; j < n && k.error.empty(); ++j) {
          const int t = t0 + (rev ? n - 1 - j : j);
          if (k.state[t] != kRunning) continue;
          this_thread = t;
          threadIdx = k.idx[t];
          swapcontext(&k.scheduler, &k.ctx[t]);
        }
        if (!k.error.empty()) break;
        bool full = true;
        for (int t = t0; t < t0 + n; ++t) full &= k.state[t] == kAtWarpBarrier;
        if (!full) break;
        for (int t = t0; t < t0 + n; ++t) k.state[t] = kRunning;
      }
    }
    if (!k.error.empty()) break;
    bool all_done = true, all_at_block = true;
    for (int t = 0; t < k.threads; ++t) {
      all_done &= k.state[t] == kDone;
      all_at_block &= k.state[t] == kAtBlockBarrier;
    }
    if (all_done) break;
    if (!all_at_block) {  // a barrier that some threads never reach
      k.error = stuck(k);
      break;
    }
    for (int t = 0; t < k.threads; ++t) k.state[t] = kRunning;  // __syncthreads releases
  }
  this_block = outer;
  this_thread = outer_thread;
  threadIdx = outer_idx;
  return k.error;
}

inline void wait_at(char barrier) {
  Block* k = this_block;
  k->state[this_thread] = barrier;
  swapcontext(&k->ctx[this_thread], &k->scheduler);
}

[[noreturn]] inline void thread_fail(const std::string& msg) {
  Block* k = this_block;
  if (k->error.empty()) k->error = msg;
  k->state[this_thread] = kDone;
  swapcontext(&k->ctx[this_thread], &k->scheduler);
  std::abort();  // never resumed
}

template <typename T>
T shfl(unsigned mask, T v, int src_of_lane(int lane, int arg, int width), int arg, int width, const char* what) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle of this type");
  if (mask != 0xffffffffu) thread_fail(std::string(what) + ": only the full mask is emulated");
  if (width <= 0 || width > 32 || (width & (width - 1)))
    thread_fail(std::string(what) + ": width must be a power of two <= 32");
  Block* k = this_block;
  const int t = this_thread, base = t & ~31;
  memcpy(k->slot[t], &v, sizeof(T));
  wait_at(kAtWarpBarrier);
  const int src = base + src_of_lane(lane_of(t), arg, width);
  T r;
  if (src < k->threads) {
    memcpy(&r, k->slot[src], sizeof(T));
  } else {
    r = v;  // a lane the (partial) warp does not have: undefined on a GPU
  }
  wait_at(kAtWarpBarrier);  // nobody overwrites its slot before every lane has read
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
  if (mask != 0xffffffffu) npht_emu::thread_fail("__syncwarp: only the full mask is emulated");
  npht_emu::wait_at(npht_emu::kAtWarpBarrier);
}
inline void __syncthreads() { npht_emu::wait_at(npht_emu::kAtBlockBarrier); }

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
    const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
    for (uint64_t i = 0; i < nblocks && failure.empty(); ++i) {
      const uint64_t blk = rev ? nblocks - 1 - i : i;
      failure = run_block(uint3{unsigned(blk % grid.x), unsigned(blk / grid.x % grid.y),
                                unsigned(blk / (uint64_t(grid.x) * grid.y))},
                          static_cast<int>(nthreads), args...);
    }
    if (!failure.empty()) throw std::runtime_error("npht cuda emulator: kernel failed: " + failure);
  }

  template <typename... Args>
  std::string run_block(uint3 b, int nthreads, const Args&... args) const {
    static thread_local std::unique_ptr<Block> reused;  // ~1 MB: allocated once per host thread
    if (!reused) reused.reset(new Block);
    Block* k = reused.get();
    k->threads = nthreads;
    k->error.clear();
    for (int t = 0; t < nthreads; ++t)
      k->idx[t] = uint3{unsigned(t % block.x), unsigned(t / block.x % block.y),
                        unsigned(t / (uint64_t(block.x) * block.y))};
    blockIdx = b;
    blockDim = block;
    gridDim = grid;
    const std::function<void()> body = [&] { kernel(args...); };
    const std::string error = npht_emu::run_block(*k, body);
    if (error.empty()) return error;
    return error + " (block " + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " +
           std::to_string(b.z) + ")";
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
