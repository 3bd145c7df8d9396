"""`npht data prepare`'s settings checked before anything is written (a refused run leaves no
config.json that would refuse the corrected command), the camera radius, the test split's
size, the procedural-only flags on a folder source, and the CLI's flag names."""

import json
import os

import pytest

from npht.cli import main
from npht.data.prepare import PrepareConfig, prepare

#: tiny procedural heads: 2 identities, one expression, 2 cameras of 16^2
ARGS = ["--identities", "2", "--expressions", "1", "--mesh-resolution", "24", "--cameras", "2", "--resolution", "16",
        "--surface-face", "60", "--surface-nonface", "20", "--ball", "20", "--workers", "1", "--quiet"]


def _prepare(out, *extra):
    return main(["data", "prepare", "--source", "synthetic", "--out", str(out), *ARGS, *extra])


@pytest.mark.parametrize("flag, value, match", [
    ("--fov-degrees", "0", r"fov_degrees \(--fov-degrees\) must be in \(0, 180\), got 0.0"),
    ("--fov-degrees", "180", r"fov_degrees \(--fov-degrees\) must be in \(0, 180\)"),
    ("--mesh-resolution", "2", r"mesh_resolution \(--mesh-resolution\) must be >= 8 .*, got 2"),
    ("--camera-radius", "0.1", r"camera_radius \(--camera-radius\) must be a finite number > 1: the heads are "
                               r"normalised into the unit sphere .* got 0.1"),
    ("--camera-radius", "-1", r"camera_radius \(--camera-radius\) must be .* > 1.* got -1.0"),
    ("--camera-radius", "1", r"camera_radius \(--camera-radius\) must be .* > 1.* got 1.0"),
    ("--camera-radius", "inf", r"camera_radius \(--camera-radius\) must be a finite number"),
])
def test_bad_setting_is_refused_before_anything_is_written(flag, value, match, tmp_path, capsys):
    import re

    out = tmp_path / "out"
    assert _prepare(out, flag, value) == 2
    err = capsys.readouterr().err
    assert err.startswith("npht: error: ") and len(err.splitlines()) == 1 and re.search(match, err), err
    assert not out.exists()


def test_corrected_command_runs_after_a_refused_one(tmp_path, capsys):
    out = tmp_path / "out"
    os.makedirs(out)   # an existing folder: still nothing written into it
    assert _prepare(out, "--fov-degrees", "0") == 2
    assert os.listdir(out) == []
    assert _prepare(out) == 0, capsys.readouterr().err
    assert "prepared 2 records of 2 identities (1 held out as the test split)" in capsys.readouterr().out


def test_camera_settings_without_cameras_are_not_checked(tmp_path):
    # no normal maps: the rig's settings are not used
    PrepareConfig(cameras=0, camera_radius=0.5, fov_degrees=0.0).validate()
    with pytest.raises(ValueError, match="camera_radius"):
        PrepareConfig(cameras=4, camera_radius=0.5).validate()


def test_test_identities(tmp_path, capsys):
    # asked for more than the identities allow (one stays for training): refused, nothing written
    out = tmp_path / "out"
    assert _prepare(out, "--test-identities", "5") == 2
    err = capsys.readouterr().err
    assert ("test_identities (--test-identities) must be at most 1 (the source has 2 identities and at least one "
            "is kept for training), got 5") in err, err
    assert not out.exists()
    with pytest.raises(ValueError, match="must be at most 1"):
        prepare(PrepareConfig(identities=2, expressions=1, mesh_resolution=24, cameras=0, surface_face=60,
                              surface_nonface=20, ball=20, test_identities=2), str(out), progress=False,
                clamp_test_identities=False)
    # the default (2) with 2 identities: one held out, the manifest says how many
    assert _prepare(out) == 0
    assert "(1 held out as the test split)" in capsys.readouterr().out
    with open(out / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["config"]["test_identities"] == 1
    assert [r["split"] for r in manifest["records"]] == ["train", "test"]
    with open(out / "config.json") as f:   # the settings as given: a re-run compares them
        assert json.load(f)["test_identities"] == 2
    # the CLI names the flag, not the Python keyword, in prepare's advice
    assert _prepare(out, "--test-identities", "0") == 2
    err = capsys.readouterr().err
    assert "use another folder or --overwrite" in err and "overwrite=True" not in err, err


def test_procedural_only_flags_on_a_folder_source(tmp_path, capsys):
    src = tmp_path / "src"
    os.makedirs(src / "a")
    for flags in (["--identities", "2"], ["--expressions", "1", "--mesh-resolution", "64"]):
        assert main(["data", "prepare", "--source", str(src), "--out", str(tmp_path / "out"), "--quiet",
                     *flags]) == 2
        err = capsys.readouterr().err
        named = ", ".join(f for f in flags if f.startswith("--"))
        assert err == (f"npht: error: {named}: procedural heads only (--source synthetic); a folder source prepares "
                       f"all its identities and expressions (prepare a folder holding those you want)\n"), err
    assert not (tmp_path / "out").exists()
