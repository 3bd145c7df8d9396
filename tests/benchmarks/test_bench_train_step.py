"""The trainer-step benchmark runs end to end on a tiny dataset and the report renders it."""

import json

import pytest
from _datasets import prepared
from test_bench_triplane import load


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared("heads", tmp_path_factory.mktemp("heads"))


def test_train_step_benchmark_smoke(data, tmp_path):
    out = tmp_path / "out"
    path = load("train_step").main(["--data", data, "--device", "cpu", "--presets", "cpu-demo", "cpu-demo@8",
                                    "--baseline", "cpu-demo", "--steps", "3", "--out", str(out)])
    with open(path) as f:
        res = json.load(f)
    assert res["benchmark"] == "train_step" and res["commit"] and res["torch"] and res["config"]["steps"] == 3
    rows = {r["method"]: r for r in res["results"]}
    assert set(rows) == {"cpu-demo", "cpu-demo@8"}
    assert rows["cpu-demo"]["render_resolution"] == 16 and rows["cpu-demo@8"]["render_resolution"] == 8
    for r in rows.values():
        assert r["steps"] == 3 and r["stage"] == 1 and r["samples"] == 2   # 3 steps, 1 warm-up
        assert r["median_ms"] > 0 and r["wall_median_ms"] > 0 and r["peak_mem_bytes"] >= 0
    assert rows["cpu-demo"]["time_vs_baseline"] == 1.0
    assert rows["cpu-demo@8"]["time_vs_baseline"] == pytest.approx(
        rows["cpu-demo@8"]["median_ms"] / rows["cpu-demo"]["median_ms"])
    assert not (out / "train_step_partial.json").exists()
    text = load("report").render(str(out))
    assert "cpu-demo@8" in text and "time vs cpu-demo" in text


def test_train_step_benchmark_refuses_bad_input(data, tmp_path):
    with pytest.raises(SystemExit, match="no prepared dataset"):
        load("train_step").main(["--data", str(tmp_path), "--device", "cpu", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown preset 'npht-265'"):
        load("train_step").main(["--data", data, "--device", "cpu", "--presets", "npht-265", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="integer >= 8"):
        load("train_step").main(["--data", data, "--device", "cpu", "--presets", "npht-256@x", "--out", str(tmp_path)])
