"""`npht train`'s messages in the command line's terms: data without the normal maps a preset
needs, a run resumed that is already complete, a stopped run's way to continue."""

import pytest

from npht.cli import main
from npht.data.prepare import PrepareConfig, prepare
from npht.train.config import TrainConfig
from npht.train.identity import IdentityTrainer


@pytest.fixture(scope="module")
def no_maps(tmp_path_factory):
    """2 procedural heads prepared with --cameras 0."""
    out = str(tmp_path_factory.mktemp("no_maps"))
    prepare(PrepareConfig(identities=2, expressions=1, mesh_resolution=24, cameras=0, surface_face=200,
                          surface_nonface=60, ball=60, test_identities=0), out, progress=False)
    return out


def test_data_without_normal_maps(no_maps, tmp_path, capsys):
    args = ["train", "identity", "--data", no_maps, "--max-steps", "1", "--no-progress", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "tp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npht: error: {no_maps} has no normal maps (prepared with --cameras 0), and this preset "
                          "trains with the 2D losses") and "--cameras N" in err and "--preset npm" in err, err
    assert "views" not in err, err
    # the advice holds: the NPM preset trains on it
    assert main(args + ["--out", str(tmp_path / "npm"), "--preset", "npm", "--batch-size", "2"]) == 0


def test_more_views_than_cameras(data_root, tmp_path):
    cfg = TrainConfig.preset("cpu-demo", progress=False, views=5)   # `heads`: 4 cameras
    with pytest.raises(ValueError, match=r"has 4 normal maps per record \(prepared with --cameras 4\); the run draws "
                                         r"5 per step: prepare the data with --cameras 5 or more"):
        IdentityTrainer(cfg, data_root, tmp_path / "r")


def test_resuming_a_complete_run_says_so(data_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "identity", "--data", data_root, "--out", out, "--device", "cpu"]
    assert main(args + ["--epochs", "0", "0", "1", "--no-progress"]) == 0     # 2 identities, batch 2: one step
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{out}: the run is already complete (1 of 1 epochs, 1 step done): nothing to train" in err, err
    assert "train:" not in err   # no (empty) progress bar


def test_stopped_run_says_how_to_continue(data_root, tmp_path, monkeypatch, capsys):
    """`npht train`: with --resume; a trainer's resume_hint replaces it (the demo's)."""
    from npht.train import runlog

    monkeypatch.setattr(runlog._StopOnSignal, "agreed", lambda self: True)   # a stop asked during step 1
    assert main(["train", "identity", "--data", data_root, "--out", str(tmp_path / "a"), "--device", "cpu",
                 "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("npht: interrupted: stopped at step 1 (SIGINT); checkpoint ") and \
        err.endswith("(continue with --resume)\n"), err
    tr = IdentityTrainer(TrainConfig.preset("cpu-demo", progress=False), data_root, tmp_path / "b")
    tr.resume_hint = "continue: run it again"
    with pytest.raises(KeyboardInterrupt, match=r"checkpoint .* \(continue: run it again\)$"):
        tr.train()
