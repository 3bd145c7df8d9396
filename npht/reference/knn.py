"""Exhaustive nearest neighbours in PyTorch: the oracle of :mod:`npht.ops.knn`."""

from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["nearest_neighbors_bruteforce"]


def nearest_neighbors_bruteforce(query: torch.Tensor, ref: torch.Tensor,
                                 block: int = 2**26) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(dist [N] float64, index [N] int64)``: for each row of ``query [N, 3]`` the
    Euclidean distance to the nearest row of ``ref [M, 3]`` (M >= 1) and its index, on the
    device of the inputs, exact up to ties (the first minimum of each block wins).

    Per block of queries: squared distances ``|q|^2 - 2 q.r + |r|^2`` against blocks of
    references (one addmm, ``block`` distances at a time: 512 MiB by default), a running
    minimum, then the exact distance to the winner. float64 because in float32 the expansion
    cancels to ~1e-7 |x|^2, which could pick a neighbour ~1e-3 units too far for points near 1.
    Quadratic: a test oracle, not for millions of points.

    >>> d, i = nearest_neighbors_bruteforce(torch.tensor([[0.0, 0, 0]]), torch.tensor([[0.0, 0, 2], [0, 1, 0]]))
    >>> d.tolist(), i.tolist()
    ([1.0], [1])
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")
    q_all, r_all = query.to(torch.float64), ref.to(torch.float64)
    r_sq = (r_all * r_all).sum(1)
    nq = max(1, min(len(q_all), block // min(len(r_all), 1 << 16)))  # queries per block
    nr = max(1, block // nq)  # references per block
    dist = torch.empty(len(q_all), dtype=torch.float64, device=q_all.device)
    idx = torch.empty(len(q_all), dtype=torch.int64, device=q_all.device)
    for s in range(0, len(q_all), nq):
        q = q_all[s:s + nq]
        best = torch.full((len(q),), float("inf"), dtype=torch.float64, device=q.device)
        arg = torch.zeros(len(q), dtype=torch.int64, device=q.device)
        for t in range(0, len(r_all), nr):
            d2 = torch.addmm(r_sq[None, t:t + nr], q, r_all[t:t + nr].T, alpha=-2.0)
            val, i = d2.min(dim=1)
            better = val < best
            best = torch.where(better, val, best)
            arg = torch.where(better, i + t, arg)
        idx[s:s + nq] = arg
        dist[s:s + nq] = (q - r_all[arg]).norm(dim=1)
    return dist, idx
