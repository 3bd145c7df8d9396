"""The evaluation benchmark runs end to end with tiny models and the report renders it."""

import json

from test_bench_triplane import load


def test_mesh_extraction_benchmark_smoke(tmp_path):
    path = load("mesh_extraction").main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    with open(path) as f:
        res = json.load(f)
    assert res["benchmark"] == "mesh_extraction" and res["commit"] and res["torch"]
    rows = {(r["task"], r["method"], r.get("mode")): r for r in res["results"]}
    assert set(rows) == {("extract_mesh", m, mode) for m in ("triplane", "npm") for mode in ("dense", "sparse")} | {
        ("evaluate_meshes", "npht-tree", None)}
    assert all(r["seconds"] > 0 for r in rows.values())
    for m in ("triplane", "npm"):
        assert rows[("extract_mesh", m, "sparse")]["same_mesh_as_dense"] is True
        assert rows[("extract_mesh", m, "sparse")]["evaluated"] < rows[("extract_mesh", m, "dense")]["evaluated"]
    assert rows[("extract_mesh", "npm", "dense")]["faces"] > 100
    assert rows[("evaluate_meshes", "npht-tree", None)]["regions"] == ["face", "head"]
    text = load("report").render(str(tmp_path))
    assert "evaluate_meshes" in text and "extract_mesh" in text
