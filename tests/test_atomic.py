"""npht._atomic: the one atomic writer every file of npht goes through."""

import json
import os
import subprocess
import sys

import pytest

from npht._atomic import new_file_mode, remove_stale_temporaries, write_atomic, write_json_atomic, write_text_atomic


def _write(text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return write


def test_keeps_the_extension_and_the_previous_file(tmp_path):
    seen = []

    def write(tmp):
        seen.append(os.path.basename(tmp))
        _write("new")(tmp)

    path = str(tmp_path / "a.png")
    assert write_atomic(path, write) == path and open(path).read() == "new"
    assert len(seen) == 1 and seen[0].startswith(f".a.png.tmp-{os.getpid()}-") and seen[0].endswith(".png")

    def fail(tmp):
        _write("half")(tmp)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_atomic(path, fail)
    assert open(path).read() == "new" and os.listdir(tmp_path) == ["a.png"]
    def interrupted(tmp):
        _write("half")(tmp)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C mid-write: the same
        write_atomic(path, interrupted)
    assert open(path).read() == "new" and os.listdir(tmp_path) == ["a.png"]


def test_makes_the_folder_and_takes_path_likes(tmp_path):
    path = tmp_path / "deep" / "er" / "b.txt"
    assert write_text_atomic(path, "x") == str(path) and path.read_text() == "x"


def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert new_file_mode() == 0o640
        write_text_atomic(tmp_path / "m.txt", "x")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.txt").st_mode & 0o777 == 0o640


def test_json_is_serialised_before_anything_is_written(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": [1, 2]} and os.listdir(tmp_path) == ["r.json"]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """SIGKILL leaves the temporary file (nothing runs to remove it): the next write of the
    same target removes it once its process is gone; a live process's (a write under way)
    and other targets' temporaries are kept."""
    dead = _dead_pid()
    stale = tmp_path / f".c.npz.tmp-{dead}-abc123.npz"
    live = tmp_path / f".c.npz.tmp-{os.getppid()}-def456.npz"
    other = tmp_path / f".d.npz.tmp-{dead}-abc123.npz"
    for p in (stale, live, other):
        p.write_bytes(b"PK partial")
    write_text_atomic(tmp_path / "c.npz", "complete")
    assert sorted(os.listdir(tmp_path)) == sorted(["c.npz", live.name, other.name])
    assert remove_stale_temporaries(tmp_path / "d.npz") == [str(other)]
    assert sorted(os.listdir(tmp_path)) == sorted(["c.npz", live.name])


def test_killed_mid_write_in_a_real_process(tmp_path):
    """A child killed with SIGKILL while writing: the target keeps its old content, and the
    temporary file it leaves is cleaned by the next write."""
    if not hasattr(os, "kill") or sys.platform == "win32":
        pytest.skip("POSIX signals")
    import signal

    target = tmp_path / "log.json"
    write_json_atomic(target, {"step": 1})
    code = ("import sys, time\nfrom npht._atomic import write_atomic\n"
            "def w(tmp):\n    open(tmp, 'w').write('{\"st')\n    print('writing', flush=True)\n    time.sleep(60)\n"
            f"write_atomic({str(target)!r}, w)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads(target.read_text()) == {"step": 1}
    left = [n for n in os.listdir(tmp_path) if n != "log.json"]
    assert len(left) == 1 and left[0].startswith(f".log.json.tmp-{proc.pid}-")
    write_json_atomic(target, {"step": 2})
    assert os.listdir(tmp_path) == ["log.json"] and json.loads(target.read_text()) == {"step": 2}
