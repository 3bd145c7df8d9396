"""The one record every data source yields: a watertight head mesh with a per-vertex
face-region label, in npht's world frame (unit sphere, y up, face towards +z).

Procedural heads, a folder of meshes and the NPHM layout all produce ``HeadMesh``; the
sampling, ground-truth normal maps and partial scans consume it, so every source feeds
the same pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from .._atomic import new_file_mode, write_atomic  # noqa: F401  (new_file_mode: re-exported)

__all__ = ["HeadMesh", "new_file_mode", "atomic_save_npz", "load_npz", "save_mesh", "load_mesh"]


@dataclass
class HeadMesh:
    """One scan of one identity in one expression.

    ``vertices [V, 3]`` float64 and ``faces [F, 3]`` int64 (counter-clockwise seen from
    outside, watertight: signed distances use it); ``face_region [V]`` bool marks the
    face region (face, forehead and ears as in NPHM; the rest is "non-face").
    ``registration_vertices [V', 3]`` / ``registration_faces [F', 3]``: a mesh whose
    topology is shared by all expressions of this identity (NPHM's registration), used
    for expression correspondences; ``None`` means the mesh itself has that property
    (procedural heads: posed = analytic deformation of the neutral vertices).
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_region: np.ndarray
    identity: str
    expression: str
    is_neutral: bool
    registration_vertices: Optional[np.ndarray] = None
    registration_faces: Optional[np.ndarray] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        self.face_region = np.ascontiguousarray(self.face_region, dtype=bool)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"vertices must be [V, 3], got {self.vertices.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must be [F, 3], got {self.faces.shape}")
        if len(self.faces) and (self.faces.min() < 0 or self.faces.max() >= len(self.vertices)):
            raise ValueError(
                f"faces index vertices out of range [0, {len(self.vertices)}): "
                f"min {self.faces.min()}, max {self.faces.max()}")
        if self.face_region.shape != (len(self.vertices),):
            raise ValueError(
                f"face_region must be [V] = [{len(self.vertices)}], got {self.face_region.shape}")
        if (self.registration_vertices is None) != (self.registration_faces is None):
            raise ValueError("registration_vertices and registration_faces go together")
        if self.registration_vertices is not None:
            self.registration_vertices = np.ascontiguousarray(self.registration_vertices, np.float64)
            self.registration_faces = np.ascontiguousarray(self.registration_faces, np.int64)

    @property
    def key(self) -> str:
        """``"<identity>/<expression>"``: the record's name in a prepared dataset."""
        return f"{self.identity}/{self.expression}"

    def registration(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(vertices, faces)`` of the mesh with per-identity shared topology."""
        if self.registration_vertices is not None:
            return self.registration_vertices, self.registration_faces
        return self.vertices, self.faces

    def to_trimesh(self):
        """A ``trimesh.Trimesh`` (not processed: vertex order and count kept)."""
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, process=False)


def atomic_save_npz(path, compressed: bool = False, **arrays) -> None:
    """Write ``arrays`` to ``path`` (.npz) through :func:`npht._atomic.write_atomic`: a run
    killed at any moment leaves either the old file or the new one, never a truncated file.
    The file gets the mode a plain save would give it."""
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to another name
            (np.savez_compressed if compressed else np.savez)(f, **arrays)

    write_atomic(path, write)


def load_npz(path) -> dict:
    """All arrays of an .npz file; a missing file raises FileNotFoundError and a truncated
    or corrupt one a ValueError, both naming the file."""
    import os
    import zipfile

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"corrupt or truncated file {path}: {e}") from e


def save_mesh(path, mesh: HeadMesh) -> None:
    """Store a :class:`HeadMesh` (all arrays and names) as one .npz, atomically."""
    arrays = dict(vertices=mesh.vertices, faces=mesh.faces, face_region=mesh.face_region,
                  identity=np.array(mesh.identity), expression=np.array(mesh.expression),
                  is_neutral=np.array(mesh.is_neutral))
    if mesh.registration_vertices is not None:
        arrays.update(registration_vertices=mesh.registration_vertices,
                      registration_faces=mesh.registration_faces)
    if mesh.meta:  # e.g. NPHM's torso cut plane: JSON, arrays as lists
        arrays["meta"] = np.array(json.dumps(mesh.meta, default=_jsonable))
    atomic_save_npz(path, compressed=True, **arrays)


def _jsonable(obj):
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"HeadMesh.meta value of type {type(obj).__name__} cannot be stored")


def load_mesh(path) -> HeadMesh:
    """The :class:`HeadMesh` written by :func:`save_mesh`."""
    z = load_npz(path)
    missing = {"vertices", "faces", "face_region", "identity", "expression", "is_neutral"} - set(z)
    if missing:
        raise ValueError(f"{path} is not a npht mesh file: missing {sorted(missing)}")
    meta = json.loads(str(z["meta"])) if "meta" in z else {}
    return HeadMesh(z["vertices"], z["faces"], z["face_region"], str(z["identity"]), str(z["expression"]),
                    bool(z["is_neutral"]), z.get("registration_vertices"), z.get("registration_faces"), meta)
