"""tools/tune_mlp_mm.py runs end to end (interpreted, tiny sizes) and records every
candidate, a failing one as an error row."""

import importlib.util
import json
import os

from _backends import require_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tune_mlp_mm_smoke(tmp_path, monkeypatch):
    require_backend("triton")
    require_backend("cpu")
    monkeypatch.setenv("NPHT_TRITON_GPU_BLOCKS", "1")  # take the GPU's block choice (and its override)
    spec = importlib.util.spec_from_file_location("tune_mlp_mm", os.path.join(ROOT, "tools", "tune_mlp_mm.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    res = tool.main(["--device", "cpu", "--quick", "--B", "1", "--eik-N", "20", "--reps", "1",
                     "--configs", "32,64,16,4", "bad", "--wgrad-configs", "32,32,16,4,2",
                     "--out", str(tmp_path)])
    rows = res["rows"]
    assert [(r["method"], r["blocks"]) for r in rows] == [
        ("reference", None), ("npht-cpu-fused", None), ("npht-cpu-fused-tmm", None), ("npht-cpu-fused-tmm-keep", None),
        ("npht-cpu-fused-tmm-h16", None), ("npht-cpu-fused-tmm", "32,64,16,4"), ("npht-cpu-fused-tmm", "bad"),
        ("npht-cpu-fused-tmm", "32,32,16,4,2")]
    assert all(r["median_ms"] > 0 for r in rows[:6]) and rows[-1]["median_ms"] > 0
    assert rows[-1]["variable"] == "NPHT_MLP_WGRAD_BLOCKS" and rows[5]["variable"] == "NPHT_MLP_MM_BLOCKS"
    assert res["config"]["B"] == 1 and res["config"]["eik_N"] == 20
    assert "NPHT_MLP_MM_BLOCKS" in rows[-2]["error"]
    assert "NPHT_MLP_MM_BLOCKS" not in os.environ and "NPHT_MLP_WGRAD_BLOCKS" not in os.environ
    with open(tmp_path / "tune_mlp_mm.json") as f:
        assert json.load(f)["rows"] == json.loads(json.dumps(rows))
