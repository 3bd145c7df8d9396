"""setup.py's choice of building CUDA (NPHT_CUDA, torch's CUDA, the nvcc it would use)."""

import importlib.util
import os
import stat

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup_py(monkeypatch):
    monkeypatch.setenv("NPHT_SETUP_IMPORT", "1")   # the helpers only, no build
    spec = importlib.util.spec_from_file_location("npht_setup_under_test", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_toolkit(path, release):
    os.makedirs(path / "bin")
    nvcc = path / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_cuda_built_only_with_an_nvcc_of_torchs_major_release(setup_py, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(setup_py, "CUDA_HOME", fake_toolkit(tmp_path / "cuda13", "13.0"))
    monkeypatch.setenv("NPHT_CUDA", "auto")
    assert setup_py._want_cuda() is False  # torch would stop the build halfway: the CPU backend instead
    assert "building without CUDA: " in capsys.readouterr().out
    monkeypatch.setenv("NPHT_CUDA", "1")
    with pytest.raises(RuntimeError, match=r"nvcc is CUDA 13\.0 but torch was built with CUDA 12\.8 .*CUDA 12\.x"):
        setup_py._want_cuda()
    monkeypatch.setattr(setup_py, "CUDA_HOME", fake_toolkit(tmp_path / "cuda12", "12.4"))
    assert setup_py._want_cuda() is True   # another minor release: torch builds (it warns)
    monkeypatch.setenv("NPHT_CUDA", "auto")
    assert setup_py._want_cuda() is True
    monkeypatch.setenv("NPHT_CUDA", "0")
    assert setup_py._want_cuda() is False


def test_cuda_needs_a_cuda_torch_and_nvcc(setup_py, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(setup_py, "CUDA_HOME", fake_toolkit(tmp_path / "cuda", "12.4"))
    monkeypatch.setenv("NPHT_CUDA", "auto")
    assert setup_py._want_cuda() is False and capsys.readouterr().out == ""  # a CPU torch: quietly CPU
    monkeypatch.setenv("NPHT_CUDA", "yes")
    with pytest.raises(RuntimeError, match=r"NPHT_CUDA=1 but CUDA cannot be built: this torch is a CPU build"):
        setup_py._want_cuda()
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(setup_py, "CUDA_HOME", str(tmp_path / "runtime-only"))   # no bin/nvcc
    with pytest.raises(RuntimeError, match=r"no nvcc \(CUDA_HOME="):
        setup_py._want_cuda()
    monkeypatch.setenv("NPHT_CUDA", "maybe")
    with pytest.raises(RuntimeError, match=r"NPHT_CUDA must be 1 \(build CUDA\), 0 \(skip it\) or auto, got 'maybe'"):
        setup_py._want_cuda()


def test_sdist_carries_every_tracked_source(tmp_path):
    """An sdist made on a CPU-only machine must still build the CUDA extension elsewhere:
    every file git tracks (headers, .cu, *_cuda.cpp, tests, tools) is in it (MANIFEST.in)."""
    import subprocess
    import sys
    import tarfile

    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout: no list of tracked files to compare with")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    tree = tmp_path / "tree"
    for rel in tracked:  # a copy, so that the sdist's egg-info stays out of the checkout
        dst = tree / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((open(os.path.join(ROOT, rel), "rb")).read())
    env = {k: v for k, v in os.environ.items() if k != "NPHT_SETUP_IMPORT"}
    env["NPHT_CUDA"] = "0"
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")], cwd=tree,
                   env=env, capture_output=True, text=True, check=True)
    (archive,) = (tmp_path / "dist").glob("npht-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = sorted(set(tracked) - names - {".gitignore"})
    assert not missing, f"tracked files missing from the sdist: {missing[:20]}"
    for rel in ("csrc/include/npht/composite_math.h", "csrc/triplane/triplane_kernels.cu",
                "csrc/triplane/triplane_cuda.cpp", "kernels/triplane.py", "tests/conftest.py"):
        assert rel in names
