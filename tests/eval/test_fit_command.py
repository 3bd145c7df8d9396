"""`npht fit scan` / `npht fit normals`: a trained identity model fitted to a user's scan or
normal maps (files in, code / mesh / pictures out)."""

import json
import math
import os

import numpy as np
import pytest
import torch

from _backends import interrupted_savez
from npht.cli import main
from npht.eval.fit_command import read_normal_maps, read_scan
from npht.eval.mesh import extract_mesh, model_sdf_fn
from npht.train.checkpoint import save_atomic
from npht.train.config import TrainConfig
from npht.train.identity import build_identity_model
from npht.train.loading import load_identity

NAMES = {"ada": 0, "bob": 1, "cy": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained cpu-demo-sized identity checkpoint whose shape depends on the code: at
    initialisation the planes are ~1e-4 and the SDF all but the decoder's sphere, so the
    generator's head is scaled up (planes ~0.2) and the decoder's feature weights too; the
    codes' SDFs then differ by ~0.025 (mean over the unit box), the shapes stay near-spheres."""
    torch.manual_seed(0)
    cfg = TrainConfig.preset("cpu-demo", samples=(8, 8, 4))
    model = build_identity_model(cfg, len(NAMES))
    with torch.no_grad():
        model.generator.head.weight.mul_(3000.0)
        model.generator.head.bias.mul_(3000.0)
        model.decoder.net[0].weight[:, :-3].mul_(3.0)  # inputs: features, then the point
        model.codes.weight.copy_(torch.randn_like(model.codes.weight))
    path = str(tmp_path_factory.mktemp("run") / "checkpoint.pt")
    save_atomic({"config": cfg.to_dict(), "model": model.state_dict(), "identity_names": NAMES}, path)
    return path


@pytest.fixture(scope="module")
def surface(checkpoint):
    """Points on the surface of identity 'bob' (vertices of its marching-cubes mesh), the mesh."""
    trained = load_identity(checkpoint)
    mesh = extract_mesh(model_sdf_fn(trained.model, trained.codes[1]), resolution=40, clip_radius=1.0)
    return np.asarray(mesh.vertices, dtype=np.float32), mesh


def _fit_json(out):
    with open(os.path.join(out, "fit.json")) as f:
        return json.load(f)


def test_fit_scan_moves_the_surface_onto_the_points(checkpoint, surface, tmp_path, capsys):
    pts, mesh = surface
    scan = tmp_path / "bob.ply"
    mesh.export(str(scan))
    out = str(tmp_path / "fit")
    args = ["fit", "scan", "--model", checkpoint, "--scan", str(scan), "--out", out, "--points", "800",
            "--iterations", "300", "--lambda-id", "0.001", "--resolution", "16", "--yaws", "0", "90",
            "--mesh-resolution", "24", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    assert "fitted 800 scan points" in capsys.readouterr().out
    rec = _fit_json(out)
    assert rec["kind"] == "scan" and rec["points"] == 800 and rec["iterations"] == 300 and rec["lambda_id"] == 0.001
    # the fit pulls the model's surface onto the points (mean |SDF| at them 0.37x the mean
    # code's when written) and the code towards bob's (0.50x the mean code's distance)
    assert rec["mean_abs_sdf_after"] < 0.5 * rec["mean_abs_sdf_before"], rec
    f = np.load(os.path.join(out, "fit.npz"))
    trained = load_identity(checkpoint)
    assert f["code"].shape == (trained.codes.shape[1],) and f["loss"].shape == (300,)
    assert f["loss"][-1] < f["loss"][0]
    bob, mean = trained.codes[1].numpy(), trained.codes.mean(0).numpy()
    assert np.linalg.norm(f["code"] - bob) < 0.7 * np.linalg.norm(mean - bob)
    # the code is the one that scores mean_abs_sdf_after
    with torch.no_grad():
        sdf = trained.model(read_scan(str(scan), 800)[None], torch.from_numpy(f["code"])[None])
    assert abs(float(sdf.abs().mean()) - rec["mean_abs_sdf_after"]) < 1e-6
    assert os.path.getsize(os.path.join(out, "mesh.ply")) > 0 and rec["mesh"]["faces"] > 100
    from PIL import Image

    assert Image.open(os.path.join(out, "fit.png")).size == (2 * 20 + 4, 16 + 8)


@pytest.fixture(scope="module")
def expression_checkpoint(checkpoint, tmp_path_factory):
    """An expression checkpoint (cpu-demo sizes) on the identity checkpoint's codes, its
    output layer random so that the codes move the surface (~0.05)."""
    from npht.models import ExpressionModel
    from npht.train.expression import ExpressionConfig

    torch.manual_seed(1)
    cfg = ExpressionConfig.preset("cpu-demo")
    z_id = load_identity(checkpoint).codes
    expr = ExpressionModel(z_id.shape[1], cfg.z_ex_dim, cfg.hidden, cfg.layers, cfg.skip, num_expressions=2,
                           beta=cfg.beta, skip_shrink=cfg.skip_shrink, init_std=1.0)
    last = [m for m in expr.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.normal_(0.0, 0.05)
        last.bias.zero_()
    path = str(tmp_path_factory.mktemp("expr") / "checkpoint.pt")
    save_atomic({"config": cfg.to_dict(), "model": expr.state_dict(), "z_id": z_id,
                 "expression_keys": [["bob", "smile"], ["ada", "smile"]], "identity_names": NAMES}, path)
    return path


def test_fit_posed_scan_with_an_expression_model(checkpoint, expression_checkpoint, surface, tmp_path, capsys):
    """bob's surface moved by the expression model to expression code 0: fitting identity and
    expression (then the expression alone) brings the root-found SDF at the points down, and
    mesh.ply is the neutral mesh moved forward to the fitted expression."""
    import trimesh

    from npht.fit import posed_vertices
    from npht.train.loading import load_expression

    pts, _ = surface
    trained, expr = load_identity(checkpoint), load_expression(expression_checkpoint)
    z_ex = expr.model.codes.weight[0]
    with torch.no_grad():
        posed = posed_vertices(expr.model, torch.from_numpy(pts), trained.codes[1], z_ex)
    assert 0.01 < (posed - torch.from_numpy(pts)).norm(dim=-1).mean() < 0.2  # the expression moves the surface
    np.save(tmp_path / "posed.npy", posed.numpy())
    out = str(tmp_path / "fit")
    assert main(["fit", "scan", "--model", checkpoint, "--expression", expression_checkpoint, "--scan",
                 str(tmp_path / "posed.npy"), "--out", out, "--points", "400", "--iterations", "300",
                 "--lambda-id", "0.001", "--resolution", "0", "--mesh-resolution", "20", "--device", "cpu",
                 "--no-progress"]) == 0
    assert "fitted 400 scan points (identity and expression)" in capsys.readouterr().out
    rec = _fit_json(out)
    assert rec["expression_refine"] and rec["expression"].endswith("checkpoint.pt")
    assert rec["mean_abs_sdf_after"] < 0.5 * rec["mean_abs_sdf_before"], rec
    f = np.load(os.path.join(out, "fit.npz"))
    assert f["z_ex"].shape == (expr.model.z_ex_dim,) and f["refine_loss"].shape == (300,)
    neutral, mesh = trimesh.load(os.path.join(out, "neutral.ply")), trimesh.load(os.path.join(out, "mesh.ply"))
    assert np.array_equal(neutral.faces, mesh.faces)
    with torch.no_grad():
        moved = posed_vertices(expr.model, torch.from_numpy(np.asarray(neutral.vertices, np.float32)),
                               torch.from_numpy(f["code"]), torch.from_numpy(f["z_ex"]))
    np.testing.assert_allclose(mesh.vertices, moved.numpy(), atol=1e-5)
    # an expression model on other identity codes is refused
    other = str(tmp_path / "other.pt")
    s = torch.load(expression_checkpoint, weights_only=False)
    from npht.models import ExpressionModel

    s["model"] = ExpressionModel(5, 8, 32, 3, None, num_expressions=2).state_dict()
    s["z_id"] = torch.zeros(3, 5)
    save_atomic(s, other)
    assert main(["fit", "scan", "--model", checkpoint, "--expression", other, "--scan", str(tmp_path / "posed.npy"),
                 "--out", str(tmp_path / "x"), "--iterations", "1", "--device", "cpu", "--no-progress"]) == 2
    assert "conditioned on identity codes of size 5" in capsys.readouterr().err
    # ... and one on codes of the right size from another identity run (accepted before)
    s = torch.load(expression_checkpoint, weights_only=False)
    s["z_id"] = s["z_id"] + 0.5
    save_atomic(s, other)
    assert main(["fit", "scan", "--model", checkpoint, "--expression", other, "--scan", str(tmp_path / "posed.npy"),
                 "--out", str(tmp_path / "x"), "--iterations", "1", "--device", "cpu", "--no-progress"]) == 2
    assert "was trained on another identity model than" in capsys.readouterr().err


def test_read_scan_formats_agree(checkpoint, surface, tmp_path):
    pts, mesh = surface
    np.save(tmp_path / "p.npy", pts)
    np.savez(tmp_path / "p.npz", points=pts)
    np.savetxt(tmp_path / "p.xyz", pts)
    np.savetxt(tmp_path / "p.csv", np.concatenate([pts, np.ones((len(pts), 1), np.float32)], 1), delimiter=",")
    ref = read_scan(str(tmp_path / "p.npy"), None)
    assert ref.dtype == torch.float32 and ref.shape == (len(pts), 3)
    torch.testing.assert_close(ref, torch.from_numpy(pts))
    for name in ("p.npz", "p.xyz", "p.csv"):
        torch.testing.assert_close(read_scan(str(tmp_path / name), None), ref, rtol=0, atol=1e-6)
    # subsets: seeded, without repeats
    a, b = read_scan(str(tmp_path / "p.npy"), 100, seed=3), read_scan(str(tmp_path / "p.npy"), 100, seed=3)
    assert torch.equal(a, b) and len(torch.unique(a, dim=0)) == 100
    assert not torch.equal(a, read_scan(str(tmp_path / "p.npy"), 100, seed=4))
    # a mesh (trimesh file or vertices + faces) is sampled on its surface: the points lie on
    # it, where the SDF the mesh was extracted from is ~0 (not at the vertices only)
    trained = load_identity(checkpoint)
    np.savez(tmp_path / "m.npz", vertices=mesh.vertices, faces=mesh.faces)
    mesh.export(str(tmp_path / "m.obj"))
    samples = [read_scan(str(tmp_path / name), 500, seed=1) for name in ("m.npz", "m.obj")]
    torch.testing.assert_close(samples[0], samples[1], rtol=0, atol=1e-5)  # the same mesh, the same seed
    s = samples[0]
    assert s.shape == (500, 3) and torch.cdist(s, ref).min(1).values.max() > 1e-3  # not vertices
    fn = model_sdf_fn(trained.model, trained.codes[1])

    def clipped(x):  # the mesh's function: the shape within the unit ball
        return torch.maximum(fn(x), x.norm(dim=-1) - 1.0).abs()

    at_vertices = clipped(torch.from_numpy(np.asarray(mesh.vertices, np.float32)))
    at_samples, in_box = clipped(s), clipped(torch.rand(500, 3) * 1.2 - 0.6)
    assert at_samples.mean() < 2 * at_vertices.mean() + 1e-3 < 0.1 * in_box.mean()
    # --scale / --offset map into the model's frame
    np.save(tmp_path / "big.npy", pts * 100.0 + 5.0)
    torch.testing.assert_close(read_scan(str(tmp_path / "big.npy"), None, scale=0.01, offset=(-0.05,) * 3), ref,
                               rtol=0, atol=1e-5)


def test_read_scan_errors(tmp_path, surface):
    pts, _ = surface
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_scan(str(tmp_path / "missing.npy"))
    np.save(tmp_path / "flat.npy", pts[:, :2])
    with pytest.raises(ValueError, match=r"expected points \[N, 3\].*shape \(\d+, 2\)"):
        read_scan(str(tmp_path / "flat.npy"))
    bad = pts.copy()
    bad[3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="1 points are not finite"):
        read_scan(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "mm.npy", pts * 100.0)
    with pytest.raises(ValueError, match=r"outside the unit sphere .*--scale / --offset"):
        read_scan(str(tmp_path / "mm.npy"))
    np.savez(tmp_path / "other.npz", xyz=pts)
    with pytest.raises(ValueError, match="no array 'points' nor 'vertices' and 'faces' .*xyz"):
        read_scan(str(tmp_path / "other.npz"))
    (tmp_path / "words.txt").write_text("a b c\n")
    with pytest.raises(ValueError, match="not a table of numbers"):
        read_scan(str(tmp_path / "words.txt"))
    with pytest.raises(ValueError, match="points must be a positive int"):
        read_scan(str(tmp_path / "flat.npy"), 0)


def test_fit_normals_round_trip_with_npht_render(checkpoint, tmp_path, capsys):
    """Maps of identity 'bob' rendered by `npht render` are fitted back from the mean code:
    the angle to the given normals drops, the loss falls, and the cameras come from the
    file (K, cam2world) as from its yaws."""
    renders = str(tmp_path / "r")
    assert main(["render", "--model", checkpoint, "--out", renders, "--resolution", "16", "--yaws", "-30", "30",
                 "--identities", "ada", "bob", "--device", "cpu", "--no-progress"]) == 0
    path = os.path.join(renders, "normals.npz")
    cams, target, mask = read_normal_maps(path, shape=1)
    f = np.load(path)
    assert torch.equal(target, torch.from_numpy(f["normals"][1])) and torch.equal(mask, torch.from_numpy(f["mask"][1]))
    # the yaws alone give the same cameras as the stored K / cam2world
    np.savez(tmp_path / "yaws.npz", normals=f["normals"][1], yaws=f["yaws"])
    cams_y, _, mask_y = read_normal_maps(str(tmp_path / "yaws.npz"))
    torch.testing.assert_close(cams_y.K, cams.K)
    torch.testing.assert_close(cams_y.cam2world, cams.cam2world)
    assert torch.equal(mask_y, target.norm(dim=-1) > 0.5)
    capsys.readouterr()
    out = str(tmp_path / "fit")
    assert main(["fit", "normals", "--model", checkpoint, "--normals", path, "--shape", "1", "--out", out,
                 "--iterations", "300", "--lambda-id", "0.001", "--mesh-resolution", "0", "--device", "cpu",
                 "--no-progress"]) == 0
    assert "fitted 2 normal maps of 16x16" in capsys.readouterr().out
    rec = _fit_json(out)
    assert rec["kind"] == "normals" and rec["views"] == 2 and rec["resolution"] == 16 and "mesh" not in rec
    # 22.1 -> 6.8 degrees and the code at 0.32x the mean code's distance to bob's when written
    assert rec["angle_deg_after"] < 0.5 * rec["angle_deg_before"], rec
    assert rec["loss_last"] < rec["loss_first"]
    trained = load_identity(checkpoint)
    code, bob, mean = np.load(os.path.join(out, "fit.npz"))["code"], trained.codes[1].numpy(), trained.codes.mean(0)
    assert np.linalg.norm(code - bob) < 0.6 * np.linalg.norm(mean.numpy() - bob)
    assert not os.path.exists(os.path.join(out, "mesh.ply"))
    from PIL import Image

    assert Image.open(os.path.join(out, "fit.png")).size == (2 * 20 + 4, 2 * (16 + 4 + 14) + 4)


def test_read_normal_maps_errors(tmp_path):
    n = np.zeros((2, 8, 8, 3), np.float32)
    n[:, 2:6, 2:6, 2] = 1.0
    with pytest.raises(FileNotFoundError, match="do not exist"):
        read_normal_maps(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "nocam.npz", normals=n)
    with pytest.raises(ValueError, match=r"has no cameras: it needs K \[V, 3, 3\] and cam2world"):
        read_normal_maps(str(tmp_path / "nocam.npz"))
    np.savez(tmp_path / "nonormals.npz", maps=n)
    with pytest.raises(ValueError, match="has no array 'normals' .*maps"):
        read_normal_maps(str(tmp_path / "nonormals.npz"))
    np.savez(tmp_path / "yaws.npz", normals=n, yaws=np.array([0.0, 10.0, 20.0]))
    with pytest.raises(ValueError, match=r"one yaw per view \(2\) and square maps, got 3 yaws"):
        read_normal_maps(str(tmp_path / "yaws.npz"))
    np.savez(tmp_path / "many.npz", normals=n[None].repeat(3, 0), yaws=np.array([0.0, 10.0]))
    with pytest.raises(ValueError, match="--shape 3 is out of range: .* holds 3 shapes"):
        read_normal_maps(str(tmp_path / "many.npz"), shape=3)
    np.savez(tmp_path / "one.npz", normals=n, yaws=np.array([0.0, 10.0]))
    with pytest.raises(ValueError, match="--shape 1: .* holds the maps of one shape"):
        read_normal_maps(str(tmp_path / "one.npz"), shape=1)
    np.savez(tmp_path / "mask.npz", normals=n, mask=np.ones((2, 8, 7), bool), yaws=np.array([0.0, 10.0]))
    with pytest.raises(ValueError, match=r"mask must be \[V=2, H=8, W=8\]"):
        read_normal_maps(str(tmp_path / "mask.npz"))
    np.savez(tmp_path / "empty.npz", normals=np.zeros_like(n), yaws=np.array([0.0, 10.0]))
    with pytest.raises(ValueError, match="no pixel is covered"):
        read_normal_maps(str(tmp_path / "empty.npz"))
    np.savez(tmp_path / "kbad.npz", normals=n, K=np.eye(3)[None].repeat(3, 0), cam2world=np.eye(4)[None].repeat(2, 0))
    with pytest.raises(ValueError, match=r"K must be \[V=2, 3, 3\]"):
        read_normal_maps(str(tmp_path / "kbad.npz"))


def test_fit_cli_errors(checkpoint, surface, tmp_path, capsys):
    pts, _ = surface
    np.save(tmp_path / "p.npy", pts)
    base = ["fit", "scan", "--model", checkpoint, "--scan", str(tmp_path / "p.npy"), "--device", "cpu",
            "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a"), "--mesh-resolution", "1"]) == 2
    assert "--mesh-resolution must be 0 (no mesh) or at least 2" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "a"), "--iterations", "-1"]) == 2
    assert "--iterations must be >= 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(base + ["--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["fit", "scan", "--model", str(tmp_path / "none.pt"), "--scan", str(tmp_path / "p.npy"), "--out",
                 str(tmp_path / "a"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "a")  # nothing written on a refused command


def test_mean_angle_deg():
    from npht.eval.fit_command import mean_angle_deg

    n = torch.nn.functional.normalize(torch.randn(2, 5, 5, 3), dim=-1)
    m = torch.rand(2, 5, 5) > 0.3
    assert mean_angle_deg(n, m, n, m) < 1e-3
    assert abs(mean_angle_deg(0.6 * n, m, n, m)) < 1e-3  # directions only (composited normals are shorter)
    assert abs(mean_angle_deg(-n, m, n, m) - 180.0) < 1e-3
    perp = torch.nn.functional.normalize(torch.cross(n, torch.randn_like(n), dim=-1), dim=-1)
    assert abs(mean_angle_deg(perp, m, n, torch.ones_like(m)) - 90.0) < 1e-3
    assert math.isnan(mean_angle_deg(n, m, n, ~m))  # the masks never meet


def test_fit_normals_fused_gradient_gives_the_same_fit(checkpoint, tmp_path):
    renders = str(tmp_path / "r")
    assert main(["render", "--model", checkpoint, "--out", renders, "--resolution", "12", "--yaws", "0",
                 "--identities", "bob", "--device", "cpu", "--no-progress"]) == 0
    codes = []
    for flag in ([], ["--fused-gradient"]):
        out = str(tmp_path / f"fit{len(flag)}")
        assert main(["fit", "normals", "--model", checkpoint, "--normals", os.path.join(renders, "normals.npz"),
                     "--out", out, "--iterations", "20", "--lambda-id", "0.001", "--mesh-resolution", "0",
                     "--device", "cpu", "--no-progress", *flag]) == 0
        assert _fit_json(out)["fused_gradient"] == bool(flag)
        codes.append(np.load(os.path.join(out, "fit.npz"))["code"])
    start = load_identity(checkpoint).codes.mean(0).numpy()
    assert np.abs(codes[0] - start).max() > 1e-3  # the fit moved
    np.testing.assert_allclose(codes[1], codes[0], rtol=0, atol=1e-5)


def _listing(folder):
    return sorted(os.listdir(folder))


def _scan_args(checkpoint, scan, out, *more):
    return ["fit", "scan", "--model", checkpoint, "--scan", str(scan), "--out", str(out), "--points", "200",
            "--iterations", "2", "--device", "cpu", "--no-progress", *more]


def test_fit_rerun_replaces_the_previous_fit(checkpoint, surface, tmp_path, capsys):
    """A second fit into the same --out removes the first's files (fit.png, mesh.ply stayed
    when the new run wrote none), says so in one line, and leaves other files alone."""
    pts, _ = surface
    np.save(tmp_path / "p.npy", pts)
    out = tmp_path / "fit"
    assert main(_scan_args(checkpoint, tmp_path / "p.npy", out, "--resolution", "8", "--yaws", "0",
                           "--mesh-resolution", "12")) == 0
    assert _listing(out) == ["fit.json", "fit.npz", "fit.png", "mesh.ply"]
    assert "replacing" not in capsys.readouterr().out
    (out / "notes.txt").write_text("mine")
    assert main(_scan_args(checkpoint, tmp_path / "p.npy", out, "--resolution", "0", "--mesh-resolution", "0",
                           "--seed", "1")) == 0
    printed = capsys.readouterr().out
    assert f"npht fit: replacing the previous fit in {out} (fit.npz, fit.png, mesh.ply, fit.json)" in printed
    assert _listing(out) == ["fit.json", "fit.npz", "notes.txt"]
    assert _fit_json(out)["seed"] == 1
    # a refused command removes nothing
    assert main(_scan_args(checkpoint, tmp_path / "p.npy", out, "--scale", "0")) == 2
    assert _listing(out) == ["fit.json", "fit.npz", "notes.txt"]


def test_fit_interrupted_leaves_no_partial_file_and_no_fit_json(checkpoint, surface, tmp_path, monkeypatch, capsys):
    """Each file through a temporary file and os.replace, fit.json last: a run interrupted
    while writing the mesh leaves fit.npz and fit.png complete, no mesh.ply (nor its
    temporary) and no fit.json, so nothing claims a complete run; the previous run's fit.json
    is gone too (it described another fit than this fit.npz)."""
    import trimesh

    pts, _ = surface
    np.save(tmp_path / "p.npy", pts)
    out = tmp_path / "fit"
    args = _scan_args(checkpoint, tmp_path / "p.npy", out, "--resolution", "8", "--yaws", "0", "--mesh-resolution",
                      "12")
    assert main(args) == 0
    first = np.load(out / "fit.npz")["code"]

    def export(self, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"ply\npart")
        raise KeyboardInterrupt

    monkeypatch.setattr(trimesh.Trimesh, "export", export)
    assert main(args + ["--seed", "3"]) == 130
    assert _listing(out) == ["fit.npz", "fit.png"]
    assert not np.array_equal(np.load(out / "fit.npz")["code"], first)  # this run's
    monkeypatch.undo()

    monkeypatch.setattr(np, "savez_compressed", interrupted_savez)
    assert main(args) == 130
    assert "replacing the previous fit" in capsys.readouterr().out
    assert _listing(out) == []


def test_fit_cli_input_errors(checkpoint, surface, tmp_path, capsys):
    """Folders given as files, a --scale that is not positive and finite, --no-expression-refine
    without --expression, a negative --resolution, a damaged .npz: one-line errors, exit 2,
    before any work."""
    pts, _ = surface
    np.save(tmp_path / "p.npy", pts)
    scan = tmp_path / "p.npy"
    out = tmp_path / "o"

    def error(args):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("npht: error: ") and len(err.splitlines()) == 1, err
        return err

    (tmp_path / "folder.ply").mkdir()
    e = error(_scan_args(checkpoint, tmp_path / "folder.ply", out))
    assert "--scan " in e and "is a folder, not a file: it needs a points or mesh file" in e
    for scale in ("0", "-1", "nan", "inf"):
        assert "--scale must be a positive finite number" in error(_scan_args(checkpoint, scan, out, "--scale", scale))
    assert "--offset must be three finite numbers" in error(_scan_args(checkpoint, scan, out, "--offset", "0", "nan",
                                                                       "0"))
    assert "--no-expression-refine applies to a posed scan's fit: it needs --expression" in \
        error(_scan_args(checkpoint, scan, out, "--no-expression-refine"))
    assert "--resolution must be 0 (no picture) or positive, got -2" in \
        error(_scan_args(checkpoint, scan, out, "--resolution", "-2"))
    normals = ["fit", "normals", "--model", checkpoint, "--out", str(out), "--iterations", "1", "--device", "cpu",
               "--no-progress"]
    e = error(normals + ["--normals", str(tmp_path)])
    assert "--normals " in e and "is a folder, not a file: it needs an .npz with normals" in e
    n = np.zeros((1, 64, 64, 3), np.float32)
    n[..., 2] = 1.0
    np.savez_compressed(tmp_path / "maps.npz", normals=n + np.random.rand(*n.shape).astype(np.float32),
                        yaws=np.zeros(1))
    assert "--resolution must be 0 (the maps' own) or positive, got -8" in \
        error(normals + ["--normals", str(tmp_path / "maps.npz"), "--resolution", "-8"])
    data = bytearray((tmp_path / "maps.npz").read_bytes())
    data[200:260] = b"\0" * 60
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    e = error(normals + ["--normals", str(tmp_path / "bad.npz")])
    assert "is a damaged .npz archive (truncated or corrupt" in e
    assert not out.exists()
    with pytest.raises(ValueError, match="--scale must be a positive finite number"):
        read_scan(str(scan), scale=0.0)
    # --resolution 0 of fit normals is documented: the maps' own
    with pytest.raises(SystemExit):
        main(["fit", "normals", "--help"])
    assert "(default 0: the maps' own)" in " ".join(capsys.readouterr().out.split())
