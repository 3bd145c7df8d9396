"""npht's CUDA emulator (tools/cuda_emu): csrc's CUDA kernels and their torch glue built by
the host compiler for CPU tensors. Here: the emulator's own semantics on known answers (warp
shuffles, __syncthreads with shared memory, thread and block indices, grid-stride loops with
atomics, launch limits, execution order, the errors for a shuffle or __syncthreads that
exited threads do not reach), its launch rewriting, and that replacing the
CPU kernels really routes npht's ops through the emulated CUDA kernels and back.
`make cuda-emu` (part of `make test`) then runs the ops' cpu-backend tests on them."""

import os

import pytest
import torch

import npht

from _backends import load_script

build = load_script("tools/cuda_emu", "build")
pytestmark = pytest.mark.skipif(bool(os.environ.get("NPHT_CUDA_EMU")),
                                reason="compares the emulator with the CPU kernels, which NPHT_CUDA_EMU replaces")


@pytest.fixture(scope="module")
def emu():
    return build.load()


def _source_lane(mode: int, lane: int, arg: int, width: int) -> int:
    """The lane whose value __shfl_{xor,down,up,idx}_sync(v, arg, width) returns to `lane`
    (CUDA programming guide: a source outside the lane's width-segment -- later segments
    for xor, either side for down / up -- gives the lane its own value)."""
    start = lane - lane % width
    if mode == 0:
        src = lane ^ arg
        return lane if src >= start + width else src
    if mode == 1:
        return lane + arg if lane + arg < start + width else lane
    if mode == 2:
        return lane - arg if lane - arg >= start else lane
    return start + arg % width


@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["xor", "down", "up", "idx"])
@pytest.mark.parametrize(("arg", "width"), [(1, 32), (16, 32), (3, 8), (8, 8), (5, 4), (1, 1), (31, 32)])
def test_shuffles(emu, mode, arg, width):
    x = torch.arange(64, dtype=torch.float32) * 10 + 1
    got = emu.selftest_shfl(x, mode, arg, width)
    expected = [x[32 * (t // 32) + _source_lane(mode, t % 32, arg, width)].item() for t in range(64)]
    assert got.tolist() == expected


def test_shuffle_after_exited_lanes_is_an_error(emu):
    assert emu.selftest_early_exit(64, 64).tolist() == [32.0] * 64
    with pytest.raises(RuntimeError, match=r"reached by 20 lanes: 12 lanes of the warp had exited.*warp 0"):
        emu.selftest_early_exit(20, 32)
    with pytest.raises(RuntimeError, match=r"8 lanes of the warp had exited.*warp 1\)"):
        emu.selftest_early_exit(56, 64)


@pytest.mark.parametrize("threads", [1, 32, 256, 1024])
def test_syncthreads_and_shared_memory(emu, threads):
    x = torch.randint(-50, 50, (3 * threads,)).float()  # small integers: exact float sums
    assert emu.selftest_block_sum(x, threads).tolist() == x.view(3, threads).sum(1).tolist()


def test_syncthreads_after_exited_threads_is_an_error(emu):
    assert emu.selftest_early_sync(64, 64).tolist() == [1.0] * 64
    with pytest.raises(RuntimeError, match=r"__syncthreads reached by 40 of the block's 64 threads \(24 had exited\)"):
        emu.selftest_early_sync(40, 64)


@pytest.mark.parametrize(("grid", "block"), [((3, 2, 2), (4, 3, 2)), ((5, 1, 1), (33, 1, 1)), ((1, 1, 1), (1024, 1, 1))])
def test_thread_and_block_indices(emu, grid, block):
    got = emu.selftest_index(list(grid), list(block))
    expected = [(tx, ty, tz, bx, by, bz)
                for bz in range(grid[2]) for by in range(grid[1]) for bx in range(grid[0])
                for tz in range(block[2]) for ty in range(block[1]) for tx in range(block[0])]
    assert got.tolist() == [list(map(float, e)) for e in expected]


@pytest.mark.parametrize(("grid", "block"), [((1, 1, 1), (2048, 1, 1)), ((1, 1, 1), (32, 32, 2)),
                                             ((1, 1, 1), (1, 1, 65)), ((1, 70000, 1), (32, 1, 1)),
                                             ((0, 1, 1), (32, 1, 1))])
def test_launch_limits(emu, grid, block):
    with pytest.raises(RuntimeError, match="launch failed: invalid configuration argument"):
        emu.selftest_index(list(grid), list(block))


def test_grid_stride_loop_with_atomics(emu):
    counts, total = emu.selftest_visit(1000, 3, 64)  # 192 threads, each visiting ~5 indices
    assert counts.tolist() == [1.0] * 1000
    assert total.item() == 1000.0


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_execution_order(emu, monkeypatch, order):
    """Blocks run one after the other, the threads of a block in thread order;
    NPHT_CUDA_EMU_ORDER=reverse reverses both (make cuda-emu's sm_80 pass runs so: a kernel
    depending on its threads' order beyond float rounding shows other values)."""
    monkeypatch.setenv("NPHT_CUDA_EMU_ORDER", order)
    seq = emu.selftest_order(3, 64)
    expected = torch.arange(192, dtype=torch.float64)
    assert torch.equal(seq, expected if order == "forward" else expected.flip(0))


def test_launch_rewriting():
    src = ("  k<float, 4><<<blocks(n), kBlock, 0, stream>>>(\n      a, b);\n"
           "  knn<<<static_cast<unsigned>(nb < 16 ? nb : 16), 128, 0, s>>>(q);\n")
    assert build.translate(src, "x.cu") == (
        "  ::npht_emu::launch(k<float, 4>, blocks(n), kBlock, 0, stream)(\n      a, b);\n"
        "  ::npht_emu::launch(knn, static_cast<unsigned>(nb < 16 ? nb : 16), 128, 0, s)(q);\n")
    with pytest.raises(RuntimeError, match="rewrote 0 of 1 kernel launches"):
        build.translate("  return k<<<1, 32>>>(x);\n", "x.cu")


def test_cpu_kernels_replaced_and_restored(emu):
    """Within cpu_kernels_replaced npht's cpu backend launches the emulated CUDA kernels (the
    same values up to float summation order); on exit the CPU kernels are back."""
    planes = torch.randn(2, 3, 8, 5, 7)
    points = torch.rand(2, 33, 3) * 2 - 1
    expected = npht.triplane_sample(planes, points, backend="cpu")
    before = emu.stats()[0]
    with build.cpu_kernels_replaced(emu):
        got = npht.triplane_sample(planes, points, backend="cpu")
        assert emu.stats()[0] == before + 1
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    npht.triplane_sample(planes, points, backend="cpu")
    assert emu.stats()[0] == before + 1
    with pytest.raises(ValueError, match=r"arch must be one of \(900, 800\), got 90"):
        build.emulated_ops(emu, 90)
    for arch in (900, 800):
        ops = build.emulated_ops(emu, arch)
        assert set(ops) == {"triplane_fwd", "triplane_bwd", "triplane_bwd2", "composite_fwd", "composite_bwd",
                            "eb_bisect_beta", "eb_upsample", "eb_merge", "knn_query", "softplus_adjoint_",
                            "softplus_backward_add_"}


def _render_and_grads(generator_seed: int = 3):
    """A training render of a tri-plane SDF (a sphere plus the decoder of random planes) at
    2 x 20^2 rays with the fused MLP gradient, and the gradients of a loss on its maps: every
    launch of the renderer (sampler, tri-plane forward / backward / double backward, MLP
    adjoints, compositing forward / backward) at sizes spanning several blocks with a tail."""
    from npht.models import TriplaneDecoder
    from npht.render import fibonacci_cameras, render

    g = torch.Generator().manual_seed(generator_seed)
    dec = TriplaneDecoder(feature_dim=8, hidden=32, num_layers=3).geometric_init_(radius=0.5, generator=g)
    planes = (torch.randn(1, 3, 8, 12, 16, generator=g) * 0.3).requires_grad_()
    sdf_fn, sdf_and_gradient_fn = dec.grouped(planes, group=2)
    out = render(sdf_fn, fibonacci_cameras(2, resolution=20), 20, training=True,
                 gradient_fn=lambda p: sdf_and_gradient_fn(p, fused=True), generator=torch.Generator().manual_seed(0))
    loss = (out.normals * torch.linspace(-1, 1, 3)).sum() + out.depth.square().mean() + out.opacity.sum()
    params = [planes] + list(dec.parameters())
    return [out.normals, out.depth, out.opacity] + list(torch.autograd.grad(loss, params))


def test_render_on_emulated_kernels(emu):
    expected = _render_and_grads()
    before = emu.stats()[0]
    with build.cpu_kernels_replaced(emu):
        got = _render_and_grads()
    launched = emu.stats()[0] - before
    assert launched >= 10, launched
    # float32 sums in another order (atomics, shuffle trees): within 1e-5 of each tensor's scale
    # (measured: <= 5e-7 of the gradients' norms, 1.2e-7 absolute on the maps)
    for a, e in zip(got, expected):
        assert a.shape == e.shape
        assert (a - e).abs().max() <= 1e-5 * e.abs().max()


def test_knn_on_emulated_kernel(emu):
    from npht.ops.knn import nearest_neighbors

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3000, 3, generator=g, dtype=torch.float64)
    query = torch.rand(1001, 3, generator=g, dtype=torch.float64)
    expected = nearest_neighbors(query, ref)
    with build.cpu_kernels_replaced(emu):
        got = nearest_neighbors(query, ref)
    for a, e in zip(got, expected):  # the same search, rounded alike: bit for bit
        assert torch.equal(a, e)


def _constant(path: str, name: str) -> int:
    import re

    with open(f"{build.ROOT}/{path}") as f:
        return int(re.search(rf"constexpr int(?:64_t)? {name} = (\d+);", f.read())[1])


def test_upsample_grid_stride_beyond_its_capped_grid(emu):
    """eb_upsample's grid is capped (kUpsampleMaxBlocks blocks): at 4 x 512^2 rays each thread
    loops over several rays; here R exceeds the cap's threads by a tail."""
    from npht.ops import sampler as ops

    R = _constant("csrc/sampler/sampler_kernels.cu", "kUpsampleMaxBlocks") * \
        _constant("csrc/sampler/sampler_kernels.cu", "kBlock") + 37
    g = torch.Generator().manual_seed(0)
    z = torch.sort(torch.rand(R, 4, generator=g), dim=1).values
    sdf = torch.randn(R, 4, generator=g) * 0.1
    beta = torch.full((R,), 0.05)
    u = torch.rand(R, 3, generator=g)
    expected = ops.eb_upsample(z, sdf, beta, u, backend="cpu")
    with build.cpu_kernels_replaced(emu):
        got = ops.eb_upsample(z, sdf, beta, u, backend="cpu")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
