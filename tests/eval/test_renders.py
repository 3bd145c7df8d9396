"""`npht render`: normal maps of a trained identity model's codes from a ring of views."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from _backends import interrupted_savez
from npht.cli import main
from npht.eval.renders import render_identities, select_codes, view_cameras
from npht.train.checkpoint import save_atomic
from npht.train.config import TrainConfig
from npht.train.identity import build_identity_model
from npht.train.loading import load_identity

NAMES = {"ada": 0, "bob": 1, "cy": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An identity checkpoint as `npht train identity` writes it (cpu-demo sizes but a 4 x 256
    decoder, untrained), its planes zero: the shape is the decoder's geometric
    initialisation, close to a sphere of radius 0.5 about the origin (within 0.3 .. 0.7)."""
    torch.manual_seed(0)
    cfg = TrainConfig.preset("cpu-demo", samples=(8, 8, 4), decoder_hidden=256, decoder_layers=4)
    model = build_identity_model(cfg, len(NAMES))
    with torch.no_grad():
        model.generator.head.weight.zero_()
        model.generator.head.bias.zero_()
    path = str(tmp_path_factory.mktemp("run") / "checkpoint.pt")
    save_atomic({"config": cfg.to_dict(), "model": model.state_dict(), "identity_names": NAMES}, path)
    return path


def test_render_cli_writes_maps(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "renders")
    args = ["render", "--model", checkpoint, "--out", out, "--resolution", "12", "--yaws", "0", "90",
            "--identities", "bob", "0", "--samples", "2", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    assert "rendered 4 shapes x 2 views at 12^2" in capsys.readouterr().out
    f = np.load(os.path.join(out, "normals.npz"))
    assert f["normals"].shape == (4, 2, 12, 12, 3) and f["normals"].dtype == np.float32
    assert f["mask"].shape == (4, 2, 12, 12) and f["mask"].dtype == bool
    assert list(f["names"]) == ["bob", "ada", "sample_0", "sample_1"]
    assert np.array_equal(f["yaws"], np.array([0.0, 90.0], dtype=np.float32))
    trained = load_identity(checkpoint)
    assert np.array_equal(f["codes"][:2], trained.codes[[1, 0]].numpy())
    assert f["codes"].shape == (4, trained.codes.shape[1])
    # the sphere-like shape fills the view's centre, facing the camera (OpenGL frame: +z towards it)
    mask, normals = f["mask"], f["normals"]
    assert mask[:, :, 5:7, 5:7].all() and not mask[:, :, 0, 0].any()
    centre = normals[:, :, 5:7, 5:7].reshape(-1, 3)
    assert (centre[:, 2] > 0.9).all()
    inside = np.linalg.norm(normals[mask], axis=-1)
    assert inside.min() > 0.5 and inside.max() < 1.0 + 1e-4
    # the maps are render_identities' for those codes
    ref, ref_mask = render_identities(trained, torch.from_numpy(f["codes"][:1]), view_cameras([0.0, 90.0], 12))
    np.testing.assert_allclose(normals[:1], ref.numpy(), atol=1e-6)
    assert np.array_equal(mask[:1], ref_mask.numpy())
    for name in ("bob", "ada", "sample_0", "sample_1"):
        assert Image.open(os.path.join(out, f"{name}.png")).size == (2 * 16 + 4, 12 + 8)
    assert Image.open(os.path.join(out, "grid.png")).size == (2 * 16 + 4, 4 * (12 + 4 + 14) + 4)
    # a sample code is the same for the same seed, and another for another seed
    again = select_codes(trained, [], 2, seed=0)[0]
    np.testing.assert_array_equal(again.numpy(), f["codes"][2:])
    assert not torch.equal(select_codes(trained, [], 2, seed=1)[0], again)


def test_select_codes_defaults_and_errors(checkpoint):
    trained = load_identity(checkpoint)
    codes, names = select_codes(trained)
    assert names == ["ada", "bob", "cy"] and torch.equal(codes, trained.codes)  # the first four, here 3
    with pytest.raises(ValueError, match=r"unknown identity 'dan': .*\(0\.\.2\).*ada, bob, cy"):
        select_codes(trained, ["dan"])
    with pytest.raises(ValueError, match="identity index 3 is out of range: the model has 3"):
        select_codes(trained, ["3"])
    with pytest.raises(ValueError, match="nothing to render"):
        select_codes(trained, [], 0)
    with pytest.raises(ValueError, match="samples must be a non-negative int"):
        select_codes(trained, None, -1)
    with pytest.raises(ValueError, match="ray_chunk must be a positive int"):
        render_identities(trained, codes, view_cameras([0.0], 8), ray_chunk=0)


def test_render_cli_errors(checkpoint, tmp_path, capsys):
    base = ["render", "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]
    assert main(base + ["--model", checkpoint, "--resolution", "0"]) == 2
    assert "--resolution must be positive" in capsys.readouterr().err
    assert main(base + ["--model", checkpoint, "--identities", "zed"]) == 2
    assert "unknown identity 'zed'" in capsys.readouterr().err
    assert main(base + ["--model", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r")  # nothing written on a refused command


def test_render_cli_meshes(checkpoint, tmp_path, capsys):
    import trimesh

    out = tmp_path / "m"
    args = ["render", "--model", checkpoint, "--out", str(out), "--resolution", "8", "--yaws", "0",
            "--identities", "cy", "--device", "cpu", "--no-progress"]
    assert main(args + ["--mesh-resolution", "24", "--sparse-mesh"]) == 0
    assert "extracted 1 meshes at 24^3" in capsys.readouterr().out
    mesh = trimesh.load(str(out / "meshes" / "cy.ply"))
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert len(mesh.faces) > 100 and 0.25 < r.min() and r.max() < 0.75  # the near-sphere of radius ~0.5
    assert main(args + ["--mesh-resolution", "1"]) == 2
    assert "--mesh-resolution must be 0 (no meshes) or at least 2" in capsys.readouterr().err


def test_render_cli_from_a_camera_file(checkpoint, tmp_path, capsys):
    """--cameras: the views of an .npz (K + cam2world and height / width, here 10 x 14 pixels;
    or a previous render's file), the same maps as render_identities from those cameras."""
    from npht.eval.fit_command import read_cameras
    from npht.render import Cameras

    cams = view_cameras([10.0, -20.0], 14)
    K = cams.K.clone()
    K[:, 1, 2] -= 2.0  # 10 rows: the principal point moves up by 2 pixels
    np.savez(tmp_path / "cams.npz", K=K.numpy(), cam2world=cams.cam2world.numpy(), height=10, width=14)
    out = str(tmp_path / "r")
    args = ["render", "--model", checkpoint, "--out", out, "--cameras", str(tmp_path / "cams.npz"),
            "--identities", "cy", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    assert "rendered 1 shapes x 2 views at 10x14" in capsys.readouterr().out
    f = np.load(os.path.join(out, "normals.npz"))
    assert f["normals"].shape == (1, 2, 10, 14, 3) and "yaws" not in f.files
    np.testing.assert_array_equal(f["K"], K.numpy())
    trained = load_identity(checkpoint)
    ref, ref_mask = render_identities(trained, trained.codes[2:3], Cameras(K, cams.cam2world, 10, 14))
    np.testing.assert_allclose(f["normals"], ref.numpy(), atol=1e-6)
    assert np.array_equal(f["mask"], ref_mask.numpy())
    # a render's own file gives its cameras back
    again = read_cameras(os.path.join(out, "normals.npz"))
    assert (again.height, again.width) == (10, 14) and torch.equal(again.K, K)
    # errors
    np.savez(tmp_path / "nosize.npz", K=K.numpy(), cam2world=cams.cam2world.numpy())
    assert main(args[:5] + ["--cameras", str(tmp_path / "nosize.npz"), "--no-progress"]) == 2
    assert "the image size comes from normals" in capsys.readouterr().err
    assert main(args[:5] + ["--cameras", str(tmp_path / "none.npz"), "--no-progress"]) == 2
    assert "cameras" in capsys.readouterr().err


def test_render_cli_codes_from_files(checkpoint, tmp_path, capsys):
    """--codes: a fit.npz (one code, named after its folder) and a render's normals.npz (its
    codes and names), alone or after --identities; the maps are those of the codes."""
    from npht.eval.renders import read_codes

    trained = load_identity(checkpoint)
    z = trained.codes.shape[1]
    fit_dir = tmp_path / "head"
    fit_dir.mkdir()
    code = torch.randn(z) * 0.1
    np.savez(fit_dir / "fit.npz", code=code.numpy(), loss=np.zeros(3))
    np.savez(tmp_path / "normals.npz", codes=trained.codes[[2, 0]].numpy(), names=np.array(["cy", "ada"]))
    files = [str(fit_dir / "fit.npz"), str(tmp_path / "normals.npz")]
    codes, names = read_codes(files, z)
    assert names == ["head", "cy", "ada"] and torch.equal(codes[0], code) and torch.equal(codes[1], trained.codes[2])
    out = str(tmp_path / "r")
    base = ["render", "--model", checkpoint, "--out", out, "--resolution", "8", "--yaws", "0", "--device", "cpu",
            "--no-progress"]
    assert main(base + ["--codes", *files]) == 0
    assert "rendered 3 shapes x 1 views at 8^2" in capsys.readouterr().out
    f = np.load(os.path.join(out, "normals.npz"))
    assert list(f["names"]) == ["head", "cy", "ada"] and np.array_equal(f["codes"], codes.numpy())
    ref, _ = render_identities(trained, codes[:1], view_cameras([0.0], 8))
    np.testing.assert_allclose(f["normals"][:1], ref.numpy(), atol=1e-6)
    assert main(base + ["--identities", "bob", "--codes", files[0]]) == 0
    assert list(np.load(os.path.join(out, "normals.npz"))["names"]) == ["bob", "head"]
    # errors: the wrong code size, no codes in the file
    np.savez(tmp_path / "small.npz", code=np.zeros(z + 1, np.float32))
    assert main(base + ["--codes", str(tmp_path / "small.npz")]) == 2
    assert f"codes must be [n, {z}] (the model's code size)" in capsys.readouterr().err
    np.savez(tmp_path / "none.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="has no array 'code' nor 'codes' .*other"):
        read_codes([str(tmp_path / "none.npz")], z)


def test_render_cli_makes_its_folder_before_rendering(checkpoint, tmp_path, monkeypatch, capsys):
    """--out is made before the renders (it was made after them: an unusable folder failed
    only once all the work was done) and checked before anything (a file: one-line error)."""
    import npht.eval.renders as renders

    out = tmp_path / "a" / "renders"
    seen = []
    real = renders.render_identities

    def render(*a, **k):
        seen.append(out.is_dir())
        return real(*a, **k)

    monkeypatch.setattr(renders, "render_identities", render)
    args = ["render", "--model", checkpoint, "--resolution", "8", "--yaws", "0", "--identities", "0", "--device",
            "cpu", "--no-progress"]
    assert main(args + ["--out", str(out)]) == 0
    assert seen == [True]
    (tmp_path / "afile").write_text("x")
    assert main(args + ["--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and seen == [True]


def test_render_codes_from_an_npy_is_a_clear_error(checkpoint, tmp_path, capsys):
    np.save(tmp_path / "codes.npy", np.zeros((2, 16), np.float32))
    assert main(["render", "--model", checkpoint, "--codes", str(tmp_path / "codes.npy"), "--out",
                 str(tmp_path / "o"), "--resolution", "8", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npht: error: --codes ") and "not an .npz archive" in err and "codes [n, z]" in err, err
    assert len(err.splitlines()) == 1


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_render_rerun_replaces_the_previous_render(checkpoint, tmp_path, capsys):
    """A second render into the same --out removes the first's normals.npz, grid.png, PNGs and
    meshes (those of the names in its normals.npz), says so in one line, and leaves other
    files alone: no stale ada.png / cy.png next to a render of bob only."""
    out = tmp_path / "r"
    base = ["render", "--model", checkpoint, "--out", str(out), "--resolution", "8", "--yaws", "0", "--device", "cpu",
            "--no-progress"]
    assert main(base + ["--identities", "0", "1", "2", "--mesh-resolution", "12"]) == 0
    assert _listing(out) == ["ada.png", "bob.png", "cy.png", "grid.png", "meshes/ada.ply", "meshes/bob.ply",
                             "meshes/cy.ply", "normals.npz"]
    assert "replacing" not in capsys.readouterr().out
    (out / "notes.png").write_bytes(b"mine")
    (out / "meshes" / "mine.ply").write_bytes(b"mine")
    assert main(base + ["--identities", "bob"]) == 0
    printed = capsys.readouterr().out
    assert f"npht render: replacing the previous render in {out} (8 files)" in printed
    assert _listing(out) == ["bob.png", "grid.png", "meshes/mine.ply", "normals.npz", "notes.png"]
    assert list(np.load(out / "normals.npz")["names"]) == ["bob"]
    os.remove(out / "meshes" / "mine.ply")
    assert main(base + ["--identities", "cy", "--mesh-resolution", "12"]) == 0
    assert main(base + ["--samples", "1", "--identities"]) == 0  # the empty meshes/ folder goes too
    assert _listing(out) == ["grid.png", "normals.npz", "notes.png", "sample_0.png"]
    assert not (out / "meshes").exists()


def test_render_interrupted_leaves_no_partial_file(checkpoint, tmp_path, monkeypatch, capsys):
    """Every file goes through a temporary file and os.replace: a writer interrupted after it
    wrote part of its file (Ctrl-C) leaves neither a truncated final file nor the temporary."""
    from PIL import Image as PILImage

    out = tmp_path / "r"
    args = ["render", "--model", checkpoint, "--out", str(out), "--resolution", "8", "--yaws", "0", "--identities",
            "ada", "--device", "cpu", "--no-progress"]
    real_savez = np.savez_compressed

    monkeypatch.setattr(np, "savez_compressed", interrupted_savez)
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _listing(out) == []
    monkeypatch.setattr(np, "savez_compressed", real_savez)

    def save(self, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"\x89PNG part")
        raise OSError("disk full")

    monkeypatch.setattr(PILImage.Image, "save", save)
    with pytest.raises(OSError, match="disk full"):
        main(args)
    assert _listing(out) == ["normals.npz"]  # the complete archive, no PNG, no temporary file
    assert list(np.load(out / "normals.npz")["names"]) == ["ada"]
    monkeypatch.undo()
    import trimesh

    def export(self, path, *a, **k):
        open(path, "wb").write(b"ply\npart")
        raise KeyboardInterrupt

    monkeypatch.setattr(trimesh.Trimesh, "export", export)
    assert main(args + ["--mesh-resolution", "12"]) == 130
    assert _listing(out) == ["ada.png", "grid.png", "normals.npz"]  # meshes/ made, no ada.ply nor its temporary


def test_render_identities_given_twice_or_none(checkpoint, tmp_path, capsys):
    out = tmp_path / "r"
    base = ["render", "--model", checkpoint, "--out", str(out), "--resolution", "8", "--yaws", "0", "--device", "cpu",
            "--no-progress"]
    # 0 is ada: rendered once, in the order of first mention, with a note
    assert main(base + ["--identities", "0", "bob", "ada", "1", "cy"]) == 0
    printed = capsys.readouterr().out
    assert "npht render: ada, bob given more than once: rendered once" in printed
    assert "rendered 3 shapes x 1 views" in printed
    assert list(np.load(out / "normals.npz")["names"]) == ["ada", "bob", "cy"]
    # a code from a file that is an identity given too: once
    assert main(base + ["--identities", "cy", "--codes", str(out / "normals.npz")]) == 0
    assert "cy given more than once" in capsys.readouterr().out
    assert list(np.load(out / "normals.npz")["names"]) == ["cy", "ada", "bob"]
    # --identities none, as the help says: no training identity (a bare --identities too)
    assert "'none' or a bare --identities: no training identity, only --samples / --codes" in _help(capsys, "render")
    assert main(base + ["--identities", "none", "--samples", "2"]) == 0
    assert list(np.load(out / "normals.npz")["names"]) == ["sample_0", "sample_1"]
    assert main(base + ["--identities", "none", "ada"]) == 2
    assert "--identities none (no training identity) cannot come with others" in capsys.readouterr().err
    assert main(base + ["--identities", "none"]) == 2
    assert "nothing to render" in capsys.readouterr().err


def _help(capsys, *command):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_render_damaged_or_folder_codes_are_clear_errors(checkpoint, tmp_path, capsys):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, codes=np.random.rand(40, 16).astype(np.float32))
    data = bytearray(good.read_bytes())
    data[100:140] = b"\0" * 40  # inside the deflate stream: a bad CRC or a broken stream when read
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    (tmp_path / "half.npz").write_bytes(bytes(data[: len(data) // 2]))
    base = ["render", "--model", checkpoint, "--out", str(tmp_path / "o"), "--resolution", "8", "--device", "cpu",
            "--no-progress"]
    for name, says in (("bad.npz", "is a damaged .npz archive (truncated or corrupt"),
                       ("half.npz", "is not an .npz archive")):
        assert main(base + ["--codes", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("npht: error: --codes ") and says in err and len(err.splitlines()) == 1, err
    assert main(base + ["--codes", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a file" in err and len(err.splitlines()) == 1
    assert main(base + ["--cameras", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npht: error: --cameras ") and "is a folder, not a file" in err
    assert not os.path.exists(tmp_path / "o")


def test_render_codes_under_one_name_get_files_of_their_own(checkpoint, tmp_path, capsys):
    """Two fits in folders of one name (fits/a/head, fits/b/head): both rendered, the second
    renamed head_2 (said in one line); names whose file names would collide (case, the
    characters replaced, the contact sheet `grid`) get files of their own; a re-run finds
    and replaces all of them."""
    trained = load_identity(checkpoint, "cpu")
    z = int(trained.codes.shape[1])
    paths = []
    for i, folder in enumerate(["a", "b"]):
        (tmp_path / "fits" / folder / "head").mkdir(parents=True)
        paths.append(str(tmp_path / "fits" / folder / "head" / "fit.npz"))
        np.savez(paths[-1], code=np.full(z, 0.1 * (i + 1), dtype=np.float32))
    named = tmp_path / "named.npz"
    np.savez(named, codes=np.stack([np.full(z, v, dtype=np.float32) for v in (0.3, 0.4, 0.5, 0.6)]),
             names=np.array(["grid", "x y", "x_y", "X_Y"]))
    out = tmp_path / "r"
    base = ["render", "--model", checkpoint, "--out", str(out), "--resolution", "8", "--yaws", "0", "--device", "cpu",
            "--no-progress"]
    assert main(base + ["--codes", *paths, str(named), "--mesh-resolution", "12"]) == 0
    printed = capsys.readouterr().out
    assert "npht render: different codes under one name renamed: head -> head_2" in printed
    assert list(np.load(out / "normals.npz")["names"]) == ["head", "head_2", "grid", "x y", "x_y", "X_Y"]
    stems = ["head", "head_2", "grid_2", "x_y", "x_y_2", "X_Y_3"]
    assert _listing(out) == sorted(["grid.png", "normals.npz", *[f"{s}.png" for s in stems],
                                    *[f"meshes/{s}.ply" for s in stems]])
    assert Image.open(out / "grid.png").size != Image.open(out / "grid_2.png").size  # the sheet, not a shape
    np.testing.assert_allclose(np.load(out / "normals.npz")["codes"][:2, 0], [0.1, 0.2])  # each its own code
    assert main(base + ["--identities", "ada"]) == 0
    assert "(14 files)" in capsys.readouterr().out
    assert _listing(out) == ["ada.png", "grid.png", "normals.npz"]
