// NPHT_HD: functions written once for the host compiler and nvcc (the per-element and
// per-ray math of csrc/include/npht/*_math.h).
#pragma once

#if defined(__CUDACC__)
#define NPHT_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define NPHT_HD inline
#endif
