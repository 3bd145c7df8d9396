"""tools/tune_triplane.py: each candidate of the Triton tri-plane kernels' blocks timed on
the benchmark's tasks (interpreted on the CPU here), a bad one recorded, not fatal."""

import importlib.util
import json
import os

from _backends import require_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tune_triplane_tool(tmp_path, monkeypatch):
    require_backend("triton")
    monkeypatch.setenv("NPHT_TRITON_GPU_BLOCKS", "1")  # take the GPU's block choice (and its override)
    spec = importlib.util.spec_from_file_location("tune_triplane", os.path.join(ROOT, "tools", "tune_triplane.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    res = tool.main(["--device", "cpu", "--quick", "--B", "1", "--N", "40", "--reps", "1",
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
