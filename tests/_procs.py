"""Test helpers for commands run as child processes (import as ``_procs``, like ``_backends``)."""

import os
import signal
import subprocess
import time


def signal_when_saved(proc: subprocess.Popen, checkpoint, signum=signal.SIGINT, *, group: bool = False,
                      timeout: float = 300.0) -> str:
    """Wait until ``proc`` (started with ``start_new_session=True``, stderr piped as text) has
    written ``checkpoint``, send it ``signum`` (to its whole process group with ``group``:
    a terminal's Ctrl-C), and return its stderr once it exits; killed if it outlives
    ``timeout``."""
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(checkpoint) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        (os.killpg if group else os.kill)(proc.pid, signum)
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
