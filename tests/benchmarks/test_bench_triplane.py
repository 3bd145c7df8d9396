"""The benchmark runs end to end at tiny sizes, writes valid JSON, and the README report
renders it."""

import json
import os

import pytest
from _backends import load_script

from npht.reference import grid_sample_has_double_backward


def load(name):
    return load_script("benchmarks", name)


def test_triplane_benchmark_smoke(tmp_path):
    bench = load("triplane")
    path = bench.main(["--device", "cpu", "--quick", "--B", "1", "--N", "64", "--eik-N", "16",
                       "--C", "4", "--res", "8", "--reps", "2", "--out", str(tmp_path), "--no-memory",
                       "--methods", "reference", "npht-reference", "eg3d", "npht-cpu", "npht-cpu-cl", "npht-cpu-fused",
                       "npht-cpu-fused-ckpt", "npht-cpu-fused-tf32", "npht-cpu-fused-tmm", "npht-cpu-fused-keep",
                       "npht-cpu-fused-tmm-h16", "npht-cpu-fused-tmm-keep-h16-d16"])
    with open(path) as f:
        res = json.load(f)
    assert res["device_type"] == "cpu" and res["commit"] and res["torch"]
    rows = {(r["task"], r["method"]): r for r in res["results"]}
    assert set(rows) == {(t, m) for t in ("fwd", "fwd_bwd", "eikonal_op", "eikonal")
                         for m in ("reference", "npht-reference", "eg3d", "npht-cpu", "npht-cpu-cl")} | {
        ("eikonal", "npht-cpu-fused"), ("eikonal", "npht-cpu-fused-ckpt"), ("eikonal", "npht-cpu-fused-tf32"),
        ("eikonal", "npht-cpu-fused-tmm"), ("eikonal", "npht-cpu-fused-keep"), ("eikonal", "npht-cpu-fused-tmm-h16"),
        ("eikonal", "npht-cpu-fused-tmm-keep-h16-d16")}
    # the precision variant reports its gradients against float32's (no TF32 on a CPU: equal)
    assert rows[("eikonal", "npht-cpu-fused-tf32")]["grad_cosine_vs_float32"] > 0.9999
    assert "npht-cuda-fused-tf32" not in bench.methods_for("cpu")
    no_gg = not grid_sample_has_double_backward("cpu")
    for (task, method), r in rows.items():
        if no_gg and method == "eg3d" and task.startswith("eikonal"):
            # EG3D's path is grid_sample: no second derivative in this torch, an error row
            assert "grid_sampler_2d_backward" in r["error"]
            continue
        assert r["median_ms"] > 0 and r["points_per_s"] > 0
    assert rows[("fwd", "reference")]["speedup_vs_reference"] == 1.0
    assert res["commit"] != "unknown" and not os.path.exists(tmp_path / "triplane_partial.json")
    report = load("report")
    text = report.render(str(tmp_path))
    assert "| fwd | npht-cpu |" in text and "speed-up vs reference" in text


def test_literal_baseline_is_npht_sampling():
    """The ratio denominator (3 x F.grid_sample + sum, no guards) computes npht's op: same
    values and gradients for points inside and outside the planes."""
    import torch

    import npht

    bench = load("triplane")
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(2, 3, 5, 7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    points = (torch.rand(2, 101, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    a = bench.literal_grid_sample_sum(planes, points)
    b = npht.triplane_sample(planes, points, backend="reference")
    torch.testing.assert_close(a, b)
    go = torch.randn(a.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(a, (planes, points), go),
                               torch.autograd.grad(b, (planes, points), go))
    assert "npht-reference" in bench.methods_for("cpu")


def test_literal_gather_baseline_is_npht_sampling():
    """The eikonal baseline where torch has no double backward of grid_sample: 3 x
    gather_bilinear + sum, no guards: npht's op to second order (float64)."""
    import torch

    import npht

    from npht.reference import baseline_triplane_sum

    g = torch.Generator().manual_seed(1)
    planes = torch.randn(2, 3, 4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    points = (torch.rand(2, 37, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    outs = [baseline_triplane_sum(planes, points, "gather"), npht.triplane_sample(planes, points)]
    torch.testing.assert_close(outs[0], outs[1])
    w = torch.randn(4, generator=g, dtype=torch.float64)
    grads = []
    for out in outs:  # the eikonal step's double backward
        (n,) = torch.autograd.grad((out @ w).sum(), points, create_graph=True)
        grads.append(torch.autograd.grad((n ** 2).sum(), (planes, points)))
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ValueError, match="impl must be"):
        baseline_triplane_sum(planes, points, "nope")


def test_tf32_rows_compare_with_plain_float32():
    """grad_cosine_vs_float32 compares a -tf32 row with the same path in IEEE float32 that
    stores everything in float32 (the -h16/-d16 rows' float16 storage counts too)."""
    bench = load("triplane")
    assert bench.float32_twin("npht-cuda-fused-tmm-keep-h16-d16-tf32") == "npht-cuda-fused"
    assert bench.float32_twin("npht-triton-cl-fused-ckpt-tf32") == "npht-triton-cl-fused-ckpt"
    assert bench.float32_twin("reference-tf32") == "reference"


def test_cpu_memory_measure_counts_bytes_in_use():
    """The CPU peak is the heap's bytes in use (glibc mallinfo2), not RSS with the
    allocator's slack: a 64 MiB tensor freed and a 16 MiB one made after it peak at 64 MiB,
    and a call that frees what it allocated counts its peak only."""
    import torch

    common = load("_common")
    if common._heap_in_use() is None:
        pytest.skip("no glibc mallinfo2 here: the RSS fallback is in use")

    def step():
        a = torch.ones(16 * 2 ** 20)   # 64 MiB
        del a
        b = torch.ones(4 * 2 ** 20)    # 16 MiB
        return float(b[0])

    peak = common.cpu_peak_during(step)
    assert 60 * 2 ** 20 < peak < 72 * 2 ** 20, peak / 2 ** 20
    assert "mallinfo2" in common.cpu_memory_measure()


def test_cpu_peak_memory_child_sees_the_allocation():
    """The CPU memory probe (a fresh child process) sees a step's working memory: the
    reference's forward+backward at this size allocates well over 8 MiB."""
    bench = load("triplane")
    cfg = dict(B=1, N=2 ** 16, C=16, res=16, eik_N=16)
    peak = bench.peak_memory("reference", "fwd_bwd", cfg, "cpu")
    assert peak > 8 * 2 ** 20


def test_method_names():
    bench = load("triplane")
    assert bench.parse_method("npht-cuda-cl") == ("cuda", True, False, False)
    assert bench.parse_method("npht-cpu-fused-ckpt") == ("cpu", False, True, True)
    assert bench.parse_method("npht-cuda-fused-tf32") == ("cuda", False, True, False)
    assert bench.parse_method("npht-cpu-fused-torch-ew") == ("cpu", False, True, False)
    assert bench.is_torch_ew("npht-cpu-fused-torch-ew") and not bench.is_torch_ew("npht-cpu-fused")
    assert bench.parse_method("npht-cuda-fused-tmm-tf32") == ("cuda", False, True, False)
    assert bench.is_tmm("npht-cuda-fused-tmm-tf32") and bench.is_tmm("npht-cpu-fused-tmm")
    assert not bench.is_tmm("npht-cuda-fused-tf32")
    assert bench.parse_method("npht-cuda-fused-tmm-keep-tf32") == ("cuda", False, True, False)
    assert bench.is_keep("npht-cuda-fused-tmm-keep-tf32") and bench.is_tmm("npht-cuda-fused-tmm-keep-tf32")
    assert bench.is_keep("npht-cpu-fused-keep-tmm") and not bench.is_keep("npht-cpu-fused-tmm")
    assert bench.parse_method("npht-cuda-fused-tmm-h16-tf32") == ("cuda", False, True, False)
    assert bench.is_h16("npht-cuda-fused-tmm-h16-tf32") and not bench.is_h16("npht-cuda-fused-tmm-tf32")
    both = "npht-cuda-fused-tmm-keep-h16-tf32"
    assert bench.parse_method(both) == ("cuda", False, True, False)
    assert bench.is_h16(both) and bench.is_keep(both) and bench.is_tmm(both) and not bench.is_d16(both)
    half = "npht-cuda-fused-tmm-keep-h16-d16-tf32"
    assert bench.parse_method(half) == ("cuda", False, True, False)
    assert bench.is_d16(half) and bench.is_h16(half) and bench.is_keep(half)
    for bad in ("npht-cpu-tmm", "npht-cpu-fused-ckpt-keep", "npht-cpu-keep", "npht-cpu-fused-h16",
                "npht-cpu-h16", "npht-cpu-fused-d16", "npht-cpu-fused-keep-d16"):
        with pytest.raises(ValueError, match="unknown method"):
            bench.parse_method(bad)
    assert bench.applies("reference-tf32", "eikonal") and not bench.applies("reference-tf32", "fwd")
    assert not any("tmm" in m or "tf32" in m for m in bench.methods_for("cpu"))
    assert not bench.applies("npht-cpu-fused", "fwd") and bench.applies("npht-cpu-fused", "eikonal")
    with pytest.raises(ValueError, match="unknown method"):
        bench.parse_method("npht-cpu-ckpt")
