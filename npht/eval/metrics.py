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

Face region (NPHM supplement D.4: "all points which are closer than 1cm to a region
defined on our registered template mesh", applied to the ground truth and to each
reconstruction alike): the template region is the ground truth's face-region triangles
(majority of the vertices marked in ``HeadMesh.face_region``), and on *both* meshes the
face samples are the surface points within ``face_radius`` of it (``n_points`` each, drawn
by rejection from the triangles that can hold such points). One rule for both sides: a
perfect reconstruction scores as well on the face as on the whole head.

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

from npht.data.sampling import _count, _face_cross, _mesh_arrays, as_generator, triangle_region
from npht.ops.knn import PointTree
from npht.reference.knn import nearest_neighbors_bruteforce

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


def sample_points(mesh, n: int, seed, face_mask: Optional[np.ndarray] = None,
                  triangle_mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(points [n, 3], normals [n, 3])`` (float64) uniform on the surface of ``mesh``
    (a trimesh, a :class:`~npht.data.HeadMesh` or ``(V, F)``), area-weighted, with the
    unit normal of the triangle each point lies in (as NPHM's evaluation). The points are
    those of :func:`npht.data.sampling.sample_surface` for the same seed (whose training
    normals interpolate vertex normals instead). ``seed``: int or ``np.random.Generator``.

    ``face_mask``: a per-vertex bool ``[V]``; only triangles with a majority of marked
    vertices are sampled (ValueError when there are none). ``triangle_mask``: a per-triangle
    bool ``[F]`` instead.

    >>> import trimesh
    >>> p, n = sample_points(trimesh.creation.box(), 100, seed=0)
    >>> p.shape, bool(np.allclose(np.linalg.norm(n, axis=1), 1))
    ((100, 3), True)
    """
    v, f, _ = _mesh_arrays(mesh)
    n = _count(n, "n")
    rng = as_generator(seed)
    if len(f) == 0:
        raise ValueError("cannot sample a mesh without faces")
    cross = _face_cross(v, f)  # [F, 3], length = twice the area
    twice_area = np.linalg.norm(cross, axis=1)
    weight = twice_area
    if face_mask is not None and triangle_mask is not None:
        raise ValueError("pass face_mask or triangle_mask, not both")
    if face_mask is not None:
        face_mask = np.asarray(face_mask, dtype=bool)
        if face_mask.shape != (len(v),):
            raise ValueError(f"face_mask must be [V] = [{len(v)}], got {face_mask.shape}")
        tri = triangle_region(f, face_mask)
        if not tri.any():
            raise ValueError(f"the mesh has no 'face' triangles (a triangle is 'face' when the majority of its "
                             f"vertices are marked; {int(face_mask.sum())} of {len(v)} vertices are)")
        weight = np.where(tri, twice_area, 0.0)
    if triangle_mask is not None:
        triangle_mask = np.asarray(triangle_mask, dtype=bool)
        if triangle_mask.shape != (len(f),):
            raise ValueError(f"triangle_mask must be [F] = [{len(f)}], got {triangle_mask.shape}")
        weight = np.where(triangle_mask, twice_area, 0.0)
    cdf = np.cumsum(weight)
    if n and not cdf[-1] > 0:
        raise ValueError("cannot sample a surface of zero area")
    # the draws of npht.data.sampling.sample_surface (same points for the same seed), gathered
    # with torch (multi-threaded) and face normals computed once per triangle
    face = torch.from_numpy(np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(f) - 1))
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    corner = torch.from_numpy(f)[face]  # [n, 3]
    vt = torch.from_numpy(v)
    a = vt[corner[:, 0]]
    points = a + torch.from_numpy(s * (1.0 - r2))[:, None] * (vt[corner[:, 1]] - a) \
        + torch.from_numpy(s * r2)[:, None] * (vt[corner[:, 2]] - a)
    unit = torch.from_numpy(cross / np.where(twice_area > 0, twice_area, 1.0)[:, None])
    return points.numpy(), unit[face].numpy()


def _points(x, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must be [n, 3], got {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty")
    return x


def nearest_neighbors(query, ref, device: Device = None, method: str = "tree",
                      block: int = 2**26) -> Tuple[np.ndarray, np.ndarray]:
    """For each point of ``query [n, 3]``, the Euclidean distance to its nearest point in
    ``ref [m, 3]`` and that point's index: ``(dist float64 [n], index int64 [n])``.

    ``method="tree"`` (default): npht's kd-tree (:class:`npht.ops.knn.PointTree`; ~5 s for
    2.5M points against 2.5M on a 2-core CPU), queried on ``device`` (None: the CPU;
    ``"cuda"``: the GPU). ``method="brute"``: the exhaustive search in torch on ``device``
    (float64, ``block`` distances at a time), quadratic: a cross-check for small sets. Both
    are exact, up to ties.

    >>> d, i = nearest_neighbors([[0.0, 0, 0], [1, 1, 1]], [[1.0, 1, 2], [0, 0, 0.5]])
    >>> d.tolist(), i.tolist()
    ([0.5, 1.0], [1, 0])
    """
    q, r = _points(query, "query"), _points(ref, "ref")
    if method == "tree":
        d, i = PointTree(torch.from_numpy(r), device=device or "cpu").query(torch.from_numpy(q))
    elif method == "brute":
        qt, rt = (torch.from_numpy(x).to(device or "cpu") for x in (q, r))
        d, i = nearest_neighbors_bruteforce(qt, rt, block)
    else:
        raise ValueError(f"method must be 'tree' or 'brute', got {method!r}")
    return d.cpu().numpy(), i.cpu().numpy()


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
    return _compare(_points(pred, "pred"), _points(gt, "gt"), pred_normals, gt_normals, threshold, oriented, device)


def _tree(points: np.ndarray, device: Device) -> PointTree:
    return PointTree(torch.from_numpy(points), device=device or "cpu")


def _compare(p: np.ndarray, g: np.ndarray, pred_normals, gt_normals, threshold, oriented: bool,
             device: Device) -> Dict[str, float]:
    t = _check_threshold(threshold)
    if (pred_normals is None) != (gt_normals is None):
        raise ValueError("pass both pred_normals and gt_normals, or neither")
    tree_p, tree_g = _tree(p, device), _tree(g, device)
    # each side's queries go in the other tree's spatial order (its perm): coherent searches
    d_pg, i_pg = (x.cpu().numpy() for x in tree_g.query(torch.from_numpy(p), order=tree_p.perm))  # accuracy
    d_gp, i_gp = (x.cpu().numpy() for x in tree_p.query(torch.from_numpy(g), order=tree_g.perm))  # completeness
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


def _sample_near(mesh, n: int, rng: np.random.Generator, region: PointTree, radius: float,
                 max_rounds: int = 50) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` points (and normals) uniform on the part of ``mesh``'s surface within ``radius``
    of the ``region`` samples: rejection sampling from the triangles that can reach it (a
    vertex within ``radius`` + the triangle's longest edge)."""
    v, f, _ = _mesh_arrays(mesh)
    dv = region.query(torch.from_numpy(np.ascontiguousarray(v, np.float64)))[0].cpu().numpy()
    edge = np.max(np.linalg.norm(v[f] - v[np.roll(f, 1, axis=1)], axis=2), axis=1)
    reach = dv[f].min(axis=1) <= radius + edge
    if not reach.any():
        raise ValueError(f"no triangle lies within face_radius={radius} of the ground truth's face region")
    points, normals, have, drawn, draw = [], [], 0, 0, n
    for _ in range(max_rounds):
        p, nrm = sample_points((v, f), draw, rng, triangle_mask=reach)
        keep = region.query(torch.from_numpy(p))[0].cpu().numpy() <= radius
        points.append(p[keep])
        normals.append(nrm[keep])
        have, drawn = have + int(keep.sum()), drawn + draw
        if have >= n:
            return np.concatenate(points)[:n], np.concatenate(normals)[:n]
        # the next round's draw from the acceptance rate so far (+10%), within [1024, 8n]
        draw = int(min(max((n - have) * 1.1 * drawn / max(have, 1), 1024), 8 * n + 1024))
    raise ValueError(f"found only {have} of {n} surface points within face_radius={radius} of the ground truth's "
                     f"face region after {max_rounds} rounds (the mesh barely reaches it)")


def evaluate_meshes(pred, gt, n_points: int = 2_500_000, threshold: float = DEFAULT_THRESHOLD,
                    face_region: Optional[np.ndarray] = None, face_radius: float = FACE_RADIUS, seed=0,
                    device: Device = None, oriented: bool = False) -> Dict[str, Dict[str, float]]:
    """Metrics of a reconstruction ``pred`` against ``gt`` (trimesh, HeadMesh or ``(V,
    F)``): ``{"head": {...}, "face": {...}}``, each with :func:`compare_points`' keys plus
    ``n_pred`` / ``n_gt`` (the sample counts). ``n_points`` samples per mesh and region
    (thesis: 2.5M), drawn from ``seed``.

    ``face_region``: per-vertex bool ``[V_gt]`` of ``gt``; default ``gt.face_region`` when
    ``gt`` has one (a HeadMesh); without any, only ``"head"`` is returned. The face samples
    of both meshes are their surface points within ``face_radius`` of that region (module
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

    def run(p, pn, g, gn):
        return {**_compare(p, g, pn, gn, threshold, oriented, device), "n_pred": len(p), "n_gt": len(g)}

    gp, gn = sample_points(gt, n_points, rng)
    pp, pn = sample_points((pv, pf), n_points, rng)
    out = {"head": run(pp, pn, gp, gn)}
    if face_region is not None:
        region = _tree(sample_points(gt, n_points, rng, face_mask=face_region)[0], device)
        gp, gn = _sample_near(gt, n_points, rng, region, face_radius)
        try:
            pp, pn = _sample_near((pv, pf), n_points, rng, region, face_radius)
        except ValueError as e:
            raise ValueError(f"pred: {e}") from e
        out["face"] = run(pp, pn, gp, gn)
    return out
