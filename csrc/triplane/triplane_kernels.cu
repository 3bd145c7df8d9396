// CUDA kernels of tri-plane bilinear sampling and the torch-free launchers declared in
// triplane_cuda.h. The per-element math is npht/triplane_math.h (shared with the CPU
// backend); this file only maps it onto threads.
//
// Thread mapping: a group of G lanes handles one point of the flattened [B * N] points; each
// lane owns V consecutive channels per step (V = 16 bytes of the planes' type when C is a
// multiple of it and the pointers are aligned, else 1), so a corner's channels are read
// with 16-byte loads, and G = min(32, next_pow2(ceil(C / V))) (a power of two: a group never
// straddles a warp). Lane l takes channels [V (l + G i), V (l + G i) + V), i = 0, 1, ...
// Every lane computes the point's PlaneSample setups itself (cheap arithmetic, no
// communication), so fewer lanes per point (larger V) means less redundant setup. Point
// gradients are per-lane partial sums over channels, reduced within the group with
// __shfl_xor_sync; for that every lane of a warp must reach the shuffles, so the backward
// kernels never return early (`active`). Plane gradients are atomics into a float / double
// buffer; on sm_90 float ones are issued as v2 / v4 vector atomics.
//
// Layouts (csrc/bindings.cpp): planes [B, 3, H, W, C], points [B, N, 3],
// out / grad_out [B, N, C] (sum, mean) or [B, N, 3C] (concat, plane-major).
// All flattened indices are int64.
//
// Order of operations mirrors triplane_cpu.cpp (sum over planes, then times the aggregate
// weight; point gradients aw * dix * sum_c(...)), so the two backends agree to rounding
// (summation order over channels aside), non-finite upstream gradients included. The only
// shortcuts: corner values that are multiplied by an absent upstream gradient (gg_points or
// gg_planes None in the double backward) are not loaded, and plane-gradient atomics that
// are identically zero (no gg_points) are not issued.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <initializer_list>

#include "npht/triplane_math.h"
#include "triplane/triplane_cuda.h"

namespace npht {
namespace {

constexpr int kBlock = 256;  // threads per block; a multiple of 32 (whole warps)
static_assert(kBlock % 32 == 0, "blocks must hold whole warps");
constexpr unsigned kFullMask = 0xffffffffu;

// ---- scalar types -------------------------------------------------------------------

template <typename S>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename S>
using acc_t = typename AccType<S>::type;

// Explicit conversions only (torch builds with __CUDA_NO_HALF_CONVERSIONS__ and friends).
__device__ __forceinline__ float load_acc(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load_acc(const double* p) { return __ldg(p); }
__device__ __forceinline__ float load_acc(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ float load_acc(const __nv_bfloat16* p) {
  return __bfloat162float(__ldg(p));
}

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename S>
__device__ __forceinline__ S from_acc(acc_t<S> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---- small helpers ------------------------------------------------------------------

// V consecutive values of type S, aligned so that a load / store is one vector access.
template <typename S, int V>
struct alignas(sizeof(S) * V) Vec {
  S v[V];
};

// out[i] = p[i] (converted to the accumulation type) if valid, else 0.
template <typename S, int V>
__device__ __forceinline__ void load_vec(const S* p, bool valid, acc_t<S> (&out)[V]) {
  if (valid) {
    if constexpr (V == 1) {
      out[0] = load_acc(p);
    } else {
      const Vec<S, V> t = *reinterpret_cast<const Vec<S, V>*>(p);
#pragma unroll
      for (int i = 0; i < V; ++i) out[i] = to_acc(t.v[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = acc_t<S>(0);
  }
}

template <typename S, int V>
__device__ __forceinline__ void store_vec(S* p, const acc_t<S> (&v)[V]) {
  Vec<S, V> t;
#pragma unroll
  for (int i = 0; i < V; ++i) t.v[i] = from_acc<S>(v[i]);
  *reinterpret_cast<Vec<S, V>*>(p) = t;
}

// p[i] += v[i] atomically (p aligned to V elements).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr bool kVectorAtomics = true;  // atomicAdd on float2 / float4 (sm_90+)
#else
constexpr bool kVectorAtomics = false;
#endif

template <int V>
__device__ __forceinline__ void atomic_add_vec(float* p, const float (&v)[V]) {
  if constexpr (kVectorAtomics && V % 4 == 0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#pragma unroll
    for (int i = 0; i < V; i += 4)
      atomicAdd(reinterpret_cast<float4*>(p + i), make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]));
#endif
  } else if constexpr (kVectorAtomics && V % 2 == 0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#pragma unroll
    for (int i = 0; i < V; i += 2)
      atomicAdd(reinterpret_cast<float2*>(p + i), make_float2(v[i], v[i + 1]));
#endif
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) atomicAdd(p + i, v[i]);
  }
}

template <int V>
__device__ __forceinline__ void atomic_add_vec(double* p, const double (&v)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) atomicAdd(p + i, v[i]);
}

// p[i] of a point held in three registers (a runtime index into a local array would put
// the array in local memory).
template <typename T>
__device__ __forceinline__ T pick3(T a0, T a1, T a2, int i) {
  return i == 0 ? a0 : (i == 1 ? a1 : a2);
}

template <typename T>
__device__ __forceinline__ void add3(T& a0, T& a1, T& a2, int i, T v) {
  if (i == 0) {
    a0 += v;
  } else if (i == 1) {
    a1 += v;
  } else {
    a2 += v;
  }
}

// Sum over the G lanes of a group (G a power of two <= 32, groups aligned within the warp).
// Every lane of the warp must call it (full mask); every lane of a group gets the sum.
template <typename T>
__device__ __forceinline__ T group_sum(T v, int G) {
  for (int o = G >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Geometry shared by the kernels, passed by value.
struct Geo {
  int64_t total;  // B * N points
  int64_t N;
  int64_t HWC;    // H * W * C, elements of one plane
  int H, W, C;
  int log2g;      // G = 1 << log2g lanes per point
};

// The four corner values of channels [c, c + V) (0 for corners outside the plane).
template <typename S, int V>
__device__ __forceinline__ void load_corners(const S* base, const PlaneSample<acc_t<S>>& s,
                                             const int64_t (&off)[4], int64_t c,
                                             acc_t<S> (&f)[4][V]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) load_vec<S, V>(base + off[j] + c, s.valid[j], f[j]);
}

template <typename A, int V>
__device__ __forceinline__ void corner_column(const A (&f)[4][V], int i, A (&fi)[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) fi[j] = f[j][i];
}

// ---- forward ------------------------------------------------------------------------

template <typename S, int V>
__global__ void __launch_bounds__(kBlock)
    triplane_fwd_kernel(const S* __restrict__ planes, const acc_t<S>* __restrict__ points,
                        S* __restrict__ out, Geo g, TriplaneParams prm) {
  using A = acc_t<S>;
  const int G = 1 << g.log2g;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t p = gid >> g.log2g;  // point index in [0, B * N)
  if (p >= g.total) return;          // no shuffles in the forward: early exit is fine
  const int lane = static_cast<int>(threadIdx.x) & (G - 1);
  const int64_t b = p / g.N;

  const A x0 = __ldg(points + p * 3 + 0);
  const A x1 = __ldg(points + p * 3 + 1);
  const A x2 = __ldg(points + p * 3 + 2);
  const A scale = static_cast<A>(prm.scale);
  const A aw = aggregate_weight<A>(prm.aggregate);
  const bool concat = prm.aggregate == kAggConcat;

  const int64_t C = g.C;
  const int64_t row = p * (concat ? 3 * C : C);
  // The plane setups are recomputed per channel step (one step when C <= G * V, the common
  // case): keeping three PlaneSamples live would cost registers and occupancy.
  for (int64_t c = int64_t(lane) * V; c < C; c += int64_t(G) * V) {
    A acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = A(0);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const PlaneSample<A> s =
          plane_setup<A>(pick3(x0, x1, x2, prm.axis_u[k]), pick3(x0, x1, x2, prm.axis_v[k]),
                         g.H, g.W, scale, prm.align_corners, prm.padding);
      const int64_t base = (b * 3 + k) * g.HWC;
      int64_t off[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) off[j] = base + s.idx[j] * C;
      A f[4][V];
      load_corners<S, V>(planes, s, off, c, f);
      A v[V];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A fi[4];
        corner_column(f, i, fi);
        v[i] = bilerp(s, fi);
        acc[i] += v[i];
      }
      if (concat) store_vec<S, V>(out + row + k * C + c, v);  // aw == 1 for concat
    }
    if (!concat) {
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] *= aw;
      store_vec<S, V>(out + row + c, acc);
    }
  }
}

// ---- backward -----------------------------------------------------------------------
// grad_planes_acc[(b*3+k)*HWC + idx[j]*C + c] += aw * go * w[j]   (atomics, valid corners)
// grad_points[b, n, axis_u[k]] += aw * (dix * sum_c go * dv/dix), same for axis_v / diy.

template <typename S, int V>
__global__ void __launch_bounds__(kBlock)
    triplane_bwd_kernel(const S* __restrict__ grad_out, const S* __restrict__ planes,
                        const acc_t<S>* __restrict__ points, acc_t<S>* __restrict__ grad_planes,
                        acc_t<S>* __restrict__ grad_points, Geo g, TriplaneParams prm) {
  using A = acc_t<S>;
  const int G = 1 << g.log2g;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t p = gid >> g.log2g;
  const bool active = p < g.total;  // inactive lanes still reach the shuffles
  const int lane = static_cast<int>(threadIdx.x) & (G - 1);
  const int64_t b = active ? p / g.N : 0;

  A x0 = A(0), x1 = A(0), x2 = A(0);
  if (active) {
    x0 = __ldg(points + p * 3 + 0);
    x1 = __ldg(points + p * 3 + 1);
    x2 = __ldg(points + p * 3 + 2);
  }
  const A scale = static_cast<A>(prm.scale);
  const A aw = aggregate_weight<A>(prm.aggregate);
  const bool concat = prm.aggregate == kAggConcat;
  const bool need_points = grad_points != nullptr;  // uniform over the grid
  const int64_t C = g.C;
  const int64_t row = p * (concat ? 3 * C : C);

  A gp0 = A(0), gp1 = A(0), gp2 = A(0);
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const int au = prm.axis_u[k], av = prm.axis_v[k];
    const PlaneSample<A> s = plane_setup<A>(pick3(x0, x1, x2, au), pick3(x0, x1, x2, av), g.H,
                                            g.W, scale, prm.align_corners, prm.padding);
    A gix = A(0), giy = A(0);
    if (active) {
      const int64_t base = (b * 3 + k) * g.HWC;
      int64_t off[4];
      A aww[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        off[j] = base + s.idx[j] * C;
        aww[j] = aw * s.w[j];
      }
      const S* go_row = grad_out + row + (concat ? k * C : int64_t(0));
      for (int64_t c = int64_t(lane) * V; c < C; c += int64_t(G) * V) {
        A go[V];
        load_vec<S, V>(go_row + c, true, go);
        if (grad_planes != nullptr) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if (!s.valid[j]) continue;
            A t[V];
#pragma unroll
            for (int i = 0; i < V; ++i) t[i] = aww[j] * go[i];
            atomic_add_vec<V>(grad_planes + off[j] + c, t);
          }
        }
        if (need_points) {
          A f[4][V];
          load_corners<S, V>(planes, s, off, c, f);
#pragma unroll
          for (int i = 0; i < V; ++i) {
            A fi[4];
            corner_column(f, i, fi);
            bilerp_vjp(s, fi, go[i], &gix, &giy);
          }
        }
      }
    }
    if (need_points) {
      gix = group_sum(gix, G);
      giy = group_sum(giy, G);
      add3(gp0, gp1, gp2, au, aw * s.dix * gix);
      add3(gp0, gp1, gp2, av, aw * s.diy * giy);
    }
  }
  if (need_points && active && lane == 0) {
    grad_points[p * 3 + 0] = gp0;
    grad_points[p * 3 + 1] = gp1;
    grad_points[p * 3 + 2] = gp2;
  }
}

// ---- double backward ----------------------------------------------------------------
// The vjp of the backward above for upstream gradients Gp = gg_planes (of grad_planes) and
// P = gg_points (of grad_points); per (point, plane, channel), with go the channel's
// grad_out, qx = P[axis_u] * dix, qy = P[axis_v] * diy and r, g_ix, g_iy from
// bilerp_vjp_vjp:
//   g_grad_out[.., c] = aw * r  (concat),  aw * sum_k r_k  (sum, mean)
//   g_planes_acc[corner j, c] += aw * go * (qx * wx[j] + qy * wy[j])
//   g_points[axis_u] += aw * dix * sum_c g_ix,  g_points[axis_v] += aw * diy * sum_c g_iy
// Loops run over channels outside and planes inside so the sum over planes of g_grad_out
// stays in registers; the plane setups are recomputed per channel step (one step when
// C <= G * V, the common case).

template <typename S, int V>
__global__ void __launch_bounds__(kBlock)
    triplane_bwd2_kernel(const S* __restrict__ gg_planes, const acc_t<S>* __restrict__ gg_points,
                         const S* __restrict__ grad_out, const S* __restrict__ planes,
                         const acc_t<S>* __restrict__ points, S* __restrict__ g_grad_out,
                         acc_t<S>* __restrict__ g_planes, acc_t<S>* __restrict__ g_points, Geo g,
                         TriplaneParams prm) {
  using A = acc_t<S>;
  const int G = 1 << g.log2g;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t p = gid >> g.log2g;
  const bool active = p < g.total;  // inactive lanes still reach the shuffles
  const int lane = static_cast<int>(threadIdx.x) & (G - 1);
  const int64_t b = active ? p / g.N : 0;

  A x0 = A(0), x1 = A(0), x2 = A(0);
  A P0 = A(0), P1 = A(0), P2 = A(0);
  if (active) {
    x0 = __ldg(points + p * 3 + 0);
    x1 = __ldg(points + p * 3 + 1);
    x2 = __ldg(points + p * 3 + 2);
    if (gg_points != nullptr) {
      P0 = __ldg(gg_points + p * 3 + 0);
      P1 = __ldg(gg_points + p * 3 + 1);
      P2 = __ldg(gg_points + p * 3 + 2);
    }
  }
  const A scale = static_cast<A>(prm.scale);
  const A aw = aggregate_weight<A>(prm.aggregate);
  const bool concat = prm.aggregate == kAggConcat;
  const bool has_q = gg_points != nullptr;
  const bool need_out = g_grad_out != nullptr;
  const bool need_points = g_points != nullptr;
  // What each output needs (zero terms are skipped, not computed):
  //   r   = Gp.w + qx * dF/dix + qy * dF/diy      -> f if has_q, Gp if gg_planes
  //   g_i = go * (Gp.wx + qy * xyF) (and y)       -> go, f if has_q, Gp if gg_planes
  //   g_planes corner = go * (qx wx + qy wy)      -> go, only nonzero if has_q
  const bool do_planes = g_planes != nullptr && has_q;
  const bool need_f = has_q && (need_out || need_points);
  const bool need_gp = gg_planes != nullptr && (need_out || need_points);
  const bool need_go = (need_points || do_planes) && (has_q || gg_planes != nullptr);
  const int64_t C = g.C;
  const int64_t row = p * (concat ? 3 * C : C);

  A gix[3] = {A(0), A(0), A(0)};
  A giy[3] = {A(0), A(0), A(0)};
  if (active) {
    for (int64_t c = int64_t(lane) * V; c < C; c += int64_t(G) * V) {
      A go_sum[V];
      load_vec<S, V>(grad_out + row + c, need_go && !concat, go_sum);
      A r_sum[V];
#pragma unroll
      for (int i = 0; i < V; ++i) r_sum[i] = A(0);
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        const int au = prm.axis_u[k], av = prm.axis_v[k];
        const PlaneSample<A> s = plane_setup<A>(pick3(x0, x1, x2, au), pick3(x0, x1, x2, av),
                                                g.H, g.W, scale, prm.align_corners, prm.padding);
        const A qx = has_q ? pick3(P0, P1, P2, au) * s.dix : A(0);
        const A qy = has_q ? pick3(P0, P1, P2, av) * s.diy : A(0);
        A go[V];
        if (concat) {
          load_vec<S, V>(grad_out + row + k * C + c, need_go, go);
        } else {
#pragma unroll
          for (int i = 0; i < V; ++i) go[i] = go_sum[i];
        }
        const int64_t base = (b * 3 + k) * g.HWC;
        int64_t off[4];
        bool vf[4], vg[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          off[j] = base + s.idx[j] * C;
          vf[j] = need_f && s.valid[j];
          vg[j] = need_gp && s.valid[j];
        }
        A f[4][V], Gv[4][V];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          load_vec<S, V>(planes + off[j] + c, vf[j], f[j]);
          load_vec<S, V>(gg_planes + off[j] + c, vg[j], Gv[j]);
        }
        A r[V];
#pragma unroll
        for (int i = 0; i < V; ++i) {
          A fi[4], Gi[4];
          corner_column(f, i, fi);
          corner_column(Gv, i, Gi);
          r[i] = bilerp_vjp_vjp(s, fi, Gi, go[i], qx, qy, &gix[k], &giy[k]);
        }
        if (do_planes) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if (!s.valid[j]) continue;
            A t[V];
#pragma unroll
            for (int i = 0; i < V; ++i) t[i] = aw * bilerp_vjp_vjp_corner(s, j, go[i], qx, qy);
            atomic_add_vec<V>(g_planes + off[j] + c, t);
          }
        }
        if (need_out) {
          if (concat) {
#pragma unroll
            for (int i = 0; i < V; ++i) r[i] *= aw;
            store_vec<S, V>(g_grad_out + row + k * C + c, r);
          } else {
#pragma unroll
            for (int i = 0; i < V; ++i) r_sum[i] += r[i];
          }
        }
      }
      if (need_out && !concat) {
#pragma unroll
        for (int i = 0; i < V; ++i) r_sum[i] *= aw;
        store_vec<S, V>(g_grad_out + row + c, r_sum);
      }
    }
  }

  if (need_points) {  // uniform over the grid: all lanes of every warp get here
    A gp0 = A(0), gp1 = A(0), gp2 = A(0);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const A sx = group_sum(gix[k], G);
      const A sy = group_sum(giy[k], G);
      // dix / diy again (cheap arithmetic, fewer live registers than keeping them)
      const int au = prm.axis_u[k], av = prm.axis_v[k];
      const PlaneSample<A> s = plane_setup<A>(pick3(x0, x1, x2, au), pick3(x0, x1, x2, av),
                                              g.H, g.W, scale, prm.align_corners, prm.padding);
      add3(gp0, gp1, gp2, au, aw * s.dix * sx);
      add3(gp0, gp1, gp2, av, aw * s.diy * sy);
    }
    if (active && lane == 0) {
      g_points[p * 3 + 0] = gp0;
      g_points[p * 3 + 1] = gp1;
      g_points[p * 3 + 2] = gp2;
    }
  }
}

// ---- launch helpers -----------------------------------------------------------------

// Channels per lane: 16 bytes of S when every channel row and pointer allows it, else 1.
template <typename S>
constexpr int kVecMax = 16 / static_cast<int>(sizeof(S));

template <typename S>
bool vec_ok(int C, std::initializer_list<const void*> ptrs) {
  constexpr int V = kVecMax<S>;
  if (C % V != 0) return false;
  for (const void* q : ptrs)
    if (q != nullptr && reinterpret_cast<uintptr_t>(q) % (sizeof(S) * V) != 0) return false;
  return true;
}

// log2 of the group size G = min(32, next_pow2(ceil(C / V))) (G = 1 for C <= V).
int group_log2(int C, int V) {
  const int slots = (C + V - 1) / V;
  int l = 0;
  while ((1 << l) < slots && l < 5) ++l;
  return l;
}

// Fills *g and *blocks; false when there is nothing to launch (no points).
bool make_geo(const TriplaneSizes& sz, int V, Geo* g, unsigned* blocks, cudaError_t* err) {
  *err = cudaSuccess;
  if (sz.B <= 0 || sz.N <= 0) return false;
  g->total = sz.B * sz.N;
  g->N = sz.N;
  g->H = sz.H;
  g->W = sz.W;
  g->C = sz.C;
  g->HWC = static_cast<int64_t>(sz.H) * sz.W * sz.C;
  g->log2g = group_log2(sz.C, V);
  const int64_t threads = g->total << g->log2g;
  const int64_t nb = (threads + kBlock - 1) / kBlock;
  if (nb > 0x7fffffffLL) {
    *err = cudaErrorInvalidConfiguration;
    return false;
  }
  *blocks = static_cast<unsigned>(nb);
  return true;
}

template <typename S, int V>
cudaError_t launch_fwd_v(const void* planes, const void* points, void* out, TriplaneSizes sz,
                         TriplaneParams prm, cudaStream_t stream) {
  Geo g;
  unsigned blocks = 0;
  cudaError_t err = cudaSuccess;
  if (sz.C <= 0 || !make_geo(sz, V, &g, &blocks, &err)) return err;  // nothing to write
  triplane_fwd_kernel<S, V><<<blocks, kBlock, 0, stream>>>(
      static_cast<const S*>(planes), static_cast<const acc_t<S>*>(points), static_cast<S*>(out),
      g, prm);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_fwd(const void* planes, const void* points, void* out, TriplaneSizes sz,
                       TriplaneParams prm, cudaStream_t stream) {
  if (vec_ok<S>(sz.C, {planes, out}))
    return launch_fwd_v<S, kVecMax<S>>(planes, points, out, sz, prm, stream);
  return launch_fwd_v<S, 1>(planes, points, out, sz, prm, stream);
}

template <typename S, int V>
cudaError_t launch_bwd_v(const void* grad_out, const void* planes, const void* points,
                         void* grad_planes_acc, void* grad_points, TriplaneSizes sz,
                         TriplaneParams prm, cudaStream_t stream) {
  Geo g;
  unsigned blocks = 0;
  cudaError_t err = cudaSuccess;
  if (!make_geo(sz, V, &g, &blocks, &err)) return err;
  triplane_bwd_kernel<S, V><<<blocks, kBlock, 0, stream>>>(
      static_cast<const S*>(grad_out), static_cast<const S*>(planes),
      static_cast<const acc_t<S>*>(points), static_cast<acc_t<S>*>(grad_planes_acc),
      static_cast<acc_t<S>*>(grad_points), g, prm);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_bwd(const void* grad_out, const void* planes, const void* points,
                       void* grad_planes_acc, void* grad_points, TriplaneSizes sz,
                       TriplaneParams prm, cudaStream_t stream) {
  if (grad_planes_acc == nullptr && grad_points == nullptr) return cudaSuccess;
  // the accumulation buffer holds acc_t<S> (4 or 8 bytes): aligned when S-vectors are
  if (vec_ok<S>(sz.C, {grad_out, planes}) &&
      reinterpret_cast<uintptr_t>(grad_planes_acc) % (sizeof(acc_t<S>) * kVecMax<S>) == 0)
    return launch_bwd_v<S, kVecMax<S>>(grad_out, planes, points, grad_planes_acc, grad_points,
                                       sz, prm, stream);
  return launch_bwd_v<S, 1>(grad_out, planes, points, grad_planes_acc, grad_points, sz, prm,
                            stream);
}

template <typename S, int V>
cudaError_t launch_bwd2_v(const void* gg_planes, const void* gg_points, const void* grad_out,
                          const void* planes, const void* points, void* g_grad_out,
                          void* g_planes_acc, void* g_points, TriplaneSizes sz,
                          TriplaneParams prm, cudaStream_t stream) {
  Geo g;
  unsigned blocks = 0;
  cudaError_t err = cudaSuccess;
  if (!make_geo(sz, V, &g, &blocks, &err)) return err;
  triplane_bwd2_kernel<S, V><<<blocks, kBlock, 0, stream>>>(
      static_cast<const S*>(gg_planes), static_cast<const acc_t<S>*>(gg_points),
      static_cast<const S*>(grad_out), static_cast<const S*>(planes),
      static_cast<const acc_t<S>*>(points), static_cast<S*>(g_grad_out),
      static_cast<acc_t<S>*>(g_planes_acc), static_cast<acc_t<S>*>(g_points), g, prm);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_bwd2(const void* gg_planes, const void* gg_points, const void* grad_out,
                        const void* planes, const void* points, void* g_grad_out,
                        void* g_planes_acc, void* g_points, TriplaneSizes sz, TriplaneParams prm,
                        cudaStream_t stream) {
  if (g_grad_out == nullptr && g_planes_acc == nullptr && g_points == nullptr) return cudaSuccess;
  if (vec_ok<S>(sz.C, {gg_planes, grad_out, planes, g_grad_out}) &&
      reinterpret_cast<uintptr_t>(g_planes_acc) % (sizeof(acc_t<S>) * kVecMax<S>) == 0)
    return launch_bwd2_v<S, kVecMax<S>>(gg_planes, gg_points, grad_out, planes, points,
                                        g_grad_out, g_planes_acc, g_points, sz, prm, stream);
  return launch_bwd2_v<S, 1>(gg_planes, gg_points, grad_out, planes, points, g_grad_out,
                             g_planes_acc, g_points, sz, prm, stream);
}

}  // namespace

// ---- the launchers of triplane_cuda.h -----------------------------------------------

cudaError_t triplane_fwd_cuda(const void* planes, const void* points, void* out, DType dt,
                              TriplaneSizes sz, TriplaneParams prm, cudaStream_t stream) {
  switch (dt) {
    case DType::kF32:
      return launch_fwd<float>(planes, points, out, sz, prm, stream);
    case DType::kF64:
      return launch_fwd<double>(planes, points, out, sz, prm, stream);
    case DType::kF16:
      return launch_fwd<__half>(planes, points, out, sz, prm, stream);
    case DType::kBF16:
      return launch_fwd<__nv_bfloat16>(planes, points, out, sz, prm, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t triplane_bwd_cuda(const void* grad_out, const void* planes, const void* points,
                              void* grad_planes_acc, void* grad_points, DType dt,
                              TriplaneSizes sz, TriplaneParams prm, cudaStream_t stream) {
  switch (dt) {
    case DType::kF32:
      return launch_bwd<float>(grad_out, planes, points, grad_planes_acc, grad_points, sz, prm,
                               stream);
    case DType::kF64:
      return launch_bwd<double>(grad_out, planes, points, grad_planes_acc, grad_points, sz, prm,
                                stream);
    case DType::kF16:
      return launch_bwd<__half>(grad_out, planes, points, grad_planes_acc, grad_points, sz, prm,
                                stream);
    case DType::kBF16:
      return launch_bwd<__nv_bfloat16>(grad_out, planes, points, grad_planes_acc, grad_points,
                                       sz, prm, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t triplane_bwd2_cuda(const void* gg_planes, const void* gg_points,
                               const void* grad_out, const void* planes, const void* points,
                               void* g_grad_out, void* g_planes_acc, void* g_points, DType dt,
                               TriplaneSizes sz, TriplaneParams prm, cudaStream_t stream) {
  switch (dt) {
    case DType::kF32:
      return launch_bwd2<float>(gg_planes, gg_points, grad_out, planes, points, g_grad_out,
                                g_planes_acc, g_points, sz, prm, stream);
    case DType::kF64:
      return launch_bwd2<double>(gg_planes, gg_points, grad_out, planes, points, g_grad_out,
                                 g_planes_acc, g_points, sz, prm, stream);
    case DType::kF16:
      return launch_bwd2<__half>(gg_planes, gg_points, grad_out, planes, points, g_grad_out,
                                 g_planes_acc, g_points, sz, prm, stream);
    case DType::kBF16:
      return launch_bwd2<__nv_bfloat16>(gg_planes, gg_points, grad_out, planes, points,
                                        g_grad_out, g_planes_acc, g_points, sz, prm, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace npht
