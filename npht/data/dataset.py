"""Per-step samples from a prepared folder (``npht data prepare``) as torch Datasets.

``HeadDataset`` yields, per record, the thesis' per-step subsample of the bulk point
samples (750/250 surface, 750/250 per near set, 300 ball by default) and ``views``
ground-truth normal maps of the camera rig; ``CorrespondenceDataset`` yields neutral<->
posed pairs of the posed records. Randomness is a pure function of ``(seed, epoch,
index)``: results do not depend on DataLoader workers or on the order items are read;
call ``set_epoch`` each epoch (as with DistributedSampler).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np
import torch

from .prepare import PrepareConfig, _whole_rig_file, camera_rig, decode_normals, load_manifest, read_rig_normal_maps
from .records import load_mesh, load_npz

__all__ = ["HeadDataset", "CorrespondenceDataset"]


#: the loaded-file cache's limit per dataset (each DataLoader worker holds its own): files are
#: kept whole, decompressed (a record's samples; normal maps of earlier npht versions, 128
#: cameras at 256^2 in two whole arrays, ~33 MB), so a count alone (``cache_size``) let 64 of
#: them take gigabytes. Normal maps are read per camera and not cached.
CACHE_BYTES = 512 * 2 ** 20


class _PreparedBase(torch.utils.data.Dataset):
    def __init__(self, root: str, split: str, expressions: str, seed: int, cache_size: int,
                 cache_bytes: int = CACHE_BYTES):
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if expressions not in ("neutral", "all", "posed"):
            raise ValueError(f"expressions must be 'neutral', 'all' or 'posed', got {expressions!r}")
        self.root = os.fspath(root)
        self.manifest = load_manifest(self.root)
        self.config = PrepareConfig(**self.manifest["config"])
        recs = self.manifest["records"]
        if split != "all":
            recs = [r for r in recs if r["split"] == split]
        if expressions == "neutral":
            recs = [r for r in recs if r["is_neutral"]]
        elif expressions == "posed":
            recs = [r for r in recs if not r["is_neutral"]]
        self.records = recs
        #: identity name -> dense index within this split (the latent-code index)
        self.identity_index = {n: i for i, n in enumerate(sorted({r["identity"] for r in recs}))}
        self.seed = int(seed)
        self.epoch = 0
        self._cache: "OrderedDict[str, dict]" = OrderedDict()
        self._cache_size = int(cache_size)
        self._cache_bytes, self._cached_bytes = int(cache_bytes), 0
        self._whole_rig: Dict[str, bool] = {}  # normal-map file -> stored as two whole arrays

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _load(self, rel: str) -> dict:
        if rel in self._cache:
            self._cache.move_to_end(rel)
            return self._cache[rel]
        value = load_npz(os.path.join(self.root, rel))
        size = sum(int(getattr(a, "nbytes", 0)) for a in value.values())
        if self._cache_size > 0 and size <= self._cache_bytes:
            self._cache[rel] = value
            self._cached_bytes += size
            while len(self._cache) > self._cache_size or self._cached_bytes > self._cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= sum(int(getattr(a, "nbytes", 0)) for a in old.values())
        return value

    def _header(self, r: dict, index: int) -> dict:
        return dict(index=index, identity=r["identity"], expression=r["expression"],
                    identity_index=self.identity_index[r["identity"]], expression_index=r["expression_index"])

    def mesh(self, index: int):
        """The record's :class:`~npht.data.HeadMesh`."""
        return load_mesh(os.path.join(self.root, self.records[index]["files"]["meshes"]))


class HeadDataset(_PreparedBase):
    """Identity-training items of a prepared folder.

    ``split``: ``"train"``, ``"test"`` or ``"all"``; ``expressions``: ``"neutral"`` (identity
    training, default), ``"all"`` or ``"posed"``; ``counts``: per-step sizes (default
    :data:`npht.data.sampling.DEFAULT_STEP_COUNTS`); ``views``: normal maps per item (0: none).
    Item: ``index`` (the item's own, e.g. to key per-item randomness), ``identity_index``
    (dense within the split: the latent-code index), the sample
    tensors (``surface_face_points``, ``..._normals``, ``near1_face_points``, ``..._sdf``, ...,
    ``ball_points``/``ball_sdf``), and with views ``normal_maps [views, H, W, 3]`` (unit,
    OpenGL camera frame, 0 in the background), ``masks [views, H, W]`` and
    ``camera_index [views]`` into :meth:`cameras`. Loaded sample files are kept (least
    recently used first out) up to ``cache_size`` files and ``cache_bytes`` bytes
    (:data:`CACHE_BYTES`); normal maps are read per drawn camera, uncached.
    """

    def __init__(self, root: str, split: str = "train", *, expressions: str = "neutral",
                 counts: Optional[Dict[str, int]] = None, views: int = 1, seed: int = 0,
                 cache_size: int = 64, cache_bytes: int = CACHE_BYTES):
        super().__init__(root, split, expressions, seed, cache_size, cache_bytes)
        from .sampling import DEFAULT_STEP_COUNTS

        self.counts = dict(DEFAULT_STEP_COUNTS if counts is None else counts)
        if views < 0 or (views and not self.config.cameras):
            raise ValueError(f"views must be in [0, {self.config.cameras}] (cameras of {self.root}), got {views}")
        if views > self.config.cameras:
            raise ValueError(f"views must be <= {self.config.cameras}, got {views}")
        self.views = int(views)

    def cameras(self, resolution: Optional[int] = None):
        """The rig of the stored normal maps (all cameras; index with ``camera_index``)."""
        return camera_rig(self.config, resolution)

    def __getitem__(self, index: int) -> dict:
        from .sampling import subsample

        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        index %= len(self)
        r = self.records[index]
        rng = self._rng(index)
        item = self._header(r, index)
        item.update(subsample(self._load(r["files"]["samples"]), self.counts, rng))
        if self.views:
            rel = r["files"]["normal_maps"]
            cam = np.sort(rng.choice(self.config.cameras, size=self.views, replace=False))
            code, mask = self._normal_maps(rel, cam)
            item["normal_maps"] = torch.from_numpy(decode_normals(code, mask))
            item["masks"] = torch.from_numpy(mask)
            item["camera_index"] = torch.from_numpy(cam.astype(np.int64))
        return item

    def _normal_maps(self, rel: str, cam: np.ndarray):
        """The codes and masks of cameras ``cam``: read per camera from the file (not
        cached: ~1 ms a camera at 256^2); files of earlier npht versions, which hold the rig
        as two whole arrays, go through the file cache (``npht data prepare`` run again on
        the folder rewrites them per camera)."""
        whole = self._whole_rig.get(rel)
        if whole is None:
            path = os.path.join(self.root, rel)
            whole = _whole_rig_file(path)
            if os.path.exists(path):
                self._whole_rig[rel] = whole
        if whole:
            stored = self._load(rel)
            return stored["normals"][cam], stored["mask"][cam]
        return read_rig_normal_maps(os.path.join(self.root, rel), cam)


class CorrespondenceDataset(_PreparedBase):
    """Expression-training items: ``pairs`` neutral<->posed correspondences per posed
    record (thesis: 1000 per head per expression per step): ``neutral [pairs, 3]``,
    ``posed [pairs, 3]`` and the identity/expression indices."""

    def __init__(self, root: str, split: str = "train", *, pairs: int = 1000, seed: int = 0,
                 cache_size: int = 64, cache_bytes: int = CACHE_BYTES):
        super().__init__(root, split, "posed", seed, cache_size, cache_bytes)
        if pairs < 1:
            raise ValueError(f"pairs must be >= 1, got {pairs}")
        missing = [(r["identity"], r["expression"]) for r in self.records if not r["files"].get("correspondences")]
        if missing:
            raise ValueError(f"{root!r}: posed records without correspondences (prepared with "
                             f"correspondences=0?): {missing[:5]}")
        self.pairs = int(pairs)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        index %= len(self)
        r = self.records[index]
        bulk = self._load(r["files"]["correspondences"])
        n = len(bulk["neutral"])
        pick = self._rng(index).choice(n, size=self.pairs, replace=self.pairs > n)
        item = self._header(r, index)
        item["neutral"] = torch.from_numpy(bulk["neutral"][pick].astype(np.float32))
        item["posed"] = torch.from_numpy(bulk["posed"][pick].astype(np.float32))
        return item
