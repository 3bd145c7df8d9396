// npht cuda emulator: see CUDAGuard.h.
#pragma once
#include <c10/cuda/CUDAGuard.h>
