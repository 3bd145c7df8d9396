"""Expression trainer on a tiny prepared dataset, on top of a briefly trained identity model."""

import csv
import math
import os

import pytest
import torch
from _datasets import prepared

from npht.cli import main
from npht.train.checkpoint import load_checkpoint
from npht.train.config import TrainConfig
from npht.train.expression import (EXPRESSION_LOG_COLUMNS, EXPRESSION_PRESETS, ExpressionConfig, ExpressionData,
                                   ExpressionTrainer, load_identity_checkpoint)
from npht.train.identity import IdentityTrainer, collate
from npht.train.losses import LossWeights


@pytest.fixture(autouse=True)
def _one_thread():
    """The networks here are tiny: intra-op threads only add synchronisation (10x slower
    on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return prepared("expressions", tmp_path_factory.mktemp("heads"))


def _identity_run(data_root, out):
    cfg = TrainConfig.preset("cpu-demo", progress=False, stage_epochs=(0, 0, 5), views=0, ckpt_every=0,
                             image_every=0, weights=LossWeights.thesis().without(("nmr", "g", "d")))
    IdentityTrainer(cfg, data_root, out).train(max_steps=2)
    return os.path.join(out, "checkpoint.pt")


@pytest.fixture(scope="module")
def identity_ckpt(data_root, tmp_path_factory):
    return _identity_run(data_root, str(tmp_path_factory.mktemp("identity")))


def _cfg(**kw):
    base = dict(progress=False, ckpt_every=0)
    base.update(kw)
    return ExpressionConfig.preset("cpu-demo", **base)


def _batch(tr):
    return collate([tr.dataset[i] for i in range(len(tr.dataset))])


def test_presets():
    assert set(EXPRESSION_PRESETS) == {"thesis", "nphm", "cpu-demo", "gpu-demo"}
    t = ExpressionConfig.preset("thesis")
    assert (t.z_ex_dim, t.hidden, t.layers, t.skip, t.beta, t.code_init_std) == (200, 1024, 8, 4, 100.0, 1.0)
    assert (t.weights.c, t.weights.dp, t.weights.r) == (100.0, 1e-5, 5e-5)
    assert (t.lr, t.lr_codes, t.weight_decay, t.lr_decay, t.decay_interval) == (5e-4, 1e-3, 5e-4, 0.5, 600)
    assert (t.grad_clip, t.batch_size, t.pairs, t.epochs) == (0.025, 32, 1000, 2000)
    n = ExpressionConfig.preset("nphm")
    assert (n.hidden, n.layers, n.z_ex_dim, n.skip, n.skip_shrink) == (512, 6, 200, 3, False)
    assert ExpressionConfig.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="unknown expression preset"):
        ExpressionConfig.preset("nope")


def test_codes_indexing_and_frozen_identity(data_root, identity_ckpt, tmp_path):
    tr = ExpressionTrainer(_cfg(), data_root, identity_ckpt, tmp_path)
    recs = tr.dataset.corr.records
    # one code per posed record; every (identity, expression) pair distinct
    assert len(tr.expression_keys) == len(recs) == tr.model.num_expressions == 4
    assert len(set(tr.expression_keys)) == len(recs)
    _, state = load_identity_checkpoint(identity_ckpt)
    assert torch.equal(tr.z_id, state["codes.weight"])
    for i in range(len(tr.dataset)):
        item = tr.dataset[i]
        assert item["code_index"] == i and tr.expression_keys[i] == (item["identity"], item["expression"])
        assert item["identity_index"] == tr.identity_names[item["identity"]]
        assert item["outside"].shape == (tr.cfg.outside_points, 3)
    # the identity model is not trained
    assert not any(p.requires_grad for p in tr.identity_model.parameters())
    opt_params = {id(p) for g in tr.opt.param_groups + tr.opt_codes.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in tr.identity_model.parameters()}


def test_step_every_term_finite_and_zero_initial_deformation(data_root, identity_ckpt, tmp_path):
    tr = ExpressionTrainer(_cfg(), data_root, identity_ckpt, tmp_path)
    b = _batch(tr)
    with torch.no_grad():
        terms = tr.losses(b)
    # zero-initialised output layer: F_ex = 0, so L_c = |posed - neutral|^2, L_dp = 0
    expect = tr.cfg.weights.c * (b["posed"] - b["neutral"]).square().sum(-1).mean()
    assert torch.allclose(terms["c"], expect, rtol=1e-6) and float(terms["dp"]) == 0.0
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    row = tr.step(b)
    for k in ("c", "dp", "r", "total"):
        assert k in row and math.isfinite(row[k]), k
    assert row["c"] > 0 and row["r"] > 0
    after = tr.model.state_dict()
    assert not torch.equal(before["codes.weight"], after["codes.weight"])
    assert any(not torch.equal(before[k], after[k]) for k in before if not k.startswith("codes."))


def test_correspondence_loss_falls(data_root, identity_ckpt, tmp_path):
    tr = ExpressionTrainer(_cfg(batch_size=4), data_root, identity_ckpt, tmp_path)
    tr.train(max_steps=100)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == EXPRESSION_LOG_COLUMNS and len(rows) == 100
    c = [float(r["c"]) for r in rows]
    assert all(math.isfinite(v) for v in c)
    # fresh pairs every epoch: the learned deformation, not memorised points, lowers L_c
    assert sum(c[-5:]) / 5 < 0.2 * sum(c[:5]) / 5, c
    assert (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("name", sorted(EXPRESSION_PRESETS))
def test_every_preset_builds_on_its_identity_codes(name):
    """Each preset's network builds as the trainer builds it on the identity codes it is meant
    for: 512-d (the thesis' and NPM's identity models) or the demo identity preset's."""
    from npht.models import ExpressionModel

    cfg = ExpressionConfig.preset(name)
    for z_id in ((512,) if name in ("thesis", "nphm") else (TrainConfig.preset(name).z_dim,)):
        m = ExpressionModel(z_id, cfg.z_ex_dim, cfg.hidden, cfg.layers, cfg.skip, skip_shrink=cfg.skip_shrink,
                            num_expressions=2, beta=cfg.beta, init_std=cfg.code_init_std)
        x = torch.zeros(1, 5, 3)
        assert m(x, torch.zeros(1, z_id), torch.tensor([1])).shape == (1, 5, 3)
        widths = [lin.out_features for lin in m.mlp.linears[:-1]]
        assert max(widths) == cfg.hidden and len(widths) == cfg.layers, widths


def test_gpu_demo_preset_trains(data_root, identity_ckpt, tmp_path):
    """The GPU demo's expression preset at its own widths (fewer pairs): L_c falls."""
    cfg = ExpressionConfig.preset("gpu-demo", progress=False, ckpt_every=0, pairs=200, batch_size=4)
    tr = ExpressionTrainer(cfg, data_root, identity_ckpt, tmp_path)
    tr.train(max_steps=30)
    with open(tmp_path / "log.csv") as f:
        c = [float(r["c"]) for r in csv.DictReader(f)]
    assert len(c) == 30 and sum(c[-5:]) < 0.5 * sum(c[:5]), c


def test_resume_bit_identical(data_root, identity_ckpt, tmp_path):
    cfg = _cfg(batch_size=3, decay_interval=1, decay_interval_codes=1)   # 2 steps/epoch, lr decays each
    n, m = 3, 3
    a = ExpressionTrainer(cfg, data_root, identity_ckpt, tmp_path / "a")
    a.train(max_steps=n + m)
    b = ExpressionTrainer(cfg, data_root, identity_ckpt, tmp_path / "b")
    b.train(max_steps=n)
    c = ExpressionTrainer(cfg, data_root, identity_ckpt, tmp_path / "b", resume=True)
    assert c.global_step == n and c.epoch == 1 and c.step_in_epoch == 1
    c.train(max_steps=m)
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert sa.keys() == sc.keys() and all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.epoch == c.epoch and a.opt.param_groups[0]["lr"] == c.opt.param_groups[0]["lr"]
    for name in ("opt", "opt_codes"):
        pa, pc = getattr(a, name).state_dict()["state"], getattr(c, name).state_dict()["state"]
        assert pa.keys() == pc.keys()
        for k in pa:
            assert all(torch.equal(pa[k][s], pc[k][s]) for s in pa[k] if isinstance(pa[k][s], torch.Tensor))
    with open(tmp_path / "a" / "log.csv") as fa, open(tmp_path / "b" / "log.csv") as fb:
        la = [(r["step"], r["total"]) for r in csv.DictReader(fa)]
        lb = [(r["step"], r["total"]) for r in csv.DictReader(fb)]
    assert la == lb
    s = load_checkpoint(str(tmp_path / "b" / "checkpoint.pt"))
    assert [tuple(k) for k in s["expression_keys"]] == c.expression_keys and torch.equal(s["z_id"], c.z_id)


@pytest.mark.cuda
def test_gpu_run_resumes(data_root, identity_ckpt, tmp_path):
    """A cuda run resumes (the checkpoint's RNG states are read onto the CPU)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    cfg = _cfg(batch_size=3, device="cuda")
    ExpressionTrainer(cfg, data_root, identity_ckpt, tmp_path).train(max_steps=2)
    saved = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    c = ExpressionTrainer(cfg, data_root, identity_ckpt, tmp_path, resume=True)
    assert c.global_step == 2 and torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert next(c.model.parameters()).is_cuda
    c.train(max_steps=1)
    assert c.global_step == 3 and all(torch.isfinite(v).all() for v in c.model.state_dict().values())


def test_identity_codes_are_matched_by_the_checkpoints_names(data_root, identity_ckpt, tmp_path):
    """Expression data of as many people as the identity run but other ones (another capture
    session, a forgotten --identity-data) is refused: the codes are looked up by the names
    the identity checkpoint stores, not by position in the data folder's numbering (which
    paired each person with another's code)."""
    import json
    import shutil

    other = str(tmp_path / "other")
    shutil.copytree(data_root, other)
    with open(os.path.join(other, "manifest.json")) as f:
        man = json.load(f)
    names = sorted({r["identity"] for r in man["records"]})
    rename = {n: f"person{i}" for i, n in enumerate(names)}
    for r in man["records"]:
        r["identity"] = rename[r["identity"]]
    with open(os.path.join(other, "manifest.json"), "w") as f:
        json.dump(man, f)
    with pytest.raises(ValueError, match="no trained code"):
        ExpressionTrainer(_cfg(), other, identity_ckpt, tmp_path / "run")
    with pytest.raises(ValueError, match="was trained on the identities"):
        ExpressionTrainer(_cfg(), data_root, identity_ckpt, tmp_path / "run2", identity_data_root=other)
    tr = ExpressionTrainer(_cfg(), data_root, identity_ckpt, tmp_path / "run3")
    assert tr.identity_names == load_checkpoint(identity_ckpt)["identity_names"]


def test_cli_trains_and_resumes(data_root, identity_ckpt, tmp_path):
    out = str(tmp_path / "run")
    args = ["train", "expression", "--preset", "cpu-demo", "--data", data_root, "--identity", identity_ckpt,
            "--out", out, "--max-steps", "3", "--batch-size", "2", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert load_checkpoint(os.path.join(out, "checkpoint.pt"))["global_step"] == 3
    assert main(args[:-5] + ["--max-steps", "2", "--batch-size", "2", "--no-progress", "--resume"]) == 0
    s = load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert s["global_step"] == 5 and s["config"]["batch_size"] == 2
    with open(os.path.join(out, "log.csv")) as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["1", "2", "3", "4", "5"]
    # without --preset a resume takes the run's own settings (batch size 2 here)
    no_preset = [a for a in args[:-5] if a not in ("--preset", "cpu-demo")]
    assert main(no_preset + ["--max-steps", "1", "--no-progress", "--resume"]) == 0
    s = load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert s["global_step"] == 6 and s["config"]["batch_size"] == 2


def test_wrong_identity_checkpoints(data_root, identity_ckpt, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read identity checkpoint"):
        ExpressionTrainer(_cfg(), data_root, str(junk), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ExpressionTrainer(_cfg(), data_root, str(tmp_path / "missing.pt"), tmp_path / "x")
    expr = ExpressionTrainer(_cfg(), data_root, identity_ckpt, tmp_path / "e").save()
    with pytest.raises(ValueError, match="not an identity-model checkpoint"):
        ExpressionTrainer(_cfg(), data_root, expr, tmp_path / "x")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an identity-model checkpoint"):
        ExpressionTrainer(_cfg(), data_root, str(tmp_path / "other.pt"), tmp_path / "x")
    # CLI: a clear message and exit status 2
    assert main(["train", "expression", "--data", data_root, "--identity", str(junk), "--out",
                 str(tmp_path / "y"), "--no-progress"]) == 2
    assert "cannot read identity checkpoint" in capsys.readouterr().err


def test_identity_without_trained_code(data_root, identity_ckpt, tmp_path):
    # the expression data has a third identity: the 2-code identity run cannot serve it
    bigger = prepared("expressions3", tmp_path / "three")
    # the checkpoint's names: synth002 has no code
    with pytest.raises(ValueError, match=r"identities \['synth002'\] .* no trained code"):
        ExpressionTrainer(_cfg(), bigger, identity_ckpt, tmp_path / "x")
    with pytest.raises(ValueError, match=r"identities \['synth002'\] .* no trained code"):
        ExpressionTrainer(_cfg(), bigger, identity_ckpt, tmp_path / "x", identity_data_root=data_root)
    # a checkpoint from before the names were saved: the data folder's numbering, its count checked
    s = load_checkpoint(identity_ckpt)
    del s["identity_names"]
    old = str(tmp_path / "old.pt")
    torch.save(s, old)
    with pytest.raises(ValueError, match="has 2 identity codes but .* 3 neutral training identities"):
        ExpressionTrainer(_cfg(), bigger, old, tmp_path / "y")
    with pytest.raises(ValueError, match="no trained code"):
        ExpressionData(data_root, {"synth000": 0}, pairs=4, outside_points=0)


def test_non_finite_step_is_skipped(data_root, identity_ckpt, tmp_path, monkeypatch):
    """As the identity trainer: a step with non-finite gradients leaves the parameters as
    they were, with a warning, and is counted."""
    tr = ExpressionTrainer(_cfg(), data_root, identity_ckpt, tmp_path)
    b = _batch(tr)
    losses = tr.losses

    def poisoned(batch):
        terms = losses(batch)
        terms["total"] = terms["total"] * float("inf")
        return terms

    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    monkeypatch.setattr(tr, "losses", poisoned)
    with pytest.warns(RuntimeWarning, match="step 1: non-finite expression model gradients"):
        tr.step(b)
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    assert (tr.global_step, tr.skipped_steps, tr.nonfinite_run) == (1, 1, 1)
    monkeypatch.undo()
    tr.step(b)
    assert tr.nonfinite_run == 0 and any(not torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_identity_run_folder_for_its_checkpoint(data_root, identity_ckpt, tmp_path, capsys):
    """`--identity RUN`: the run folder's checkpoint.pt (the path recorded is the file's)."""
    run = os.path.dirname(identity_ckpt)
    tr = ExpressionTrainer(_cfg(), data_root, run, tmp_path / "e")
    assert tr.identity_checkpoint == identity_ckpt
    assert main(["train", "expression", "--data", data_root, "--identity", str(tmp_path), "--out",
                 str(tmp_path / "x"), "--no-progress", "--device", "cpu"]) == 2
    assert f"identity checkpoint {str(tmp_path)!r} is a directory without checkpoint.pt" in capsys.readouterr().err


def test_a_new_run_refuses_a_folder_holding_one(data_root, identity_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    ExpressionTrainer(_cfg(), data_root, identity_ckpt, out).train(max_steps=1)
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint.pt at step 1\): pass --resume"):
        ExpressionTrainer(_cfg(), data_root, identity_ckpt, out)
    args = ["train", "expression", "--data", data_root, "--identity", identity_ckpt, "--out", str(out),
            "--max-steps", "1", "--no-progress", "--device", "cpu"]
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a run (checkpoint.pt at step 1)" in capsys.readouterr().err
    assert load_checkpoint(str(out / "checkpoint.pt"))["global_step"] == 1
    fresh = tmp_path / "fresh"
    assert main([a if a != str(out) else str(fresh) for a in args] + ["--resume"]) == 0
    assert f"npht: no checkpoint in {fresh}: starting a new run" in capsys.readouterr().err


def test_resume_refuses_an_identity_checkpoint(data_root, identity_ckpt, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(identity_ckpt, out / "checkpoint.pt")
    want = "is an identity-model checkpoint, not an expression-model checkpoint"
    with pytest.raises(ValueError, match="cannot resume: .*" + want):
        ExpressionTrainer(_cfg(), data_root, identity_ckpt, out, resume=True)
    args = ["train", "expression", "--data", data_root, "--identity", identity_ckpt, "--out", str(out),
            "--max-steps", "1", "--no-progress", "--device", "cpu", "--resume"]
    for extra in ([], ["--preset", "cpu-demo"]):  # the checkpoint's config, or the preset's
        assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err, err


@pytest.mark.parametrize("bad, match", [
    (dict(batch_size=0), "batch_size must be >= 1, got 0"),
    (dict(batch_size=-1), "batch_size must be >= 1, got -1"),
    (dict(epochs=-1), "epochs must be >= 0, got -1"),
    (dict(pairs=0), "pairs must be >= 1, got 0"),
    (dict(outside_points=-1), "outside_points must be >= 0, got -1"),
    (dict(ckpt_every=-1), "ckpt_every must be >= 0, got -1"),
])
def test_config_counts_are_checked(data_root, identity_ckpt, tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**bad).check()
    with pytest.raises(ValueError, match=match):
        ExpressionTrainer(_cfg(**bad), data_root, identity_ckpt, tmp_path)


def test_negative_step_and_epoch_limits_are_refused(data_root, identity_ckpt, tmp_path, capsys):
    tr = ExpressionTrainer(_cfg(), data_root, identity_ckpt, tmp_path / "run")
    with pytest.raises(ValueError, match="max_steps must be >= 0, got -1"):
        tr.train(max_steps=-1)
    with pytest.raises(ValueError, match="epochs must be >= 0, got -1"):
        tr.train(epochs=-1)
    for flags, msg in ((["--max-steps", "-1"], "max_steps must be >= 0, got -1"),
                       (["--batch-size", "-1"], "batch_size must be >= 1, got -1"),
                       (["--epochs", "-1"], "epochs must be >= 0, got -1")):
        out = tmp_path / "cli"
        assert main(["train", "expression", "--data", data_root, "--identity", identity_ckpt, "--out", str(out),
                     "--no-progress", "--device", "cpu", *flags]) == 2
        assert msg in capsys.readouterr().err
        assert not out.exists()  # refused before any work
