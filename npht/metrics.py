"""Reconstruction metrics (the import path of the project layout, shared/DESIGN.md): the
same functions as :mod:`npht.eval.metrics` (definitions, units and conventions there).

    from npht.metrics import evaluate_meshes, chamfer_l1
"""

from .eval.metrics import (  # noqa: F401
    DEFAULT_THRESHOLD, FACE_RADIUS, MM, __all__, chamfer_l1, compare_points, evaluate_meshes, f_score,
    nearest_neighbors, normal_consistency, sample_points)
