"""The renderer benchmark runs end to end at tiny sizes, writes valid JSON with timings,
ratios and accuracy figures, and the README report renders it."""

import json

from test_bench_triplane import load


def test_render_benchmark_smoke(tmp_path):
    bench = load("render")
    path = bench.main(["--device", "cpu", "--quick", "--resolutions", "8", "--reps", "1", "--out", str(tmp_path),
                       "--plot"])
    with open(path) as f:
        res = json.load(f)
    assert res["benchmark"] == "render" and res["device_type"] == "cpu" and res["commit"]
    rows = {(r["task"], r["method"], r["res"]): r for r in res["results"]}
    assert "npht-fast-tf32" not in bench.gan_methods("cpu")  # TF32 is a GPU method
    assert "npht-fast-tmm-tf32" in bench.gan_methods("cuda") and "npht-fast-tmm-tf32" not in bench.gan_methods("cpu")
    for m in bench.gan_methods("cpu"):
        assert rows[("gan_step", m, 8)]["median_ms"] > 0
    assert rows[("gan_step", "reference", 8)]["speedup_vs_reference"] == 1.0
    acc = rows[("gan_step", "npht", 8)]["accuracy_vs_full"]
    assert acc["mask_iou"] > 0.99 and acc["grad_cosine"] > 0.99 and acc["normal_err_deg"] < 1.0
    assert {("composite", "reference", 8), ("composite", "npht-cpu", 8)} <= set(rows)
    for m in ("reference", "npht-cpu"):
        assert rows[("sampler", m, 8)]["median_ms"] > 0 and rows[("sampler", m, 8)]["rounds"] >= 1
    accuracy_keys = {f"{m} 8: accuracy within bounds" for m in bench.gan_methods("cpu")[1:]}
    assert set(res["targets"]) == {"composite npht-cpu >= 2x reference", "sampler npht-cpu >= 2x reference"} | accuracy_keys
    assert res["targets"]["npht 8: accuracy within bounds"] == (acc["normal_err_deg"] <= 1.0)
    assert (tmp_path / (path.split("/")[-1][:-5] + ".png")).exists()
    text = load("report").render(str(tmp_path))
    assert "| gan_step | npht | 8 |" in text


def test_render_benchmark_triton_products(tmp_path):
    """``npht-fast-tmm-tf32`` (a GPU method by default) runs where Triton runs (here the
    interpreter, whose products are IEEE float32) and stays within the accuracy bounds."""
    from _backends import require_backend

    require_backend("triton")
    bench = load("render")
    path = bench.main(["--device", "cpu", "--quick", "--resolutions", "8", "--reps", "1", "--out", str(tmp_path),
                       "--tasks", "gan_step", "--methods", "reference", "npht-fast-tmm-tf32", "--no-memory"])
    with open(path) as f:
        rows = {r["method"]: r for r in json.load(f)["results"]}
    acc = rows["npht-fast-tmm-tf32"]["accuracy_vs_full"]
    assert rows["npht-fast-tmm-tf32"]["median_ms"] > 0
    assert acc["mask_iou"] > 0.99 and acc["grad_cosine"] > 0.99 and acc["normal_err_deg"] < 1.0


def test_bare_composite_reference_is_the_reference_compositing():
    """The composite task's baseline (VolSDF's formulas, no guards) computes what
    npht.reference's compositing computes: values and gradients (float64)."""
    import torch

    from npht.reference.render import baseline_composite, composite

    g = torch.Generator().manual_seed(0)
    z = torch.sort(torch.rand(5, 9, generator=g, dtype=torch.float64) * 2 + 1, -1).values
    sdf = ((2.0 - z) + 0.05 * torch.randn(5, 9, generator=g, dtype=torch.float64)).requires_grad_()
    v = torch.randn(5, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    a, b = baseline_composite(sdf, z, beta, v), composite(sdf, z, beta, v)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    ups = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in a[:3]]
    torch.testing.assert_close(torch.autograd.grad(a[:3], (sdf, beta, v), ups),
                               torch.autograd.grad(b[:3], (sdf, beta, v), ups))


def test_out_of_memory_is_a_row(monkeypatch):
    """An OOM in one method is recorded as an error row; the run goes on."""
    import torch

    bench = load("render")
    cfg = bench.default_config("cpu", True)
    cfg["resolutions"] = [8]

    def boom(self, method, res):
        if method == "reference":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 TiB")
        return orig(self, method, res)

    orig = bench.Scene.render
    monkeypatch.setattr(bench.Scene, "render", boom)
    rows = bench.run_gan(cfg, "cpu", ["reference", "npht"], reps=1, memory=False)
    assert rows[0]["error"] == "out of memory" and rows[1]["median_ms"] > 0


def test_gpu_targets_require_the_accuracy_bounds():
    """A method that is fast enough but outside the accuracy bounds does not meet the time
    target; one without an accuracy measurement says so in the target's name."""
    bench = load("render")
    good = {"normal_err_deg": 0.1, "mask_iou": 0.999, "grad_cosine": 0.999}
    bad = dict(good, normal_err_deg=2.0)
    rows = [{"task": "gan_step", "method": "reference", "res": 64, "median_ms": 100.0},
            {"task": "gan_step", "method": "npht-fast", "res": 256, "median_ms": 90.0,
             "peak_mem_bytes": 2 ** 30, "accuracy_vs_full": bad},
            {"task": "gan_step", "method": "npht", "res": 256, "median_ms": 90.0, "accuracy_vs_full": good},
            {"task": "gan_step", "method": "npht-skip", "res": 256, "median_ms": 90.0}]
    t = bench.targets(rows, "cuda")
    assert t["npht-fast 256: accuracy within bounds"] is False
    assert t["npht-fast: 256 time <= reference 64 time"] is False
    assert t["npht-fast: 256 peak <= 24 GiB"] is False
    assert t["npht: 256 time <= reference 64 time"] is True
    assert t["npht-skip: 256 time <= reference 64 time (accuracy not measured)"] is True
