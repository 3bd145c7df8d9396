"""Data: procedural heads (no download), mesh-folder and NPHM loaders, the thesis'
point sampling and expression correspondences, ground-truth normal maps (pyrender),
partial scans, ``npht data prepare`` and the per-step Dataset.

Submodules import their heavy dependencies (trimesh, pyrender, libigl, scikit-image) only
when used.
"""

from .records import HeadMesh

__all__ = ["HeadMesh"]
