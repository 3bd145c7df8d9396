"""The render sensitivity study runs end to end at tiny sizes and writes its JSON; the TF32
emulation rounds to a 10-bit mantissa and passes gradients straight through."""

import json

import torch

from test_bench_triplane import load


def test_round_tf32():
    bench = load("render_sensitivity")
    x = torch.tensor([1.0, 1.0 + 2 ** -11, 1.0 + 2 ** -10, 3.0 + 2 ** -12, -2.0 - 2 ** -10], requires_grad=True)
    y = bench.round_tf32(x)
    # ties go away from zero; values with 10 mantissa bits stay
    torch.testing.assert_close(y.detach(), torch.tensor([1.0, 1.0 + 2 ** -10, 1.0 + 2 ** -10, 3.0, -2.0 - 2 ** -9]),
                               rtol=0, atol=0)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(5))


def test_render_sensitivity_smoke(tmp_path):
    bench = load("render_sensitivity")
    path = bench.main(["--device", "cpu", "--quick", "--res", "8", "--out", str(tmp_path)])
    with open(path) as f:
        res = json.load(f)
    assert res["benchmark"] == "render_sensitivity" and res["commit"]
    assert set(res["results"]) == {"denser-sampler", "threshold", "tf32-everywhere", "tf32-shading"}
    for row in res["results"].values():
        assert 0 <= row["normal_err_deg"] <= 180 and 0 <= row["mask_iou"] <= 1
    conv = res["convergence"]
    assert conv["rays"] == 64 and 0 <= conv["foreground_unconverged"] <= conv["foreground"] <= conv["rays"]
    text = load("report").render(str(tmp_path))
    assert "| tf32-shading |" in text
