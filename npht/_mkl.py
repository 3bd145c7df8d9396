"""Work-around for a oneMKL race that silently lowers the accuracy of torch's CPU unary ops.

ATen computes contiguous float32/float64 ``exp, log, sqrt, sin, ...`` with MKL's vector math
library (VML), each intra-op worker thread calling it on its chunk. oneMKL 2024.2 (in the
torch wheels: 2.10 per the upstream report, 2.13.0 seen here) picks each VML function's kernel on its
first call; when that first call runs on several threads at once, one thread can run the
low-accuracy kernel for its whole chunk (pytorch/pytorch#188792). Measured on a 2-thread
Intel Xeon VM with torch 2.13.0+cpu: the first ``torch.exp`` of 4000 float64 values had
relative errors up to 3.3e-9 on its second half in 5 of 40 fresh processes (0 of 40 after
the calls below); one such call made a float64 compositing test fail at rtol 1e-9.

The race is over once each function has been called once, so :func:`resolve_vml_dispatch`
calls every VML-backed op once, single-threaded (8 elements, far below ATen's parallel
grain), in both precisions. ``import npht`` runs it; it costs well under a millisecond and
changes nothing else (the calls' results are discarded)."""

import torch

# the unary ops ATen routes to VML (aten/src/ATen/cpu/vml.h across torch 2.x, where some
# were enabled or disabled over time); calling one that does not use VML is harmless
VML_OPS = ("abs", "acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "expm1",
           "log", "log10", "log1p", "log2", "sin", "sqrt", "tan", "tanh", "trunc")


def resolve_vml_dispatch() -> tuple:
    """Call each op of ``VML_OPS`` once on 8 float32 and 8 float64 values, on this thread
    only, so that oneMKL has chosen its kernels before any concurrent call. Returns the
    (op, dtype) pairs called; nothing when torch is built without MKL."""
    if not torch.backends.mkl.is_available():
        return ()
    done = []
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            x = torch.full((8,), 0.5, dtype=dtype)
            for name in VML_OPS:
                getattr(torch, name)(x)
                done.append((name, dtype))
    return tuple(done)
