// npht cuda emulator: __half and __nv_bfloat16 are in cuda_runtime.h (c10::Half, c10::BFloat16).
#pragma once
#include <cuda_runtime.h>
