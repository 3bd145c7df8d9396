"""Data: procedural heads (no download), mesh-folder and NPHM loaders, the thesis'
point sampling and expression correspondences, ground-truth normal maps (pyrender),
partial scans, ``npht data prepare`` and the per-step Datasets.

    npht data prepare --source synthetic --out data/synthetic --workers 2

Submodules import their heavy dependencies (trimesh, pyrender, libigl, scikit-image) only
when used: ``from npht.data.synthetic import synthetic_head``,
``from npht.data.normal_maps import render_normal_maps``, ...
"""

from .records import HeadMesh, load_mesh, save_mesh

__all__ = ["HeadMesh", "load_mesh", "save_mesh", "HeadDataset", "CorrespondenceDataset", "PrepareConfig"]


def __getattr__(name):
    if name in ("HeadDataset", "CorrespondenceDataset"):
        from . import dataset

        return getattr(dataset, name)
    if name == "PrepareConfig":  # (the function is npht.data.prepare.prepare: the module owns the name)
        from .prepare import PrepareConfig

        return PrepareConfig
    raise AttributeError(f"module 'npht.data' has no attribute {name!r}")
