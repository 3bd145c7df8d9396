"""The thesis' point sampling (Sec. 5.1.2, after DeepSDF and NPHM D.2).

Identity training, per head (:func:`prepare_identity_samples`, stored in bulk once):

- surface points, area-weighted, split into the face region and the rest, with normals
  interpolated barycentrically from the area-weighted vertex normals (SDF 0 by definition);
- two near-surface sets: those surface points perturbed by isotropic Gaussian noise with
  sigma 0.0025 and 0.00025, with their signed distances;
- points uniform in the unit ball, with their signed distances.

Each training step draws a small subset (:func:`subsample`, :data:`DEFAULT_STEP_COUNTS`:
750 face / 250 non-face points per surface and near set, 300 ball points).

Expression training (:func:`sample_correspondences`): neutral<->posed pairs on the
registration meshes (shared topology), sampled both ways and offset along the normals.

Signed distances come from libigl's pseudonormal test on the (watertight, outward
oriented) mesh, positive outside; the thesis used a virtual laser scan, which agrees on
watertight meshes. Sizes: the thesis pre-computes 25M points per head on a GPU cluster;
the defaults here (15000 face + 5000 non-face surface points, 6000 ball points, i.e. 46000
signed distances) take 1.4-1.7 s for an 80k-100k-face mesh on one core of the shared 2-core
CI machine (~0.4 s libigl tree build + ~25 us per signed distance; 20000 correspondences
~0.2 s), and a step draws from them with replacement only where a set is smaller than the
step's count.

Everything is numpy, float64 inside, float32 in the stored arrays; every function takes an
``rng`` (int seed or ``np.random.Generator``) and is deterministic for a given one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "SurfaceSamples", "DEFAULT_STEP_COUNTS", "NEAR_SIGMAS", "CORRESPONDENCE_SIGMAS", "SET_KEYS",
    "as_generator", "vertex_normals", "triangle_region", "sample_surface", "is_watertight", "is_consistently_wound", "signed_volume",
    "signed_distance", "above_plane", "near_surface", "sample_ball", "prepare_identity_samples", "subsample",
    "sample_correspondences", "prepare_expression_samples",
]

#: Per-step sizes of the thesis (Sec. 5.1.2): sets named as in :data:`SET_KEYS`.
DEFAULT_STEP_COUNTS = dict(surface_face=750, surface_nonface=250, near1_face=750, near1_nonface=250,
                           near2_face=750, near2_nonface=250, ball=300)
#: Standard deviations of the two near-surface sets (thesis Sec. 5.1.2).
NEAR_SIGMAS = (0.0025, 0.00025)
#: Standard deviations of the normal offsets of loose and tight correspondences (thesis).
CORRESPONDENCE_SIGMAS = (0.01, 0.002)

#: Set name -> the arrays of a bulk sample file that belong to it (drawn with one index).
SET_KEYS: Dict[str, Tuple[str, str]] = {
    **{f"surface_{r}": (f"surface_{r}_points", f"surface_{r}_normals") for r in ("face", "nonface")},
    **{f"near{k}_{r}": (f"near{k}_{r}_points", f"near{k}_{r}_sdf") for k in (1, 2) for r in ("face", "nonface")},
    "ball": ("ball_points", "ball_sdf"),
}


@dataclass
class SurfaceSamples:
    """Points on a mesh: ``points [n, 3]``, unit ``normals [n, 3]`` (float64),
    ``face_region [n]`` (bool: the triangle is a face-region triangle, see
    :func:`triangle_region`), ``face_index [n]`` (int64 triangle) and ``barycentric [n, 3]``
    (weights of the triangle's three vertices, summing to 1)."""

    points: np.ndarray
    normals: np.ndarray
    face_region: np.ndarray
    face_index: np.ndarray
    barycentric: np.ndarray


# --------------------------------------------------------------------------- helpers


def as_generator(rng, name: str = "rng") -> np.random.Generator:
    """``rng`` as a Generator: an int seed or a Generator (used as is). ``None`` is refused
    so that every sample file is reproducible."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"{name} must be an int seed or a np.random.Generator, got {type(rng).__name__}")


def _mesh_arrays(mesh) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """``(vertices float64 [V, 3], faces int64 [F, 3], vertex face-region [V] or None)`` of a
    HeadMesh, a trimesh.Trimesh or a tuple ``(V, F)`` / ``(V, F, face_region)``."""
    if isinstance(mesh, (tuple, list)):
        if len(mesh) not in (2, 3):
            raise ValueError(f"mesh tuple must be (vertices, faces[, face_region]), got {len(mesh)} items")
        v, f, region = mesh[0], mesh[1], (mesh[2] if len(mesh) == 3 else None)
    elif hasattr(mesh, "vertices") and hasattr(mesh, "faces"):
        v, f, region = mesh.vertices, mesh.faces, getattr(mesh, "face_region", None)
    else:
        raise TypeError(f"mesh must be a HeadMesh, a trimesh.Trimesh or (vertices, faces), got {type(mesh).__name__}")
    v = np.ascontiguousarray(v, dtype=np.float64)
    f = np.ascontiguousarray(f, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3], got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3] triangles, got {f.shape}")
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"faces index vertices out of range [0, {len(v)})")
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != (len(v),):
            raise ValueError(f"face_region must be [V] = [{len(v)}], got {region.shape}")
    return v, f, region


def _count(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    return int(n)


def _face_cross(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Un-normalised face normals ``[F, 3]`` (length = twice the triangle area)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return np.cross(b - a, c - a)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def vertex_normals(vertices, faces) -> np.ndarray:
    """Unit vertex normals ``[V, 3]`` (float64): the sum of the adjacent faces' normals
    weighted by their areas (the un-normalised cross products), normalised. A vertex used
    by no face (or only by degenerate faces) gets the zero vector."""
    v, f, _ = _mesh_arrays((vertices, faces))
    cross = _face_cross(v, f)
    acc = np.zeros_like(v)
    for k in range(3):
        np.add.at(acc, f[:, k], cross)
    return _unit(acc)


def triangle_region(faces, face_region) -> np.ndarray:
    """Per-triangle face-region label ``[F]``: a triangle belongs to the face region when
    the majority (2 or 3) of its vertices do. Every triangle gets exactly one label, so
    the face and non-face sets partition the surface."""
    f = np.asarray(faces, dtype=np.int64)
    return np.asarray(face_region, dtype=bool)[f].sum(axis=1) >= 2


# --------------------------------------------------------------------------- surface


def _barycentric(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform barycentric coordinates ``[n, 3]`` (the square-root trick)."""
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return np.stack([1.0 - s, s * (1.0 - r2), s * r2], axis=1)


def _sample_triangles(v, f, n: int, rng: np.random.Generator, tri_mask=None, normals=None):
    """``(face_index [n], barycentric [n, 3], points [n, 3], normals [n, 3])``: triangles
    chosen with probability proportional to area (among ``tri_mask`` if given)."""
    area = 0.5 * np.linalg.norm(_face_cross(v, f), axis=1)
    if tri_mask is not None:
        area = np.where(tri_mask, area, 0.0)
    cdf = np.cumsum(area)
    total = cdf[-1]  # not area.sum(): a draw past cdf[-1] would land on a masked-out last triangle
    if n and not total > 0:
        raise ValueError("cannot sample a surface of zero area")
    face_index = np.searchsorted(cdf, rng.random(n) * total, side="right")
    face_index = np.minimum(face_index, len(f) - 1)
    bary = _barycentric(n, rng)
    tri = f[face_index]
    points = np.einsum("nk,nkd->nd", bary, v[tri])
    vn = vertex_normals(v, f) if normals is None else normals
    normals_out = _unit(np.einsum("nk,nkd->nd", bary, vn[tri]))
    return face_index.astype(np.int64), bary, points, normals_out


def sample_surface(mesh, n: int, rng, region: Optional[str] = None) -> SurfaceSamples:
    """``n`` points uniform on the surface of ``mesh`` (HeadMesh, trimesh or ``(V, F[,
    face_region])``): a triangle is chosen with probability proportional to its area, a
    point in it with uniform barycentrics; its normal is the barycentric interpolation of
    the vertex normals (:func:`vertex_normals`), renormalised.

    ``region``: ``None`` (whole surface), ``"face"`` or ``"nonface"``: only triangles of
    that region (:func:`triangle_region`: majority of the vertices), area-weighted among
    them. Raises ValueError when the region has no triangles (or zero area)."""
    n = _count(n, "n")
    gen = as_generator(rng)
    v, f, vregion = _mesh_arrays(mesh)
    if region not in (None, "face", "nonface"):
        raise ValueError(f"region must be None, 'face' or 'nonface', got {region!r}")
    if region is not None and vregion is None:
        raise ValueError(f"region={region!r} needs a mesh with a per-vertex face_region")
    tri_region = triangle_region(f, vregion) if vregion is not None else np.zeros(len(f), bool)
    mask = None
    if region is not None:
        mask = tri_region if region == "face" else ~tri_region
        if n and not mask.any():
            raise ValueError(f"the mesh has no {region!r} triangles (a triangle is 'face' when the majority of "
                             f"its vertices have face_region True; {int(vregion.sum())} of {len(v)} vertices do)")
    if n == 0:
        return SurfaceSamples(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, bool), np.zeros(0, np.int64),
                              np.zeros((0, 3)))
    if len(f) == 0:
        raise ValueError("cannot sample a mesh without faces")
    face_index, bary, points, normals = _sample_triangles(v, f, n, gen, mask)
    return SurfaceSamples(points, normals, tri_region[face_index], face_index, bary)


# --------------------------------------------------------------------------- signed distance


def is_watertight(faces) -> bool:
    """True when every undirected edge is shared by exactly two faces (closed 2-manifold
    edges; orientation is checked separately by :func:`signed_distance`)."""
    f = np.asarray(faces, dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        return False
    edges = np.sort(f[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    keys = np.sort(edges[:, 0] * (int(f.max()) + 1) + edges[:, 1])  # one int64 per undirected edge
    # each key exactly twice (sorted and compared in pairs: a few times faster than np.unique)
    return bool(len(keys) % 2 == 0 and (keys[0::2] == keys[1::2]).all() and (keys[1:-1:2] < keys[2::2]).all())


def is_consistently_wound(faces) -> bool:
    """True when every directed edge occurs at most once: neighbouring faces traverse
    their shared edge in opposite directions (one consistent orientation; with
    :func:`is_watertight`, each edge once each way)."""
    f = np.asarray(faces, dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        return False
    edges = f[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    keys = np.sort(edges[:, 0] * (int(f.max()) + 1) + edges[:, 1])  # one int64 per directed edge
    # np.sort, not np.unique: numpy 2's unique hashes, ~40x slower for 1M keys (0.3 s)
    return not (keys[1:] == keys[:-1]).any()


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed mesh (positive when its faces are CCW seen from outside)."""
    return float(_face_volumes(vertices, faces).sum())


def _face_volumes(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Signed volumes ``[F]`` of the tetrahedra (origin, face): their sum over a closed
    surface is the volume it encloses."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0


def _face_components(f: np.ndarray, n_vertices: int) -> Tuple[int, np.ndarray]:
    """``(count, label [F])``: the connected components of the faces (faces sharing a
    vertex are connected), labelled 0..count-1 in the order of their first face."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate([f[:, :2], f[:, 1:]])  # two edges connect a triangle's three vertices
    graph = csr_matrix((np.ones(len(edges), bool), (edges[:, 0], edges[:, 1])), shape=(n_vertices, n_vertices))
    count, vertex_label = connected_components(graph, directed=True, connection="weak")
    label = vertex_label[f[:, 0]]
    if count == 1:
        return 1, label
    first = np.full(count, len(f))
    np.minimum.at(first, label, np.arange(len(f)))  # unused vertices are components too: drop them
    used = np.flatnonzero(first < len(f))
    rank = np.empty(count, np.int64)
    rank[used[np.argsort(first[used], kind="stable")]] = np.arange(len(used))
    return len(used), rank[label]


def _check_components(v: np.ndarray, f: np.ndarray, count: int, label: np.ndarray, volume: np.ndarray) -> None:
    """Orientation per component of a closed, consistently wound mesh with ``count > 1``
    components (``label [F]``, signed ``volume [count]``): the components must bound one
    solid, so that the winding number of the whole mesh is 0 or 1 everywhere. Hence a
    component wound outwards must lie inside no other part of the solid (the winding
    number of the other components at it is 0), and one wound inwards must be the wall of
    a cavity (theirs is 1). The winding numbers are taken at each component's extreme
    vertices along the axes (a component that pierces another between them goes unseen);
    ValueError names the first component that breaks the rule."""
    import igl

    order = np.argsort(label, kind="stable")
    start = np.searchsorted(label[order], np.arange(count + 1))
    faces_of = [order[start[c]:start[c + 1]] for c in range(count)]
    # each component's extreme vertices along +-x, +-y, +-z (and with them its bounding box)
    vlabel = np.full(len(v), -1)
    vlabel[f] = label[:, None]
    used = np.flatnonzero(vlabel >= 0)
    vstart = np.searchsorted(np.sort(vlabel[used]), np.arange(count + 1))
    probes = np.empty((count, 6), np.int64)
    for axis in range(3):
        by = used[np.lexsort((v[used, axis], vlabel[used]))]
        probes[:, 2 * axis], probes[:, 2 * axis + 1] = by[vstart[:-1]], by[vstart[1:] - 1]
    lo = np.stack([v[probes[:, 2 * k], k] for k in range(3)], axis=1)
    hi = np.stack([v[probes[:, 2 * k + 1], k] for k in range(3)], axis=1)
    points = v[probes.ravel()]  # [count * 6, 3], component c's at rows 6c..6c+5
    owner = np.repeat(np.arange(count), 6)
    winding = np.zeros((count, len(points)))  # winding[d, i]: of component d at point i
    for d in range(count):
        near = np.flatnonzero((owner != d) & (points >= lo[d]).all(axis=1) & (points <= hi[d]).all(axis=1))
        if len(near):  # outside its bounding box a closed component winds 0 times
            # libigl's fast winding number (Barill et al. 2018: exact near the point, a
            # truncated expansion far away): ~0.1 s per 200k faces, off by ~1e-3 of a turn
            winding[d, near] = igl.fast_winding_number(v, np.ascontiguousarray(f[faces_of[d]]), points[near])

    def name(c):
        return f"component {c + 1} of {count} ({len(faces_of[c])} faces, the first is face {faces_of[c][0]}, " \
               f"signed volume {volume[c]:.3g})"

    flip = "flip its faces (faces[i] = faces[i, ::-1] for its face indices i)"
    for c in range(count):
        rows = slice(6 * c, 6 * c + 6)
        others = winding[:, rows].sum(axis=0)
        turns = np.rint(others)
        want = 1 if volume[c] < 0 else 0
        if (turns == want).all() and np.abs(others - turns).max() < 0.25:
            continue
        around = " and ".join(f"component {d + 1} ({len(faces_of[d])} faces)" for d in range(count)
                              if np.abs(winding[d, rows]).max() >= 0.25) or "another component"
        if np.abs(others - turns).max() >= 0.25 or (turns != turns[0]).any():
            raise ValueError(f"the mesh's {name(c)} intersects or touches {around}: signed distances are wrong "
                             "next to a surface inside another part of the solid; merge them into one closed "
                             "surface (a boolean union) or remove one")
        k = int(turns[0])
        where = ("lies inside no other component" if around == "another component" else
                 f"lies inside {around}, the others' winding number {k} there")
        if want == 1 and k == 0:
            raise ValueError(f"the mesh's {name(c)} is oriented inwards but {where}, so it is no wall of a cavity "
                             f"and signed distances would be positive inside it: {flip}")
        if want == 0 and k == 1:
            raise ValueError(f"the mesh's {name(c)} is oriented outwards but {where}: a solid inside a solid, "
                             "and signed distances would be positive in the outer one next to it; if it is the "
                             f"wall of a cavity {flip}, else remove it")
        raise ValueError(f"the mesh's {name(c)} is oriented {'inwards' if want else 'outwards'} and {where} "
                         f"(expected {want}): the components do not bound one solid, so signed distances would be "
                         "wrong near it; fix the nesting and orientation of the parts")


def _check_closed(v: np.ndarray, f: np.ndarray) -> None:
    """ValueError unless ``(v, f)`` bounds a solid: watertight, consistently wound, and
    every connected component outward oriented, except walls of cavities, wound inwards
    and nested inside the solid (see :func:`_check_components`)."""
    if not is_watertight(f):
        raise ValueError(f"signed distances need a watertight mesh (every edge shared by exactly two faces); "
                         f"this one ({len(v)} vertices, {len(f)} faces) is not: fill its holes first")
    if not is_consistently_wound(f):
        raise ValueError("the mesh's faces are not consistently wound (some neighbours traverse their shared edge "
                         "in the same direction), so the inside/outside test flips near them: fix the winding "
                         "first (e.g. trimesh.repair.fix_winding)")
    count, label = _face_components(f, len(v))
    face_volume = _face_volumes(v, f)
    if count == 1:
        volume = float(face_volume.sum())
        if volume < 0:
            raise ValueError(f"the mesh's faces are oriented inwards (signed volume {volume:.3g} < 0): "
                             "flip them (faces[:, ::-1]) so that signed distances are positive outside")
        return
    _check_components(v, f, count, label, np.bincount(label, weights=face_volume, minlength=count))


def signed_distance(mesh, points, chunk: int = 1 << 20, check: bool = True) -> np.ndarray:
    """Signed distances ``[n]`` (float64, positive outside) of ``points [n, 3]`` to
    ``mesh`` (HeadMesh, trimesh or ``(V, F)``), by libigl's pseudonormal test.

    libigl builds its AABB tree inside each call (~0.1-1 s for 100k-300k faces) and its
    Python binding takes no prebuilt tree, so pass all points of a mesh in one call;
    ``chunk`` only bounds the memory of one call (each chunk rebuilds the tree).
    ``check``: first verify that the mesh is watertight, consistently wound and outward
    oriented, per connected component: inwards only for the walls of cavities, nested
    inside another component (ValueError otherwise: the sign is meaningless on an open
    mesh and flips next to a face wound against its neighbours or a part wound or nested
    the wrong way). The check takes ~50 ms for 200k faces in one component; with several,
    each component with another's vertex in its bounding box adds ~0.1 s per 200k faces
    (a winding number, see :func:`_check_components`)."""
    import igl

    v, f, _ = _mesh_arrays(mesh)
    p = np.ascontiguousarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [n, 3], got {p.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if check:
        _check_closed(v, f)
    out = np.empty(len(p))
    for s in range(0, len(p), chunk):
        out[s:s + chunk] = igl.signed_distance(p[s:s + chunk], v, f, igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL)[0]
    return out


# --------------------------------------------------------------------------- space


def near_surface(points, sigma: float, rng) -> np.ndarray:
    """``points [n, 3]`` plus isotropic Gaussian noise of standard deviation ``sigma`` per
    coordinate (DeepSDF's near-surface samples), float64."""
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [n, 3], got {p.shape}")
    return p + as_generator(rng).normal(scale=sigma, size=p.shape)


def sample_ball(n: int, rng, radius: float = 1.0) -> np.ndarray:
    """``n`` points uniform in the ball of ``radius`` around the origin ``[n, 3]`` float64
    (Gaussian directions, radius ``radius * u^(1/3)``)."""
    n = _count(n, "n")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    gen = as_generator(rng)
    d = gen.normal(size=(n, 3))
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    while n and (norm == 0).any():  # probability zero, but never divide by it
        bad = norm[:, 0] == 0
        d[bad] = gen.normal(size=(int(bad.sum()), 3))
        norm = np.linalg.norm(d, axis=1, keepdims=True)
    return d / norm * (radius * np.cbrt(gen.random((n, 1))))


def above_plane(points, plane) -> np.ndarray:
    """Bool ``[n]``: ``points [n, 3]`` strictly on the side of ``plane = (origin, normal)``
    that ``normal`` points to."""
    origin, normal = (np.asarray(a, dtype=np.float64).reshape(3) for a in plane)
    return (np.asarray(points, dtype=np.float64) - origin) @ normal > 0


def _rejection(draw, n: int, keep, what: str) -> np.ndarray:
    """Rejection sampling: ``draw(m)`` gives m candidates (rows of arrays),
    ``keep(rows) -> bool [m]``; returns the first ``n`` kept rows (in draw order)."""
    if n == 0:
        return draw(0)
    parts, have, m = [], 0, max(n, 64)
    for _ in range(64):
        batch = draw(m)
        mask = keep(batch)
        parts.append(batch[mask])
        have += int(mask.sum())
        if have >= n:
            return np.concatenate(parts)[:n]
        rate = max(mask.mean(), 1.0 / m)
        m = int(min(max((n - have) / rate * 1.2, 64), 8 * n + 64))
    raise ValueError(f"the cut plane keeps (almost) none of the {what}: check meta['cut_plane']")


def prepare_identity_samples(mesh, n_face: int = 15000, n_nonface: int = 5000, n_ball: int = 6000, rng=None,
                             *, sigmas: Sequence[float] = NEAR_SIGMAS, radius: float = 1.0,
                             cut_plane="meta") -> Dict[str, np.ndarray]:
    """The bulk samples of one head (float32 arrays, keys ``<set>_points`` with
    ``<set>_normals`` for the surface sets and ``<set>_sdf`` for the others, sets as in
    :data:`SET_KEYS`). The near sets perturb the surface points of the same region with
    ``sigmas`` (two levels); ``ball`` is uniform in the ball of ``radius``. The mesh must be
    watertight and outward oriented (see :func:`signed_distance`); all signed distances of
    the head come from one libigl call.

    Torso separation (thesis 5.1.2, NPHM D.2): with a plane ``(origin, normal)`` (by
    default ``mesh.meta["cut_plane"]`` when present, as NPHMFolder sets it from the FLAME
    fit; ``None`` disables), surface and ball points are drawn only on the side ``normal``
    points to (rejection sampling); signed distances stay those of the whole, watertight
    scan."""
    n_face, n_nonface, n_ball = _count(n_face, "n_face"), _count(n_nonface, "n_nonface"), _count(n_ball, "n_ball")
    sigmas = tuple(float(s) for s in sigmas)
    if len(sigmas) != 2:
        raise ValueError(f"sigmas must hold two standard deviations (near1, near2), got {sigmas}")
    gen = as_generator(rng)
    v, f, region = _mesh_arrays(mesh)
    if region is None:
        raise ValueError("prepare_identity_samples needs a mesh with a per-vertex face_region")
    if isinstance(cut_plane, str):
        if cut_plane != "meta":
            raise ValueError(f"cut_plane must be 'meta', None or (origin, normal), got {cut_plane!r}")
        cut_plane = getattr(mesh, "meta", {}).get("cut_plane")
    _check_closed(v, f)
    out: Dict[str, np.ndarray] = {}
    queries = []
    for name, n in (("face", n_face), ("nonface", n_nonface)):
        if cut_plane is None:
            s = sample_surface((v, f, region), n, gen, region=name)
            points, normals = s.points, s.normals
        else:
            def draw(m, name=name):
                s = sample_surface((v, f, region), m, gen, region=name)
                return np.concatenate([s.points, s.normals], axis=1)

            both = _rejection(draw, n, lambda rows: above_plane(rows[:, :3], cut_plane), f"{name} surface")
            points, normals = both[:, :3], both[:, 3:]
        out[f"surface_{name}_points"], out[f"surface_{name}_normals"] = points, normals
        for level, sigma in enumerate(sigmas, start=1):
            queries.append((f"near{level}_{name}", near_surface(points, sigma, gen)))
    if cut_plane is None:
        ball = sample_ball(n_ball, gen, radius)
    else:
        ball = _rejection(lambda m: sample_ball(m, gen, radius), n_ball, lambda p: above_plane(p, cut_plane), "ball")
    queries.append(("ball", ball))
    sdf = signed_distance((v, f), np.concatenate([q for _, q in queries]), check=False)
    start = 0
    for name, q in queries:
        out[f"{name}_points"], out[f"{name}_sdf"] = q, sdf[start:start + len(q)]
        start += len(q)
    return {k: np.ascontiguousarray(out[k], dtype=np.float32) for s in SET_KEYS.values() for k in s}


def subsample(bulk: Mapping[str, np.ndarray], counts: Mapping[str, int], rng) -> Dict[str, Any]:
    """One training step's points: for every set named in ``counts`` (see
    :data:`SET_KEYS`), ``counts[set]`` rows of its points and values (float32 torch tensors),
    both taken at the same indices. Rows are drawn without replacement when the bulk set
    holds at least that many, else with replacement (small bulks still give full batches).
    Sets are drawn in the order of ``counts``. Unknown set names raise KeyError, missing
    bulk arrays KeyError, bad counts or an empty bulk set ValueError."""
    import torch

    gen = as_generator(rng)
    unknown = [name for name in counts if name not in SET_KEYS]
    if unknown:
        raise KeyError(f"unknown sample sets {unknown}; known sets: {sorted(SET_KEYS)}")
    out = {}
    for name, n in counts.items():
        n = _count(n, f"counts[{name!r}]")
        keys = SET_KEYS[name]
        missing = [k for k in keys if k not in bulk]
        if missing:
            raise KeyError(f"bulk samples lack {missing} (set {name!r}); present: {sorted(bulk)}")
        size = len(bulk[keys[0]])
        if len(bulk[keys[1]]) != size:
            raise ValueError(f"{keys[0]} and {keys[1]} differ in length: {size} vs {len(bulk[keys[1]])}")
        if n and size == 0:
            raise ValueError(f"bulk set {name!r} is empty but {n} samples were asked for")
        index = gen.choice(size, size=n, replace=n > size) if n else np.zeros(0, np.int64)
        for k in keys:
            out[k] = torch.from_numpy(np.ascontiguousarray(np.asarray(bulk[k])[index], dtype=np.float32))
    return out


# --------------------------------------------------------------------------- expressions


def sample_correspondences(neutral, posed, n: int, sigmas: Sequence[float] = CORRESPONDENCE_SIGMAS,
                           rng=None) -> Dict[str, np.ndarray]:
    """``n`` neutral<->posed point pairs of one identity (thesis 5.1.2, NPHM D.2), on the
    registration meshes (``.registration()`` of HeadMeshes, or ``(V, F)`` tuples), which
    must share their faces.

    Two-way: the first ``ceil(n/2)`` pairs are sampled area-weighted on the neutral mesh
    (triangle + barycentrics) and mapped to the posed mesh by the same triangle and
    barycentrics; the others are sampled on the posed mesh and mapped back. Each pair is
    offset along the interpolated unit normals of its two points by the same
    ``a ~ N(0, sigma^2)``: ``x + a n(x)`` and ``x' + a n(x')``; within each direction the
    first half of the pairs uses ``sigmas[0]``, the rest ``sigmas[1]``.

    Returns float64 arrays: ``neutral [n, 3]``, ``posed [n, 3]``, ``level [n]`` (int8, index
    into ``sigmas``), ``offset [n]`` (a), ``direction [n]`` (int8: 0 sampled on neutral, 1 on
    posed), ``face_index [n]``, ``barycentric [n, 3]``."""
    n = _count(n, "n")
    sigmas = tuple(float(s) for s in sigmas)
    if len(sigmas) != 2 or min(sigmas) < 0:
        raise ValueError(f"sigmas must be two standard deviations >= 0, got {sigmas}")
    gen = as_generator(rng)
    vn, fn, _ = _mesh_arrays(neutral.registration() if hasattr(neutral, "registration") else neutral)
    vp, fp, _ = _mesh_arrays(posed.registration() if hasattr(posed, "registration") else posed)
    if len(vn) != len(vp) or fn.shape != fp.shape or not np.array_equal(fn, fp):
        raise ValueError(f"neutral and posed registrations must share their topology (same faces), got "
                         f"{len(vn)} vs {len(vp)} vertices and {len(fn)} vs {len(fp)} faces"
                         + (" with different vertex indices" if fn.shape == fp.shape and len(vn) == len(vp) else ""))
    normals = (vertex_normals(vn, fn), vertex_normals(vp, fn))
    halves = ((n + 1) // 2, n // 2)
    parts = []
    for direction, m in enumerate(halves):
        src, dst = (vn, vp) if direction == 0 else (vp, vn)
        nsrc, ndst = normals if direction == 0 else normals[::-1]
        if m:
            face_index, bary, x_src, n_src = _sample_triangles(src, fn, m, gen, normals=nsrc)
        else:
            face_index, bary, x_src, n_src = np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3))
        tri = fn[face_index]
        x_dst = np.einsum("nk,nkd->nd", bary, dst[tri])
        n_dst = _unit(np.einsum("nk,nkd->nd", bary, ndst[tri]))
        level = (np.arange(m) >= (m + 1) // 2).astype(np.int8)
        a = gen.normal(size=m) * np.asarray(sigmas)[level]
        y_src, y_dst = x_src + a[:, None] * n_src, x_dst + a[:, None] * n_dst
        neu, pos = (y_src, y_dst) if direction == 0 else (y_dst, y_src)
        parts.append(dict(neutral=neu, posed=pos, level=level, offset=a, direction=np.full(m, direction, np.int8),
                          face_index=face_index, barycentric=bary))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def prepare_expression_samples(neutral, posed, n: int = 20000, rng=None, *,
                               sigmas: Sequence[float] = CORRESPONDENCE_SIGMAS) -> Dict[str, np.ndarray]:
    """The bulk correspondences of one posed record (:func:`sample_correspondences`), as
    stored: ``neutral``/``posed`` float32 ``[n, 3]``, ``level`` int8 ``[n]`` and
    ``direction`` int8 ``[n]``."""
    pairs = sample_correspondences(neutral, posed, n, sigmas=sigmas, rng=rng)
    return dict(neutral=pairs["neutral"].astype(np.float32), posed=pairs["posed"].astype(np.float32),
                level=pairs["level"], direction=pairs["direction"])
