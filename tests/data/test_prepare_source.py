"""`npht data prepare` on a folder source: what guards the prepared folder against a source
that changed, another source, lost settings and runs refused at the start."""

import json
import os

import numpy as np
import pytest
import trimesh

from npht.data.prepare import OtherSettingsError, PrepareConfig, prepare
from npht.data.records import load_npz

SMALL = dict(surface_face=60, surface_nonface=30, ball=40, correspondences=0, cameras=0, test_identities=1)


def sphere(radius=0.5, subdivisions=1):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(m.vertices), np.asarray(m.faces)


def write_folder(root, identities, expressions=("neutral",), radius=0.5):
    for ident in identities:
        d = os.path.join(root, ident)
        os.makedirs(d, exist_ok=True)
        for j, e in enumerate(expressions):
            v, f = sphere(radius)
            trimesh.Trimesh(v * [1, 1 + 0.05 * j, 1], f, process=False).export(os.path.join(d, f"{e}.ply"))
    return str(root)


def cfg(source, **kw):
    return PrepareConfig(source=str(source), **{**SMALL, **kw})


def test_source_with_other_identities_is_refused(tmp_path):
    """Identities added to the source would move the test split (the last sorted names) and
    the others' seeds: the re-run is refused naming them; overwrite prepares it again."""
    src = write_folder(tmp_path / "src", ["id_b", "id_c", "id_d"])
    out = str(tmp_path / "out")
    m1 = prepare(cfg(src), out, progress=False)
    assert [r["identity"] for r in m1["records"] if r["split"] == "test"] == ["id_d"]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["source_identities"] == ["id_b", "id_c", "id_d"]
    assert prepare(cfg(src), out, progress=False)["records"] == m1["records"]  # same source: resumes
    write_folder(src, ["id_a", "id_e"])
    os.rename(os.path.join(src, "id_c"), os.path.join(tmp_path, "id_c"))
    with pytest.raises(ValueError, match=r"added: \['id_a', 'id_e'\], removed: \['id_c'\].*new folder"):
        prepare(cfg(src), out, progress=False)
    m2 = prepare(cfg(src), out, progress=False, overwrite=True)
    assert m2["identities"] == ["id_a", "id_b", "id_d", "id_e"]


def test_folder_of_older_npht_gets_its_identities_recorded(tmp_path):
    """A config.json without the identity list (older npht) keeps working: the split and the
    seeds stay, and the list is recorded so that a later change is refused."""
    src = write_folder(tmp_path / "src", ["a", "b"])
    out = str(tmp_path / "out")
    m1 = prepare(cfg(src), out, progress=False)
    path = os.path.join(out, "config.json")
    with open(path) as f:
        old = json.load(f)
    del old["source_identities"]
    with open(path, "w") as f:
        json.dump(old, f)
    before = load_npz(os.path.join(out, "samples", "a", "neutral.npz"))["ball_points"]
    os.unlink(os.path.join(out, "samples", "a", "neutral.npz"))
    m2 = prepare(cfg(src), out, progress=False)
    assert m2["records"] == m1["records"]
    np.testing.assert_array_equal(load_npz(os.path.join(out, "samples", "a", "neutral.npz"))["ball_points"], before)
    with open(path) as f:
        assert json.load(f)["source_identities"] == ["a", "b"]
    write_folder(src, ["c"])
    with pytest.raises(ValueError, match=r"added: \['c'\]"):
        prepare(cfg(src), out, progress=False)


def test_relative_source_is_its_real_path(tmp_path, monkeypatch):
    """The same relative path typed in another directory is another dataset: stored as the
    real path, it is refused there (and the same folder spelled otherwise is accepted)."""
    for proj in ("A", "B"):
        write_folder(tmp_path / proj / "scans", ["p1", "p2"])
    out = str(tmp_path / "out")
    monkeypatch.chdir(tmp_path / "A")
    prepare(cfg("scans"), out, progress=False)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["source"] == os.path.realpath(tmp_path / "A" / "scans")
    prepare(cfg("./scans/"), out, progress=False)
    prepare(cfg(str(tmp_path / "A" / "scans")), out, progress=False)
    monkeypatch.chdir(tmp_path / "B")
    with pytest.raises(OtherSettingsError, match="other settings.*source"):
        prepare(cfg("scans"), out, progress=False)


def test_relative_source_of_older_npht(tmp_path, monkeypatch):
    """A relative source stored by older npht is the same source only if it names the same
    folder from the current directory; else the refusal says why. (The same relative path
    typed again in another directory cannot be told apart: what older npht stored.)"""
    write_folder(tmp_path / "A" / "scans", ["p1"])
    os.makedirs(tmp_path / "B")
    out = str(tmp_path / "out")
    monkeypatch.chdir(tmp_path / "A")
    prepare(cfg("scans"), out, progress=False)
    path = os.path.join(out, "config.json")
    with open(path) as f:
        old = json.load(f)
    old["source"] = "scans"
    with open(path, "w") as f:
        json.dump(old, f)
    monkeypatch.chdir(tmp_path / "B")
    with pytest.raises(OtherSettingsError, match="relative path typed in another directory"):
        prepare(cfg(tmp_path / "A" / "scans"), out, progress=False)
    monkeypatch.chdir(tmp_path / "A")
    prepare(cfg(tmp_path / "A" / "scans"), out, progress=False)
    with open(path) as f:
        assert json.load(f)["source"] == os.path.realpath("scans")


def test_missing_config_with_prepared_files_is_refused(tmp_path):
    """config.json is the guard: without it, a folder holding prepared files is refused
    (their settings are unknown) and no message advises deleting it."""
    src = write_folder(tmp_path / "src", ["a"])
    out = str(tmp_path / "out")
    prepare(cfg(src), out, progress=False)
    os.unlink(os.path.join(out, "config.json"))
    with pytest.raises(ValueError, match="no config.json.*new folder.*overwrite") as e:
        prepare(cfg(src, seed=7, ball=80), out, progress=False)
    assert "delete" not in str(e.value)
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write("{broken")
    with pytest.raises(ValueError, match="corrupt.*new folder.*overwrite") as e:
        prepare(cfg(src, seed=7, ball=80), out, progress=False)
    assert "delete" not in str(e.value)
    prepare(cfg(src, seed=7, ball=80), out, progress=False, overwrite=True)
    assert len(load_npz(os.path.join(out, "samples", "a", "neutral.npz"))["ball_points"]) == 80


def test_run_refused_at_the_start_writes_nothing(tmp_path):
    """A wrong layout or a bad count is refused before config.json is written: the corrected
    command then runs (it was refused as "other settings")."""
    src = write_folder(tmp_path / "src", ["a"])
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="NPHMFolder"):
        prepare(cfg(src, layout="nphm"), out, progress=False)
    assert not os.path.exists(os.path.join(out, "config.json"))
    prepare(cfg(src, layout="folder"), out, progress=False)
    out2 = str(tmp_path / "out2")
    with pytest.raises(ValueError, match="expressions must be <="):
        prepare(PrepareConfig(identities=1, expressions=99, mesh_resolution=32, **SMALL), out2, progress=False)
    assert not os.path.exists(os.path.join(out2, "config.json"))


def open_scan(path, radius=0.5):
    """A sphere with its bottom cut off: not watertight, refused by the signed distances."""
    v, f = sphere(radius, subdivisions=2)
    keep = v[f].mean(1)[:, 1] > -0.3
    trimesh.Trimesh(v, f[keep], process=False).export(path)


def test_worker_error_names_the_record(tmp_path):
    src = write_folder(tmp_path / "src", ["a", "b", "c"])
    open_scan(os.path.join(src, "b", "neutral.ply"))
    with pytest.warns(UserWarning, match="not watertight"):
        with pytest.raises(ValueError, match=r"prepare b/neutral \(from .*b/neutral.ply\): signed distances need"):
            prepare(cfg(src), str(tmp_path / "out"), progress=False)


def test_first_worker_error_cancels_the_identities_not_started(tmp_path):
    """With workers, the first failure surfaces without waiting for every other identity (it
    came after all of them ran), naming its record."""
    names = [f"id{k}" for k in range(10)]
    src = write_folder(tmp_path / "src", names)
    open_scan(os.path.join(src, "id0", "neutral.ply"))
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"prepare id0/neutral .*signed distances need"):  # warned in the worker
        prepare(cfg(src, ball=3000), out, workers=2, progress=False)
    samples = os.path.join(out, "samples")
    done = os.listdir(samples) if os.path.isdir(samples) else []
    assert "id9" not in done and len(done) < 9, done


def test_correspondences_without_registrations_are_refused_before_writing(tmp_path):
    """Raw scans of other topologies (no registrations) cannot give correspondences: refused
    before anything is written, naming the flag that turns them off."""
    src = str(tmp_path / "src")
    for ident in ("anna", "bob"):
        os.makedirs(os.path.join(src, ident))
        for e, sub in (("neutral", 1), ("smile", 2)):
            v, f = sphere(0.5, subdivisions=sub)
            trimesh.Trimesh(v, f, process=False).export(os.path.join(src, ident, f"{e}.ply"))
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"anna/neutral and anna/smile have 42 and 162 vertices.*--correspondences 0"):
        prepare(cfg(src, correspondences=50), out, progress=False)
    assert not os.path.exists(out)
    # the first identity has a registration, the second not: refused before its files
    os.makedirs(os.path.join(src, "anna", "registration"))
    for e in ("neutral", "smile"):
        v, f = sphere(0.5, subdivisions=1)
        trimesh.Trimesh(v, f, process=False).export(os.path.join(src, "anna", "registration", f"{e}.ply"))
    with pytest.raises(ValueError, match=r"prepare identity bob: correspondences need.*--correspondences 0"):
        prepare(cfg(src, correspondences=50), out, progress=False)
    assert os.path.exists(os.path.join(out, "correspondences", "anna", "smile.npz"))
    assert not os.path.exists(os.path.join(out, "meshes", "bob"))
    m = prepare(cfg(src, correspondences=0), str(tmp_path / "out0"), progress=False)
    assert len(m["records"]) == 4
