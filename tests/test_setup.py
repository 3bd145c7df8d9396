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
