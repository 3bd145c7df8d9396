"""tools/compare_upstream.py without the upstream checkouts: its usage errors, and its
EG3D comparison run end to end on a stand-in checkout (an EG3D-shaped module built on
npht's own re-implementation): agreement passes, a wrong sampler fails, and the stand-in's
package does not stay in sys.modules, nor the tool's patches in torch."""

import os
import sys

import pytest
import torch
from _backends import load_script

STANDIN = '''
import torch
from npht.reference import eg3d_sample_from_planes


def generate_planes():
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)


def sample_from_planes(plane_axes, plane_features, coordinates, mode="bilinear", padding_mode="zeros",
                       box_warp=None):
    assert mode == "bilinear" and padding_mode == "zeros"
    return eg3d_sample_from_planes(plane_axes, plane_features, coordinates * SCALE, box_warp=box_warp)
'''


def _tool():
    return load_script("tools", "compare_upstream")


def _standin(tmp_path, scale):
    path = tmp_path / "eg3d" / "eg3d" / "training" / "volumetric_rendering"
    path.mkdir(parents=True)
    for pkg in (path.parent, path):
        (pkg / "__init__.py").write_text("")
    (path / "renderer.py").write_text(f"SCALE = {scale!r}\n" + STANDIN)
    return str(tmp_path / "eg3d")


def test_usage_errors(tmp_path, capsys):
    tool = _tool()
    with pytest.raises(SystemExit) as e:
        tool.main([])
    assert e.value.code == 2 and "--eg3d PATH and/or --volsdf PATH" in capsys.readouterr().err
    for flag in ("--eg3d", "--volsdf"):
        with pytest.raises(SystemExit) as e:
            tool.main([flag, str(tmp_path)])
        assert e.value.code == 2 and "is not a checkout of" in capsys.readouterr().err


@pytest.mark.parametrize("scale, code", [(1.0, 0), (1.01, 1)])
def test_eg3d_against_standin(tmp_path, capsys, scale, code):
    tool = _tool()
    assert "training" not in sys.modules
    patched = {name: getattr(torch.Tensor, name) for name in ("float", "cuda")}
    dtype = torch.get_default_dtype()
    assert tool.main(["--eg3d", _standin(tmp_path, scale), "--backends", "cpu"]) == code
    out = capsys.readouterr().out
    assert "generate_planes() == projection 'eg3d'" in out
    assert ("FAIL" in out) == bool(code)
    assert "training" not in sys.modules and os.path.join(str(tmp_path), "eg3d", "eg3d") not in sys.path
    # torch as it was: the float64 run's Tensor.float bypass is undone
    assert all(getattr(torch.Tensor, name) is fn for name, fn in patched.items())
    assert torch.get_default_dtype() == dtype


def test_row_status():
    tool = _tool()
    Row = tool.Row
    assert Row("g", "q", "s", 1e-12, 1e-12, 1e-9).status == "ok"
    assert Row("g", "q", "s", 1e-3, 1e-3, 1e-9).status == "FAIL"
    assert Row("g", "q", "s", 1e-3, 1e-3, 1e-9, explained="cause").status == "explained"
    assert Row("g", "q", "s", float("nan"), float("nan"), 1e-9).status == "FAIL"
    assert Row("g", "q", "s", 5.0, 5.0, None).status == "info"
