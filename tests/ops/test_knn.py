"""npht.ops.knn: the kd-tree nearest neighbours against the exhaustive reference (odd sizes,
ties, degenerate sets, leaf sizes), determinism across thread counts, the CUDA query against
the CPU one, opcheck and error paths."""

import math

import numpy as np
import pytest
import torch

from _backends import require_backend
from npht.ops.knn import PointTree, morton_order, nearest_neighbors
from npht.reference.knn import nearest_neighbors_bruteforce

C = torch.ops.npht_C


def sphere_samples(n, radius, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return radius * p / p.norm(dim=1, keepdim=True)


def check_exact(q, r, **kw):
    d, i = nearest_neighbors(q, r, **kw)
    d0, i0 = nearest_neighbors_bruteforce(q, r)
    assert d.dtype == torch.float64 and i.dtype == torch.int64 and d.shape == (len(q),)
    torch.testing.assert_close(d, d0, rtol=0, atol=1e-12)
    # the index may differ only between points at the same distance (ties)
    dist_of_i = (q.double() - r.double()[i]).norm(dim=1)
    torch.testing.assert_close(dist_of_i, d0, rtol=0, atol=1e-12)
    return d, i, i0


@pytest.mark.parametrize("n, m", [(1, 1), (1, 5), (7, 1), (1151, 33), (300, 1000), (1000, 2049)])
@pytest.mark.parametrize("leaf_size", [1, 3, 32])
def test_random_matches_bruteforce(n, m, leaf_size):
    require_backend("cpu")
    g = torch.Generator().manual_seed(n * 7 + m)
    q = torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1
    r = torch.rand(m, 3, generator=g, dtype=torch.float64) * 2 - 1
    _, i, i0 = check_exact(q, r, leaf_size=leaf_size)
    assert torch.equal(i, i0)  # continuous random data: no ties


def test_surfaces_apart():
    # the metric's case: samples of one surface queried from another 0.03 away
    require_backend("cpu")
    q, r = sphere_samples(3000, 0.53, 0), sphere_samples(5000, 0.5, 1)
    d, _, _ = check_exact(q, r)
    assert float(d.min()) >= 0.03 - 1e-12


@pytest.mark.parametrize("case", ["duplicates", "plane", "line", "one_point", "grid"])
def test_degenerate_sets(case):
    require_backend("cpu")
    g = torch.Generator().manual_seed(3)
    if case == "duplicates":  # every reference point four times: ties everywhere
        r = torch.rand(50, 3, generator=g, dtype=torch.float64).repeat(4, 1)
    elif case == "plane":  # zero extent along z
        r = torch.rand(400, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    elif case == "line":
        r = torch.rand(400, 1, generator=g, dtype=torch.float64) * torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    elif case == "one_point":  # all references equal
        r = torch.full((100, 3), 0.25, dtype=torch.float64)
    else:  # integer lattice: many exact ties, queries on lattice points too
        ax = torch.arange(6, dtype=torch.float64)
        r = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    q = torch.cat([torch.rand(200, 3, generator=g, dtype=torch.float64) * 3 - 1, r[::7]])
    for leaf in (1, 4, 32):
        check_exact(q, r, leaf_size=leaf)
        # ties resolve to one point (the smallest tree index), whatever the search order
        tree = PointTree(r, leaf_size=leaf)
        d, i = tree.query(q)
        d2, i2 = tree.query(q, order=torch.randperm(len(q), generator=g))
        assert torch.equal(i, i2) and torch.equal(d, d2)


def test_float32_and_int_inputs():
    require_backend("cpu")
    q = torch.rand(100, 3)
    r = torch.randint(-3, 3, (64, 3))
    d, i = nearest_neighbors(q, r)
    d0, i0 = nearest_neighbors_bruteforce(q, r)
    torch.testing.assert_close(d, d0, rtol=0, atol=1e-12)


def test_tree_is_reused_and_independent_of_threads():
    require_backend("cpu")
    r, q = sphere_samples(20000, 0.5, 2), sphere_samples(4000, 0.52, 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        t1 = PointTree(r)
        a = t1.query(q)
        torch.set_num_threads(2)
        t2 = PointTree(r)
        b = t2.query(q)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(t1.perm, t2.perm) and torch.equal(t1.bounds, t2.bounds)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(t1.query(q[:10])[1], a[1][:10])  # a tree answers many query sets
    assert len(t1) == 20000 and "PointTree(20000 points" in repr(t1)


def test_query_order_changes_nothing():
    require_backend("cpu")
    r, q = sphere_samples(5000, 0.5, 9), sphere_samples(3001, 0.55, 10)
    tree = PointTree(r, leaf_size=16)
    d, i = tree.query(q)
    for order in (PointTree(q).perm, torch.arange(3001), torch.randperm(3001, generator=torch.Generator().manual_seed(0))):
        d2, i2 = tree.query(q, order=order)
        assert torch.equal(d, d2) and torch.equal(i, i2)
    with pytest.raises(ValueError, match="permutation"):
        tree.query(q, order=torch.zeros(3001, dtype=torch.int64))
    with pytest.raises(ValueError, match="permutation"):
        tree.query(q, order=torch.arange(3001) + 1)
    with pytest.raises(ValueError, match="permutation"):  # a negative index is no permutation either
        tree.query(q, order=torch.cat([torch.tensor([-1]), torch.arange(1, 3001)]))
    with pytest.raises(ValueError, match=r"int64 permutation \[3001\]"):
        tree.query(q, order=torch.arange(3000))


def test_overflowing_distances_still_name_a_point():
    # every squared distance overflows to inf (coordinates ~1e155): the search still returns
    # a real point (the smallest tree index among the tied ones), never index -1
    require_backend("cpu")
    r = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    d, i = PointTree(r, leaf_size=1).query(torch.tensor([[1e155, 0.0, 0.0]], dtype=torch.float64))
    assert torch.isinf(d).all() and 0 <= int(i[0]) < 3


def test_tree_layout():
    require_backend("cpu")
    r = sphere_samples(1000, 1.0, 4)
    points, perm, bounds, leaf_start = C.knn_build(r, 10)
    leaves = len(leaf_start) - 1
    assert leaves == 128 and bounds.shape == (255, 6)  # smallest 2^D with ceil(1000 / 2^D) <= 10
    assert torch.equal(torch.sort(perm).values, torch.arange(1000))
    assert torch.equal(points, r[perm])
    sizes = leaf_start.diff()
    assert int(sizes.min()) >= 7 and int(sizes.max()) <= 8 and int(leaf_start[-1]) == 1000
    for j in range(leaves):  # every leaf box is tight around its points
        p = points[leaf_start[j]:leaf_start[j + 1]]
        box = bounds[leaves - 1 + j]
        assert torch.equal(box[:3], p.min(0).values) and torch.equal(box[3:], p.max(0).values)
    root = bounds[0]
    assert torch.equal(root[:3], r.min(0).values) and torch.equal(root[3:], r.max(0).values)


def test_morton_order():
    p = torch.rand(500, 3, dtype=torch.float64)
    o = morton_order(p)
    assert torch.equal(torch.sort(o).values, torch.arange(500))
    # the z-curve visits the 8 octants of the bounding box one after the other
    octant = ((p[o] - p.min(0).values) / (p.max(0).values - p.min(0).values) * 2).floor().clamp(max=1)
    code = (octant[:, 0] + 2 * octant[:, 1] + 4 * octant[:, 2]).long()
    assert bool((code.diff() >= 0).all())
    assert morton_order(torch.zeros(0, 3)).shape == (0,)
    assert torch.equal(morton_order(torch.ones(3, 3)).sort().values, torch.arange(3))


def test_opcheck_cpu():
    require_backend("cpu")
    tree = PointTree(sphere_samples(300, 0.5, 5), leaf_size=8)
    q = sphere_samples(50, 0.6, 6)
    torch.library.opcheck(torch.ops.npht.knn_query.default, (q, tree.points, tree.bounds, tree.leaf_start))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    require_backend("cuda")
    r, q = sphere_samples(50000, 0.5, 7), sphere_samples(20000, 0.515, 8)
    d, i = PointTree(r, device="cuda").query(q.cuda())
    assert d.is_cuda and i.is_cuda
    d0, i0 = PointTree(r).query(q)
    # same search, same rounding (knn::sum_sq keeps nvcc from fusing multiply-adds), correctly
    # rounded sqrt on both: bit for bit
    assert torch.equal(d.cpu(), d0) and torch.equal(i.cpu(), i0)
    tree = PointTree(r[:500], device="cuda", leaf_size=8)
    torch.library.opcheck(torch.ops.npht.knn_query.default,
                          (q[:64].cuda(), tree.points, tree.bounds, tree.leaf_start))


def test_errors():
    require_backend("cpu")
    with pytest.raises(ValueError, match=r"ref must be \[n, 3\]"):
        PointTree(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="ref is empty"):
        PointTree(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="finite"):
        PointTree(torch.tensor([[0.0, math.nan, 0.0]]))
    with pytest.raises(ValueError, match="leaf_size"):
        PointTree(torch.zeros(4, 3), leaf_size=0)
    with pytest.raises(TypeError, match="real numbers"):
        PointTree(torch.zeros(4, 3, dtype=torch.complex64))
    tree = PointTree(torch.rand(10, 3))
    with pytest.raises(ValueError, match=r"query must be \[n, 3\]"):
        tree.query(torch.zeros(3))
    with pytest.raises(ValueError, match="query must be finite"):
        tree.query(torch.tensor([[math.inf, 0.0, 0.0]]))
    d, i = tree.query(torch.zeros(0, 3))
    assert d.shape == (0,) and i.shape == (0,)
    with pytest.raises(ValueError, match="device"):
        PointTree(torch.zeros(4, 3), device="meta")
    # the raw kernels check what reaches them
    pts, perm, bounds, leaf_start = C.knn_build(torch.rand(20, 3, dtype=torch.float64), 4)
    q = torch.rand(5, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="must be float64"):
        C.knn_build(torch.rand(20, 3), 4)
    with pytest.raises(RuntimeError, match="leaf_size must be >= 1"):
        C.knn_build(torch.rand(20, 3, dtype=torch.float64), 0)
    with pytest.raises(RuntimeError, match="ref must be finite"):
        C.knn_build(torch.tensor([[0.0, 1.0, math.inf]], dtype=torch.float64), 4)
    with pytest.raises(RuntimeError, match="bounds must be"):
        C.knn_query(q, pts, bounds[1:], leaf_start)
    with pytest.raises(RuntimeError, match="2\\^D \\+ 1"):
        C.knn_query(q, pts, bounds, leaf_start[1:])
    with pytest.raises(RuntimeError, match="query must be float64"):
        C.knn_query(q.float(), pts, bounds, leaf_start)
    with pytest.raises(RuntimeError, match="leaf_start must be int64"):
        C.knn_query(q, pts, bounds, leaf_start.int())
    with pytest.raises(RuntimeError, match=r"must be \[n, 3\]"):
        C.knn_query(q[:, :2].contiguous(), pts, bounds, leaf_start)
    with pytest.raises(RuntimeError, match="contiguous"):
        C.knn_query(q.t().contiguous().t(), pts, bounds, leaf_start)
