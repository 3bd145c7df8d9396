"""`npht data prepare`, its cache/resume behaviour and the per-step Datasets."""

import json
import os

import numpy as np
import pytest
import torch

from npht.cli import main
from npht.data import prepare as prep
from npht.data.dataset import CorrespondenceDataset, HeadDataset
from npht.data.prepare import PrepareConfig, load_manifest, prepare
from npht.data.records import load_mesh, save_mesh

TINY = dict(identities=3, expressions=2, mesh_resolution=64, surface_face=600, surface_nonface=300,
            ball=200, correspondences=400, cameras=6, resolution=24, test_identities=1)


def tiny(**kw):
    return PrepareConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prep") / "synthetic")
    manifest = prepare(tiny(), out, progress=False)
    return out, manifest


def mtimes(root):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(root) for f in fs if f.endswith(".npz")}


def test_prepare_writes_every_record(prepared):
    out, manifest = prepared
    assert manifest == load_manifest(out)
    assert manifest["identities"] == ["synth000", "synth001", "synth002"]
    recs = manifest["records"]
    assert len(recs) == 6
    assert [r["split"] for r in recs].count("test") == 2  # last identity, both expressions
    for r in recs:
        for kind in ("meshes", "samples", "normal_maps"):
            assert os.path.isfile(os.path.join(out, r["files"][kind])), (r, kind)
        assert (r["files"]["correspondences"] is None) == r["is_neutral"]
    neutral = [r for r in recs if r["is_neutral"]]
    assert len(neutral) == 3 and all(r["expression_index"] == 0 for r in neutral)
    mesh = load_mesh(os.path.join(out, recs[1]["files"]["meshes"]))
    assert mesh.identity == "synth000" and not mesh.is_neutral and mesh.face_region.any()


def test_rerun_skips_finished_work_and_resumes(prepared, tmp_path):
    out, manifest = prepared
    before = mtimes(out)
    victim = os.path.join(out, manifest["records"][0]["files"]["samples"])
    os.unlink(victim)
    again = prepare(tiny(), out, progress=False)
    after = mtimes(out)
    assert set(after) == set(before)
    changed = [p for p in after if after[p] != before[p]]
    assert changed == [victim]
    assert again["records"] == manifest["records"]


def test_killed_run_leaves_complete_files_only(tmp_path, monkeypatch):
    out = str(tmp_path / "killed")
    real = prep.atomic_save_npz
    calls = {"n": 0}

    def dying_save(path, compressed=False, **arrays):
        calls["n"] += 1
        if calls["n"] == 5:  # die in the middle of writing a file
            with open(os.path.join(os.path.dirname(path), ".tmp-partial.part"), "wb") as f:
                f.write(b"PK\x03\x04 truncated")
            raise KeyboardInterrupt
        return real(path, compressed=compressed, **arrays)

    monkeypatch.setattr(prep, "atomic_save_npz", dying_save)
    with pytest.raises(KeyboardInterrupt):
        prepare(tiny(identities=2), out, progress=False)
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    with pytest.raises(FileNotFoundError, match="run `npht data prepare`"):
        HeadDataset(out)
    for path in mtimes(out):  # everything that exists loads
        np.load(path)
    monkeypatch.setattr(prep, "atomic_save_npz", real)
    done = prepare(tiny(identities=2), out, progress=False)
    assert len(done["records"]) == 4
    assert len(mtimes(out)) == 4 * 3 + 2  # meshes, samples, normal maps + 2 correspondences


def test_other_settings_refuse_then_overwrite(prepared, tmp_path):
    out = str(tmp_path / "o")
    prepare(tiny(identities=1, expressions=1, cameras=0), out, progress=False)
    with pytest.raises(ValueError, match="other settings.*seed"):
        prepare(tiny(identities=1, expressions=1, cameras=0, seed=3), out, progress=False)
    m = prepare(tiny(identities=1, expressions=1, cameras=0, seed=3), out, progress=False, overwrite=True)
    assert m["config"]["seed"] == 3 and m["records"][0]["files"]["normal_maps"] is None


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="source must be 'synthetic' or an existing folder"):
        prepare(tiny(source=str(tmp_path / "nope")), str(tmp_path / "o"), progress=False)
    with pytest.raises(ValueError, match="layout must be"):
        prepare(tiny(layout="zip"), str(tmp_path / "o"), progress=False)
    with pytest.raises(ValueError, match="resolution must be in"):
        prepare(tiny(resolution=8), str(tmp_path / "o"), progress=False)
    with pytest.raises(ValueError, match="expressions must be <="):
        prepare(tiny(expressions=99), str(tmp_path / "o"), progress=False)
    with pytest.raises(ValueError, match="workers must be"):
        prepare(tiny(), str(tmp_path / "o"), workers=0, progress=False)
    assert not os.path.exists(tmp_path / "o")  # refused before anything is written
    os.makedirs(tmp_path / "o")
    with open(tmp_path / "o" / "config.json", "w") as f:
        f.write("{broken")
    with pytest.raises(ValueError, match="corrupt.*prepare into a new folder, or pass overwrite"):
        prepare(tiny(), str(tmp_path / "o"), progress=False)


def test_head_dataset_items(prepared):
    out, manifest = prepared
    counts = dict(surface_face=7, surface_nonface=5, near1_face=7, near1_nonface=5, near2_face=7,
                  near2_nonface=5, ball=3)
    ds = HeadDataset(out, counts=counts, views=2, seed=1)
    assert len(ds) == 2  # neutral records of the 2 train identities
    item = ds[1]
    assert item["identity"] == "synth001" and item["identity_index"] == 1
    assert item["surface_face_points"].shape == (7, 3) and item["surface_face_normals"].shape == (7, 3)
    assert item["near2_nonface_sdf"].shape == (5,) and item["ball_points"].shape == (3, 3)
    assert item["normal_maps"].shape == (2, 24, 24, 3) and item["masks"].shape == (2, 24, 24)
    n = item["normal_maps"][item["masks"]]
    assert n.numel() > 0 and torch.allclose(n.norm(dim=-1), torch.ones(len(n)), atol=1e-5)
    assert (item["normal_maps"][~item["masks"]] == 0).all()
    again = ds[1]
    for k in item:
        if torch.is_tensor(item[k]):
            assert torch.equal(item[k], again[k]), k
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["ball_points"], item["ball_points"])
    assert ds.cameras().K.shape == (6, 3, 3)
    test = HeadDataset(out, "test", expressions="all", views=0)
    assert len(test) == 2 and "normal_maps" not in test[0]
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="split must be"):
        HeadDataset(out, "val")
    with pytest.raises(ValueError, match="views must be"):
        HeadDataset(out, views=7)


def test_normal_maps_are_read_per_camera(prepared, tmp_path):
    """A record's normal maps are stored a member per camera, so an item decompresses the
    cameras it draws, not the rig; folders of earlier versions (two whole arrays) still read
    the same items."""
    import shutil
    import zipfile

    out, manifest = prepared
    rel = manifest["records"][0]["files"]["normal_maps"]
    path = os.path.join(out, rel)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(f"{k}_{v:03d}.npy" for k in ("normals", "mask") for v in range(6))
    code, mask = prep.read_rig_normal_maps(path)
    assert code.shape == (6, 24, 24, 3) and code.dtype == np.uint8 and mask.shape == (6, 24, 24)
    assert mask.any() and (code[~mask] == 0).all()
    some, some_mask = prep.read_rig_normal_maps(path, [4, 1])
    assert np.array_equal(some, code[[4, 1]]) and np.array_equal(some_mask, mask[[4, 1]])
    none, none_mask = prep.read_rig_normal_maps(path, [])
    assert none.shape == (0, 24, 24, 3) and none_mask.shape == (0, 24, 24)
    normals, m = prep.decode_normal_maps(path, [2])
    assert np.array_equal(normals, prep.decode_normals(code[[2]], mask[[2]])) and np.array_equal(m, mask[[2]])

    ds = HeadDataset(out, "all", expressions="all", views=3, seed=2)
    item = ds[0]
    cams = item["camera_index"].numpy()
    assert torch.equal(item["normal_maps"], torch.from_numpy(prep.decode_normals(code[cams], mask[cams])))
    assert all(not r.startswith("normal_maps") for r in ds._cache)  # per camera: not cached

    old = str(tmp_path / "old")  # the same folder with whole-rig files (npht before per-camera storage)
    shutil.copytree(out, old)
    for r in manifest["records"]:
        p = os.path.join(old, r["files"]["normal_maps"])
        c, k = prep.read_rig_normal_maps(p)
        np.savez_compressed(p, normals=c, mask=k)
    was = HeadDataset(old, "all", expressions="all", views=3, seed=2)
    for i in range(len(ds)):
        a, b = ds[i], was[i]
        for k, v in a.items():
            assert torch.equal(v, b[k]) if torch.is_tensor(v) else v == b[k], (i, k)
    assert any(r.startswith("normal_maps") for r in was._cache)  # whole files: cached as before
    assert np.array_equal(prep.read_rig_normal_maps(os.path.join(old, rel), [5, 0])[0], code[[5, 0]])
    samples = os.path.join(old, manifest["records"][0]["files"]["samples"])
    stamp = os.stat(samples).st_mtime_ns
    prepare(tiny(), old, progress=False)   # a re-run rewrites the whole-rig files per camera
    assert os.stat(samples).st_mtime_ns == stamp   # (and nothing else)
    for r in manifest["records"]:
        with zipfile.ZipFile(os.path.join(old, r["files"]["normal_maps"])) as z:
            assert "normals.npy" not in z.namelist() and "normals_005.npy" in z.namelist()
    upgraded = HeadDataset(old, "all", expressions="all", views=3, seed=2)
    for i in range(len(ds)):
        a, b = ds[i], upgraded[i]
        for k, v in a.items():
            assert torch.equal(v, b[k]) if torch.is_tensor(v) else v == b[k], (i, k)


def test_normal_map_file_errors(prepared, tmp_path):
    out, manifest = prepared
    path = os.path.join(out, manifest["records"][0]["files"]["normal_maps"])
    with pytest.raises(ValueError, match=r"cameras must be indices in \[0, 6\) of .*npz's rig, got \[6\]"):
        prep.read_rig_normal_maps(path, [6])
    with pytest.raises(ValueError, match=r"cameras must be indices"):
        prep.read_rig_normal_maps(path, [-1])
    with pytest.raises(FileNotFoundError, match="no such file"):
        prep.read_rig_normal_maps(str(tmp_path / "missing.npz"))
    cut = str(tmp_path / "cut.npz")
    with open(path, "rb") as f, open(cut, "wb") as g:
        g.write(f.read()[: os.path.getsize(path) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated file .*cut.npz"):
        prep.read_rig_normal_maps(cut)
    other = str(tmp_path / "other.npz")
    np.savez(other, mask_000=np.zeros((2, 2), bool), depth=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz is not a npht normal-map file"):
        prep.read_rig_normal_maps(other)
    with pytest.raises(ValueError, match=r"code must be uint8 \[V, H, W, 3\]"):
        prep.write_rig_normal_maps(str(tmp_path / "w.npz"), np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match=r"mask must be bool \(2, 4, 4\)"):
        prep.write_rig_normal_maps(str(tmp_path / "w.npz"), np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 5), bool))
    assert not os.path.exists(tmp_path / "w.npz")


def test_dataset_cache_is_bounded_in_bytes(prepared):
    """Loaded files are cached whole and decompressed (a record's bulk samples; normal maps of
    earlier versions, 128 cameras at 256^2, ~33 MB): the cache stops at cache_bytes as well as
    at cache_size files, and items do not depend on it."""
    out, _ = prepared
    full = HeadDataset(out, "all", expressions="all", views=2)
    items = [full[i] for i in range(len(full))]
    sizes = {rel: sum(a.nbytes for a in v.values()) for rel, v in full._cache.items()}
    limit = max(sizes.values()) + min(sizes.values())  # room for the largest file and a small one
    small = HeadDataset(out, "all", expressions="all", views=2, cache_bytes=limit)
    for i in range(len(small)):
        item = small[i]
        assert 0 < small._cached_bytes <= limit
        assert small._cached_bytes == sum(sum(a.nbytes for a in v.values()) for v in small._cache.values())
        for k, v in items[i].items():
            assert torch.equal(v, item[k]) if isinstance(v, torch.Tensor) else v == item[k]
    assert len(small._cache) < len(sizes)
    none = HeadDataset(out, "all", views=2, cache_bytes=0)   # nothing fits: nothing cached
    none[0]
    assert len(none._cache) == 0 and none._cached_bytes == 0


def test_correspondence_dataset(prepared):
    out, _ = prepared
    ds = CorrespondenceDataset(out, pairs=50)
    assert len(ds) == 2  # posed records of the train identities
    item = ds[0]
    assert item["neutral"].shape == (50, 3) and item["posed"].shape == (50, 3)
    assert item["expression_index"] == 1
    assert (item["neutral"] - item["posed"]).norm(dim=-1).max() > 1e-3  # the expression moves points


def test_correspondence_dataset_refuses_records_without_them(prepared, tmp_path):
    """A folder prepared with correspondences=0 is refused when the dataset is built, naming
    the records (it failed at the first item with os.path.join's TypeError)."""
    import json
    import shutil

    out, _ = prepared
    copy = str(tmp_path / "nocorr")
    shutil.copytree(out, copy)
    path = os.path.join(copy, "manifest.json")
    with open(path) as f:
        man = json.load(f)
    for r in man["records"]:
        r["files"]["correspondences"] = None
    with open(path, "w") as f:
        json.dump(man, f)
    with pytest.raises(ValueError, match=r"posed records without correspondences \(prepared with correspondences=0"):
        CorrespondenceDataset(copy, pairs=50)


def test_mesh_folder_source_matches_records(prepared, tmp_path):
    out, manifest = prepared
    folder = tmp_path / "meshes"
    for r in manifest["records"][:2]:  # synth000 neutral + posed as a mesh folder
        m = load_mesh(os.path.join(out, r["files"]["meshes"]))
        d = folder / m.identity
        d.mkdir(parents=True, exist_ok=True)
        name = "neutral" if m.is_neutral else m.expression
        m.to_trimesh().export(d / f"{name}.ply")
        np.save(d / f"{name}.face.npy", m.face_region)
    out2 = str(tmp_path / "from_folder")
    man = prepare(tiny(source=str(folder), cameras=4, correspondences=100), out2, progress=False)
    assert [(r["identity"], r["is_neutral"]) for r in man["records"]] == [("synth000", True), ("synth000", False)]
    a = load_mesh(os.path.join(out, manifest["records"][0]["files"]["meshes"]))
    b = load_mesh(os.path.join(out2, man["records"][0]["files"]["meshes"]))
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-6)
    np.testing.assert_array_equal(a.face_region, b.face_region)


def test_mesh_folder_in_another_unit_is_refused(prepared, tmp_path):
    """Source meshes must be in npht's frame (centred, in the unit sphere): a head in
    millimetres or metres is refused naming the mesh, one slightly beyond the sphere warned
    about."""
    from npht.data.prepare import check_frame

    out, manifest = prepared
    m = load_mesh(os.path.join(out, manifest["records"][0]["files"]["meshes"]))
    folder = tmp_path / "mm" / m.identity
    folder.mkdir(parents=True)
    r = float(np.linalg.norm(m.vertices, axis=1).max())
    mm = m.to_trimesh()
    mm.vertices = np.array(mm.vertices) * 100.0
    mm.export(folder / "neutral.ply")
    with pytest.raises(ValueError, match=rf"mesh {m.identity}/neutral reaches radius \d+.*rescale and centre"):
        prepare(tiny(source=str(tmp_path / "mm"), cameras=0, correspondences=0), str(tmp_path / "o"), progress=False)
    assert check_frame(m.vertices, "x") == pytest.approx(r) and r < 1.05
    with pytest.warns(UserWarning, match="reaches radius 1.2"):
        check_frame(m.vertices * (1.2 / r), "x")
    with pytest.raises(ValueError, match="reaches radius 0.01"):
        check_frame(m.vertices * (0.01 / r), "x")
    with pytest.raises(ValueError, match="reaches radius 0.12.*rescale to the unit sphere: a head in metres"):
        check_frame(m.vertices * (0.12 / r), "x")  # FLAME's unit
    assert check_frame(m.vertices * (0.3 / r), "x") == pytest.approx(0.3)


def test_cli_prepare_and_errors(tmp_path, capsys):
    out = str(tmp_path / "cli")
    rc = main(["data", "prepare", "--source", "synthetic", "--out", out, "--identities", "1",
               "--expressions", "1", "--mesh-resolution", "48", "--cameras", "0", "--surface-face", "100",
               "--surface-nonface", "50", "--ball", "50", "--quiet"])
    assert rc == 0 and "prepared 1 records of 1 identities" in capsys.readouterr().out
    assert json.load(open(os.path.join(out, "config.json")))["mesh_resolution"] == 48
    rc = main(["data", "prepare", "--source", str(tmp_path / "missing"), "--out", out, "--quiet"])
    assert rc == 2 and "source must be" in capsys.readouterr().err


def test_decode_normals_is_the_plain_formula_bit_for_bit():
    """decode_normals (table lookup, norm written out) equals ``code * 2 / 255 - 1`` over
    its np.linalg.norm, bit for bit, zeros (positive) outside the mask."""
    rng = np.random.default_rng(0)
    code = np.concatenate([rng.integers(0, 256, (1 << 18, 3)), np.repeat(np.arange(256), 3).reshape(256, 3),
                           [[0, 0, 0], [255, 255, 255], [128, 128, 128], [0, 255, 0]]]).astype(np.uint8)
    code = code.reshape(2, -1, 1, 3)
    mask = rng.random(code.shape[:-1]) < 0.8
    plain = code.astype(np.float32) * (2.0 / prep.NORMAL_SCALE) - 1.0
    plain /= np.maximum(np.linalg.norm(plain, axis=-1, keepdims=True), 1e-8)
    plain[~mask] = 0.0
    got = prep.decode_normals(code, mask)
    assert got.dtype == np.float32 and got.shape == code.shape
    assert np.array_equal(got, plain) and np.array_equal(np.signbit(got), np.signbit(plain))
