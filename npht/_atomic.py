"""Atomic file writes: every file npht's commands, trainers and data preparation write goes
through :func:`write_atomic`, so that a run interrupted at any moment (Ctrl-C, an
exception, a full disk, SIGKILL) leaves the previous file or none at a path, never a
truncated one.

The data is written to a hidden temporary file in the target's folder,
``.<name>.tmp-<pid>-<random><ext>`` (the target's extension kept, for writers that infer
the format from it: PIL, trimesh, ``np.savez``), then ``os.replace``d onto the target. A
failed write removes its temporary file; one left behind by a killed process (which cannot
clean up) is removed by the next write of the same target once that process no longer
exists on this machine.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Callable

__all__ = ["new_file_mode", "write_atomic", "write_json_atomic", "write_text_atomic"]


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file here (0o666 less the umask). ``tempfile.mkstemp``
    makes 0o600 files whatever the umask, and ``os.replace`` keeps that: the atomic writers
    set their files to this mode, as a plain write would make them (readable by the group
    on a shared project folder)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists, owned by someone else (or cannot tell)
        return True
    return True


def remove_stale_temporaries(path: str) -> list:
    """Removes the temporary files that writes of ``path`` by processes that no longer
    exist left in its folder (a SIGKILLed run); returns their paths. A live process's
    temporary file (a write under way) is kept."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(re.escape(_temp_prefix(name)) + r"(\d+)-")
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry)
        if m and not _pid_alive(int(m.group(1))):
            try:
                os.remove(os.path.join(folder, entry))
                removed.append(os.path.join(folder, entry))
            except OSError:
                pass
    return removed


def write_atomic(path, write: Callable[[str], object]) -> str:
    """``write(tmp)`` to a temporary file next to ``path`` (the real extension kept), then
    ``os.replace`` it onto ``path``: an interrupted or failed write leaves the previous file
    (or none), never a truncated one, and removes the temporary file. The folder is created
    if missing; the file gets the mode a plain write would give it. Returns ``path``."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(name)}{os.getpid()}-", suffix=os.path.splitext(name)[1],
                               dir=folder)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, new_file_mode())
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return path


def write_text_atomic(path, text: str, *, newline=None) -> str:
    """``text`` to ``path`` through :func:`write_atomic`."""
    def write(tmp):
        with open(tmp, "w", newline=newline) as f:
            f.write(text)
    return write_atomic(path, write)


def write_json_atomic(path, obj, *, indent: int = 1) -> str:
    """``obj`` as JSON to ``path`` through :func:`write_atomic` (serialised first: an object
    JSON cannot hold raises before anything is written)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent))
