"""benchmarks/_common.time_step: on the GPU, short steps go to triton's do_bench and long
ones (a 512^2 render step) to a plain loop of ``reps`` runs (device calls faked here)."""

import sys
import time
import types

from test_bench_triplane import load


def test_time_step_dispatch(monkeypatch):
    common = load("_common")
    monkeypatch.setattr(common, "sync", lambda device: None)
    fake_testing = types.SimpleNamespace(do_bench=lambda step, quantiles, warmup, rep: (1.0, 2.0, 3.0))
    monkeypatch.setitem(sys.modules, "triton.testing", fake_testing)
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(testing=fake_testing))
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.003)

    monkeypatch.setattr(common, "LONG_STEP_S", 10.0)  # short: do_bench
    assert common.time_step(step, "cuda", reps=3) == {"median_ms": 2.0, "q20_ms": 1.0, "q80_ms": 3.0}
    assert len(calls) == 2  # warm-up + the timed probe
    calls.clear()
    monkeypatch.setattr(common, "LONG_STEP_S", 0.001)  # long: the probe + reps - 1 more runs
    row = common.time_step(step, "cuda", reps=3)
    assert len(calls) == 1 + 3 and row["median_ms"] >= 3.0 and row["q20_ms"] <= row["median_ms"] <= row["q80_ms"]
    calls.clear()
    row = common.time_step(step, "cpu", reps=2)  # CPU: warm-up + reps, never do_bench
    assert len(calls) == 3 and row["median_ms"] >= 3.0


def test_cuda_peak_during_runs_once_when_warmed(monkeypatch):
    import torch

    common = load("_common")
    monkeypatch.setattr(common, "sync", lambda device: None)
    for name, value in (("empty_cache", None), ("reset_peak_memory_stats", None), ("memory_allocated", 100),
                        ("max_memory_allocated", 164)):
        monkeypatch.setattr(torch.cuda, name, lambda *a, v=value: v)
    calls = []
    assert common.cuda_peak_during(lambda: calls.append(1)) == 64 and len(calls) == 2
    calls.clear()
    assert common.cuda_peak_during(lambda: calls.append(1), warmed=True) == 64 and len(calls) == 1
