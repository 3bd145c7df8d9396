"""The `npht` commands' argument checks and --help: a bad --out or --device is a one-line
error before any work (here: before the missing data or checkpoint is noticed), an .npy
where an .npz is expected names the flag and what the file needs, every flag has a help."""

import argparse

import numpy as np
import pytest
import torch

from npht.cli import build_parser, main

# every command with --out (and --device, all but `data prepare`), with paths that do not
# exist: the checks must come first
COMMANDS = {
    "data prepare": ["data", "prepare", "--source", "synthetic", "--quiet"],
    "train identity": ["train", "identity", "--data", "NODATA", "--no-progress"],
    "train expression": ["train", "expression", "--data", "NODATA", "--identity", "NO.pt", "--no-progress"],
    "eval": ["eval", "--data", "NODATA", "--model", "TP=NO.pt", "--no-progress"],
    "fit scan": ["fit", "scan", "--model", "NO.pt", "--scan", "NO.npy", "--no-progress"],
    "fit normals": ["fit", "normals", "--model", "NO.pt", "--normals", "NO.npz", "--no-progress"],
    "render": ["render", "--model", "NO.pt", "--no-progress"],
    "demo": ["demo", "--quick", "--no-progress"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_out_that_is_a_file(command, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(COMMANDS[command] + ["--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err == f"npht: error: --out {str(afile)!r} is a file, not a folder\n", err
    assert main(COMMANDS[command] + ["--out", str(afile / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npht: error: --out {str(afile / 'sub')!r}: ") and "is a file, not a folder" in err, err


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "data prepare"])
def test_device_checked_first(command, tmp_path, capsys, monkeypatch):
    args = COMMANDS[command] + ["--out", str(tmp_path / "out")]
    assert main(args + ["--device", "foo"]) == 2
    assert capsys.readouterr().err == "npht: error: --device 'foo' is not a device (cpu, cuda, cuda:N, ...)\n"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(args + ["--device", "cuda"]) == 2
    assert capsys.readouterr().err == ("npht: error: --device cuda: this torch has no CUDA GPU "
                                       "(torch.cuda.is_available() is False)\n")
    assert main(args + ["--device", "meta"]) == 2
    assert "npht: error: --device meta: the meta device holds no data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_npy_where_an_npz_is_expected(tmp_path, capsys):
    from npht.eval.fit_command import read_cameras, read_normal_maps, read_scan
    from npht.eval.renders import read_codes

    path = str(tmp_path / "points.npy")
    np.save(path, np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"--normals .* is a single array \(.npy\), not an .npz archive of named "
                                         r"arrays; it needs normals \[V, H, W, 3\]"):
        read_normal_maps(path)
    with pytest.raises(ValueError, match=r"--cameras .* single array .* it needs K \[V, 3, 3\] and cam2world"):
        read_cameras(path)
    with pytest.raises(ValueError, match=r"--codes .* single array .* it needs code \[z\] .* or codes \[n, z\]"):
        read_codes([path], 4)
    renamed = str(tmp_path / "points.npz")  # an .npy under an .npz name
    np.save(open(renamed, "wb"), np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"--scan .* single array .* it needs points \[N, 3\]"):
        read_scan(renamed)
    junk = tmp_path / "junk.npz"
    junk.write_text("not numpy")
    with pytest.raises(ValueError, match=r"--codes .* is not an .npz archive"):
        read_codes([str(junk)], 4)
    # the commands: one line, no traceback
    assert main(["fit", "normals", "--model", "NO.pt", "--normals", path, "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npht: error: --normals ") and len(err.splitlines()) == 1, err
    assert main(["render", "--model", "NO.pt", "--cameras", path, "--out", str(tmp_path / "o"), "--device", "cpu",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npht: error: --cameras ") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("n", ["0", "-1"])
def test_eval_identities_must_be_positive(n, tmp_path, capsys):
    assert main(["eval", "--data", "NODATA", "--model", "TP=NO.pt", "--out", str(tmp_path / "o"), "--device", "cpu",
                 "--identities", n, "--no-progress"]) == 2
    assert f"identities must be >= 1 (None: all), got {n}" in capsys.readouterr().err


def _parsers():
    """``"train identity"`` -> its parser, for every command."""
    out = {}

    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[prefix.strip()] = parser
        for a in subs:
            for name, p in a.choices.items():
                walk(p, f"{prefix} {name}")

    walk(build_parser(), "")
    return out


def test_every_flag_has_a_help():
    parsers = _parsers()
    assert set(parsers) == set(COMMANDS)
    for command, p in parsers.items():
        for a in p._actions:
            if a.option_strings and a.dest != "help":
                assert a.help and a.help.strip(), f"npht {command} {a.option_strings[0]} has no help"
        text = p.format_help()
        if command == "render":
            assert "(default: 256)" in text  # --resolution's default, appended
    layout = next(a for a in parsers["data prepare"]._actions if a.dest == "layout")
    assert tuple(layout.choices) == ("auto", "folder", "nphm")
    split = next(a for a in parsers["eval"]._actions if a.dest == "split")
    assert set(split.choices) == {"train", "test", "all"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "prepare", "--source", "synthetic", "--out", "x", "--layout", "flat"])


def test_prepare_accepts_no_progress():
    args = build_parser().parse_args(["data", "prepare", "--source", "synthetic", "--out", "x", "--no-progress"])
    assert args.quiet
    assert not build_parser().parse_args(["data", "prepare", "--source", "synthetic", "--out", "x"]).quiet


EVAL = ["eval", "--data", "NODATA", "--model", "TP=NO.pt", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("extra, message", [
    (["--model", "TP=OTHER.pt"], "--model TP is given twice ('NO.pt' and 'OTHER.pt'): give each name once"),
    (["--expression", "TP=A.pt", "--expression", "TP=B.pt"],
     "--expression TP is given twice ('A.pt' and 'B.pt'): give each name once"),
    (["--scan-points", "0"], "--scan-points must be >= 1, got 0"),
    (["--metric-points", "0"], "--metric-points must be >= 1, got 0"),
    (["--mesh-resolution", "1"], "--mesh-resolution must be >= 2, got 1"),
    (["--iterations", "0"], "--iterations must be >= 1, got 0"),
    (["--noise", "-0.1"], "--noise must be a finite number >= 0, got -0.1"),
    (["--no-expression-refine"],
     "--no-expression-refine applies to the posed rows, which need --expression NAME=CKPT"),
])
def test_eval_flags_checked_first_by_their_names(extra, message, tmp_path, capsys):
    """Checked before the (missing) data and checkpoints, each message naming its flag."""
    assert main(EVAL + ["--out", str(tmp_path / "o")] + extra) == 2
    assert capsys.readouterr().err == f"npht: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_cli_errors_name_flags_not_keywords():
    from npht.cli import _cli_message

    assert _cli_message("use another folder or overwrite=True (--overwrite)") == "use another folder or --overwrite"
    assert _cli_message("x holds a run: pass --resume (resume=True) to continue it") == \
        "x holds a run: pass --resume to continue it"
    assert _cli_message("n_points must be >= 1") == "n_points must be >= 1"
