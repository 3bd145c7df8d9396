"""tools/tune_mlp_mm.py and tools/tune_triplane.py run end to end (interpreted, tiny sizes)
and record every candidate, a failing one as an error row."""

import json
import os

from _backends import load_script, require_backend


def _tool(name):
    return load_script("tools", name)


def test_tune_mlp_mm_smoke(tmp_path, monkeypatch):
    require_backend("triton")
    require_backend("cpu")
    monkeypatch.setenv("NPHT_TRITON_GPU_BLOCKS", "1")  # take the GPU's block choice (and its override)
    res = _tool("tune_mlp_mm").main(["--device", "cpu", "--quick", "--B", "1", "--eik-N", "20", "--reps", "1",
                     "--configs", "32,64,16,4", "bad", "--wgrad-configs", "32,32,16,4,2",
                     "--out", str(tmp_path)])
    rows = res["rows"]
    assert [(r["method"], r["blocks"]) for r in rows] == [
        ("reference", None), ("npht-cpu-fused", None), ("npht-cpu-fused-tmm", None), ("npht-cpu-fused-tmm-keep", None),
        ("npht-cpu-fused-tmm-h16", None), ("npht-cpu-fused-tmm-keep-h16-d16", None),
        ("npht-cpu-fused-tmm", "32,64,16,4"), ("npht-cpu-fused-tmm", "bad"), ("npht-cpu-fused-tmm", "32,32,16,4,2")]
    assert all(r["median_ms"] > 0 for r in rows[:7]) and rows[-1]["median_ms"] > 0
    assert rows[-1]["variable"] == "NPHT_MLP_WGRAD_BLOCKS" and rows[6]["variable"] == "NPHT_MLP_MM_BLOCKS"
    assert res["config"]["B"] == 1 and res["config"]["eik_N"] == 20
    assert "NPHT_MLP_MM_BLOCKS" in rows[-2]["error"]
    assert "NPHT_MLP_MM_BLOCKS" not in os.environ and "NPHT_MLP_WGRAD_BLOCKS" not in os.environ
    with open(tmp_path / "tune_mlp_mm.json") as f:
        assert json.load(f)["rows"] == json.loads(json.dumps(rows))


def test_tune_triplane_tool(tmp_path, monkeypatch):
    require_backend("triton")
    monkeypatch.setenv("NPHT_TRITON_GPU_BLOCKS", "1")  # take the GPU's block choice (and its override)
    res = _tool("tune_triplane").main(["--device", "cpu", "--quick", "--B", "1", "--N", "40", "--reps", "1",
                     "--configs", "32,8,4", "bad", "--tasks", "fwd", "eikonal_op", "--out", str(tmp_path)])
    rows = res["rows"]
    assert [(r["task"], r["method"], r["blocks"]) for r in rows] == [
        (t, m, b) for t in ("fwd", "eikonal_op")
        for m, b in (("reference", None), ("npht-triton", None), ("npht-triton", "32,8,4"), ("npht-triton", "bad"))]
    assert all(r["median_ms"] > 0 for r in rows if r["blocks"] != "bad")
    assert all("NPHT_TRIPLANE_BLOCKS" in r["error"] for r in rows if r["blocks"] == "bad")
    assert res["config"]["B"] == 1 and res["config"]["N"] == 40
    assert "NPHT_TRIPLANE_BLOCKS" not in os.environ
    with open(tmp_path / "tune_triplane.json") as f:
        assert json.load(f)["rows"] == json.loads(json.dumps(rows))
