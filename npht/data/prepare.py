"""``npht data prepare``: turn a source of heads into a training-ready folder.

A source is ``"synthetic"`` (the embedded procedural heads, no download), a folder of
meshes (:class:`~npht.data.loaders.MeshFolder`) or the NPHM layout
(:class:`~npht.data.loaders.NPHMFolder`). For every record (identity x expression) the
prepared folder holds::

    OUT/
      config.json                      the settings (a re-run with other settings refuses) and,
                                       for a folder source, its identities (a re-run on a
                                       source that gained or lost identities refuses too)
      manifest.json                    records, splits, files; written last
      meshes/<identity>/<expression>.npz            HeadMesh (vertices, faces, face labels)
      samples/<identity>/<expression>.npz           thesis point samples in bulk
      correspondences/<identity>/<expression>.npz   neutral<->posed pairs (posed records)
      normal_maps/<identity>/<expression>.npz       uint8 normals (OpenGL camera frame)
                                                    + masks of the camera rig, one member
                                                    per camera (read per camera; a re-run
                                                    rewrites an older folder's whole-rig
                                                    files so, without rendering again)

Every file is written through a temporary file and ``os.replace``: a run killed at any
moment leaves only complete files, and re-running skips every file that exists (the
work unit is one identity, so a synthetic identity's meshes are marched once).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context
from typing import Dict, List, Optional, Sequence

import numpy as np

from .._atomic import write_json_atomic
from .records import HeadMesh, atomic_save_npz, load_mesh, save_mesh

__all__ = ["PrepareConfig", "prepare", "open_source", "camera_rig", "NORMAL_SCALE", "OtherSettingsError"]

#: the smallest marching-cubes grid of the procedural heads (npht.data.synthetic.extract_mesh)
MIN_MESH_RESOLUTION = 8

#: Normal maps are stored as uint8 ``round((n + 1) / 2 * NORMAL_SCALE)`` (the 8-bit
#: colour a pyrender ground truth has anyway: ~0.2 degree quantisation).
NORMAL_SCALE = 255.0


@dataclass
class PrepareConfig:
    """Settings of a prepared dataset (stored in ``config.json``).

    source: ``"synthetic"`` or a folder; ``layout``: ``"auto"`` (NPHM if the folder holds
    ``<ddd>/<ddd>/scan.ply``, else a mesh folder), ``"folder"`` or ``"nphm"``.
    identities / expressions / seed / mesh_resolution: procedural heads only.
    Bulk sizes per record: ``surface_face``/``surface_nonface`` surface points (the near
    sets perturb them), ``ball`` uniform points, ``correspondences`` pairs per posed record.
    Normal maps: ``cameras`` Fibonacci cameras at ``camera_radius`` looking at the origin,
    ``resolution`` pixels square, ``fov_degrees`` vertical field of view (0 disables).
    ``test_identities``: the last identities (sorted) form the held-out test split.
    """

    source: str = "synthetic"
    layout: str = "auto"
    identities: int = 16
    expressions: int = 4
    seed: int = 0
    mesh_resolution: int = 160
    surface_face: int = 15000
    surface_nonface: int = 5000
    ball: int = 6000
    correspondences: int = 20000
    cameras: int = 128
    camera_radius: float = 2.6
    fov_degrees: float = 30.0
    resolution: int = 128
    test_identities: int = 2

    def validate(self) -> "PrepareConfig":
        if self.layout not in ("auto", "folder", "nphm"):
            raise ValueError(f"layout must be 'auto', 'folder' or 'nphm', got {self.layout!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"{f.name} must be an int >= 0, got {v!r}")
        if self.source == "synthetic" and (self.identities < 1 or self.expressions < 1):
            raise ValueError("synthetic source needs identities >= 1 and expressions >= 1, got "
                             f"{self.identities} and {self.expressions}")
        if self.source != "synthetic" and not os.path.isdir(self.source):
            raise FileNotFoundError(f"source must be 'synthetic' or an existing folder, got {self.source!r}")
        if self.source == "synthetic" and self.mesh_resolution < MIN_MESH_RESOLUTION:
            raise ValueError(f"mesh_resolution (--mesh-resolution) must be >= {MIN_MESH_RESOLUTION} (the procedural "
                             f"heads' marching-cubes grid), got {self.mesh_resolution}")
        if self.cameras:
            if not 16 <= self.resolution <= 1024:
                raise ValueError(f"resolution must be in [16, 1024], got {self.resolution}")
            fov = self.fov_degrees
            if isinstance(fov, bool) or not isinstance(fov, (int, float)) or not 0 < fov < 180:
                raise ValueError(f"fov_degrees (--fov-degrees) must be in (0, 180), got {fov!r}")
            r = self.camera_radius
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 1 < r < math.inf:
                raise ValueError(f"camera_radius (--camera-radius) must be a finite number > 1: the heads are "
                                 f"normalised into the unit sphere and the cameras must see them from outside it, "
                                 f"got {r!r}")
        if self.surface_face + self.surface_nonface < 1:
            raise ValueError("surface_face + surface_nonface must be >= 1")
        return self

    def fingerprint(self) -> dict:
        """What determines the files. A folder ``source`` is stored as its real path: the
        same relative path typed in another directory is another dataset."""
        fp = asdict(self)
        fp["source"] = _source_key(self.source)
        return fp


def _source_key(source: str) -> str:
    return source if source == "synthetic" else os.path.realpath(source)


def camera_rig(config: PrepareConfig, resolution: Optional[int] = None):
    """The Fibonacci rig the normal maps were rendered with (npht Cameras, OpenCV):
    drive npht's renderer with it and its maps align pixel for pixel with the stored ones."""
    from ..render.cameras import fibonacci_cameras

    return fibonacci_cameras(config.cameras, radius=config.camera_radius,
                             resolution=resolution or config.resolution, fov_degrees=config.fov_degrees)


# --------------------------------------------------------------------------- sources


class _SyntheticSource:
    def __init__(self, config: PrepareConfig):
        from .synthetic import EXPRESSION_PRESETS

        names = list(EXPRESSION_PRESETS)
        if config.expressions > len(names):
            raise ValueError(f"expressions must be <= {len(names)} (presets {names}), got {config.expressions}")
        self.config = config
        self.expression_names = names[:config.expressions]

    def identities(self) -> List[str]:
        return [f"synth{i:03d}" for i in range(self.config.identities)]

    def expressions(self, identity: str) -> List[str]:
        return list(self.expression_names)

    def load(self, identity: str) -> List[HeadMesh]:
        from .synthetic import synthetic_head

        head = synthetic_head(int(identity[len("synth"):]), seed=self.config.seed)
        return [head.mesh(name, resolution=self.config.mesh_resolution) for name in self.expression_names]


class _FolderSource:
    def __init__(self, loader):
        self.loader = loader

    def identities(self) -> List[str]:
        return list(self.loader.identities())

    def expressions(self, identity: str) -> List[str]:
        return list(self.loader.expressions(identity))

    def load(self, identity: str) -> List[HeadMesh]:
        meshes = [self.loader[(identity, e)] for e in self.expressions(identity)]
        for m in meshes:
            check_frame(m.vertices, f"{identity}/{m.expression}")
        return meshes


#: a mesh reaching farther from the origin is not in npht's frame (the normal-map cameras sit
#: at radius 2.6, the samples' ball is the unit ball); one nearer fills too little of it: a head
#: in metres reaches ~0.1-0.2, a normalised one ~0.6-1
FRAME_RADIUS = (0.25, 2.0)


def check_frame(vertices, name: str) -> float:
    """The largest vertex radius of a source mesh; ValueError (naming ``name``) outside
    :data:`FRAME_RADIUS` (another unit, e.g. millimetres or metres, or not centred), a
    warning beyond radius 1.05 (heads are normalised into the unit sphere)."""
    r = float(np.linalg.norm(np.asarray(vertices, dtype=np.float64), axis=1).max())
    lo, hi = FRAME_RADIUS
    frame = "npht's frame has heads centred and normalised into the unit sphere (y up, face towards +z)"
    if r < lo:
        raise ValueError(f"mesh {name} reaches radius {r:.4g} from the origin, too small for npht's frame: {frame}; "
                         f"rescale to the unit sphere: a head in metres (radius ~0.1-0.2) is divided by its "
                         f"radius before preparing it")
    if r > hi:
        raise ValueError(f"mesh {name} reaches radius {r:.4g} from the origin: {frame}; rescale and centre the "
                         f"meshes (e.g. millimetres: divide by the head's radius) before preparing them")
    if r > 1.05:
        warnings.warn(f"mesh {name} reaches radius {r:.3g}: parts beyond the unit sphere are outside the region "
                      "npht samples and renders", stacklevel=2)
    return r


def _looks_like_nphm(root: str) -> bool:
    for s in sorted(os.listdir(root)):
        sub = os.path.join(root, s)
        if s.isdigit() and os.path.isdir(sub):
            for e in sorted(os.listdir(sub)):
                if e.isdigit() and os.path.isfile(os.path.join(sub, e, "scan.ply")):
                    return True
    return False


def open_source(config: PrepareConfig):
    """The source object for ``config`` (identities(), expressions(id), load(id) with the
    neutral first)."""
    if config.source == "synthetic":
        return _SyntheticSource(config)
    from .loaders import MeshFolder, NPHMFolder

    layout = config.layout
    if layout == "auto":
        layout = "nphm" if _looks_like_nphm(config.source) else "folder"
    return _FolderSource(NPHMFolder(config.source) if layout == "nphm" else MeshFolder(config.source))


# --------------------------------------------------------------------------- work


def _paths(out: str, identity: str, expression: str) -> Dict[str, str]:
    rel = os.path.join(identity, f"{expression}.npz")
    return {kind: os.path.join(out, kind, rel)
            for kind in ("meshes", "samples", "correspondences", "normal_maps")}


def _record_seed(config: PrepareConfig, identity_index: int, expression_index: int, stage: int):
    return np.random.default_rng([config.seed, identity_index, expression_index, stage])


def _neutral_first(meshes: Sequence[HeadMesh]) -> List[HeadMesh]:
    neutral = [m for m in meshes if m.is_neutral]
    if len(neutral) != 1:
        names = [m.expression for m in meshes]
        raise ValueError(f"identity {meshes[0].identity if meshes else '?'} needs exactly one neutral "
                         f"expression, got {len(neutral)} among {names}")
    return neutral + [m for m in meshes if not m.is_neutral]


def _check_topology(identity: str, neutral: HeadMesh, posed: Sequence[HeadMesh]) -> None:
    """Correspondences map points between an identity's neutral and posed registrations by
    triangle and barycentrics: they must share their faces. Raw scans without registrations
    do not; refused naming the record and the flag, before any of its files is written (it
    failed in the sampling, after the meshes and samples of the identity were written)."""
    vn, fn = neutral.registration()
    for mesh in posed:
        vp, fp = mesh.registration()
        if len(vn) != len(vp) or not np.array_equal(fn, fp):
            raise ValueError(
                f"correspondences need the expressions of an identity to share one topology (registrations: "
                f"<identity>/registration/<expression>.ply|.obj in a mesh folder, registration.ply in NPHM), but "
                f"{identity}/{neutral.expression} and {identity}/{mesh.expression} have {len(vn)} and {len(vp)} "
                f"vertices, {len(fn)} and {len(fp)} faces{' (other faces)' if len(fn) == len(fp) else ''}: add "
                f"registrations, or prepare without correspondences (--correspondences 0, correspondences=0)")


def _check_correspondence_source(config: PrepareConfig, source, identities: List[str],
                                 expressions: Dict[str, List[str]]) -> None:
    """Before anything is written: the first identity with expressions of a folder source
    (its neutral and one posed mesh) has what correspondences need (the common raw-scan
    folder has no registrations); the others are checked as their worker loads them."""
    if not config.correspondences or not isinstance(source, _FolderSource):
        return
    for ident in identities:
        if len(expressions[ident]) > 1:
            neutral, posed = (source.loader[(ident, e)] for e in expressions[ident][:2])  # neutral first
            _check_topology(ident, neutral, [posed])
            return


def _with_record(e: Exception, where: str) -> Exception:
    """``e`` with ``where`` (the record) in its message, a ValueError where it was one: a
    worker's exception reaches the caller alone, without the identity it was working on."""
    msg = f"{where}: {e}"
    if isinstance(e, ValueError):
        return ValueError(msg)
    try:
        named = type(e)(msg)
        if str(named) == msg:
            return named
    except Exception:  # a type that takes other arguments
        pass
    return RuntimeError(msg)


def _prepare_identity(config: PrepareConfig, out: str, identity: str, identity_index: int,
                      expressions: List[str]) -> List[dict]:
    """All files of one identity; returns its manifest records. Runs in a worker; an error
    names the identity (and the expression and source file it was working on)."""
    where: dict = {}
    try:
        return _prepare_identity_files(config, out, identity, identity_index, expressions, where)
    except Exception as e:
        name = f"identity {identity}" if "expression" not in where else f"{identity}/{where['expression']}"
        if where.get("path"):
            name += f" (from {where['path']})"
        raise _with_record(e, f"prepare {name}") from e


def _prepare_identity_files(config: PrepareConfig, out: str, identity: str, identity_index: int,
                            expressions: List[str], where: dict) -> List[dict]:
    from .sampling import prepare_expression_samples, prepare_identity_samples

    paths = {e: _paths(out, identity, e) for e in expressions}
    if all(os.path.exists(paths[e]["meshes"]) for e in expressions):
        meshes = _neutral_first([load_mesh(paths[e]["meshes"]) for e in expressions])
    else:
        meshes = _neutral_first(open_source(config).load(identity))
        if config.correspondences:
            _check_topology(identity, meshes[0], meshes[1:])
        for m in meshes:
            if not os.path.exists(paths[m.expression]["meshes"]):
                save_mesh(paths[m.expression]["meshes"], m)
    neutral = meshes[0]
    order = {e: i for i, e in enumerate(expressions)}
    rig = camera_rig(config) if config.cameras else None
    renderer = None
    records = []
    try:
        for mesh in meshes:
            where.update(expression=mesh.expression, path=mesh.meta.get("path"))
            e_idx = order[mesh.expression]
            p = paths[mesh.expression]
            if not os.path.exists(p["samples"]):
                bulk = prepare_identity_samples(mesh, n_face=config.surface_face, n_nonface=config.surface_nonface,
                                                n_ball=config.ball, rng=_record_seed(config, identity_index, e_idx, 0))
                atomic_save_npz(p["samples"], **bulk)
            has_corr = not mesh.is_neutral and config.correspondences > 0
            if has_corr and not os.path.exists(p["correspondences"]):
                pairs = prepare_expression_samples(neutral, mesh, n=config.correspondences,
                                                   rng=_record_seed(config, identity_index, e_idx, 1))
                atomic_save_npz(p["correspondences"], **pairs)
            if rig is not None and not os.path.exists(p["normal_maps"]):
                if renderer is None:
                    from .normal_maps import NormalMapRenderer

                    renderer = NormalMapRenderer()
                maps = renderer.render(mesh, rig)
                normals = np.asarray(maps.normals, dtype=np.float32)
                code = np.round((normals + 1.0) * 0.5 * NORMAL_SCALE).astype(np.uint8)
                mask = np.asarray(maps.mask, dtype=bool)
                code[~mask] = 0
                write_rig_normal_maps(p["normal_maps"], code, mask)
            elif rig is not None and _whole_rig_file(p["normal_maps"]):
                # a folder of an earlier npht: its maps stored as the whole rig's two arrays,
                # which an item had to decompress whole: rewritten per camera, no re-render
                write_rig_normal_maps(p["normal_maps"], *read_rig_normal_maps(p["normal_maps"]))
            records.append(dict(identity=identity, expression=mesh.expression, is_neutral=mesh.is_neutral,
                                identity_index=identity_index, expression_index=e_idx,
                                vertices=int(len(mesh.vertices)), faces=int(len(mesh.faces)),
                                files=_record_files(out, p, has_corr, rig is not None)))
    finally:
        if renderer is not None:
            renderer.close()
    return records


def _record_files(out: str, paths: Dict[str, str], correspondences: bool, normal_maps: bool) -> dict:
    files = {k: os.path.relpath(v, out) for k, v in paths.items()}
    if not correspondences:
        files["correspondences"] = None
    if not normal_maps:
        files["normal_maps"] = None
    return files


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # the processes share the cores


class OtherSettingsError(ValueError):
    """:func:`prepare` into a folder prepared with other settings; ``diff``: field -> (old,
    new). Callers that own the folder (``npht demo``) say what to do in their terms."""

    def __init__(self, message: str, diff: dict):
        super().__init__(message)
        self.diff = diff


#: what a prepare run writes besides config.json: a folder holding any of it without a
#: config.json holds files whose settings are unknown
_PREPARED = ("manifest.json", "meshes", "samples", "correspondences", "normal_maps")


def _check_config(out: str, config: PrepareConfig, identities: List[str], overwrite: bool) -> Optional[dict]:
    """Refuse ``out`` when it holds files of other settings or of another identity set; only
    reads. Returns the ``config.json`` to write, None when the stored one is current.

    A folder source's identity list is recorded: the test split is the last identities
    (sorted) and the samples' seeds are the sorted positions, so identities added to or
    removed from the source would move a test identity into training and change the
    samples of the others (folders of older npht, without the list, get it recorded)."""
    path = os.path.join(out, "config.json")
    fp = config.fingerprint()
    new = fp if config.source == "synthetic" else dict(fp, source_identities=list(identities))
    fresh = "prepare into a new folder, or pass overwrite=True (--overwrite) to discard what it holds"
    if overwrite:
        return new
    if not os.path.exists(path):
        held = [name for name in _PREPARED if os.path.exists(os.path.join(out, name))]
        if held:
            raise ValueError(f"{out} holds prepared files ({', '.join(held)}) but no config.json: the settings "
                             f"they were made with are unknown; {fresh}")
        return new
    with open(path) as f:
        try:
            stored = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt {path}: {e}; the settings of the files in {out} are unknown: {fresh}") from e
    if not isinstance(stored, dict):
        raise ValueError(f"corrupt {path}: not a JSON object; the settings of the files in {out} are unknown: {fresh}")
    old = dict(stored)
    recorded = old.pop("source_identities", None)
    typed = old.get("source")
    note = ""
    if isinstance(typed, str) and typed != "synthetic" and not os.path.isabs(typed):
        # older npht stored the path as typed: the same folder only if it names it from here
        if os.path.realpath(typed) == fp["source"]:
            old["source"] = fp["source"]
        else:
            note = (f"; its source {typed!r} is a relative path typed in another directory (from here it names "
                    f"{os.path.realpath(typed)})")
    if old != fp:
        diff = {k: (old.get(k), v) for k, v in fp.items() if old.get(k) != v}
        raise OtherSettingsError(f"{out} was prepared with other settings {diff} (old, new){note}; "
                                 "use another folder or overwrite=True (--overwrite)", diff)
    if recorded is not None and list(recorded) != list(identities):
        added = sorted(set(identities) - set(recorded))
        removed = sorted(set(recorded) - set(identities))
        raise ValueError(f"{out} was prepared from {len(recorded)} identities of {fp['source']}, which now holds "
                         f"other identities (added: {added}, removed: {removed}): the test split (the last "
                         f"identities, sorted) and the samples' seeds (sorted positions) would move; {fresh}")
    return None if stored == new else new


def _clear(out: str) -> None:
    import shutil

    for kind in ("meshes", "samples", "correspondences", "normal_maps"):
        shutil.rmtree(os.path.join(out, kind), ignore_errors=True)
    for name in ("manifest.json", "config.json"):
        if os.path.exists(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))


def prepare(config: PrepareConfig, out: str, *, workers: int = 1, overwrite: bool = False,
            progress: bool = True, clamp_test_identities: bool = True) -> dict:
    """Prepare ``config`` into folder ``out`` and return the manifest (also written to
    ``out/manifest.json``). ``workers`` processes share the identities (each one renders
    and samples a whole identity). Re-running finishes an interrupted run.

    At least one identity is kept for training: with ``clamp_test_identities`` (default)
    ``test_identities`` beyond all but one identity holds out all but one, and the
    manifest's ``config`` records the real count; without it (``npht data prepare`` with
    ``--test-identities`` given) that is a ValueError.

    The settings are checked, and the source opened, listed and checked, before
    ``config.json`` is written: a run refused at the start (bad settings, wrong layout, bad
    counts) leaves nothing that would refuse the corrected command as "other settings"."""
    config.validate()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    source = open_source(config)
    identities = sorted(source.identities())
    if not identities:
        raise ValueError(f"source {config.source!r} holds no identities")
    n_test = min(config.test_identities, len(identities) - 1)
    if n_test < config.test_identities and not clamp_test_identities:
        raise ValueError(f"test_identities (--test-identities) must be at most {len(identities) - 1} (the source "
                         f"has {len(identities)} identities and at least one is kept for training), got "
                         f"{config.test_identities}")
    expressions = {i: source.expressions(i) for i in identities}
    stored = _check_config(out, config, identities, overwrite)
    _check_correspondence_source(config, source, identities, expressions)
    os.makedirs(out, exist_ok=True)
    if overwrite:
        _clear(out)
    if stored is not None:
        write_json_atomic(os.path.join(out, "config.json"), stored)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(identities), desc="prepare", unit="identity", disable=not progress)
    results: Dict[str, List[dict]] = {}
    try:
        if workers == 1:
            for k, ident in enumerate(identities):
                results[ident] = _prepare_identity(config, out, ident, k, expressions[ident])
                bar.update(1)
        else:
            # the first failure cancels the identities not started (the running ones finish:
            # their files are complete either way); shutting down with waiting ran them all
            # before the error surfaced
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                       initializer=_worker_init)
            try:
                futures = {pool.submit(_prepare_identity, config, out, ident, k, expressions[ident]): ident
                           for k, ident in enumerate(identities)}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
    finally:
        bar.close()
    split = {ident: ("test" if k >= len(identities) - n_test else "train") for k, ident in enumerate(identities)}
    records = [dict(r, split=split[r["identity"]]) for ident in identities for r in results[ident]]
    manifest = dict(version=1, config=dict(config.fingerprint(), test_identities=n_test), identities=identities,
                    records=records,
                    seconds=round(time.perf_counter() - t0, 2))
    write_json_atomic(os.path.join(out, "manifest.json"), manifest)
    return manifest


def load_manifest(root: str) -> dict:
    """The manifest of a prepared folder, with a clear error if the run did not finish."""
    path = os.path.join(root, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{root} is not a prepared npht dataset (no manifest.json): "
                                "run `npht data prepare` (again) to finish it")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt {path}: {e}; run `npht data prepare` again") from e


#: the stored code's value -> the unnormalised component, as float32 (a 256-entry table)
_DECODE = np.arange(256, dtype=np.float32) * np.float32(2.0 / NORMAL_SCALE) - np.float32(1.0)


def decode_normals(code: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit float32 normals from the stored uint8 code (0 where ``mask`` is False). (A table
    lookup and the norm written out: bit for bit ``code * 2 / 255 - 1`` divided by its
    ``np.linalg.norm``, checked on all 2^24 codes, ~2x faster: 35 -> 20 ms for 4 x 512^2.)"""
    n = _DECODE[np.asarray(code)]
    norm = np.sqrt(n[..., 0] * n[..., 0] + n[..., 1] * n[..., 1] + n[..., 2] * n[..., 2])
    np.maximum(norm, np.float32(1e-8), out=norm)
    return np.divide(n, norm[..., None], out=np.zeros_like(n), where=np.asarray(mask)[..., None])


def _camera_key(kind: str, camera: int) -> str:
    return f"{kind}_{camera:03d}"


def write_rig_normal_maps(path: str, code: np.ndarray, mask: np.ndarray) -> None:
    """Store a record's normal maps (``code [V, H, W, 3]`` uint8, ``mask [V, H, W]`` bool)
    as one compressed .npz with a member per camera and kind (``normals_000``,
    ``mask_000``, ...): an .npz member decompresses on its own, so a training item reads
    the few cameras it draws instead of the whole rig (128 maps, 4 drawn, uncached: 8.6 ms
    an item against 91 ms at 256^2, 30 against 335 ms at 512^2 on a 2-core Xeon)."""
    code, mask = np.asarray(code), np.asarray(mask)
    if code.dtype != np.uint8 or code.ndim != 4 or code.shape[-1] != 3:
        raise ValueError(f"code must be uint8 [V, H, W, 3], got {code.dtype} {code.shape}")
    if mask.dtype != np.bool_ or mask.shape != code.shape[:-1]:
        raise ValueError(f"mask must be bool {code.shape[:-1]}, got {mask.dtype} {mask.shape}")
    arrays = {}
    for v in range(len(code)):
        arrays[_camera_key("normals", v)] = code[v]
        arrays[_camera_key("mask", v)] = mask[v]
    atomic_save_npz(path, compressed=True, **arrays)


def _whole_rig_file(path: str) -> bool:
    """Whether the normal-map file ``path`` holds the rig as two whole arrays (npht before
    :func:`write_rig_normal_maps` stored a member per camera)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return "normals.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False  # read_rig_normal_maps names the file in its error when it is read


def read_rig_normal_maps(path: str, cameras: Optional[Sequence[int]] = None):
    """``(code [k, H, W, 3] uint8, mask [k, H, W] bool)`` of ``cameras`` (all when ``None``)
    from a file of :func:`write_rig_normal_maps`, decompressing those cameras only. Files of
    earlier npht versions (two whole arrays ``normals``/``mask``) are read whole. A
    missing file raises FileNotFoundError, a corrupt one or a camera it lacks ValueError,
    naming the file."""
    import zipfile

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if {"normals", "mask"} <= names:  # whole-rig layout
                count = len(z["mask"])
                cams = np.arange(count) if cameras is None else np.asarray(cameras, dtype=np.int64)
                _check_cameras(path, cams, count)
                return z["normals"][cams], z["mask"][cams]
            count = sum(1 for n in names if n.startswith("mask_"))
            cams = np.arange(count) if cameras is None else np.asarray(cameras, dtype=np.int64)
            _check_cameras(path, cams, count)
            if not all(_camera_key(k, int(c)) in names for c in cams for k in ("normals", "mask")):
                raise ValueError(f"{path} is not a npht normal-map file (members: {sorted(names)[:6]} ...)")
            code = [z[_camera_key("normals", int(c))] for c in cams]
            mask = [z[_camera_key("mask", int(c))] for c in cams]
            if not code and count:  # no camera asked for: empty arrays of the rig's size
                m0 = z[_camera_key("mask", 0)]
                return np.zeros((0, *m0.shape, 3), np.uint8), np.zeros((0, *m0.shape), bool)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"corrupt or truncated file {path}: {e}") from e
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"corrupt or truncated file {path}: {e}") from e
    if not code:  # a rig of no camera
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0, 0, 0), bool)
    return np.stack(code), np.stack(mask)


def _check_cameras(path: str, cams: np.ndarray, count: int) -> None:
    if cams.ndim != 1 or (len(cams) and (cams.min() < 0 or cams.max() >= count)):
        raise ValueError(f"cameras must be indices in [0, {count}) of {path}'s rig, got {cams.tolist()}")


def decode_normal_maps(path: str, cameras: Optional[Sequence[int]] = None):
    """``(normals [V, H, W, 3] float32 unit, mask [V, H, W] bool)`` from a stored file
    (``cameras``: those cameras only, in the order given)."""
    code, mask = read_rig_normal_maps(path, cameras)
    return decode_normals(code, mask), mask
