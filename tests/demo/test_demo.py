"""The end-to-end demo at its quick sizes (every stage: data, the three identity models and
the expression model, renders, fitting, meshes, metrics, latent pictures, timings), then
`npht eval` and the checkpoint loaders on its outputs."""

import json
import math
import os

import numpy as np
import pytest
import torch

pytest.importorskip("trimesh")
pytest.importorskip("pyrender")
pytest.importorskip("skimage")

from npht.cli import main as cli_main  # noqa: E402
from npht.demo.pipeline import DemoConfig, run_demo  # noqa: E402
from npht.demo.timing import format_table, op_timings  # noqa: E402
from npht.train.loading import load_expression, load_identity  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(str(out), device="cpu", quick=True, progress=False)
    return str(out), summary


def test_demo_outputs(demo):
    out, summary = demo
    for name in ("normal_maps.png", "fit.png", "latent.png", "expression_transfer.png", "metrics.json",
                 "metrics.md", "timing.md", "summary.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    for name in ("partial_scan.ply", "ground_truth.ply", "TP.ply", "TP_3D.ply", "NPM.ply", "TP_normal_maps.ply"):
        assert os.path.getsize(os.path.join(out, "fit", name)) > 0, name
    assert any(f.startswith("transfer_") for f in os.listdir(os.path.join(out, "fit")))
    with open(os.path.join(out, "summary.json")) as f:
        saved = json.load(f)
    assert saved["metrics"] == summary["metrics"]
    assert set(summary["metrics"]) == {"TP", "TP_3D", "NPM"}
    for method in summary["metrics"].values():
        for region in ("face", "head"):
            r = method[region]
            assert 0 < r["chamfer_l1"] < 1 and 0 < r["normal_consistency"] <= 1 and 0 <= r["f_score"] <= 1
    # the 2D fit on maps of the held-out head at the view resolution (its convergence is
    # tested in tests/fit; the quick demo's 6-step model and 3 iterations only run it)
    with open(os.path.join(out, "metrics.json")) as f:
        nf = json.load(f)["normal_map_fit"]
    cfg = DemoConfig.for_device("cpu", quick=True)
    assert (nf["views"], nf["resolution"], nf["iterations"]) == (2, cfg.view_resolution, cfg.normal_fit_iterations)
    assert 0 < nf["loss_last"] < 3 and 0 < nf["loss_first"] < 3 and 0 <= nf["angle_deg_after"] <= 180
    assert 0 < nf["head"]["chamfer_l1"] < 1 and summary["normal_map_fit"]["seconds"] == nf["seconds"]
    assert [r["op"] for r in summary["timing"]] == ["triplane_sample", "triplane_eikonal", "volume_composite",
                                                     "render_step"]
    assert all(r["npht_ms"] > 0 and r["reference_ms"] > 0 for r in summary["timing"])
    # the normal-map grid: 2 rows (GT, npht) of `views` renders at the view resolution
    from PIL import Image

    cfg = DemoConfig.for_device("cpu", quick=True)
    img = np.asarray(Image.open(os.path.join(out, "normal_maps.png")))
    assert img.shape[1] == cfg.views * (cfg.view_resolution + 4) + 4
    assert img.shape[0] == 2 * (cfg.view_resolution + 4 + 14) + 4


def test_demo_rerun_reuses_data_and_runs(demo, capsys):
    out, summary = demo
    mtime = os.path.getmtime(os.path.join(out, "runs", "tp", "checkpoint.pt"))
    again = run_demo(out, device="cpu", quick=True, progress=False)
    assert os.path.getmtime(os.path.join(out, "runs", "tp", "checkpoint.pt")) == mtime   # nothing retrained
    assert again["stage_seconds"]["train TP"] < summary["stage_seconds"]["train TP"] + 5
    assert again["metrics"] == summary["metrics"]                                         # deterministic


def test_load_checkpoints(demo):
    out, _ = demo
    tp = load_identity(os.path.join(out, "runs", "tp", "checkpoint.pt"))
    npm = load_identity(os.path.join(out, "runs", "npm", "checkpoint.pt"))
    tp3 = load_identity(os.path.join(out, "runs", "tp_3d", "checkpoint.pt"))
    assert (tp.name, tp3.name, npm.name) == ("TP", "TP_3D", "NPM")
    assert sorted(tp.identity_names.values()) == list(range(len(tp.codes)))
    assert not any(p.requires_grad for p in tp.model.parameters())
    pts = torch.rand(1, 10, 3) - 0.5
    assert torch.isfinite(tp.model(pts, torch.tensor([0]))).all()
    expr = load_expression(os.path.join(out, "runs", "expression", "checkpoint.pt"))
    assert torch.equal(expr.z_id, tp.codes)
    assert len(expr.expression_keys) == len(expr.codes)
    with pytest.raises(ValueError, match="expression-model checkpoint"):
        load_identity(os.path.join(out, "runs", "expression", "checkpoint.pt"))
    with pytest.raises(ValueError, match="not an expression-model checkpoint"):
        load_expression(os.path.join(out, "runs", "tp", "checkpoint.pt"))
    with pytest.raises(FileNotFoundError):
        load_identity(os.path.join(out, "nope.pt"))
    bad = os.path.join(out, "bad.pt")
    with open(bad, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_identity(bad)


def test_eval_cli_writes_table(demo, tmp_path, capsys):
    out, _ = demo
    runs = os.path.join(out, "runs")
    rc = cli_main(["eval", "--data", os.path.join(out, "data"), "--model", f"TP={runs}/tp/checkpoint.pt",
                   "--model", f"NPM={runs}/npm/checkpoint.pt", "--out", str(tmp_path), "--mesh-resolution", "24",
                   "--metric-points", "2000", "--scan-points", "300", "--iterations", "8", "--no-progress"])
    assert rc == 0
    with open(tmp_path / "eval.json") as f:
        result = json.load(f)
    assert set(result["methods"]) == {"TP", "NPM"}
    assert all(math.isfinite(v) for m in result["methods"].values() for r in m.values() for v in r.values())
    md = (tmp_path / "eval.md").read_text()
    assert md.startswith("| Method | L1-Chamfer face") and "| TP |" in md and "| NPM |" in md
    assert "| TP |" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "meshes")) == sorted(
        f"{r['identity']}_{m}.ply" for r in result["per_identity"] for m in ("TP", "NPM", "gt"))
    assert result["settings"]["schedule"]["iterations"] == 8 and result["settings"]["sparse_mesh"] is False
    assert result["settings"]["schedule"]["relative_reg"] == "auto"
    assert len(result["settings"]["schedule"]["milestones"]) == 3   # the whole (rescaled) schedule
    rc = cli_main(["eval", "--data", os.path.join(out, "data"), "--model", f"TP={runs}/tp/checkpoint.pt",
                   "--out", str(tmp_path / "sparse"), "--mesh-resolution", "24", "--sparse-mesh", "--metric-points",
                   "2000", "--scan-points", "300", "--iterations", "8", "--relative-reg", "true", "--no-progress"])
    with open(tmp_path / "sparse" / "eval.json") as f:
        sparse = json.load(f)
    assert rc == 0 and sparse["settings"]["sparse_mesh"] is True and sparse["settings"]["schedule"]["relative_reg"] is True
    assert all(math.isfinite(v) for r in sparse["methods"]["TP"].values() for v in r.values())
    assert cli_main(["eval", "--data", os.path.join(out, "data"), "--model", "TP", "--out", str(tmp_path)]) == 2
    assert "NAME=CHECKPOINT" in capsys.readouterr().err


def test_eval_interrupted_continues_where_it_stopped(demo, tmp_path, monkeypatch, capsys):
    """`npht eval` saves eval_partial.json after every scan; run again with the same settings
    it fits only what is missing and gives the uninterrupted run's table; other settings
    (or --fresh) start again."""
    import npht.eval.metrics as metrics_mod

    out, _ = demo
    runs = os.path.join(out, "runs")
    args = ["eval", "--data", os.path.join(out, "data"), "--model", f"TP={runs}/tp/checkpoint.pt",
            "--model", f"NPM={runs}/npm/checkpoint.pt", "--expression", f"TP={runs}/expression/checkpoint.pt",
            "--mesh-resolution", "24", "--metric-points", "2000", "--scan-points", "300", "--iterations", "8",
            "--no-progress"]
    assert cli_main(args + ["--out", str(tmp_path / "whole")]) == 0
    with open(tmp_path / "whole" / "eval.json") as f:
        whole = json.load(f)
    assert len(whole["per_identity"]) >= 2 and whole["resumed_results"] == 0
    assert not os.path.exists(tmp_path / "whole" / "eval_partial.json")

    cut = tmp_path / "cut"
    real, calls = metrics_mod.evaluate_meshes, []

    def dying(*a, **k):  # Ctrl-C while scoring the second scan (the first posed one)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(metrics_mod, "evaluate_meshes", dying)
    assert cli_main(args + ["--out", str(cut)]) == 130
    monkeypatch.undo()
    with open(cut / "eval_partial.json") as f:
        partial = json.load(f)
    assert len(partial["per_identity"]) == 1 and set(partial["per_identity"][0]["methods"]) == {"TP", "NPM"}
    capsys.readouterr()
    assert cli_main(args + ["--out", str(cut)]) == 0
    assert "(2 (scan, method) results taken from the interrupted run's" in capsys.readouterr().out
    with open(cut / "eval.json") as f:
        resumed = json.load(f)
    assert resumed["resumed_results"] == 2 and resumed["methods"] == whole["methods"]
    assert not os.path.exists(cut / "eval_partial.json")
    # other settings: the partial results are not taken
    with open(cut / "eval_partial.json", "w") as f:
        json.dump(partial, f)
    with pytest.warns(RuntimeWarning, match="other settings or checkpoints: starting again"):
        assert cli_main(args[:-2] + ["9", "--no-progress", "--out", str(cut)]) == 0
    with open(cut / "eval.json") as f:
        assert json.load(f)["resumed_results"] == 0
    with open(cut / "eval_partial.json", "w") as f:
        json.dump(partial, f)
    assert cli_main(args + ["--out", str(cut), "--fresh"]) == 0
    with open(cut / "eval.json") as f:
        fresh = json.load(f)
    assert fresh["resumed_results"] == 0 and fresh["methods"] == whole["methods"]


def test_eval_started_again_removes_the_previous_outputs(demo, tmp_path, capsys):
    """A re-run that does not resume (other settings: here without the expression model) leaves
    no mesh of the earlier run; run folders stand for their checkpoints (--model TP=RUN)."""
    out, _ = demo
    runs = os.path.join(out, "runs")
    args = ["eval", "--data", os.path.join(out, "data"), "--model", f"TP={runs}/tp", "--out", str(tmp_path),
            "--mesh-resolution", "16", "--metric-points", "500", "--scan-points", "200", "--iterations", "2",
            "--no-progress"]
    assert cli_main(args + ["--expression", f"TP={runs}/expression"]) == 0
    with open(tmp_path / "eval.json") as f:
        first = json.load(f)
    assert first["settings"]["checkpoints"]["TP"] == f"{runs}/tp/checkpoint.pt"
    assert any(n.endswith("_TP_posed.ply") for n in os.listdir(tmp_path / "meshes"))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "meshes" / "my_scan.ply").write_text("mine")  # no <scan>_gt.ply beside it: not the command's
    capsys.readouterr()
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    with open(tmp_path / "eval.json") as f:
        second = json.load(f)
    assert sorted(os.listdir(tmp_path / "meshes")) == sorted(
        [f"{r['identity']}_{m}.ply" for r in second["per_identity"] for m in ("TP", "gt")] + ["my_scan.ply"])
    n = 2 * len(first["per_identity"])   # each scan: the method's mesh and the ground truth
    assert f"npht eval: starting again in {tmp_path}: removed {n + 2} files of the previous evaluation (eval.json, " \
           f"eval.md, {n} meshes/*.ply)" in captured.err, captured.err
    assert (tmp_path / "notes.txt").read_text() == "mine"   # not the command's: kept
    assert (tmp_path / "meshes" / "my_scan.ply").read_text() == "mine"
    assert "| TP posed |" not in (tmp_path / "eval.md").read_text()


def test_eval_posed_scans_with_an_expression_model(demo, tmp_path, capsys):
    out, _ = demo
    runs = os.path.join(out, "runs")
    rc = cli_main(["eval", "--data", os.path.join(out, "data"), "--model", f"TP={runs}/tp/checkpoint.pt",
                   "--model", f"NPM={runs}/npm/checkpoint.pt", "--expression", f"TP={runs}/expression/checkpoint.pt",
                   "--out", str(tmp_path), "--mesh-resolution", "24", "--metric-points", "2000",
                   "--scan-points", "300", "--iterations", "8", "--no-progress"])
    assert rc == 0
    with open(tmp_path / "eval.json") as f:
        result = json.load(f)
    assert set(result["methods"]) == {"TP", "NPM", "TP posed"}
    posed = [r for r in result["per_identity"] if r["expression"] != "neutral"]
    assert len(posed) == result["settings"]["posed_scans"] > 0
    assert all(set(r["methods"]) == {"TP posed"} for r in posed)
    assert all(math.isfinite(v) for r in result["methods"]["TP posed"].values() for v in r.values())
    assert "| TP posed |" in (tmp_path / "eval.md").read_text()
    # the posed mesh is the fitted neutral mesh moved by the forward deformation: same faces
    import trimesh
    name = f"{posed[0]['identity']}_{posed[0]['expression']}"
    assert len(trimesh.load(tmp_path / "meshes" / f"{name}_TP_posed.ply").faces) > 0
    # the thesis' two steps by default (joint fit, then z_ex alone); the joint fit only on request:
    # the same neutral rows, other posed ones
    assert result["settings"]["refine_expression"] is True
    rc = cli_main(["eval", "--data", os.path.join(out, "data"), "--model", f"TP={runs}/tp/checkpoint.pt",
                   "--model", f"NPM={runs}/npm/checkpoint.pt", "--expression", f"TP={runs}/expression/checkpoint.pt",
                   "--out", str(tmp_path / "joint"), "--mesh-resolution", "24", "--metric-points", "2000",
                   "--scan-points", "300", "--iterations", "8", "--no-progress", "--no-expression-refine"])
    with open(tmp_path / "joint" / "eval.json") as f:
        joint = json.load(f)
    assert rc == 0 and joint["settings"]["refine_expression"] is False
    assert joint["methods"]["TP"] == result["methods"]["TP"]
    assert joint["methods"]["TP posed"] != result["methods"]["TP posed"]
    # an expression model for a method that is not evaluated
    assert cli_main(["eval", "--data", os.path.join(out, "data"), "--model", f"TP={runs}/tp/checkpoint.pt",
                     "--expression", f"NPM={runs}/expression/checkpoint.pt", "--out", str(tmp_path / "x"),
                     "--no-progress"]) == 2
    assert "not among the models" in capsys.readouterr().err


def test_timing_table():
    rows = op_timings("cpu", quick=True, reps=1)
    assert all(r["speedup"] == pytest.approx(r["reference_ms"] / r["npht_ms"]) for r in rows)
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| render_step |" in table
    with pytest.raises(ValueError, match="reps"):
        op_timings("cpu", quick=True, reps=0)


def test_timing_interleaves_the_two_sides():
    from npht.demo.timing import _time_pair
    calls = []
    out = _time_pair({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), 3)
    assert calls == ["a", "b"] * 4  # one warm-up each, then a, b alternating
    assert set(out) == {"a", "b"} and all(out[k]["ms"] >= 0 and "peak_mem_mb" not in out[k] for k in out)


def test_device_configs():
    """CPU: the cpu-demo presets; CUDA: the gpu-demo ones, each with its NPM beside it at the
    tri-plane run's code size, batch, learning rates and stages."""
    from npht.demo.pipeline import _npm_config
    from npht.train import TrainConfig
    from npht.train.expression import EXPRESSION_PRESETS

    assert DemoConfig.for_device("cpu").preset == "cpu-demo"
    gpu = DemoConfig.for_device("cuda")
    assert gpu.preset == "gpu-demo" and gpu.grid_resolution == 256 and gpu.metric_points == 2_500_000
    for preset, size in (("cpu-demo", (64, 6)), ("gpu-demo", (256, 8))):
        assert preset in EXPRESSION_PRESETS
        base = TrainConfig.preset(preset)
        npm = _npm_config(preset, base, seed=3)
        assert npm.model == "npm" and (npm.npm_hidden, npm.npm_layers) == size and npm.seed == 3
        assert (npm.z_dim, npm.batch_size, npm.counts, npm.lr, npm.stage_epochs) == \
            (base.z_dim, base.batch_size, base.counts, base.lr, base.stage_epochs)
        assert npm.weights == TrainConfig.preset("npm").weights
    full = _npm_config("npht-256", TrainConfig.preset("npht-256"))
    assert (full.npm_hidden, full.npm_layers, full.lr) == (1024, 8, TrainConfig.preset("npm").lr)
