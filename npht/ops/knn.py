"""Exact nearest neighbours for point sets of millions of points (the metrics' Chamfer,
normal consistency and F-score): :class:`PointTree` and :func:`nearest_neighbors`.

A static kd-tree with tight node boxes (``npht_C::knn_build``, C++) answers queries with
one search per query (the registered op ``npht::knn_query``, backends ``cpu``:
at::parallel_for, and ``cuda``: one thread per query; the same search code,
csrc/include/npht/knn_math.h; reference: the exhaustive search). No Triton backend: the
search keeps a per-query stack, which Triton's block programs do not express. Queries are processed in Morton
(z-curve) order, so that neighbouring searches touch the same nodes, and returned in the
caller's order. Results equal the exhaustive search
(:func:`npht.reference.knn.nearest_neighbors_bruteforce`) up to ties.

Why not scipy's cKDTree: it prunes with the cells of its space partition, which reach into
the empty space between two surfaces, so a query's cost grows with the squared distance to
the other surface. Measured on 2.5M samples of a head queried by 2.5M samples of another head
(mean distance 0.023, 2-core CPU): cKDTree 197 s for the 2.5M queries; this tree 0.6 s to
build and 4-5 s for them (benchmarks/metrics.py).

>>> import torch
>>> tree = PointTree(torch.tensor([[1.0, 1, 2], [0, 0, 0.5]]))
>>> d, i = tree.query(torch.tensor([[0.0, 0, 0], [1, 1, 1]]))
>>> d.tolist(), i.tolist()
([0.5, 1.0], [1, 0])
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from ._backend import _compiled, _compiled_info

__all__ = ["PointTree", "nearest_neighbors", "morton_order"]

#: Reference points per leaf of the tree (measured best of 16/32/64 on 2.5M surface samples).
DEFAULT_LEAF_SIZE = 32


def _points(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must be [n, 3], got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got {x.dtype}")
    return x


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Bits 0..20 of int64 ``v`` moved to bits 0, 3, 6, ..., 60."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def morton_order(points: torch.Tensor) -> torch.Tensor:
    """The permutation ``[N]`` (int64) that sorts ``points [N, 3]`` along a z-order curve
    of their bounding box (21 bits per axis), on the points' device."""
    p = points.to(torch.float64)
    if len(p) == 0:
        return torch.zeros(0, dtype=torch.int64, device=p.device)
    lo = p.min(0).values
    extent = float((p.max(0).values - lo).max())
    scale = (2**21 - 1) / extent if extent > 0 else 0.0
    c = ((p - lo) * scale).to(torch.int64).clamp_(0, 2**21 - 1)
    code = _spread_bits(c[:, 0]) | (_spread_bits(c[:, 1]) << 1) | (_spread_bits(c[:, 2]) << 2)
    return torch.argsort(code)


def _ops():
    mod, err = _compiled()
    if mod is None:
        raise RuntimeError("npht's compiled extension is missing, and the nearest-neighbour tree needs it: "
                           "install npht with `pip install --no-build-isolation .`, or use "
                           "npht.reference.knn.nearest_neighbors_bruteforce (quadratic)") from err
    return torch.ops.npht_C


# ---- registered op (no autograd: distances for metrics, their outputs never require grad) ----


@torch.library.custom_op("npht::knn_query", mutates_args=())
def _knn_query_op(query: torch.Tensor, points: torch.Tensor, bounds: torch.Tensor,
                  leaf_start: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    dist, index = _ops().knn_query(query, points, bounds, leaf_start)
    return dist, index


@_knn_query_op.register_fake
def _(query, points, bounds, leaf_start):
    return query.new_empty((query.shape[0],)), query.new_empty((query.shape[0],), dtype=torch.int64)


class PointTree:
    """Exact nearest-neighbour queries against fixed reference points ``ref [M, 3]``.

    The tree is built once on the CPU in float64 (~0.6 s for 2.5M points on 2 cores) and
    kept on ``device`` (default: ``ref``'s device; ``"cuda"`` answers queries on the GPU when
    npht was built with CUDA). ``leaf_size``: reference points per leaf.
    """

    def __init__(self, ref, device: Optional[Union[str, torch.device]] = None, leaf_size: int = DEFAULT_LEAF_SIZE):
        ref = _points(ref, "ref")
        if len(ref) == 0:
            raise ValueError("ref is empty")
        if isinstance(leaf_size, bool) or not isinstance(leaf_size, int) or leaf_size < 1:
            raise ValueError(f"leaf_size must be an int >= 1, got {leaf_size!r}")
        self.device = torch.device(device) if device is not None else ref.device
        if self.device.type == "cuda" and not _compiled_info()["cuda"]:
            raise RuntimeError("this npht build has no CUDA kernels: rebuild with CUDA (NPHT_CUDA=1) "
                               "or query on the CPU")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device}")
        r = ref.detach().to("cpu", torch.float64).contiguous()
        if not torch.isfinite(r).all():
            raise ValueError("ref must be finite")
        points, perm, bounds, leaf_start = _ops().knn_build(r, leaf_size)
        self.points, self.perm, self.bounds, self.leaf_start = (
            t.to(self.device) for t in (points, perm, bounds, leaf_start))
        self.device = self.points.device  # "cuda" -> the GPU it landed on (queries go there)
        self.leaf_size = leaf_size

    def __len__(self) -> int:
        return len(self.points)

    def __repr__(self) -> str:
        return f"PointTree({len(self)} points, {len(self.leaf_start) - 1} leaves, device={self.device})"

    def query(self, query, order: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(dist [N] float64, index [N] int64)`` on the tree's device: for each row of
        ``query [N, 3]``, the Euclidean distance to its nearest reference point and that
        point's row in ``ref``.

        ``order``: the permutation ``[N]`` of the queries in which to search (any order gives
        the same result; a spatially coherent one is faster), e.g. ``PointTree(query).perm``
        when that tree exists anyway; default :func:`morton_order`."""
        q = _points(query, "query").detach().to(self.device, torch.float64)
        if not torch.isfinite(q).all():
            raise ValueError("query must be finite")
        if len(q) == 0:
            return (torch.zeros(0, dtype=torch.float64, device=self.device),
                    torch.zeros(0, dtype=torch.int64, device=self.device))
        if order is None:
            order = morton_order(q)
        else:
            order = torch.as_tensor(order).to(self.device)
            if order.shape != (len(q),) or order.dtype != torch.int64:
                raise ValueError(f"order must be an int64 permutation [{len(q)}], got {order.dtype} {tuple(order.shape)}")
            if (bool((order < 0).any()) or bool((order >= len(q)).any())
                    or not bool((torch.bincount(order, minlength=len(q)) == 1).all())):
                raise ValueError("order must be a permutation of range(len(query))")
        d_sorted, i_sorted = _knn_query_op(q[order].contiguous(), self.points, self.bounds, self.leaf_start)
        dist = torch.empty_like(d_sorted)
        index = torch.empty_like(i_sorted)
        dist[order] = d_sorted
        index[order] = self.perm[i_sorted]
        return dist, index


def nearest_neighbors(query, ref, device: Optional[Union[str, torch.device]] = None,
                      leaf_size: int = DEFAULT_LEAF_SIZE) -> Tuple[torch.Tensor, torch.Tensor]:
    """``PointTree(ref, device, leaf_size).query(query)``: for each row of ``query [N, 3]``
    the distance to its nearest row of ``ref [M, 3]`` and that row (float64, int64).

    >>> d, i = nearest_neighbors(torch.rand(1000, 3), torch.rand(2000, 3))
    >>> d.shape, i.dtype
    (torch.Size([1000]), torch.int64)
    """
    return PointTree(ref, device, leaf_size).query(query)
