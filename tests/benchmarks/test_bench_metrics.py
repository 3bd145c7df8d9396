"""The metrics benchmark runs end to end on small point sets and the report renders it."""

import json

from test_bench_triplane import load


def test_metrics_benchmark_smoke(tmp_path):
    path = load("metrics").main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    with open(path) as f:
        res = json.load(f)
    assert res["benchmark"] == "metrics" and res["commit"] and res["torch"]
    rows = {r["pair"]: r for r in res["results"]}
    assert set(rows) == {"far", "near"}
    assert rows["far"]["mean_distance"] > rows["near"]["mean_distance"] > 0
    for r in rows.values():
        assert r["npht_us_per_query"] > 0 and r["scipy_us_per_query"] > 0 and r["evaluate_meshes_s"] > 0
        assert r["chamfer_l1_head"] > 0 and r["chamfer_l1_face"] > 0
        # evaluate_meshes' own peak (fresh process) holds at least its two 20k-point clouds
        assert r["evaluate_meshes_rss_increase_bytes"] > 2 * 20_000 * 3 * 8
    text = load("report").render(str(tmp_path))
    assert "cKDTree us/query" in text and "| far |" in text
