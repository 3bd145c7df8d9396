"""Head-scan folders as :class:`~npht.data.HeadMesh` records.

Two layouts, one interface: ``loader.identities()``, ``loader.expressions(identity)`` (the
neutral first, then the others sorted), ``loader[(identity, expression)] -> HeadMesh``;
a loader is a read-only Mapping whose keys are ``(identity, expression)`` pairs
(``keys()``, ``len()``, iteration over the keys, ``values()``/``items()`` load meshes).
Meshes are read keeping the file's vertex order and count, so per-vertex masks stay valid
(.ply with trimesh without processing, .obj from its ``v`` and ``f`` lines: see
:func:`read_mesh`), and are expected in npht's world frame: inside the unit sphere, y up,
face towards +z (neither loader rescales).

:class:`MeshFolder`, any meshes::

    <root>/
      <identity>/                    one folder per identity (its name is the identity)
        neutral.ply                  the neutral expression (the name is MeshFolder(neutral=...))
        <expression>.ply | .obj      further expressions (file stem = expression name)
        <expression>.face.npy        optional bool [V] face-region mask of that mesh
        registration/<expression>.ply | .obj
                                     optional registration mesh, the same topology for all
                                     expressions of the identity (expression correspondences)

:class:`NPHMFolder`, the NPHM dataset as distributed::

    <root>/
      neutrals.json                  optional {"<subject>": <expression>} neutral choice
      <subject:03d>/<expression:03d>/
        scan.ply                     the scan (already normalised into the unit sphere)
        registration.ply             optional registration (shared topology per subject)
        flame.ply                    optional FLAME fit: gives the torso cut plane
        face_region.npy              optional bool [V] face-region mask of scan.ply

Registrations are read as they are; that all expressions of an identity share their
topology is checked where it matters, by :func:`npht.data.sampling.sample_correspondences`.
Without a mask, :func:`default_face_region` labels the vertices. A scan that is not
watertight loads with a warning naming the file (signed distances will refuse it).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from .records import HeadMesh
from .sampling import above_plane, is_watertight

__all__ = ["MeshFolder", "NPHMFolder", "default_face_region", "read_mesh", "above_plane", "keep_above_plane",
           "FLAME_CUT_VERTICES", "flame_cut_plane"]

#: FLAME vertex indices spanning NPHM's torso cut plane (on the neck).
FLAME_CUT_VERTICES = (3276, 3207, 3310)
_MESH_EXTS = (".ply", ".obj")


def default_face_region(vertices, *, cap_degrees: float = 100.0, neck_y: float = -0.45,
                        top_y: float = 0.3) -> np.ndarray:
    """Per-vertex face-region label ``[V]`` for a head in npht's frame (centred in the
    unit sphere, y up, face towards +z), when no mask is given: a vertex is "face" when
    its direction from the origin lies within ``cap_degrees`` of +z (a front cap: face,
    forehead and, at ~90 degrees, the ears) and ``neck_y < y < top_y`` (excludes the neck
    and torso below, the crown above). The back of the head, the crown and the neck are
    "non-face". A coarse geometric stand-in for NPHM's region on its registered template;
    pass a mask for real data. On the embedded procedural heads (whose face region is
    known) its IoU with the true region is ~0.79 (without the crown cut ``top_y``, 0.54).
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3], got {v.shape}")
    r = np.linalg.norm(v, axis=1)
    cos = np.divide(v[:, 2], r, out=np.ones_like(r), where=r > 0)
    return (cos >= np.cos(np.radians(cap_degrees))) & (v[:, 1] > neck_y) & (v[:, 1] < top_y)


def _read_obj(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """The ``v`` and ``f`` lines of an .obj file, in the file's vertex order: a face corner's
    vertex is the index before its first ``/`` (1-based; negative counts back from the
    vertices read so far), polygons are fan-triangulated, everything else (``vt``, ``vn``,
    ``g``, ``o``, ``usemtl``, ...) is ignored. trimesh splits vertices where the UVs or the
    groups differ: a closed textured head loaded as open, and face masks in the file's
    vertex order no longer matched it."""
    vertices: List[List[float]] = []
    faces: List[Tuple[int, int, int]] = []
    with open(path, "r", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                vertices.append([float(x) for x in parts[1:4]])
                if len(vertices[-1]) != 3:
                    raise ValueError(f"vertex line with fewer than 3 coordinates: {line.strip()!r}")
            elif parts[0] == "f":
                corners = []
                for token in parts[1:]:
                    i = int(token.split("/", 1)[0])
                    corners.append(i - 1 if i > 0 else len(vertices) + i if i < 0 else -1)  # 0: invalid
                faces.extend((corners[0], corners[k], corners[k + 1]) for k in range(1, len(corners) - 1))
    return (np.asarray(vertices, dtype=np.float64).reshape(-1, 3),
            np.asarray(faces, dtype=np.int64).reshape(-1, 3))


def read_mesh(path) -> Tuple[np.ndarray, np.ndarray]:
    """``(vertices float64 [V, 3], faces int64 [F, 3])`` of a .ply/.obj file, unprocessed
    (the file's vertices in its order; .obj: :func:`_read_obj`). An unreadable file or one
    without triangles raises ValueError naming the file."""
    import trimesh

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such mesh file: {path}")
    try:
        if path.lower().endswith(".obj"):
            v, f = _read_obj(path)
        else:
            mesh = trimesh.load(path, process=False, force="mesh")
            v = np.asarray(mesh.vertices, dtype=np.float64)
            f = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    except Exception as e:  # trimesh raises many kinds on corrupt files
        raise ValueError(f"cannot read mesh file {path}: {type(e).__name__}: {e}") from e
    if len(f) == 0 or len(v) == 0:
        raise ValueError(f"mesh file {path} holds no triangles (corrupt or a point cloud?)")
    if f.min() < 0 or f.max() >= len(v) or not np.isfinite(v).all():
        raise ValueError(f"mesh file {path} is corrupt: face indices out of range or non-finite vertices")
    return v, f


def _read_mask(path: str, n: int) -> np.ndarray:
    try:
        mask = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"cannot read face-region mask {path}: {e}") from e
    if mask.shape != (n,):
        raise ValueError(f"face-region mask {path} has shape {mask.shape}, but its mesh has {n} vertices: "
                         f"expected a bool array [{n}] in the mesh's vertex order")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"face-region mask {path} must be bool (or 0/1), got values of {mask.dtype}")
        mask = mask.astype(bool)
    return mask


def _read_scan(path: str) -> Tuple[np.ndarray, np.ndarray]:
    v, f = read_mesh(path)
    if not is_watertight(f):
        warnings.warn(f"mesh {path} is not watertight (an edge is not shared by exactly two faces): "
                      "signed-distance sampling will refuse it", stacklevel=3)
    return v, f


def keep_above_plane(points, plane) -> np.ndarray:
    """The rows of ``points [n, 3]`` above ``plane`` (NPHM's torso cut: the head side)."""
    points = np.asarray(points)
    return points[above_plane(points, plane)]


class _Loader(Mapping):
    """Shared Mapping behaviour; subclasses fill ``self._index`` {identity: {expression:
    files}} (expressions neutral first) and implement ``_load``."""

    layout = ""
    _index: Dict[str, Dict[str, dict]]

    def identities(self) -> List[str]:
        return list(self._index)

    def expressions(self, identity: str) -> List[str]:
        if identity not in self._index:
            raise KeyError(f"unknown identity {identity!r} in {self.root}; known: {self.identities()[:10]}...")
        return list(self._index[identity])

    def __getitem__(self, key) -> HeadMesh:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise KeyError(f"keys are (identity, expression) pairs, got {key!r}")
        identity, expression = key
        if expression not in self.expressions(identity):
            raise KeyError(f"identity {identity!r} has no expression {expression!r}; "
                           f"it has {self.expressions(identity)}")
        return self._load(identity, expression, self._index[identity][expression])

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        return ((i, e) for i in self._index for e in self._index[i])

    def __len__(self) -> int:
        return sum(len(e) for e in self._index.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r}: {len(self._index)} identities, {len(self)} meshes)"

    def _check_root(self, root) -> str:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{type(self).__name__} root is not a folder: {root}")
        return root

    def _empty(self) -> ValueError:
        return ValueError(f"{self.root} holds no meshes in the {type(self).__name__} layout; expected "
                          f"{self.layout} (see npht.data.loaders)")


def _sorted_names(names) -> List[str]:
    return sorted(names, key=lambda s: (int(s), s) if s.isdigit() else (float("inf"), s))


class MeshFolder(_Loader):
    """Meshes in ``<root>/<identity>/<expression>.ply|.obj`` (see the module docstring);
    ``neutral`` names each identity's neutral expression (ValueError if one lacks it)."""

    layout = "<root>/<identity>/<expression>.ply|.obj"

    def __init__(self, root, *, neutral: str = "neutral"):
        self.root = self._check_root(root)
        self.neutral = neutral
        self._index = {}
        for identity in sorted(os.listdir(self.root)):
            folder = os.path.join(self.root, identity)
            if identity.startswith(".") or not os.path.isdir(folder):
                continue
            meshes = self._meshes(folder)
            if not meshes:
                continue
            if neutral not in meshes:
                raise ValueError(f"identity {identity!r} has no neutral mesh {neutral}.ply|.obj in {folder} "
                                 f"(found {sorted(meshes)}); rename it or pass MeshFolder(neutral=...)")
            registrations = self._meshes(os.path.join(folder, "registration"))
            entries = {}
            for expression in [neutral] + sorted(e for e in meshes if e != neutral):
                mask = os.path.join(folder, f"{expression}.face.npy")
                entries[expression] = dict(scan=meshes[expression], registration=registrations.get(expression),
                                           mask=mask if os.path.isfile(mask) else None)
            self._index[identity] = entries
        if not self._index:
            raise self._empty()

    @staticmethod
    def _meshes(folder: str) -> Dict[str, str]:
        found: Dict[str, str] = {}
        if not os.path.isdir(folder):
            return found
        for name in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(name)
            path = os.path.join(folder, name)
            if ext.lower() not in _MESH_EXTS or name.startswith(".") or not os.path.isfile(path):
                continue
            if stem in found:
                raise ValueError(f"two meshes for expression {stem!r} in {folder}: "
                                 f"{os.path.basename(found[stem])} and {name}; keep one")
            found[stem] = path
        return found

    def _load(self, identity: str, expression: str, files: dict) -> HeadMesh:
        v, f = _read_scan(files["scan"])
        region = _read_mask(files["mask"], len(v)) if files["mask"] else default_face_region(v)
        reg_v = reg_f = None
        if files["registration"]:
            reg_v, reg_f = read_mesh(files["registration"])
        return HeadMesh(v, f, region, identity, expression, expression == self.neutral, reg_v, reg_f,
                        meta=dict(path=files["scan"]))


class NPHMFolder(_Loader):
    """NPHM's ``<root>/<subject>/<expression>/scan.ply`` (see the module docstring).

    The neutral expression of a subject: ``neutrals[subject]`` (ints or digit strings,
    e.g. ``{17: 0}`` or ``{"017": "000"}``), else the same from ``<root>/neutrals.json``,
    else the subject's lowest expression index. With a ``flame.ply``, the record's
    ``meta["cut_plane"]`` is NPHM's torso cut plane ``(origin, unit normal)`` through FLAME
    vertices 3276, 3207 and 3310, its normal pointing to the head (the side of the FLAME
    vertices' centroid); :func:`keep_above_plane` applies it."""

    layout = "<root>/<subject:03d>/<expression:03d>/scan.ply"

    def __init__(self, root, *, neutrals: Optional[Mapping] = None):
        self.root = self._check_root(root)
        if neutrals is None:
            path = os.path.join(self.root, "neutrals.json")
            if os.path.isfile(path):
                try:
                    with open(path) as fh:
                        neutrals = json.load(fh)
                except (OSError, json.JSONDecodeError) as e:
                    raise ValueError(f"cannot read {path}: {e}") from e
                if not isinstance(neutrals, dict):
                    raise ValueError(f"{path} must hold an object {{subject: expression}}, "
                                     f"got {type(neutrals).__name__}")
        chosen = {self._number(k, "subject"): self._number(v, "expression") for k, v in (neutrals or {}).items()}
        self._index = {}
        for subject in _sorted_names(s for s in os.listdir(self.root) if s.isdigit()):
            folder = os.path.join(self.root, subject)
            if not os.path.isdir(folder):
                continue
            expressions = _sorted_names(e for e in os.listdir(folder)
                                        if e.isdigit() and os.path.isfile(os.path.join(folder, e, "scan.ply")))
            if not expressions:
                continue
            neutral = expressions[0]
            if int(subject) in chosen:
                match = [e for e in expressions if int(e) == chosen[int(subject)]]
                if not match:
                    raise ValueError(f"neutral expression {chosen[int(subject)]} of subject {subject} has no "
                                     f"{folder}/<expression>/scan.ply (found {expressions})")
                neutral = match[0]
            order = [neutral] + [e for e in expressions if e != neutral]
            self._index[subject] = {e: dict(folder=os.path.join(folder, e), neutral=e == neutral) for e in order}
        if not self._index:
            raise self._empty()

    @staticmethod
    def _number(value, what: str) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\d+", value):
            return int(value)
        raise ValueError(f"neutrals: {what} must be an int or a digit string, got {value!r}")

    def _load(self, identity: str, expression: str, files: dict) -> HeadMesh:
        folder = files["folder"]
        v, f = _read_scan(os.path.join(folder, "scan.ply"))
        mask = os.path.join(folder, "face_region.npy")
        region = _read_mask(mask, len(v)) if os.path.isfile(mask) else default_face_region(v)
        reg_v = reg_f = None
        if os.path.isfile(os.path.join(folder, "registration.ply")):
            reg_v, reg_f = read_mesh(os.path.join(folder, "registration.ply"))
        meta = dict(path=os.path.join(folder, "scan.ply"))
        flame = os.path.join(folder, "flame.ply")
        if os.path.isfile(flame):
            meta["cut_plane"] = flame_cut_plane(read_mesh(flame)[0], name=flame)
        return HeadMesh(v, f, region, identity, expression, files["neutral"], reg_v, reg_f, meta=meta)


def flame_cut_plane(flame_vertices, name: str = "FLAME mesh") -> Tuple[np.ndarray, np.ndarray]:
    """``(origin [3], unit normal [3])`` of the plane through FLAME vertices
    :data:`FLAME_CUT_VERTICES`, the normal towards the centroid of all FLAME vertices."""
    v = np.asarray(flame_vertices, dtype=np.float64)
    if len(v) <= max(FLAME_CUT_VERTICES):
        raise ValueError(f"{name} has {len(v)} vertices; a FLAME mesh (5023) is needed for the cut plane")
    a, b, c = v[list(FLAME_CUT_VERTICES)]
    normal = np.cross(b - a, c - a)
    length = np.linalg.norm(normal)
    if not length > 1e-12:
        raise ValueError(f"{name}: the cut vertices {FLAME_CUT_VERTICES} are collinear")
    normal /= length
    origin = (a + b + c) / 3.0
    if (v.mean(axis=0) - origin) @ normal < 0:
        normal = -normal
    return origin, normal
