"""Build npht's CUDA emulator: csrc's CUDA kernels and their torch glue, compiled by the host
compiler for CPU tensors (see include/cuda_runtime.h for what it checks and what it cannot).

    build = load_script("tools/cuda_emu", "build")  # tests/_backends.py: tools/ is no package
    emu = build.load()                 # a module: emu.triplane_fwd(...), emu.sm80_triplane_fwd(...)
    emu.composite_fwd(sdf, z, beta, None, None, 0.0)   # the CUDA op's contract, on CPU tensors
    with build.cpu_kernels_replaced(emu):              # npht's cpu backend runs the CUDA kernels
        npht.triplane_sample(planes, points, backend="cpu")

Every `csrc/**/*_kernels.cu` is copied to the build folder with its launches
`kernel<<<grid, block, shmem, stream>>>(args)` rewritten to
`::npht_emu::launch(kernel, grid, block, shmem, stream)(args)` (nothing else changes; `#line`
keeps compiler messages on the original lines), compiled with `__CUDA_ARCH__` = 900 (H100 /
H200). Kernels whose source tests `__CUDA_ARCH__` themselves are compiled once more for
sm_80 (their functions prefixed `sm80_`). The glue `csrc/**/*_cuda.cpp` is compiled
unchanged against the stand-in headers of include/.

Command line: `python tools/cuda_emu/build.py` builds (ninja, incremental) and prints the
functions; `python tools/cuda_emu/build.py --asan-pytest tests/ops -k "not triton"` runs
pytest on the AddressSanitizer build (out-of-bounds accesses of the kernels and glue abort
with a report).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MAIN_ARCH = 900
EXTRA_ARCHS = (800,)

# `name<...><<<config>>>(` at the start of a statement (csrc's launches are written so)
_LAUNCH = re.compile(r"(?m)^(?P<indent>[ \t]*)(?P<kernel>[A-Za-z_][\w:]*(?:<[^;{}()]*?>)?)<<<(?P<config>.*?)>>>\(",
                     re.S)


def translate(text: str, path: str) -> str:
    """The source of a .cu file with its kernel launches rewritten for the emulator."""
    n_launch = text.count("<<<")
    out, n = _LAUNCH.subn(lambda m: f"{m['indent']}::npht_emu::launch({m['kernel']}, {m['config']})(", text)
    if n != n_launch:
        raise RuntimeError(f"{path}: rewrote {n} of {n_launch} kernel launches; write each launch as "
                           "`kernel<...><<<config>>>(` at the start of a statement")
    return out


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _pairs():
    """(kernel .cu, its torch glue .cpp): csrc's, then the emulator's self-test."""
    for cu in sorted((ROOT / "csrc").rglob("*_kernels.cu")):
        glue = cu.with_name(cu.name.replace("_kernels.cu", "_cuda.cpp"))
        if not glue.exists():
            raise RuntimeError(f"{cu.relative_to(ROOT)}: no torch glue {glue.name} beside it")
        yield cu, glue
    yield HERE / "selftest" / "selftest_kernels.cu", HERE / "selftest" / "selftest_cuda.cpp"


def sources(build_dir: Path) -> list[str]:
    """The translation units of the emulator module (written into build_dir/src)."""
    src = build_dir / "src"
    src.mkdir(parents=True, exist_ok=True)
    units = [str(HERE / "module.cpp")]
    for cu, glue in _pairs():
        rel = cu.relative_to(ROOT).as_posix()
        body = translate(cu.read_text(), rel)
        archs = [MAIN_ARCH] + (list(EXTRA_ARCHS) if "__CUDA_ARCH__" in body else [])
        for arch in archs:
            extra = "" if arch == MAIN_ARCH else (f"#define npht npht_sm{arch // 10}\n"
                                                  f"#define NPHT_EMU_PREFIX \"sm{arch // 10}_\"\n")
            stem = cu.stem + ("" if arch == MAIN_ARCH else f"_sm{arch // 10}")
            kernel_tu = src / f"{stem}.cpp"
            _write_if_changed(kernel_tu, (f"#include <cuda_runtime.h>\n#define __CUDA_ARCH__ {arch}\n{extra}"
                                          f"#line 1 \"{rel}\"\n{body}"))
            glue_tu = src / f"{stem}_glue.cpp"
            _write_if_changed(glue_tu, f"{extra}#include <c10/cuda/CUDAGuard.h>\n#include \"{glue.as_posix()}\"\n")
            units += [str(kernel_tu), str(glue_tu)]
    return units


def load(verbose: bool = False, build_dir: str | os.PathLike | None = None, asan: bool = False):
    """Build (incrementally) and import the emulator module. ``asan``: the kernels and glue
    instrumented by AddressSanitizer (out-of-bounds reads and writes of the tensors, which
    torch allocates with malloc, are reported and abort); the process must have started
    with libasan preloaded (see ``asan_environment``)."""
    from torch.utils.cpp_extension import load as load_extension

    name = "npht_cuda_emu" + ("_asan" if asan else "")
    bdir = Path(build_dir) if build_dir else ROOT / "build" / name
    bdir.mkdir(parents=True, exist_ok=True)
    sanitize = ["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []
    return load_extension(
        name=name,
        sources=sources(bdir),
        extra_include_paths=[str(HERE / "include"), str(ROOT / "csrc" / "include"), str(ROOT / "csrc"),
                             str(HERE / "selftest")],
        extra_cflags=["-O1", "-g0", "-std=c++17", "-ffp-contract=off", "-Wno-unknown-pragmas", "-pthread"] + sanitize,
        extra_ldflags=["-pthread"] + sanitize,
        build_directory=str(bdir),
        with_cuda=False,
        verbose=verbose,
    )


def asan_environment(env: dict | None = None) -> dict:
    """``env`` (default os.environ) plus what a Python process needs to load the ``asan``
    module: libasan preloaded, leak checks off (Python's own allocations are not freed at
    exit), and the kernels' own errors only."""
    import subprocess

    def runtime(name):
        path = subprocess.run(["c++", f"-print-file-name={name}"], capture_output=True, text=True,
                              check=True).stdout.strip()
        if not os.path.isabs(path):
            raise RuntimeError(f"the C++ compiler has no {name} (install its AddressSanitizer runtime)")
        return os.path.realpath(path)

    env = dict(os.environ if env is None else env)
    # libstdc++ right after libasan: ASan finds the real __cxa_throw when it starts (else the
    # first C++ exception, e.g. a TORCH_CHECK, aborts in its interceptor)
    env["LD_PRELOAD"] = " ".join(filter(None, [runtime("libasan.so"), runtime("libstdc++.so"), env.get("LD_PRELOAD")]))
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:halt_on_error=1"
    return env


def emulated_ops(module, arch: int = MAIN_ARCH) -> dict:
    """{op name of npht_C: the emulator's function} for one architecture (the main one's
    kernels stand in for an architecture that has no kernels of its own)."""
    if arch not in (MAIN_ARCH,) + EXTRA_ARCHS:
        raise ValueError(f"arch must be one of {(MAIN_ARCH,) + EXTRA_ARCHS}, got {arch!r}")
    names = [n for n in dir(module) if not n.startswith(("_", "sm", "selftest_")) and n != "stats"]
    prefix = "" if arch == MAIN_ARCH else f"sm{arch // 10}_"
    return {n: _positional(n, getattr(module, prefix + n, getattr(module, n))) for n in names}


def _positional(name: str, fn):
    """``fn`` (a pybind function: positional arguments only) called as the op ``name`` of
    npht_C is (keywords and schema defaults allowed)."""
    import torch

    arguments = getattr(torch.ops.npht_C, name).default._schema.arguments

    def op(*args, **kwargs):
        full = list(args)
        for a in arguments[len(args):]:
            if a.name in kwargs:
                full.append(kwargs.pop(a.name))
            elif a.has_default_value():
                full.append(a.default_value)
            else:
                raise TypeError(f"{name}: missing argument {a.name!r}")
        if kwargs:
            raise TypeError(f"{name}: unexpected arguments {sorted(kwargs)}")
        return fn(*full)

    op.__name__ = name
    return op


@contextlib.contextmanager
def cpu_kernels_replaced(module, arch: int = MAIN_ARCH):
    """Within: the CPU kernels of npht_C's ops are the emulated CUDA kernels (so npht's ops,
    called with CPU tensors and backend="cpu", run csrc's CUDA code and its torch glue).
    The CPU kernels come back on exit."""
    import torch

    lib = torch.library.Library("npht_C", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Oo]verrid")
            for name, fn in emulated_ops(module, arch).items():
                lib.impl(name, fn, "CPU")
        yield
    finally:
        lib._destroy()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--asan-pytest"]:
        # python tools/cuda_emu/build.py --asan-pytest tests/ops -k "not triton": pytest with the
        # cpu backend's kernels replaced by the AddressSanitizer build of the emulated CUDA ones
        # (built and imported by tests/conftest.py, in the process that has libasan preloaded)
        env = asan_environment()
        env.setdefault("NPHT_CUDA_EMU", str(MAIN_ARCH))
        env["NPHT_CUDA_EMU_ASAN"] = "1"
        os.execvpe(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[2:]], env)
    if "--asan" in sys.argv and "asan" not in os.environ.get("LD_PRELOAD", ""):
        os.execvpe(sys.executable, [sys.executable, *sys.argv], asan_environment())
    module = load(verbose="-v" in sys.argv, asan="--asan" in sys.argv)
    print(module.__file__)
    print(" ".join(sorted(n for n in dir(module) if not n.startswith("_"))))
