"""Reconstruction metrics of the thesis (Sec. 5.3), computed as NPHM computes them (its
evaluation code, after Occupancy Networks), on points sampled uniformly on both surfaces
(area-weighted, with the normals of the sampled triangles; thesis: 2.5M per mesh).

With ``d(p, Q) = min_q ||p - q||_2`` (Euclidean) and nearest neighbours in the other set:

- ``accuracy = mean_{y in P_pred} d(y, P_gt)``, ``completeness = mean_{x in P_gt} d(x, P_pred)``;
- **Chamfer-L1** ``= (accuracy + completeness) / 2``. The thesis' eq. 5.1 writes the *sum*
  of the two means with an L1 (Manhattan) norm, but its table values (like NPHM's) come
  from NPHM's code, which averages the two means of Euclidean distances; "L1" names the
  un-squared distance (vs. Chamfer-L2 of squared ones). Both means are returned, so the
  literal sum is ``accuracy + completeness``.
- **normal consistency** ``= (mean_y |cos(n_y, n_x~)| + mean_x |cos(n_x, n_y~)|) / 2``, the
  average of both directions (eq. 5.6 writes a sum, but its values are <= 1). NPHM takes the
  absolute cosine (an inward-facing normal counts as consistent); ``oriented=True`` gives the
  signed cosine of eq. 5.6 (a flipped surface then scores -1).
- **F-score @ t** ``= 2 p r / (p + r)`` with precision ``p`` = fraction of predicted points
  within ``t`` (``<=``) of the ground truth, recall ``r`` the converse (eqs. 5.2-5.4).

Units: distances are in model units. npht's world frame follows NPHM's, which is FLAME's
(metres) scaled by 4 (thesis Sec. 5.4.1), so 1 mm = :data:`MM` = 0.004 units; the default
F-score threshold is the thesis' 1 mm (:data:`DEFAULT_THRESHOLD`) and the face region is
widened by NPHM's 1 cm (:data:`FACE_RADIUS`). NPHM converts each scan to metric space with
its own registration scale; use ``threshold=`` / ``face_radius=`` (and divide distances by
``MM``) for another convention. The procedural heads (npht.data.synthetic) are not metric:
there the defaults apply the same nominal 0.004 units per mm.

Face region (NPHM supplement D.4): the ground truth's face region is its face-region
triangles (majority of the vertices marked in ``HeadMesh.face_region``); the prediction's
is its triangles whose vertices (majority) lie within ``face_radius`` of the ground-truth
face-region samples. Each region gets its own ``n_points`` samples.

>>> import trimesh
>>> from npht.eval import evaluate_meshes
>>> gt, pred = trimesh.creation.icosphere(5, radius=0.5), trimesh.creation.icosphere(5, radius=0.55)
>>> r = evaluate_meshes(pred, gt, n_points=20000)["head"]  # concentric: 0.05 apart everywhere
>>> round(r["chamfer_l1"], 2), round(r["normal_consistency"], 2), r["f_score"]  # F @ 1 mm = 0.004
(0.05, 1.0, 0.0)
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from npht.data.sampling import _mesh_arrays, sample_surface

__all__ = [
    "MM", "DEFAULT_THRESHOLD", "FACE_RADIUS", "sample_points", "nearest_neighbors", "compare_points",
    "chamfer_l1", "normal_consistency", "f_score", "evaluate_meshes",
]

#: One millimetre in model units (NPHM / FLAME scale x 4: 1 unit = 25 cm).
MM = 0.004
#: F-score threshold of the thesis (Table 6.1: F-Score @ 1 mm), in model units.
DEFAULT_THRESHOLD = 1.0 * MM
#: NPHM's face-region margin (supplement D.4: closer than 1 cm), in model units.
FACE_RADIUS = 10.0 * MM

Device = Optional[Union[str, torch.device]]


def sample_points(mesh, n: int, seed, face_mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(points [n, 3], normals [n, 3])`` (float64) uniform on the surface of ``mesh``
    (a trimesh, a :class:`~npht.data.HeadMesh` or ``(V, F)``), area-weighted, with the
    unit normal of the triangle each point lies in (as NPHM's evaluation; the training
    samples of :func:`npht.data.sampling.sample_surface`, which draws the points here,
    interpolate vertex normals instead). ``seed``: int or ``np.random.Generator``.

    ``face_mask``: a per-vertex bool ``[V]``; only triangles with a majority of marked
    vertices are sampled (ValueError when there are none).

    >>> import trimesh
    >>> p, n = sample_points(trimesh.creation.box(), 100, seed=0)
    >>> p.shape, bool(np.allclose(np.linalg.norm(n, axis=1), 1))
    ((100, 3), True)
    """
    v, f, _ = _mesh_arrays(mesh)
    if face_mask is None:
        s = sample_surface((v, f), n, seed)
    else:
        s = sample_surface((v, f, face_mask), n, seed, region="face")
    tri = v[f[s.face_index]]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return s.points, cross / np.linalg.norm(cross, axis=1, keepdims=True)


def _points(x, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must be [n, 3], got {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty")
    return x


def _nn_brute(query: np.ndarray, ref: np.ndarray, device: torch.device, block: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exhaustive nearest neighbours on ``device`` in float64: per block of queries, the
    squared distances ``|q|^2 - 2 q.r + |r|^2`` against blocks of references (a matmul),
    a running minimum, then the exact distance to the winner. float64 because in float32
    the expansion cancels to ~1e-7 |x|^2, which could pick a neighbour ~1e-3 units
    (0.25 mm) too far for points near 1."""
    q_all = torch.from_numpy(query).to(device)
    r_all = torch.from_numpy(ref).to(device)
    r_sq = (r_all * r_all).sum(1)
    nq = max(1, min(len(query), block // min(len(ref), 1 << 16)))  # queries per block
    nr = max(1, block // nq)  # references per block
    dist = torch.empty(len(query), dtype=torch.float64, device=device)
    idx = torch.empty(len(query), dtype=torch.int64, device=device)
    for s in range(0, len(query), nq):
        q = q_all[s:s + nq]
        best = torch.full((len(q),), float("inf"), dtype=torch.float64, device=device)
        arg = torch.zeros(len(q), dtype=torch.int64, device=device)
        for t in range(0, len(ref), nr):
            d2 = torch.addmm(r_sq[None, t:t + nr], q, r_all[t:t + nr].T, alpha=-2.0)
            val, i = d2.min(dim=1)
            better = val < best
            best = torch.where(better, val, best)
            arg = torch.where(better, i + t, arg)
        idx[s:s + nq] = arg
        dist[s:s + nq] = (q - r_all[arg]).norm(dim=1)
    return dist.cpu().numpy(), idx.cpu().numpy()


def nearest_neighbors(query, ref, device: Device = None, block: int = 2**26) -> Tuple[np.ndarray, np.ndarray]:
    """For each point of ``query [n, 3]``, the Euclidean distance to its nearest point in
    ``ref [m, 3]`` and that point's index: ``(dist float64 [n], index int64 [n])``.

    ``device=None``: scipy's cKDTree on the CPU (all cores). A device (``"cuda"``, or
    ``"cpu"`` for testing): chunked exhaustive search in torch (float64, ``block``
    distances at a time: 512 MiB by default), exact up to ties.

    >>> d, i = nearest_neighbors([[0.0, 0, 0], [1, 1, 1]], [[1.0, 1, 2], [0, 0, 0.5]])
    >>> d.tolist(), i.tolist()
    ([0.5, 1.0], [1, 0])
    """
    q, r = _points(query, "query"), _points(ref, "ref")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")
    if device is None:
        from scipy.spatial import cKDTree

        d, i = cKDTree(r).query(q, k=1, workers=-1)
        return np.asarray(d, np.float64), np.asarray(i, np.int64)
    return _nn_brute(q, r, torch.device(device), block)


def _normals(n, count: int, name: str) -> np.ndarray:
    n = _points(n, name)
    if len(n) != count:
        raise ValueError(f"{name} must have one normal per point ({count}), got {len(n)}")
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _check_threshold(threshold) -> float:
    if not (isinstance(threshold, (int, float)) and np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    return float(threshold)


def compare_points(pred, gt, pred_normals=None, gt_normals=None, threshold: float = DEFAULT_THRESHOLD,
                   oriented: bool = False, device: Device = None) -> Dict[str, float]:
    """All metrics between point clouds ``pred [n, 3]`` and ``gt [m, 3]`` from one
    nearest-neighbour search each way: ``accuracy``, ``completeness``, ``chamfer_l1``,
    ``precision``, ``recall``, ``f_score`` (at ``threshold``) and, with both normals
    (any length; normalised here), ``normals_accuracy``, ``normals_completeness`` and
    ``normal_consistency`` (absolute cosines unless ``oriented``). See the module
    docstring for the definitions; ``device``: :func:`nearest_neighbors`'."""
    p, g = _points(pred, "pred"), _points(gt, "gt")
    t = _check_threshold(threshold)
    if (pred_normals is None) != (gt_normals is None):
        raise ValueError("pass both pred_normals and gt_normals, or neither")
    d_pg, i_pg = nearest_neighbors(p, g, device)  # pred -> gt (accuracy, precision)
    d_gp, i_gp = nearest_neighbors(g, p, device)  # gt -> pred (completeness, recall)
    acc, comp = float(d_pg.mean()), float(d_gp.mean())
    prec, rec = float((d_pg <= t).mean()), float((d_gp <= t).mean())
    out = dict(accuracy=acc, completeness=comp, chamfer_l1=0.5 * (acc + comp), precision=prec, recall=rec,
               f_score=2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)
    if pred_normals is not None:
        pn, gn = _normals(pred_normals, len(p), "pred_normals"), _normals(gt_normals, len(g), "gt_normals")
        cos_p = np.einsum("ij,ij->i", pn, gn[i_pg])
        cos_g = np.einsum("ij,ij->i", gn, pn[i_gp])
        if not oriented:
            cos_p, cos_g = np.abs(cos_p), np.abs(cos_g)
        out.update(normals_accuracy=float(cos_p.mean()), normals_completeness=float(cos_g.mean()))
        out["normal_consistency"] = 0.5 * (out["normals_accuracy"] + out["normals_completeness"])
    return out


def chamfer_l1(pred, gt, device: Device = None) -> float:
    """Chamfer-L1 ``(mean_pred d(y, gt) + mean_gt d(x, pred)) / 2`` (Euclidean, NPHM).

    >>> chamfer_l1([[0.0, 0, 0]], [[0.0, 0, 1], [0.0, 0, 3]])  # (1 + (1 + 3) / 2) / 2
    1.5
    """
    return compare_points(pred, gt, device=device)["chamfer_l1"]


def normal_consistency(pred, pred_normals, gt, gt_normals, oriented: bool = False, device: Device = None) -> float:
    """Normal consistency: the mean (absolute, unless ``oriented``) cosine between each
    point's normal and its nearest neighbour's in the other set, averaged over both
    directions.

    >>> normal_consistency([[0.0, 0, 0]], [[0.0, 0, 1]], [[0.0, 0, 0]], [[0.0, 0, -2]], oriented=True)
    -1.0
    """
    return compare_points(pred, gt, pred_normals, gt_normals, oriented=oriented, device=device)["normal_consistency"]


def f_score(pred, gt, threshold: float = DEFAULT_THRESHOLD, device: Device = None) -> float:
    """F-score @ ``threshold`` (model units; default 1 mm = 0.004): the harmonic mean of
    precision and recall.

    >>> f_score([[0.0, 0, 0], [1, 0, 0]], [[0.0, 0, 0]], threshold=0.1)  # p 1/2, r 1
    0.6666666666666666
    """
    return compare_points(pred, gt, threshold=threshold, device=device)["f_score"]


def evaluate_meshes(pred, gt, n_points: int = 2_500_000, threshold: float = DEFAULT_THRESHOLD,
                    face_region: Optional[np.ndarray] = None, face_radius: float = FACE_RADIUS, seed=0,
                    device: Device = None, oriented: bool = False) -> Dict[str, Dict[str, float]]:
    """Metrics of a reconstruction ``pred`` against ``gt`` (trimesh, HeadMesh or ``(V,
    F)``): ``{"head": {...}, "face": {...}}``, each with :func:`compare_points`' keys plus
    ``n_pred`` / ``n_gt`` (the sample counts). ``n_points`` samples per mesh and region
    (thesis: 2.5M), drawn from ``seed``.

    ``face_region``: per-vertex bool ``[V_gt]`` of ``gt``; default ``gt.face_region`` when
    ``gt`` has one (a HeadMesh); without any, only ``"head"`` is returned. The face region
    of ``pred`` is its part within ``face_radius`` of the ground truth's (module
    docstring); ValueError when ``pred`` has none there.
    """
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ValueError(f"n_points must be an int >= 1, got {n_points!r}")
    _check_threshold(threshold)
    if not (isinstance(face_radius, (int, float)) and face_radius > 0):
        raise ValueError(f"face_radius must be a number > 0, got {face_radius!r}")
    rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
    if face_region is None:
        face_region = getattr(gt, "face_region", None)
    pv, pf, _ = _mesh_arrays(pred)
    kw = dict(threshold=threshold, oriented=oriented, device=device)

    def run(p, pn, g, gn):
        return {**compare_points(p, g, pn, gn, **kw), "n_pred": len(p), "n_gt": len(g)}

    gp, gn = sample_points(gt, n_points, rng)
    pp, pn = sample_points((pv, pf), n_points, rng)
    out = {"head": run(pp, pn, gp, gn)}
    if face_region is not None:
        gp, gn = sample_points(gt, n_points, rng, face_mask=face_region)
        near = nearest_neighbors(pv, gp, device)[0] <= face_radius
        if not near.any():
            raise ValueError(f"no vertex of pred lies within face_radius={face_radius} "
                             "of the ground truth's face region")
        try:
            pp, pn = sample_points((pv, pf), n_points, rng, face_mask=near)
        except ValueError as e:
            raise ValueError(f"pred has no triangles within face_radius={face_radius} of the face region: {e}") from e
        out["face"] = run(pp, pn, gp, gn)
    return out
