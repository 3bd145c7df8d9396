"""Identity trainer on a tiny prepared dataset (cpu-demo-sized config)."""

import csv
import math
import os

import numpy as np
import pytest
import torch

from npht.train import checkpoint as ckpt_mod
from npht.train.config import PRESETS, TrainConfig
from npht.train.identity import LOG_COLUMNS, IdentityTrainer, collate


def _cfg(stages=(5, 5, 5), **kw):
    base = dict(progress=False, stage_epochs=stages, ckpt_every=0, image_every=0)
    base.update(kw)
    return TrainConfig.preset("cpu-demo", **base)


def _batch(tr):
    return collate([tr.dataset[i] for i in range(len(tr.dataset))])


def _params(tr):
    out = {("m", k): v.clone() for k, v in tr.model.state_dict().items()}
    out.update({("r", k): v.clone() for k, v in tr.density.state_dict().items()})
    if tr.disc is not None:
        out.update({("d", k): v.clone() for k, v in tr.disc.state_dict().items()})
    return out


def test_presets():
    assert set(PRESETS) == {"thesis-64", "npht-256", "cpu-demo", "gpu-demo", "npm"}
    t = TrainConfig.preset("thesis-64")
    assert (t.lr, t.lr_codes, t.lr_disc, t.weight_decay, t.lr_decay) == (5e-5, 1e-3, 2e-4, 0.02, 0.75)
    assert (t.decay_interval, t.decay_interval_codes, t.grad_clip, t.batch_size) == (1000, 2000, 0.1, 4)
    assert t.render_resolution == 64 and t.weights.ss == 20.0 and t.stage_epochs == (5000, 3000, 7000)
    assert TrainConfig.preset("npht-256").render_resolution == 256
    npm = TrainConfig.preset("npm")
    assert npm.model == "npm" and not npm.uses_2d and npm.batch_size == 32
    assert TrainConfig.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.preset("nope")


def test_full_step_every_term_finite(data_root, tmp_path):
    tr = IdentityTrainer(_cfg(), data_root, tmp_path)
    assert tr.stage.index == 1
    before = {k: v.clone() for k, v in tr.disc.state_dict().items()}
    row = tr.step(_batch(tr))
    for k in ("ss", "sn", "eik", "nsp", "edr", "nmr", "g", "tv", "tp", "total", "d", "r1"):
        assert k in row and math.isfinite(row[k]), k
    assert any(not torch.equal(before[k], v) for k, v in tr.disc.state_dict().items())
    assert tr.save_images() is not None


def test_r1_weight_is_lambda_of_eq_4_8_inside_lambda_d(data_root, tmp_path):
    import dataclasses
    base = _cfg()
    rows = {}
    for name, (r1, d) in {"thesis": (5.0, 1.0), "half_d": (5.0, 0.5), "no_r1": (0.0, 1.0)}.items():
        cfg = base.replace(weights=dataclasses.replace(base.weights, r1=r1, d=d))
        torch.manual_seed(0)
        tr = IdentityTrainer(cfg, data_root, tmp_path / name)
        rows[name] = tr.step(_batch(tr))
    assert rows["thesis"]["r1"] > 0 and rows["no_r1"]["r1"] == 0.0
    # lambda_d scales all of L_d, the R1 term included (same first step: same inputs to D)
    assert rows["half_d"]["r1"] == pytest.approx(0.5 * rows["thesis"]["r1"], rel=1e-5)
    assert rows["half_d"]["d"] == pytest.approx(0.5 * rows["thesis"]["d"], rel=1e-5)
    # a config written when the weight was TrainConfig.r1_weight loads into LossWeights.r1
    old = base.to_dict()
    old["r1_weight"] = 2.0
    assert TrainConfig.from_dict(old).weights.r1 == 2.0


def test_stage_switch_removes_2d_terms(data_root, tmp_path):
    tr = IdentityTrainer(_cfg(stages=(0, 5, 5)), data_root, tmp_path)
    assert tr.stage.index == 2
    before = {k: v.clone() for k, v in tr.disc.state_dict().items()}
    row = tr.step(_batch(tr))
    assert not {"nmr", "g", "d", "r1"} & set(row) and "tv" in row and "tp" in row
    assert all(torch.equal(before[k], v) for k, v in tr.disc.state_dict().items())
    tr3 = IdentityTrainer(_cfg(stages=(0, 0, 5)), data_root, tmp_path / "s3")
    row = tr3.step(_batch(tr3))
    assert tr3.stage.index == 3 and not {"nmr", "g", "d", "tv", "tp", "edr"} & set(row)


def test_3d_loss_falls(data_root, tmp_path):
    tr = IdentityTrainer(_cfg(stages=(0, 0, 100)), data_root, tmp_path)
    b = _batch(tr)
    totals = [tr.step(b)["total"] for _ in range(25)]
    assert sum(totals[-5:]) / 5 < 0.5 * sum(totals[:5]) / 5, totals


@pytest.mark.parametrize("stages,n,m", [((0, 10, 10), 3, 3), ((10, 0, 0), 1, 1)])
def test_resume_bit_identical(data_root, tmp_path, stages, n, m):
    a = IdentityTrainer(_cfg(stages), data_root, tmp_path / "a")
    a.train(max_steps=n + m)
    b = IdentityTrainer(_cfg(stages), data_root, tmp_path / "b")
    b.train(max_steps=n)
    c = IdentityTrainer(_cfg(stages), data_root, tmp_path / "b", resume=True)
    assert c.global_step == n
    c.train(max_steps=m)
    pa, pc = _params(a), _params(c)
    assert pa.keys() == pc.keys()
    assert all(torch.equal(pa[k], pc[k]) for k in pa)
    assert c.opt.state_dict()["state"].keys() == a.opt.state_dict()["state"].keys()


def test_resume_after_a_crash_logs_each_step_once(data_root, tmp_path):
    """A run killed after logging a step but before its next checkpoint: the resumed run
    repeats that step, and log.csv keeps one row per step (the dead run's rows after the
    checkpoint are dropped; they were appended again before)."""
    IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path).train(max_steps=2)   # checkpoint at step 2
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "log.csv", "a", newline="") as f:   # step 3 logged, then the process died
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow({**rows[-1], "step": "3"})
    c = IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path, resume=True)
    c.train(max_steps=2)
    with open(tmp_path / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_cpu_data_parallel_warns_about_batchnorm(data_root, tmp_path, monkeypatch):
    """On CPU (gloo) DDP refuses SyncBatchNorm: a generator with BatchNorm then normalises
    each rank's batch, and the trainer says so (N ranks != one process on the combined batch)."""
    import torch.distributed as dist

    from npht.train import identity as identity_mod

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(identity_mod, "rank_and_world", lambda: (0, 2))   # a 2-rank run, as rank 0 sees it
        with pytest.warns(UserWarning, match="BatchNorm normalises each rank's batch"):
            IdentityTrainer(_cfg((0, 5, 5)), data_root, tmp_path / "bn")
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in IdentityTrainer(
            _cfg((0, 5, 5)), data_root, tmp_path / "bn2").model.modules())
    finally:
        dist.destroy_process_group()


def test_checkpoint_mode_follows_the_umask(tmp_path):
    """Atomic saves go through mkstemp (0o600 whatever the umask): the checkpoint gets the
    mode a plain save would give it, e.g. group-readable on a shared project folder."""
    from npht.data.records import atomic_save_npz

    old = os.umask(0o027)
    try:
        ckpt_mod.save_atomic({"a": 1}, str(tmp_path / "c.pt"))
        atomic_save_npz(str(tmp_path / "d.npz"), a=np.zeros(2))   # the prepared data's writer
        torch.save({"a": 1}, str(tmp_path / "plain.pt"))
    finally:
        os.umask(old)
    modes = {n: os.stat(tmp_path / n).st_mode & 0o777 for n in ("c.pt", "d.npz", "plain.pt")}
    assert modes == {"c.pt": 0o640, "d.npz": 0o640, "plain.pt": 0o640}


def test_killed_save_keeps_last_checkpoint(data_root, tmp_path, monkeypatch):
    tr = IdentityTrainer(_cfg((0, 0, 5)), data_root, tmp_path)
    path = tr.save()
    good = ckpt_mod.load_checkpoint(path)
    tr.step(_batch(tr))
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        tr.save()
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    back = ckpt_mod.load_checkpoint(path)
    assert back["global_step"] == good["global_step"] == 0
    assert all(torch.equal(back["model"][k], good["model"][k]) for k in good["model"])


def test_discriminator_resolution(data_root, tmp_path):
    tr = IdentityTrainer(_cfg(), data_root, tmp_path)
    assert tr.disc.resolution == 64
    with pytest.raises(ValueError, match="resolution 64"):
        tr.disc(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="resolution must be one of"):
        IdentityTrainer(_cfg(disc_resolution=None), data_root, tmp_path / "x")


def test_csv_log_columns_and_bf16(data_root, tmp_path):
    tr = IdentityTrainer(_cfg((0, 5, 5), bf16=True), data_root, tmp_path)
    tr.train(max_steps=2)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == LOG_COLUMNS and len(rows) == 2
    assert rows[1]["step"] == "2" and rows[0]["stage"] == "2" and rows[0]["d"] == ""
    assert math.isfinite(float(rows[1]["total"])) and (tmp_path / "checkpoint.pt").exists()
    assert rows[0]["mem_gib"] == ""  # GPU runs only


def test_resumed_log_with_older_columns_is_rewritten(tmp_path):
    """A log.csv from an older npht (other columns) gets this run's header once; its rows
    keep their values, the new columns stay empty, appended rows line up."""
    from npht.train.runlog import RunLog

    old = ("epoch", "step", "total", "gone")
    with open(tmp_path / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old)
        w.writeheader()
        w.writerow({"epoch": 0, "step": 1, "total": 0.5, "gone": 7})
    log = RunLog(str(tmp_path), ("epoch", "step", "total", "mem_gib"), ("total",))
    log.write({"epoch": 0, "step": 2, "total": 0.25, "mem_gib": 1.5}, 2)
    log.write({"epoch": 0, "step": 3, "total": 0.125}, 3)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "total", "mem_gib"]
    assert [(r["step"], r["total"], r["mem_gib"]) for r in rows] == [("1", "0.5", ""), ("2", "0.25", "1.5"),
                                                                      ("3", "0.125", "")]


@pytest.mark.cuda
def test_gpu_run_logs_peak_memory(data_root, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    tr = IdentityTrainer(_cfg((0, 5, 5), device="cuda"), data_root, tmp_path)
    tr.train(max_steps=2)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(0.0 < float(r["mem_gib"]) < 80.0 for r in rows)


@pytest.mark.cuda
def test_gpu_run_resumes(data_root, tmp_path):
    """A cuda run resumes: the checkpoint is read onto the CPU (the RNG states must stay CPU
    byte tensors; ``torch.load(map_location="cuda")`` made ``set_rng_state`` raise), the
    model and optimiser state land on the GPU, and the generators continue where they were."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    cfg = _cfg((0, 5, 5), device="cuda")
    IdentityTrainer(cfg, data_root, tmp_path).train(max_steps=2)
    saved = ckpt_mod.load_checkpoint(str(tmp_path / "checkpoint.pt"))
    c = IdentityTrainer(cfg, data_root, tmp_path, resume=True)
    assert c.global_step == 2 and torch.equal(c.gen.get_state(), saved["gen"])
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert torch.equal(torch.cuda.get_rng_state(), saved["rng"]["cuda"][torch.cuda.current_device()])
    p = next(iter(c.opt.state))
    assert p.is_cuda and all(v.device == p.device for v in c.opt.state[p].values() if v.dim() > 0)
    c.train(max_steps=1)
    assert c.global_step == 3 and all(torch.isfinite(v).all() for v in c.model.state_dict().values())


def test_resample_maps_to_the_render_resolution():
    from npht.train.identity import resample_maps

    v, u = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    mask = (u - 16) ** 2 + (v - 16) ** 2 < 100
    n = torch.nn.functional.normalize(torch.stack([u - 16, v - 16, torch.full_like(u, 8.0)], -1), dim=-1)
    maps, masks = resample_maps((n * mask[..., None])[None, None], mask[None, None], 16)
    assert maps.shape == (1, 1, 16, 16, 3) and masks.shape == (1, 1, 16, 16)
    # the coarse pixel centre (i + 0.5) * 2 is where 4 fine pixels meet: the disc of radius 5
    v2, u2 = torch.meshgrid((torch.arange(16) + 0.5) * 2, (torch.arange(16) + 0.5) * 2, indexing="ij")
    inside = (u2 - 16) ** 2 + (v2 - 16) ** 2 < 90  # clear of the rim
    assert masks[0, 0][inside].all() and not masks[0, 0][(u2 - 16) ** 2 + (v2 - 16) ** 2 > 110].any()
    m = maps[0, 0][masks[0, 0]]
    torch.testing.assert_close(m.norm(dim=-1), torch.ones(len(m)))
    assert (maps[0, 0][~masks[0, 0]] == 0).all()


def test_step_renders_at_another_resolution_than_the_dataset(data_root, tmp_path):
    tr = IdentityTrainer(_cfg(render_resolution=8), data_root, tmp_path)  # the dataset's maps are 16^2
    row = tr.step(_batch(tr))
    assert math.isfinite(row["nmr"]) and row["nmr"] > 0
    assert tr._last_maps[0].shape[-3:-1] == (8, 8)


def test_cli_trains(data_root, tmp_path):
    from npht.cli import main

    out = str(tmp_path / "run")
    assert main(["train", "identity", "--preset", "cpu-demo", "--data", data_root, "--out", out,
                 "--max-steps", "2", "--no-progress", "--device", "cpu"]) == 0
    with open(os.path.join(out, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(math.isfinite(float(r["nmr"])) for r in rows)
    assert os.path.exists(os.path.join(out, "checkpoint.pt"))


@pytest.mark.parametrize("masked", [False, True])
def test_normal_map_loss_counts_the_background_unless_masked(data_root, tmp_path, masked):
    """Default: L_nmr over every pixel (GT background is 0, so fog/floaters there cost);
    ``nmr_masked=True``: the GT mask's pixels only."""
    from npht.train.losses import normal_map_loss

    tr = IdentityTrainer(_cfg(nmr_masked=masked), data_root, tmp_path)
    batch = _batch(tr)
    row = tr.step(batch)
    pred, gt = tr._last_maps
    mask = batch["masks"] if masked else None
    expected = tr.cfg.weights.nmr * normal_map_loss(pred, gt.to(pred.dtype), mask)
    assert row["nmr"] == pytest.approx(float(expected), rel=1e-5)
    other = normal_map_loss(pred, gt.to(pred.dtype), None if masked else batch["masks"])
    assert float(other) != pytest.approx(float(expected) / tr.cfg.weights.nmr, rel=1e-3)


def test_density_beta_is_not_weight_decayed(data_root, tmp_path):
    """AdamW's decoupled decay would pull beta_param to 0 (the density to its sharpest):
    beta sits in a group without decay, the networks keep the thesis' 0.02."""
    tr = IdentityTrainer(_cfg(), data_root, tmp_path)
    density = set(map(id, tr.density.parameters()))
    decays = {id(p): g["weight_decay"] for g in tr.opt.param_groups for p in g["params"]}
    assert density and all(decays[i] == 0.0 for i in density)
    assert {d for i, d in decays.items() if i not in density} == {tr.cfg.weight_decay}
    before = [p.detach().clone() for p in tr.net_params]
    for p in tr.net_params:
        p.grad = torch.zeros_like(p)
    tr.opt.step()
    for p, b in zip(tr.net_params, before):
        if id(p) in density:
            assert torch.equal(p, b)          # zero gradient, no decay: unchanged
        elif b.abs().max() > 0:
            assert p.abs().max() < b.abs().max()  # decayed


def test_resume_from_a_single_group_optimizer_state(data_root, tmp_path):
    """Checkpoints written before the no-decay group held all network parameters and the
    density in one AdamW group: they load, each parameter keeps its moments."""
    a = IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path / "a")
    a.train(max_steps=2)
    state = a.state_dict()
    groups = state["opt"]["param_groups"]
    assert len(groups) == 2
    legacy = dict(groups[0], params=groups[0]["params"] + groups[1]["params"])
    state["opt"] = dict(state["opt"], param_groups=[legacy])
    b = IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path / "b")
    b.load_state_dict(state)
    assert [g["weight_decay"] for g in b.opt.param_groups] == [b.cfg.weight_decay, 0.0]
    assert [g["lr"] for g in b.opt.param_groups] == [g["lr"] for g in a.opt.param_groups]
    for p, q in zip(a.net_params, b.net_params):
        sa, sb = a.opt.state[p], b.opt.state[q]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    b.train(max_steps=1)  # optimiser and scheduler step with the split groups
    assert b.global_step == a.global_step + 1
    assert [g["lr"] for g in b.opt.param_groups] == [g["lr"] for g in a.opt.param_groups]


def test_resume_refuses_other_settings_and_the_cli_takes_the_runs_own(data_root, tmp_path, capsys):
    """A resumed run must train what the checkpoint trained: other model or loss settings are
    a clear error (how it runs may change: stages, device, checkpoint cadence); `npht train
    identity --resume` without --preset continues with the checkpoint's own settings, also
    for a checkpoint written before npm_skip_shrink existed (the old NPM layout)."""
    from npht.cli import main
    from npht.train.checkpoint import load_checkpoint, save_atomic

    out = tmp_path / "run"
    IdentityTrainer(_cfg(decoder_hidden=24), data_root, out).train(max_steps=2)
    with pytest.raises(ValueError, match=r"cannot resume .*decoder_hidden=24 \(this run: 32\)"):
        IdentityTrainer(_cfg(), data_root, out, resume=True)
    more = IdentityTrainer(_cfg((9, 9, 9), decoder_hidden=24, ckpt_every=5), data_root, out, resume=True)
    assert more.global_step == 2
    # the CLI: no --preset -> the run's settings (a cpu-demo preset would differ in decoder_hidden)
    args = ["train", "identity", "--data", data_root, "--out", str(out), "--max-steps", "1", "--no-progress",
            "--device", "cpu"]
    assert main(args + ["--resume"]) == 0
    s = load_checkpoint(str(out / "checkpoint.pt"))
    assert s["global_step"] == 3 and s["config"]["decoder_hidden"] == 24
    capsys.readouterr()
    assert main(args + ["--resume", "--preset", "cpu-demo"]) == 2
    assert "decoder_hidden=24 (this run: 32)" in capsys.readouterr().err
    # an NPM run from before the NPHM skip layout resumes with its layout
    npm = tmp_path / "npm"
    IdentityTrainer(TrainConfig.preset("npm", z_dim=8, npm_hidden=32, npm_layers=6, npm_skip_shrink=False,
                                       progress=False, ckpt_every=0, image_every=0, stage_epochs=(5, 5, 5)),
                    data_root, npm).train(max_steps=1)
    s = load_checkpoint(str(npm / "checkpoint.pt"))
    del s["config"]["npm_skip_shrink"]
    save_atomic(s, str(npm / "checkpoint.pt"))
    assert main(["train", "identity", "--data", data_root, "--out", str(npm), "--max-steps", "1", "--no-progress",
                 "--resume", "--device", "cpu"]) == 0
    assert load_checkpoint(str(npm / "checkpoint.pt"))["global_step"] == 2


@pytest.mark.parametrize("bad, match", [
    (dict(fused_matmul="cublas"), "fused_matmul must be 'torch' or 'triton'"),
    (dict(fused_gradient=False, fused_matmul="triton"), r"fused_matmul configure .*set fused_gradient=True"),
    (dict(fused_gradient=False, fused_checkpoint=True), "fused_checkpoint configure"),
    (dict(fused_h16=True), "fused_h16 stores float16 .*set fused_matmul='triton'"),
    (dict(fused_d16=True), "fused_d16 stores float16 .*set fused_matmul='triton'"),
    (dict(fused_keep=True, bf16=True), "bf16 runs the decoder's gradient through autograd"),
    (dict(model="npm", fused_gradient=True, fused_keep=True), "'npm' model computes its gradient with autograd"),
])
def test_fused_gradient_options_are_checked(data_root, tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**bad).check()
    with pytest.raises(ValueError, match=match):
        IdentityTrainer(_cfg(**bad), data_root, tmp_path)
    # a preset's checkpointed shading pass stays allowed with bf16 (it then runs autograd)
    assert TrainConfig.preset("npht-256", bf16=True).check().bf16


def test_step_with_triton_products_float16_h_and_tf32(data_root, tmp_path, monkeypatch):
    """fused_matmul="triton", fused_h16, fused_keep and tf32 reach the decoder's fused
    gradient in the 3D terms and in the shading pass, TF32 ("high") holds in both and in the
    backward (the Triton products read it at launch) and in EDR's SDF, and is restored after
    the step; the sampler's no-grad SDF evaluations stay in IEEE float32; the step's terms and gradients
    match the torch-product step's to float16-storage rounding."""
    from npht.ops._backend import kernels

    mm = kernels("triton", "mlp_mm")
    fast = dict(fused_matmul="triton", fused_h16=True, fused_d16=True, fused_keep=True, tf32=True)
    rows, grads = {}, {}
    for name, kw in (("torch", {}), ("fast", fast)):
        torch.manual_seed(0)
        # a checkpointed shading pass (npht-256's) beside the 3D terms' kept one
        tr = IdentityTrainer(_cfg(fused_checkpoint=True, **kw), data_root, tmp_path / name)
        calls, launches, sdf_calls = [], [], []
        dec = tr.model.decoder
        sdf_and_gradient, sdf, launch = dec.sdf_and_gradient, dec.sdf, mm._launch

        def spy_grad(*args, **kwargs):
            calls.append((kwargs.get("mlp_matmul"), kwargs.get("mlp_h_dtype"), kwargs.get("mlp_keep_gradient_pass"),
                          kwargs.get("checkpoint", False), torch.get_float32_matmul_precision(),
                          kwargs.get("mlp_d_dtype")))
            return sdf_and_gradient(*args, **kwargs)

        def spy_sdf(*args, **kwargs):
            sdf_calls.append((torch.is_grad_enabled(), torch.get_float32_matmul_precision()))
            return sdf(*args, **kwargs)

        def spy_launch(*args, **kwargs):
            launches.append(torch.get_float32_matmul_precision())
            return launch(*args, **kwargs)

        monkeypatch.setattr(dec, "sdf_and_gradient", spy_grad)
        monkeypatch.setattr(dec, "sdf", spy_sdf)
        monkeypatch.setattr(mm, "_launch", spy_launch)
        rows[name] = tr.step(_batch(tr))
        monkeypatch.undo()
        grads[name] = {k: p.grad.to_dense() for k, p in tr.model.named_parameters() if p.grad is not None}
        assert torch.get_float32_matmul_precision() == "highest"  # restored
        # the sampler's SDF (no grad): IEEE float32; EDR's (with grad): TF32 with tf32
        assert set(sdf_calls) == {(False, "highest"), (True, "high" if name == "fast" else "highest")}
        if name == "torch":
            assert {c[:3] for c in calls} == {("torch", None, False)} and not launches
            continue
        # the 3D terms (keep) and the shading pass (checkpointed: keep does not apply there)
        assert {c[:4] for c in calls} == {("triton", torch.float16, True, False),
                                          ("triton", torch.float16, True, True)}
        assert {c[4] for c in calls} == {"high"} and {c[5] for c in calls} == {torch.float16}
        # forward and backward launches of the Triton products, all under TF32
        assert len(launches) > 10 and set(launches) == {"high"}
    assert rows["torch"].keys() == rows["fast"].keys()
    for k, v in rows["torch"].items():
        if k != "time":
            assert rows["fast"][k] == pytest.approx(v, rel=2e-3, abs=1e-6), k
    # the step's gradients (torch products vs Triton ones with float16 pre-activations: 1.8e-3 at most
    # on this config; the Triton products alone in float32 match to rounding)
    assert grads["torch"].keys() == grads["fast"].keys() and len(grads["torch"]) > 10
    for k, g in grads["torch"].items():
        assert float((grads["fast"][k] - g).norm()) <= 1e-2 * float(g.norm()), k


def test_tf32_without_the_fused_gradient(data_root, tmp_path, monkeypatch):
    """tf32 with autograd's decoder gradient (thesis-64's): every SDF evaluation with grad (3D
    terms, EDR, the renderer's shading) runs under TF32, the no-grad ones (the sampler, the
    weights pass) in IEEE float32."""
    tr = IdentityTrainer(_cfg(fused_gradient=False, tf32=True), data_root, tmp_path)
    seen, sdf = set(), tr.model.decoder.sdf

    def spy(*args, **kwargs):
        seen.add((torch.is_grad_enabled(), torch.get_float32_matmul_precision()))
        return sdf(*args, **kwargs)

    monkeypatch.setattr(tr.model.decoder, "sdf", spy)
    tr.step(_batch(tr))
    assert seen == {(True, "high"), (False, "highest")}
    assert torch.get_float32_matmul_precision() == "highest"


def test_cli_fused_options(data_root, tmp_path):
    """`npht train identity --fused-gradient --fused-matmul triton --fused-h16 --tf32` sets the
    config (saved in the checkpoint); these settings may change on --resume (how it runs)."""
    from npht.cli import main
    from npht.train.checkpoint import load_checkpoint

    out = str(tmp_path / "run")
    args = ["train", "identity", "--preset", "thesis-64", "--data", data_root, "--out", out, "--max-steps", "1",
            "--no-progress", "--epochs", "0", "1", "1", "--batch-size", "2", "--device", "cpu"]
    assert main(args + ["--fused-gradient", "--fused-matmul", "triton", "--fused-h16", "--fused-d16", "--fused-keep",
                        "--tf32"]) == 0
    cfg = load_checkpoint(os.path.join(out, "checkpoint.pt"))["config"]
    assert (cfg["fused_gradient"], cfg["fused_matmul"], cfg["fused_h16"], cfg["fused_d16"], cfg["fused_keep"],
            cfg["tf32"]) == (True, "triton", True, True, True, True)
    assert main(args + ["--fused-gradient", "--resume"]) == 0  # back to torch products, float32
    s = load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert s["global_step"] == 2 and s["config"]["fused_matmul"] == "torch" and not s["config"]["tf32"]


def _poison(tr, monkeypatch, bad_steps):
    """The generator-side loss is NaN at the (1-based) global steps in ``bad_steps``."""
    losses = tr._losses

    def poisoned(batch, weights):
        terms, maps = losses(batch, weights)
        if tr.global_step + 1 in bad_steps:
            terms["total"] = terms["total"] * float("nan")
        return terms, maps

    monkeypatch.setattr(tr, "_losses", poisoned)


def test_non_finite_step_is_skipped(data_root, tmp_path, monkeypatch):
    """A step with non-finite gradients leaves parameters, BatchNorm statistics and optimiser
    states as they were (a warning says so, the counters count it); the steps around it
    train as usual."""
    tr = IdentityTrainer(_cfg(), data_root, tmp_path)
    batch = _batch(tr)
    _poison(tr, monkeypatch, {2})
    tr.step(batch)
    before = _params(tr)
    opt_before = {k: v.clone() for k, v in tr.opt.state_dict()["state"][0].items() if torch.is_tensor(v)}
    with pytest.warns(RuntimeWarning, match="step 2: non-finite generator side gradients .*update skipped"):
        row = tr.step(batch)
    assert math.isnan(row["total"]) and tr.global_step == 2
    after = _params(tr)
    for k, v in before.items():
        if k[0] != "d":  # the discriminator's own loss was finite: it stepped
            assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k[0] == "d")
    assert all(torch.equal(tr.opt.state_dict()["state"][0][k], v) for k, v in opt_before.items())
    assert (tr.skipped_steps, tr.nonfinite_run) == (1, 1)
    tr.step(batch)
    assert (tr.skipped_steps, tr.nonfinite_run) == (1, 0)
    assert all(torch.isfinite(v).all() for v in _params(tr).values())
    s = ckpt_mod.load_checkpoint(tr.save())
    assert (s["skipped_steps"], s["nonfinite_run"]) == (1, 0)


def test_diverged_run_stops_with_its_state_saved(data_root, tmp_path, monkeypatch):
    tr = IdentityTrainer(_cfg((0, 0, 50)), data_root, tmp_path)
    monkeypatch.setattr(IdentityTrainer, "MAX_NONFINITE_RUN", 3)
    _poison(tr, monkeypatch, {3, 4, 5, 6})
    with pytest.warns(RuntimeWarning), pytest.raises(FloatingPointError, match=r"the last 3 steps \(up to step 5\)"):
        tr.train(max_steps=10)
    s = ckpt_mod.load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert s["global_step"] == 5 and s["nonfinite_run"] == 3
    assert all(torch.isfinite(v).all() for v in s["model"].values())


def _after_step(tr, monkeypatch, at_step: int, action) -> None:
    """``tr`` calls ``action()`` at the end of its step ``at_step`` (e.g. raises a signal on itself)."""
    step = tr.step

    def step_then_act(batch):
        row = step(batch)
        if tr.global_step == at_step:
            action()
        return row

    monkeypatch.setattr(tr, "step", step_then_act)


def _signal_after_step(tr, monkeypatch, at_step: int, signum) -> None:
    """``tr`` raises ``signum`` on itself at the end of its step ``at_step`` (as if sent then)."""
    import signal

    _after_step(tr, monkeypatch, at_step, lambda: signal.raise_signal(signum))


def test_ctrl_c_stops_after_the_step_saves_and_resumes_bit_identically(data_root, tmp_path, monkeypatch):
    """The first SIGINT lets the current step finish, saves, raises KeyboardInterrupt and
    restores the previous handler; resuming then gives the uninterrupted run's parameters.
    The CLI reports it with exit code 130."""
    import signal

    from npht.cli import main

    whole = IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path / "whole")
    whole.train(max_steps=5)
    tr = IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path / "cut")
    _signal_after_step(tr, monkeypatch, 2, signal.SIGINT)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 2"):
        tr.train(max_steps=5)
    assert signal.getsignal(signal.SIGINT) is handler
    rest = IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path / "cut", resume=True)
    assert rest.global_step == 2
    rest.train(max_steps=3)
    pa, pb = _params(whole), _params(rest)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # the CLI
    from npht.train import identity as identity_mod

    def interrupted_train(self, epochs=None, max_steps=None):
        raise KeyboardInterrupt("stopped at step 7; checkpoint x (continue with --resume)")

    monkeypatch.setattr(identity_mod.IdentityTrainer, "train", interrupted_train)
    assert main(["train", "identity", "--preset", "cpu-demo", "--data", data_root, "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 130


def test_repeated_signal_is_one_request_a_later_one_aborts(data_root, tmp_path, monkeypatch):
    """Two SIGTERMs at once (a scheduler signals every process, torchrun forwards its own) are
    one request: the step finishes and is saved. A second signal after ``REPEAT_S`` aborts at
    once: KeyboardInterrupt, not Stopped, nothing saved on the way, handlers restored."""
    import signal
    import time

    from npht.train.runlog import Stopped, _StopOnSignal

    def signal_then_another_later():
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.1)
        signal.raise_signal(signal.SIGINT)
        raise AssertionError("the second signal did not abort")

    tr = IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path / "twice")
    _after_step(tr, monkeypatch, 2, lambda: [signal.raise_signal(signal.SIGTERM) for _ in range(2)])
    with pytest.raises(Stopped, match=r"stopped at step 2 \(SIGTERM\)"):
        tr.train(max_steps=4)
    assert ckpt_mod.load_checkpoint(str(tmp_path / "twice" / "checkpoint.pt"))["global_step"] == 2

    monkeypatch.setattr(_StopOnSignal, "REPEAT_S", 0.05)
    tr = IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path / "abort")
    _after_step(tr, monkeypatch, 1, signal_then_another_later)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as e:
        tr.train(max_steps=4)
    assert not isinstance(e.value, Stopped)
    assert not (tmp_path / "abort" / "checkpoint.pt").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_stopped_torchrun_cli_run_frees_the_trainer_before_the_process_group(data_root, tmp_path, monkeypatch):
    """Under torchrun the CLI frees the trainer (its DDP holds the process group) before it
    destroys the group, also when a stop signal ends the run: the Stopped traceback's frames
    would otherwise keep the trainer alive past the group."""
    import signal
    import weakref

    from npht.cli import main
    from npht.train import identity as identity_mod

    made, at_destroy = [], []
    init = identity_mod.IdentityTrainer.__init__

    def init_then_signal_after_step_1(self, *a, **k):
        init(self, *a, **k)
        made.append(weakref.ref(self))
        step = self.step

        def step_then_signal(batch):   # no monkeypatch here: it would hold the trainer
            row = step(batch)
            if self.global_step == 1:
                signal.raise_signal(signal.SIGINT)
            return row

        self.step = step_then_signal

    monkeypatch.setattr(identity_mod.IdentityTrainer, "__init__", init_then_signal_after_step_1)
    monkeypatch.setattr(identity_mod, "setup_distributed", lambda device: (device, True))   # as under torchrun
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: at_destroy.append([r() for r in made]))
    assert main(["train", "identity", "--preset", "cpu-demo", "--data", data_root, "--out", str(tmp_path / "run"),
                 "--no-progress", "--device", "cpu", "--epochs", "0", "10", "10", "--image-every", "0"]) == 130
    assert len(made) == 1 and at_destroy == [[None]]
    assert ckpt_mod.load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))["global_step"] == 1


def test_sigterm_stops_like_ctrl_c_with_exit_code_143(data_root, tmp_path, monkeypatch):
    """SIGTERM (``kill``, a scheduler's preemption) is handled like Ctrl-C: the step
    finishes, the checkpoint is saved, :class:`Stopped` carries the signal, the CLI exits
    with 128 + 15 and both handlers are restored."""
    import signal

    from npht.cli import main
    from npht.train.runlog import Stopped

    tr = IdentityTrainer(_cfg((0, 10, 10)), data_root, tmp_path / "run")
    _signal_after_step(tr, monkeypatch, 1, signal.SIGTERM)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped, match=r"stopped at step 1 \(SIGTERM\)") as e:
        tr.train(max_steps=4)
    assert e.value.signum == signal.SIGTERM and isinstance(e.value, KeyboardInterrupt)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert ckpt_mod.load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))["global_step"] == 1

    from npht.train import identity as identity_mod

    def terminated_train(self, epochs=None, max_steps=None):
        raise Stopped("stopped at step 3 (SIGTERM); checkpoint x (continue with --resume)", signal.SIGTERM)

    monkeypatch.setattr(identity_mod.IdentityTrainer, "train", terminated_train)
    assert main(["train", "identity", "--preset", "cpu-demo", "--data", data_root, "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 143


def test_loader_workers_ignore_stop_signals(data_root, tmp_path, monkeypatch):
    """The training DataLoader's worker processes ignore SIGINT and SIGTERM (a terminal's
    Ctrl-C reaches them too; one that died of it would fail the main process' next fetch
    before the step boundary where the run stops and saves)."""
    import signal

    tr = IdentityTrainer(_cfg((0, 10, 10), workers=2), data_root, tmp_path)
    getitem = type(tr.dataset).__getitem__

    def item_with_dispositions(self, i):
        item = getitem(self, i)
        item["ignores_stop"] = int(all(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)))
        item["worker_pid"] = os.getpid()
        return item

    monkeypatch.setattr(type(tr.dataset), "__getitem__", item_with_dispositions)
    seen = []
    step = tr.step

    def recording_step(batch):
        seen.append((batch["ignores_stop"].tolist(), batch["worker_pid"].tolist()))
        return step(batch)

    monkeypatch.setattr(tr, "step", recording_step)
    tr.train(max_steps=2)
    assert len(seen) == 2
    for flags, pids in seen:
        assert all(flags) and os.getpid() not in pids
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # the main process still stops on Ctrl-C


def test_ctrl_c_in_a_terminal_with_loader_workers(data_root, tmp_path):
    """A terminal's Ctrl-C reaches its whole process group: the CLI and its DataLoader
    workers (here: a process in its own session, SIGINT to the group). The workers ignore it
    and the run stops after its step, saves, exits 130 without a traceback; ``--resume``
    goes on from the saved step."""
    import signal
    import subprocess
    import sys

    from _procs import signal_when_saved

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "npht", "train", "identity", "--preset", "cpu-demo", "--device", "cpu", "--data",
           data_root, "--out", str(out), "--no-progress", "--workers", "2", "--epochs", "0", "100", "100",
           "--image-every", "0", "--ckpt-every", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    err = signal_when_saved(proc, out / "checkpoint.pt", signal.SIGINT, group=True)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "stopped at step" in err, err
    saved = ckpt_mod.load_checkpoint(str(out / "checkpoint.pt"))["global_step"]
    assert saved >= 1 and f"stopped at step {saved} (SIGINT)" in err, err
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert int(rows[-1]["step"]) == saved  # the checkpoint holds the last logged step
    rest = IdentityTrainer(TrainConfig.from_dict(ckpt_mod.load_checkpoint(str(out / "checkpoint.pt"))["config"]),
                           data_root, out, resume=True)
    assert rest.global_step == saved


def test_cli_device_defaults_to_this_machines(monkeypatch):
    """`npht train ...` without --device trains where the other commands run: cuda when torch
    sees a GPU, else cpu (a resumed run too: the device is not part of what is trained)."""
    import argparse

    from npht.train.checkpoint import RESUME_MAY_CHANGE, cli_overrides

    args = argparse.Namespace(device=None, batch_size=3, no_progress=True)
    assert cli_overrides(args, ("batch_size", "device")) == {"batch_size": 3, "device": "cpu", "progress": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli_overrides(args, ("batch_size", "device"))["device"] == "cuda"
    args.device = "cuda:1"
    assert cli_overrides(args, ("device",))["device"] == "cuda:1"
    assert "device" not in cli_overrides(args, ("batch_size",))  # only commands that take --device
    assert "device" in RESUME_MAY_CHANGE


def test_a_new_run_refuses_a_folder_holding_one(data_root, tmp_path, capsys):
    """Without --resume a folder holding a checkpoint is refused (the new run would overwrite
    it at its first save and append to its log), before any work; its files stay as they were."""
    from npht.cli import main

    out = tmp_path / "run"
    IdentityTrainer(_cfg(), data_root, out).train(max_steps=1)
    before = ((out / "checkpoint.pt").read_bytes(), (out / "log.csv").read_text())
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint.pt at step 1\): pass --resume "
                                         r"\(resume=True\) to continue it, or use a new out folder"):
        IdentityTrainer(_cfg(), data_root, out)
    capsys.readouterr()
    assert main(["train", "identity", "--data", data_root, "--out", str(out), "--max-steps", "1", "--no-progress",
                 "--device", "cpu"]) == 2
    assert "already holds a run (checkpoint.pt at step 1): pass --resume" in capsys.readouterr().err
    assert ((out / "checkpoint.pt").read_bytes(), (out / "log.csv").read_text()) == before


def test_resume_without_a_checkpoint_starts_a_new_run_and_says_so(data_root, tmp_path, capsys):
    """--resume in a folder without a checkpoint (a requeued job's first start, the demo)
    starts a new run; the CLI says so on stderr (a mistyped --out would pass for a resume)."""
    from npht.cli import main

    out = tmp_path / "run"
    assert IdentityTrainer(_cfg(), data_root, out, resume=True).global_step == 0
    assert main(["train", "identity", "--data", data_root, "--out", str(out), "--max-steps", "1", "--no-progress",
                 "--device", "cpu", "--resume"]) == 0
    assert f"npht: no checkpoint in {out}: starting a new run" in capsys.readouterr().err
    assert ckpt_mod.load_checkpoint(str(out / "checkpoint.pt"))["global_step"] == 1
    assert main(["train", "identity", "--data", data_root, "--out", str(out), "--max-steps", "1", "--no-progress",
                 "--device", "cpu", "--resume"]) == 0
    assert "no checkpoint" not in capsys.readouterr().err


def test_a_new_run_keeps_a_stale_log_as_prev(data_root, tmp_path):
    """A log.csv without a checkpoint (a run that died before its first one) is kept as
    log.csv.prev (an older .prev replaced); the new run's log.csv holds its own steps only."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv.prev").write_text("older\n")
    stale = "epoch,step,total\n0,1,0.5\n0,2,0.25\n"
    (out / "log.csv").write_text(stale)
    IdentityTrainer(_cfg(), data_root, out).train(max_steps=1)
    assert (out / "log.csv.prev").read_text() == stale
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert tuple(rows[0]) == LOG_COLUMNS and [r["step"] for r in rows] == ["1"]


def _stale_run_files(out, tag):
    """A dead run's TensorBoard events and image grids (older .prev folders beside them)."""
    for name in ("tb", "images", "tb.prev", "images.prev"):
        (out / name).mkdir(parents=True, exist_ok=True)
    (out / "tb" / f"events.out.tfevents.{tag}").write_text(tag)
    (out / "images" / "step_0000001.png").write_text(tag)
    (out / "tb.prev" / "events.out.tfevents.older").write_text("older")
    (out / "images.prev" / "step_0000009.png").write_text("older")


def test_a_new_run_keeps_stale_tensorboard_events_and_images_as_prev(data_root, tmp_path):
    """tb/ and images/ without a checkpoint (a run that died before its first one) go to
    tb.prev / images.prev as log.csv does (older ones replaced): TensorBoard would show both
    runs' curves in one, and the old step_*.png would pass for the new run's."""
    out = tmp_path / "run"
    _stale_run_files(out, "dead")
    IdentityTrainer(_cfg(image_every=1), data_root, out, resume=True).train(max_steps=1)  # --resume, no checkpoint
    assert sorted(os.listdir(out / "tb.prev")) == ["events.out.tfevents.dead"]
    assert os.listdir(out / "images.prev") == ["step_0000001.png"]
    assert (out / "images.prev" / "step_0000001.png").read_text() == "dead"
    assert not (out / "tb").exists() or "events.out.tfevents.dead" not in os.listdir(out / "tb")
    assert os.listdir(out / "images") == ["step_0000001.png"]   # the new run's own
    assert (out / "images" / "step_0000001.png").read_bytes().startswith(b"\x89PNG")


def test_a_resumed_run_keeps_its_tensorboard_events_and_images(data_root, tmp_path):
    out = tmp_path / "run"
    IdentityTrainer(_cfg(), data_root, out).train(max_steps=1)
    _stale_run_files(out, "this-run")
    IdentityTrainer(_cfg(), data_root, out, resume=True).train(max_steps=1)
    # kept (with tensorboard installed the runs add their own event files beside it)
    assert (out / "tb" / "events.out.tfevents.this-run").read_text() == "this-run"
    assert all(f.startswith("events.out.tfevents.") for f in os.listdir(out / "tb"))
    assert (out / "images" / "step_0000001.png").read_text() == "this-run"
    assert os.listdir(out / "tb.prev") == ["events.out.tfevents.older"]
    assert os.listdir(out / "images.prev") == ["step_0000009.png"]


def test_resume_refuses_an_expression_checkpoint(data_root, tmp_path, capsys):
    from npht.cli import main

    out = tmp_path / "run"
    out.mkdir()
    ckpt_mod.save_atomic({"config": {"z_ex_dim": 8}, "model": {}, "expression_keys": [["a", "smile"]]},
                         str(out / "checkpoint.pt"))
    want = r"cannot resume: .* is an expression-model checkpoint, not an identity-model checkpoint"
    with pytest.raises(ValueError, match=want):
        IdentityTrainer(_cfg(), data_root, out, resume=True)
    args = ["train", "identity", "--data", data_root, "--out", str(out), "--max-steps", "1", "--no-progress",
            "--device", "cpu", "--resume"]
    for extra in ([], ["--preset", "cpu-demo"]):  # the checkpoint's config, or the preset's
        assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert "is an expression-model checkpoint, not an identity-model checkpoint" in err, err
        assert "Traceback" not in err


def test_resume_refuses_data_with_other_identities(data_root, tmp_path):
    """Resuming on a --data folder whose identities are not the checkpoint's: their number
    (else a state-dict size mismatch), or, as many of them, their names (else each code would
    go on training on another person)."""
    out = tmp_path / "run"
    IdentityTrainer(_cfg(), data_root, out).train(max_steps=1)
    s = ckpt_mod.load_checkpoint(str(out / "checkpoint.pt"))
    three = dict(s, model=dict(s["model"], **{"codes.weight": torch.zeros(3, s["model"]["codes.weight"].shape[1])}),
                 identity_names={"a": 0, "b": 1, "c": 2})
    ckpt_mod.save_atomic(three, str(out / "checkpoint.pt"))
    with pytest.raises(ValueError, match=r"trained on 3 identities but .* has 2 training identities"):
        IdentityTrainer(_cfg(), data_root, out, resume=True)
    renamed = dict(s, identity_names={"synth000": 0, "someone": 1})
    ckpt_mod.save_atomic(renamed, str(out / "checkpoint.pt"))
    with pytest.raises(ValueError, match=r"other identities than .*'s training identities \(differing: "
                                         r"\['someone', 'synth001'\]\)"):
        IdentityTrainer(_cfg(), data_root, out, resume=True)


@pytest.mark.parametrize("bad, match", [
    (dict(batch_size=0), "batch_size must be >= 1, got 0"),
    (dict(batch_size=-2), "batch_size must be >= 1, got -2"),
    (dict(stage_epochs=(-1, 0, 0)), r"stage_epochs must be three ints >= 0, got \(-1, 0, 0\)"),
    (dict(ckpt_every=-1), "ckpt_every must be >= 0, got -1"),
    (dict(image_every=-1), "image_every must be >= 0, got -1"),
    (dict(workers=-1), "workers must be >= 0, got -1"),
    # the model first: the npm baseline has no fused gradient ("set fused_gradient" would lead here)
    (dict(model="npm", fused_gradient=False, fused_keep=True), "'npm' model computes its gradient with autograd"),
])
def test_config_counts_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        _cfg().replace(**bad).check()


def test_negative_step_and_epoch_limits_are_refused(data_root, tmp_path, capsys):
    from npht.cli import main

    tr = IdentityTrainer(_cfg(), data_root, tmp_path / "run")
    with pytest.raises(ValueError, match="max_steps must be >= 0, got -1"):
        tr.train(max_steps=-1)
    with pytest.raises(ValueError, match="epochs must be >= 0, got -2"):
        tr.train(epochs=-2)
    tr.train(max_steps=0)  # no step; the checkpoint of the initial state
    assert ckpt_mod.load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))["global_step"] == 0
    for flags, msg in ((["--max-steps", "-1"], "max_steps must be >= 0, got -1"),
                       (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
                       (["--epochs", "-1", "0", "0"], "stage_epochs must be three ints >= 0")):
        out = tmp_path / "cli"
        assert main(["train", "identity", "--data", data_root, "--out", str(out), "--no-progress", "--device", "cpu",
                     *flags]) == 2
        assert msg in capsys.readouterr().err
        assert not out.exists()  # refused before any work
