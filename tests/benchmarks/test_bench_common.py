"""benchmarks/_common.time_step: on the GPU, short steps go to triton's do_bench and long
ones (a 512^2 render step) to a plain loop of ``reps`` runs (device calls faked here)."""

import sys
import time
import types

from test_bench_triplane import load


def test_time_step_dispatch(monkeypatch):
    common = load("_common")
    monkeypatch.setattr(common, "sync", lambda device: None)
    seen = {}

    def do_bench(step, warmup, rep, return_mode):
        # triton's rule: int(rep / estimate) timed runs (estimate = this step's ~3 ms)
        seen.update(rep=rep, return_mode=return_mode)
        return [1.0, 2.0, 3.0, 4.0, 5.0] * max(1, int(rep / 3.0) // 5)

    fake_testing = types.SimpleNamespace(do_bench=do_bench)
    monkeypatch.setitem(sys.modules, "triton.testing", fake_testing)
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(testing=fake_testing))
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.003)

    monkeypatch.setattr(common, "LONG_STEP_S", 10.0)  # short: do_bench
    row = common.time_step(step, "cuda", reps=3)
    assert (row["median_ms"], row["q20_ms"], row["q80_ms"], row["timer"]) == (3.0, 1.8, 4.2, "do_bench")
    assert row["samples"] >= common.MIN_SAMPLES and seen["return_mode"] == "all"
    assert len(calls) == 2  # warm-up + the timed probe
    # a step of 150 ms: rep covers MIN_SAMPLES runs of it (a fixed 200 ms timed it once)
    clock = iter([i * 0.15 for i in range(100)])  # each timed run: 150 ms
    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    common.time_step(lambda: None, "cuda", reps=3)
    assert seen["rep"] >= common.MIN_SAMPLES * 150
    monkeypatch.setattr(common, "time", time)

    def old_do_bench(step, warmup, rep, return_mode="mean", quantiles=None):
        assert return_mode in ("min", "max", "mean", "median"), "an older triton"
        return [1.0, 2.0, 3.0]

    fake_testing.do_bench = old_do_bench  # a triton without return_mode="all": its quantiles
    row = common.time_step(step, "cuda", reps=3)
    assert (row["q20_ms"], row["median_ms"], row["q80_ms"], row["timer"]) == (1.0, 2.0, 3.0, "do_bench")
    calls.clear()
    monkeypatch.setattr(common, "LONG_STEP_S", 0.001)  # long: the probe + reps - 1 more runs
    row = common.time_step(step, "cuda", reps=3)
    assert len(calls) == 1 + 3 and row["median_ms"] >= 3.0 and row["q20_ms"] <= row["median_ms"] <= row["q80_ms"]
    assert row["timer"] == "loop" and row["samples"] == 3
    calls.clear()
    row = common.time_step(step, "cpu", reps=2)  # CPU: warm-up + reps, never do_bench
    assert len(calls) == 3 and row["median_ms"] >= 3.0


def test_summarize_times_quantiles_stay_within_the_data():
    common = load("_common")
    row = common.summarize_times([10.0, 20.0, 30.0], "loop")
    assert row["median_ms"] == 20.0 and 10.0 <= row["q20_ms"] <= 20.0 <= row["q80_ms"] <= 30.0
    assert row["samples"] == 3 and common.summarize_times([7.0], "loop")["q80_ms"] == 7.0


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


def test_partial_rows_survive_a_cut_off_run(tmp_path):
    """Each row is on disk as soon as it is measured; the file goes once the run is written;
    the README report ignores partial files."""
    import json

    common = load("_common")
    partial = common.PartialRows(str(tmp_path), "triplane", device="x", device_type="cpu")
    partial.add({"task": "fwd", "method": "reference", "median_ms": 1.0})
    partial.add({"task": "fwd", "method": "npht-cpu", "median_ms": 0.5})
    with open(tmp_path / "triplane_partial.json") as f:
        saved = json.load(f)
    assert saved["partial"] is True and [r["method"] for r in saved["results"]] == ["reference", "npht-cpu"]
    assert load("report").latest_results(str(tmp_path)) == []
    partial.done()
    assert not (tmp_path / "triplane_partial.json").exists()


def test_time_interleaved_round_robin_and_failing_steps():
    common = load("_common")
    order = []

    def make(name):
        return lambda: order.append(name)

    def broken():
        raise RuntimeError("no double backward")

    out = common.time_interleaved({"a": make("a"), "b": make("b"), "bad": broken}, reps=3)
    assert set(out) == {"a", "b"} and out["a"]["samples"] == 3 and out["a"]["timer"] == "loop-interleaved"
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-ups, then rounds alternating
