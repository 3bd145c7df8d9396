"""Build npht: the Python package plus the compiled extension npht._C.

CPU sources are always compiled. CUDA sources are compiled when torch was built with CUDA
and nvcc is found; NPHT_CUDA=1 forces CUDA (failing if impossible), NPHT_CUDA=0 skips it.
TORCH_CUDA_ARCH_LIST picks the architectures (default: 8.0;9.0+PTX: machine code for A100 and
H100, and compute_90 PTX that newer GPUs compile when they load it). Install with
`pip install --no-build-isolation .` so the build uses the torch already installed.
"""

import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - build-time message
    raise RuntimeError(
        "npht needs PyTorch at build time: install torch first, then "
        "`pip install --no-build-isolation .` (build isolation would hide the installed torch)"
    ) from exc

ROOT = os.path.dirname(os.path.abspath(__file__))


def _nvcc_release(nvcc: str):
    """``(major, minor)`` of ``nvcc --version``'s "release X.Y", or None if it does not run."""
    import re
    import subprocess

    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _want_cuda() -> bool:
    flag = os.environ.get("NPHT_CUDA", "auto").strip().lower()
    if flag not in ("auto", "", "0", "false", "no", "off", "1", "true", "yes", "on"):
        raise RuntimeError(f"NPHT_CUDA must be 1 (build CUDA), 0 (skip it) or auto, got {flag!r}")
    if flag in ("0", "false", "no", "off"):
        return False
    # torch compiles .cu files with CUDA_HOME/bin/nvcc; CUDA_HOME alone is no proof (torch
    # falls back to /usr/local/cuda, which runtime-only images have without a compiler)
    nvcc = next((os.path.join(CUDA_HOME, "bin", exe) for exe in ("nvcc", "nvcc.exe")
                 if CUDA_HOME is not None and os.path.isfile(os.path.join(CUDA_HOME, "bin", exe))), None)
    why = None
    if torch.version.cuda is None:
        why = "this torch is a CPU build (torch.version.cuda is None)"
    elif nvcc is None:
        why = f"no nvcc (CUDA_HOME={CUDA_HOME!r})"
    else:
        # torch refuses to build with an nvcc of another major release than its own CUDA
        # (it would fail halfway through the build): say so before, and in auto mode build
        # the CPU backend instead
        release, torch_major = _nvcc_release(nvcc), int(torch.version.cuda.split(".")[0])
        if release is None:
            why = f"{nvcc} --version did not run"
        elif release[0] != torch_major:
            why = (f"{nvcc} is CUDA {release[0]}.{release[1]} but torch was built with CUDA "
                   f"{torch.version.cuda} (torch builds extensions with the same major release only: point "
                   f"CUDA_HOME at a CUDA {torch_major}.x toolkit)")
    if flag in ("1", "true", "yes", "on"):
        if why:
            raise RuntimeError(f"NPHT_CUDA=1 but CUDA cannot be built: {why}")
        return True
    if why and torch.version.cuda is not None:  # a CUDA torch without a usable nvcc: say why
        print(f"npht: building without CUDA: {why}; NPHT_CUDA=1 makes this an error")
    return why is None


def _extension():
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    cpu_sources = ["csrc/bindings.cpp"] + [
        p for p in rel("csrc/*/*.cpp") if not p.endswith("_cuda.cpp")
    ]
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    # -fno-trapping-math: lets the CPU passes vectorise selects (csrc/include/npht/cpu_math.h)
    cxx = ["-O3", "-g0", "-std=c++17", "-fopenmp", "-fno-trapping-math"]
    if _want_cuda():
        # +PTX: a GPU newer than sm_90 JIT-compiles the kernels instead of finding no image
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources = cpu_sources + rel("csrc/*/*_cuda.cpp") + rel("csrc/*/*.cu")
        return CUDAExtension(
            "npht._C",
            sources,
            include_dirs=include_dirs,
            define_macros=[("NPHT_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        ), True
    return CppExtension(
        "npht._C",
        cpu_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    ), False


if __name__ == "__main__" or os.environ.get("NPHT_SETUP_IMPORT") != "1":  # tests import the helpers
    ext, with_cuda = _extension()
    print(f"npht: building the extension with CUDA={'yes' if with_cuda else 'no'}")

    setup(
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
