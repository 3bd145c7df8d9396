"""The GT normal-map benchmark runs end to end at tiny sizes and writes valid JSON."""

import json

from test_bench_triplane import load


def test_gt_normal_maps_benchmark_smoke(tmp_path):
    bench = load("gt_normal_maps")
    path = bench.main(["--quick", "--views", "4", "--resolutions", "32", "--reps", "1", "--out", str(tmp_path)])
    with open(path) as f:
        res = json.load(f)
    assert res["benchmark"] == "gt_normal_maps" and res["commit"] and res["config"]["faces"] > 1000
    (row,) = res["results"]
    assert row["res"] == 32 and row["views"] == 4 and row["per_view_ms"] > 0
    assert row["mask_px"] > 0 and row["mean_err_deg"] < 1.0
