"""npht._mkl: the oneMKL VML first-call race work-around (pytorch/pytorch#188792) calls every
VML-backed op once per precision, single-threaded, and ``import npht`` runs it before any
other torch op. (The race itself shows in a few percent of fresh processes only, so it is
not reproduced here; _mkl.py has the measurement.)"""

import subprocess
import sys

import pytest
import torch

from npht import _mkl

pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(),
                                reason="torch built without MKL: no VML, nothing to resolve")


def test_every_vml_op_is_called_once_per_precision_below_the_parallel_grain(monkeypatch):
    calls = []
    for name in _mkl.VML_OPS:
        orig = getattr(torch, name)

        def record(x, *args, _name=name, _orig=orig, **kwargs):
            calls.append((_name, x.dtype, x.numel(), x.is_contiguous()))
            return _orig(x, *args, **kwargs)

        monkeypatch.setattr(torch, name, record)
    done = _mkl.resolve_vml_dispatch()
    want = {(n, d) for n in _mkl.VML_OPS for d in (torch.float32, torch.float64)}
    assert set(done) == want and len(done) == len(want)
    assert sorted((n, str(d)) for n, d, _, _ in calls) == sorted((n, str(d)) for n, d in want)
    # 8 contiguous values: one VML call on this thread (ATen's VML grain is 2048)
    assert all(numel == 8 and contiguous for _, _, numel, contiguous in calls)
    for name in ("exp", "log", "sqrt", "sin", "tanh"):
        assert name in _mkl.VML_OPS


def test_import_npht_resolves_before_user_code():
    code = (
        "import torch\n"
        "calls = []\n"
        "orig = torch.exp\n"
        "torch.exp = lambda x, *a, **k: (calls.append((x.numel(), str(x.dtype))), orig(x, *a, **k))[1]\n"
        "import npht\n"
        "print(sorted(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[(8, 'torch.float32'), (8, 'torch.float64')]"


def test_results_unchanged_by_the_warm_up():
    x = torch.linspace(-3, 3, 5000, dtype=torch.float64)
    before = torch.exp(x)
    _mkl.resolve_vml_dispatch()
    assert torch.equal(torch.exp(x), before)
