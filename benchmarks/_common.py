"""Helpers shared by the benchmark scripts: timing, peak memory, provenance."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import threading
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


LONG_STEP_S = 0.5  # on the GPU, steps longer than this are timed with a plain loop
MIN_SAMPLES = 10  # do_bench's timed runs at least (it fits rep / estimate of them)


def summarize_times(times, timer: str) -> dict:
    """Median and 20/80 % quantiles (inclusive: within the data) in ms, with the timer and
    the number of timed runs."""
    times = [float(t) for t in times]
    qs = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "q20_ms": qs[1], "q80_ms": qs[7], "timer": timer,
            "samples": len(times)}


def time_step(step, device: str, reps: int) -> dict:
    """Median and 20/80 % quantiles in ms (:func:`summarize_times`): triton's do_bench on GPU
    (CUDA events, L2 flushed, at least ``MIN_SAMPLES`` timed runs), a wall-clock loop of
    ``reps`` runs on CPU and for GPU steps over ``LONG_STEP_S`` (do_bench would run such a
    step at least seventeen times: a 512^2 render step would eat the device's time)."""
    def timed():
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        return (time.perf_counter() - t0) * 1e3

    step()  # warm-up (compilation, caches)
    times = []
    if device == "cuda":
        first = timed()  # the step's length decides how to time it
        if first <= LONG_STEP_S * 1e3:
            import triton.testing

            # do_bench times int(rep / estimate) runs: a rep of 200 ms timed a 100 ms step once
            rep = max(200.0, MIN_SAMPLES * first * 1.2)
            try:
                times = triton.testing.do_bench(step, warmup=25, rep=rep, return_mode="all")
            except (AssertionError, TypeError):  # a triton without return_mode="all"
                q20, med, q80 = triton.testing.do_bench(step, warmup=25, rep=rep, quantiles=[0.2, 0.5, 0.8])
                return {"median_ms": med, "q20_ms": q20, "q80_ms": q80, "timer": "do_bench",
                        "samples": max(1, int(rep / first))}
            return summarize_times(times, "do_bench")
        times.append(first)
    while len(times) < max(reps, 1):
        times.append(timed())
    return summarize_times(times, "loop")


def time_interleaved(steps: dict, reps: int) -> dict:
    """CPU: ``{name: step}`` timed round by round (each step once per round, ``reps`` rounds,
    after one warm-up run each) so that a shared machine's load changes hit every step
    alike -> ``{name: summarize_times(...)}``. A step whose warm-up raises is left out (the
    caller runs it alone and records the error)."""
    ok = {}
    for name, step in steps.items():
        try:
            step()
            ok[name] = step
        except Exception:
            pass
    times = {name: [] for name in ok}
    for _ in range(max(reps, 1)):
        for name, step in ok.items():
            t0 = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: summarize_times(t, "loop-interleaved") for name, t in times.items()}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_during(fn, probe) -> int:
    """Peak of ``probe()`` above its value before ``fn()``, sampled every 0.2 ms by a thread
    while ``fn()`` runs."""
    import sys

    base = probe()
    peak = [base]
    done, polling = threading.Event(), threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], probe())
            polling.set()
            time.sleep(0.0002)

    # the poller takes the GIL within 0.1 ms (not the default 5 ms) of asking, and runs before
    # fn starts: a short call's peak is not missed
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        polling.wait()
        fn()
        done.set()
        t.join()
    finally:
        sys.setswitchinterval(interval)
    return max(0, max(peak[0], probe()) - base)


def rss_peak_during(fn) -> int:
    """Peak RSS increase while ``fn()`` runs (run it in a fresh process so earlier
    allocations do not hide the step's)."""
    return _peak_during(fn, rss_bytes)


def _heap_in_use():
    """A function giving the bytes the C heap has handed out (glibc's ``mallinfo2``:
    ``uordblks + hblkhd``, all arenas, mmapped chunks included), or None without glibc
    2.33+. torch's CPU tensors live there."""
    import ctypes

    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

    fn.restype = MallInfo2

    def in_use() -> int:
        m = fn()
        return int(m.uordblks + m.hblkhd)

    return in_use


def cpu_memory_measure() -> str:
    """What :func:`cpu_peak_during` measures here (for the results' provenance)."""
    return ("heap bytes in use (glibc mallinfo2), peak above the start" if _heap_in_use() is not None
            else "resident set size, peak above the start")


def cpu_peak_during(fn) -> int:
    """Peak CPU memory a call needs above what was in use before it: the heap's bytes in use
    (glibc ``mallinfo2``) sampled every 0.2 ms by a thread, the CPU analogue of
    ``torch.cuda.max_memory_allocated``; the resident set size where mallinfo2 is missing.
    (RSS counts the allocator's slack too: glibc raises its mmap threshold after large
    frees, so one method's temporaries land on a fragmenting heap and another's in fresh
    mappings, which biased RSS ratios between methods by up to 2x.) Run it in a fresh
    process so that earlier allocations do not hide the call's."""
    in_use = _heap_in_use()
    return rss_peak_during(fn) if in_use is None else _peak_during(fn, in_use)


def cuda_peak_during(fn, warmed: bool = False) -> int:
    """CUDA allocator peak above what was allocated before ``fn()`` (warmed up once unless
    ``warmed``: it has just run, e.g. timed)."""
    if not warmed:
        fn()
    sync("cuda")
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync("cuda")
    return torch.cuda.max_memory_allocated() - base


def git_commit() -> str:
    """The commit that ran, ``-dirty`` when the working tree differs from it (``git describe``);
    ``NPHT_COMMIT`` where the tree travels without its .git (a GPU machine: pass the value
    this function gives on the machine the tree comes from)."""
    if os.environ.get("NPHT_COMMIT"):
        return os.environ["NPHT_COMMIT"]
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=HERE,
                              capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


def _atomic_json(obj, path: str) -> None:
    import json

    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


class PartialRows:
    """Rows so far, rewritten atomically to ``<out_dir>/<benchmark>_partial.json`` after each
    row (``add``), so that a run cut off by a time limit still leaves what it measured;
    ``done()`` removes the file once the full result is written."""

    def __init__(self, out_dir: str, benchmark: str, **meta):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, f"{benchmark}_partial.json")
        self.meta = dict(benchmark=benchmark, partial=True, commit=git_commit(), **meta)
        self.rows = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        _atomic_json({**self.meta, "results": self.rows}, self.path)

    def done(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def write_result(result: dict, out_dir: str, plot=None) -> str:
    """Write ``result`` as ``<benchmark>_<device>_<date>.json`` in ``out_dir`` atomically
    (never a half-written file), and the plot next to it when ``plot(result, png_path)`` is
    given. Returns the JSON path."""
    import datetime as dt
    import re

    os.makedirs(out_dir, exist_ok=True)
    # provenance every result carries (DESIGN.md), whichever benchmark wrote it
    result.setdefault("torch", torch.__version__)
    result.setdefault("triton", triton_version())
    result.setdefault("commit", git_commit())
    result.setdefault("date", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    slug = re.sub(r"[^a-z0-9]+", "-", result["device_type"] + "-" + result["device"].lower()).strip("-")[:48]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = os.path.join(out_dir, f"{result['benchmark']}_{slug}_{stamp}.json")
    _atomic_json(result, path)
    print(f"wrote {path}")
    if plot is not None:
        plot(result, path[:-5] + ".png")
        print(f"wrote {path[:-5]}.png")
    return path


def base_parser(doc: str, tasks, reps: int):
    """The arguments every benchmark takes: device, quick, B, tasks, methods, reps,
    no-memory, plot, out."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--B", type=int)
    p.add_argument("--tasks", nargs="+", default=list(tasks), choices=tasks)
    p.add_argument("--methods", nargs="+")
    p.add_argument("--reps", type=int, default=reps, help="timed repetitions on CPU")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--plot", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    return p
