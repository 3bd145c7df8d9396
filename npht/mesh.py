"""Mesh extraction (the import path of the project layout, shared/DESIGN.md): the same
functions as :mod:`npht.eval.mesh`, where they live beside the metrics and ``npht eval``.

    from npht.mesh import extract_mesh, model_sdf_fn
"""

from .eval.mesh import __all__, extract_mesh, grid_sdf, model_sdf_fn, sparse_grid_sdf  # noqa: F401
