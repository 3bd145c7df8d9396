"""Compile npht's Triton kernels for GPUs on a machine without one: the Triton analogue of
`make cuda-check` (part of `make test`).

1. Record (a child process, TRITON_INTERPRET=1): the Triton tests run under the
   interpreter with the launchers' GPU block sizes (NPHT_TRITON_GPU_BLOCKS=1; the
   interpreter otherwise picks larger blocks a GPU never sees), and tools/triton_record.py
   records every launch: each argument's type or constexpr value, and num_warps. The tests
   must pass with those block sizes too.
2. Compile (no interpreter): a greedy subset of the recorded launches, in which every
   (argument, type or constexpr value) pair occurs at least once, plus every TF32 launch
   (the decoder products' production precision, in all its recorded variants), goes through
   ``triton.compile`` for each target architecture down to a cubin (Triton bundles ptxas),
   one process per kernel, ``--jobs`` at a time. A compile error, or a compile slower than
   ``--timeout`` seconds (a tile so large that a GPU launch would stall in the compiler),
   fails the check, as does a kernel that needs more shared memory per block than the
   architecture allows (``SHARED_LIMIT``: it compiles, then fails to load). Each compiled
   kernel's registers per thread and stack bytes (spills) are printed from the cubin;
   spills are listed at the end (a note, not a failure).
3. With ``--passed FILE`` (as ``make test`` calls it), the node ids of the recorded tests are
   written to FILE once all of them passed; ``make test``'s main pytest run then leaves
   exactly those out (tests/conftest.py, NPHT_DESELECT_PASSED): each Triton test runs once
   per ``make test``, with the block sizes a GPU gets (smaller than the interpreter's: more
   chunks per ray and per tile).

    python tools/triton_check.py                 # sm_80 and sm_90
    python tools/triton_check.py --archs 90 --jobs 4

Uses Triton 3.x's ``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget)``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["tests/ops/test_triplane.py", "tests/ops/test_triplane_autograd.py", "tests/ops/test_composite_op.py",
         "tests/ops/test_composite_triton.py", "tests/ops/test_sampler_ops.py", "tests/ops/test_mlp.py",
         "tests/ops/test_mlp_mm.py"]


def record(path: str, passed: str | None = None) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", NPHT_TRITON_GPU_BLOCKS="1", NPHT_TRITON_SPECS=path)
    env.pop("NPHT_TRITON_PASSED", None)
    if passed:  # the node ids of the tests that passed (all of them, or the file is not written)
        env["NPHT_TRITON_PASSED"] = os.path.abspath(passed)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(ROOT, "tools"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "triton_record", "-k", "triton", *TESTS]
    print("record:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def features(spec) -> set:
    module, name, args, options = spec
    out = {(module, name, a, t, repr(c)) for a, t, c in args}
    return out | {(module, name, "option:" + k, repr(v)) for k, v in options.items()}


def cover(specs: list) -> list:
    """A small subset of specs in which every feature of the full list occurs."""
    todo = set().union(*(features(s) for s in specs)) if specs else set()
    chosen = []
    while todo:
        best = max(specs, key=lambda s: len(features(s) & todo))
        chosen.append(best)
        todo -= features(best)
    return chosen


def production(specs: list) -> list:
    """The launches in TF32 (``PREC='tf32'``): the decoder products as a GPU runs them in
    training, all of their recorded combinations of storage dtypes and tiles (a spill or a
    shared-memory overflow there costs real time, so these are compiled whole, not covered)."""
    return [s for s in specs if any(a == "PREC" and t == "constexpr" and c == "tf32" for a, t, c in s[2])]


def describe(spec) -> str:
    module, name, args, options = spec
    cx = ", ".join(f"{a}={c!r}" for a, t, c in args if t == "constexpr")
    dtypes = sorted({t for _, t, _ in args if t.startswith("*")})
    return f"{module.rsplit('.', 1)[-1]}.{name}({cx}; {'/'.join(dtypes)}; num_warps={options.get('num_warps', 4)})"


# the most shared memory one block may use (opt-in), bytes: A100 (sm_80) 163 KiB, H100 (sm_90)
# 227 KiB. Triton raises OutOfResources when it loads a kernel that needs more: a launch that
# compiles here and fails on the GPU.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def compile_one(spec, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, args, options = spec
    fn = getattr(importlib.import_module(module), name)
    signature = {a: t for a, t, _ in args}
    constexprs = {(fn.arg_names.index(a),): c for a, t, c in args if t == "constexpr"}
    opts = {k: v for k, v in options.items() if k in ("num_warps", "num_stages")}
    kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs),
                            target=GPUTarget("cuda", arch, 32), options=opts)
    shared = kernel.metadata.shared
    limit = SHARED_LIMIT.get(arch)
    if limit is not None and shared > limit:
        raise RuntimeError(f"needs {shared} bytes of shared memory per block, sm_{arch} allows {limit}: "
                           "the launch would fail with OutOfResources on the GPU")
    return {"shared": shared, "cubin_bytes": len(kernel.asm["cubin"]), **resource_usage(kernel.asm["cubin"])}


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and stack bytes (> 0: registers spilled to local memory) of a
    cubin, from the cuobjdump Triton bundles; {} if it has none."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return {"regs": int(found.group(1)), "stack": int(found.group(2))} if found else {}


def run_all(specs: list, archs, jobs: int, timeout: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "specs.pkl")
        with open(path, "wb") as f:
            pickle.dump(specs, f)
        queue = [(i, a) for a in archs for i in range(len(specs))]
        running, failures, spills = [], 0, []
        while queue or running:
            while queue and len(running) < jobs:
                i, a = queue.pop(0)
                out = os.path.join(tmp, f"{i}-{a}.log")
                log = open(out, "w")
                proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--compile-one", path, str(i),
                                         str(a)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
                running.append((proc, i, a, time.time(), log, out))
            time.sleep(0.05)
            for item in list(running):
                proc, i, a, t0, log, out = item
                elapsed = time.time() - t0
                if proc.poll() is None and elapsed < timeout:
                    continue
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                running.remove(item)
                log.close()
                text = open(out).read().strip()
                if proc.returncode == 0:
                    last = text.splitlines()[-1]
                    print(f"sm_{a} ok {elapsed:5.1f} s  {describe(specs[i])}  {last}", flush=True)
                    if re.search(r"'stack': [1-9]", last):
                        spills.append(f"sm_{a} {describe(specs[i])}")
                else:
                    failures += 1
                    why = f"over the {timeout:.0f} s limit" if elapsed >= timeout else "compile error"
                    print(f"sm_{a} FAILED ({why}) {describe(specs[i])}\n{text[-3000:]}", flush=True)
        for line in spills:  # not a failure (the kernel runs), but slow: a block size to revisit
            print(f"note: registers spilled to local memory: {line}", flush=True)
        return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", type=int, nargs="+", default=[80, 90])
    p.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one kernel may take to compile")
    p.add_argument("--specs", help="compile launches recorded earlier (a pickle) instead of recording")
    p.add_argument("--passed", help="write the node ids of the recorded tests here once all of them passed "
                                    "(make test leaves them out of its main pytest run)")
    p.add_argument("--compile-one", nargs=3, metavar=("SPECS", "INDEX", "ARCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.passed and os.path.exists(args.passed):  # never a list left by an earlier run
        os.remove(args.passed)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the GPU default; silences Triton's notice
    if args.compile_one:
        path, i, arch = args.compile_one
        with open(path, "rb") as f:
            spec = pickle.load(f)[int(i)]
        print(compile_one(spec, int(arch)))
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("triton-check: triton not installed, Triton kernels not compile-checked")
        return 0
    if args.specs:
        with open(args.specs, "rb") as f:
            specs = pickle.load(f)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "specs.pkl")
            record(path, args.passed)
            with open(path, "rb") as f:
                specs = pickle.load(f)
    chosen = cover(specs)
    extra = [s for s in production(specs) if s not in chosen]
    kernels = sorted({f"{m}.{n}" for m, n, _, _ in specs})
    print(f"{len(specs)} distinct launches of {len(kernels)} kernels recorded; compiling {len(chosen)} that "
          f"cover every argument type and constexpr value and the {len(extra)} other TF32 launches, for "
          f"sm_{', sm_'.join(map(str, args.archs))}", flush=True)
    chosen += extra
    t0 = time.time()
    failures = run_all(chosen, args.archs, args.jobs, args.timeout)
    print(f"triton-check: {len(chosen) * len(args.archs) - failures} compiled, {failures} failed, "
          f"{time.time() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
