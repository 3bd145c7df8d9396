"""Bad input gets a clear ValueError/TypeError naming the argument and the expectation."""

import pytest
import torch

import npht
from npht.ops import _backend


def good(B=2, N=7, C=4, H=5, W=6):
    return torch.randn(B, 3, C, H, W), torch.rand(B, N, 3) * 2 - 1


@pytest.mark.parametrize(
    "planes,points,exc,match",
    [
        (torch.randn(3, 4, 5, 6), torch.rand(2, 7, 3), ValueError, r"planes must be 5-D \[B, 3, C, H, W\]"),
        (torch.randn(2, 4, 4, 5, 6), torch.rand(2, 7, 3), ValueError, r"3 planes in dim 1"),
        (torch.randn(2, 3, 4, 5, 6), torch.rand(7, 3), ValueError, r"points must be \[B, N, 3\], got shape \(7, 3\)"),
        (torch.randn(2, 3, 4, 5, 6), torch.rand(2, 7, 2), ValueError, r"points must be \[B, N, 3\]"),
        (torch.randn(2, 3, 4, 5, 6), torch.rand(3, 7, 3), ValueError, r"same batch size"),
        (torch.randn(2, 3, 4, 5, 6).int(), torch.rand(2, 7, 3), TypeError, r"planes must be float32.*got torch.int32"),
        (torch.randn(2, 3, 4, 5, 6), torch.rand(2, 7, 3).double(), TypeError, r"points must be torch.float32 for torch.float32 planes"),
        (torch.randn(2, 3, 4, 5, 6).double(), torch.rand(2, 7, 3), TypeError, r"points must be torch.float64.*points.double\(\)"),
        (torch.randn(2, 3, 4, 5, 6).half(), torch.rand(2, 7, 3).half(), TypeError, r"points must be torch.float32 for torch.float16"),
        (torch.randn(2, 3, 4, 5, 6), torch.rand(2, 7, 3, device="meta"), ValueError, r"same device"),
        (torch.randn(2, 3, 0, 5, 6), torch.rand(2, 7, 3), ValueError, r"C, H, W >= 1"),
        ([1, 2], torch.rand(2, 7, 3), TypeError, r"planes must be a torch.Tensor, got list"),
        (torch.randn(2, 3, 4, 5, 6), None, TypeError, r"points must be a torch.Tensor"),
    ],
)
def test_bad_tensors(planes, points, exc, match):
    with pytest.raises(exc, match=match):
        npht.triplane_sample(planes, points)


def test_channels_last_layout_is_named():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W, C\]"):
        npht.triplane_sample(torch.randn(2, 3, 5, 6), torch.rand(2, 7, 3), channels_last=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(aggregate="max"), r"aggregate must be one of \('sum', 'mean', 'concat'\), got 'max'"),
        (dict(padding_mode="reflection"), r"padding_mode must be one of \('zeros', 'border'\)"),
        (dict(backend="metal"), r"backend must be one of .*got 'metal'"),
        (dict(projection="xyz"), r"projection must be one of \('npht', 'eg3d'\)"),
        (dict(projection=((0, 1), (1, 3), (0, 2))), r"three \(u, v\) pairs of axes"),
        (dict(projection=((0, 1), (1, 2))), r"three \(u, v\) pairs"),
        # not truncated to axis 0 / read as axis 1
        (dict(projection=((0.9, 1), (1, 2), (0, 2))), r"three \(u, v\) pairs of axes"),
        (dict(projection=((True, 1), (1, 2), (0, 2))), r"three \(u, v\) pairs of axes"),
        (dict(projection=((0, 1, 2), (1, 2), (0, 2))), r"three \(u, v\) pairs of axes"),
        (dict(aggregate=["sum"]), r"aggregate must be one of .* got \['sum'\]"),  # TypeError: unhashable before
        (dict(padding_mode=["zeros"]), r"padding_mode must be one of .* got \['zeros'\]"),
        (dict(box_warp=0), r"box_warp must be a positive finite number, got 0"),
        (dict(box_warp=float("inf")), r"box_warp must be a positive finite number, got inf"),
        (dict(box_warp=True), r"box_warp must be a positive finite number, got True"),
        (dict(backend="cuda"), r"backend='cuda' needs CUDA tensors, got tensors on cpu"),
    ],
)
def test_bad_options(kwargs, match):
    planes, points = good()
    with pytest.raises(ValueError, match=match):
        npht.triplane_sample(planes, points, **kwargs)


def test_backend_not_built(monkeypatch):
    planes, points = good()
    monkeypatch.setattr(_backend, "_compiled_info", lambda: {"cpu": False, "cuda": False})
    with pytest.raises(ValueError, match=r"backend='cpu' is not available: the npht._C extension is not built"):
        npht.triplane_sample(planes, points, backend="cpu")
    # auto falls back to the reference and still computes the right thing
    monkeypatch.undo()
    expected = npht.triplane_sample(planes, points, backend="cpu")
    monkeypatch.setattr(_backend, "_compiled_info", lambda: {"cpu": False, "cuda": False})
    torch.testing.assert_close(npht.triplane_sample(planes, points), expected)


def test_cuda_backend_not_built(monkeypatch):
    assert issubclass(_backend.BackendUnavailableError, RuntimeError)  # what it was before
    monkeypatch.setattr(_backend, "_compiled_info", lambda: {"cpu": True, "cuda": False})
    with pytest.raises(ValueError, match=r"backend='cuda' is not available: npht._C was built without CUDA"):
        _backend.resolve_backend("cuda", torch.device("cuda", 0))


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "_triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"TRITON_INTERPRET=1"):
        _backend.resolve_backend("triton", torch.device("cpu"))
    monkeypatch.setattr(_backend, "_triton_available", lambda: False)
    monkeypatch.setattr(_backend, "_triton", lambda: (None, ImportError("No module named 'triton'")))
    with pytest.raises(ValueError, match=r"backend='triton' is not available: No module named 'triton'"):
        _backend.resolve_backend("triton", torch.device("cpu"))


def test_projection_from_plane_axes_rejects_oblique():
    axes = torch.eye(3).repeat(3, 1, 1)
    axes[1] = torch.tensor([[0.6, 0.8, 0.0], [-0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"plane_axes\[1\] must be a permutation matrix"):
        npht.projection_from_plane_axes(axes)
    with pytest.raises(ValueError, match=r"plane_axes must be \[3, 3, 3\]"):
        npht.projection_from_plane_axes(torch.eye(3))


def test_raw_kernel_checks():
    """The C++ glue checks its inputs too (the raw ops are callable directly)."""
    planes = torch.randn(2, 3, 5, 6, 4)
    points = torch.rand(2, 7, 3)
    with pytest.raises(RuntimeError, match="points must be contiguous"):
        torch.ops.npht_C.triplane_fwd(planes, points.transpose(0, 1).contiguous().transpose(0, 1),
                                      [0, 1, 1, 2, 0, 2], 1.0, 0, 0, False)
    with pytest.raises(RuntimeError, match="axes must have 6 entries"):
        torch.ops.npht_C.triplane_fwd(planes, points, [0, 1, 1, 2], 1.0, 0, 0, False)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        torch.ops.npht_C.triplane_bwd(torch.randn(2, 7, 5), planes, points, [0, 1, 1, 2, 0, 2],
                                      1.0, 0, 0, False, True, True)


def test_option_types():
    import numpy as np

    planes, points = good()
    with pytest.raises(TypeError, match="align_corners must be a bool, got str"):
        npht.triplane_sample(planes, points, align_corners="yes")
    for bad in ("no", 1):  # read as True before
        with pytest.raises(TypeError, match="channels_last must be a bool"):
            npht.triplane_sample(planes, points, channels_last=bad)
    # axis pairs as numpy ints or an integer tensor
    torch.testing.assert_close(
        npht.triplane_sample(planes, points, projection=torch.tensor([[0, 1], [0, 2], [2, 0]])),
        npht.triplane_sample(planes, points, projection=[[np.int64(0), 1], [0, 2], [2, 0]]))
    # any real number type for box_warp (numpy scalars included)
    torch.testing.assert_close(npht.triplane_sample(planes, points, box_warp=np.float32(1.5)),
                               npht.triplane_sample(planes, points, box_warp=1.5))
