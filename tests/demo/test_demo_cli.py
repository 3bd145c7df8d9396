"""`npht demo` re-run into a folder holding a demo run with other settings: a message in
the demo's own terms (it has no --overwrite), before any work."""

import json
import os

from npht.cli import main
from npht.demo.pipeline import DemoConfig


def test_rerun_with_other_settings_points_at_another_out(tmp_path, capsys):
    from npht.data.prepare import PrepareConfig

    cfg = DemoConfig.for_device("cpu", quick=True)
    # the data folder of a full (not --quick) demo run there
    old = PrepareConfig(identities=8, test_identities=2, expressions=3, mesh_resolution=96, cameras=32,
                        resolution=64, seed=0).fingerprint()
    os.makedirs(tmp_path / "data")
    with open(tmp_path / "data" / "config.json", "w") as f:
        json.dump(old, f)
    assert cfg.identities != old["identities"]
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} holds a demo run with other settings" in err and "use another --out" in err, err
    assert "--overwrite" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["data"] and os.listdir(tmp_path / "data") == ["config.json"]


def test_stopped_training_says_to_run_the_demo_again(tmp_path, monkeypatch, capsys):
    """The demo has no --resume (running it again continues its runs): a stopped training run
    says so, not the trainers' `--resume`."""
    import pytest

    pytest.importorskip("pyrender")
    from npht.train import runlog

    monkeypatch.setattr(runlog._StopOnSignal, "agreed", lambda self: True)   # a stop asked during step 1
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "npht: interrupted: stopped at step 1 (SIGINT)" in err, err
    assert err.endswith("(continue: run the same `npht demo` command again)\n") and "--resume" not in err, err
    assert os.path.exists(tmp_path / "runs" / "tp" / "checkpoint.pt")
