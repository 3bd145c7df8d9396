"""Evaluation (thesis Sec. 5.2.2-5.3): mesh extraction by marching cubes and the
reconstruction metrics Chamfer-L1, normal consistency and F-score over the whole head and
the face region (NPHM's definitions; units and conventions in :mod:`npht.eval.metrics`).

    from npht.eval import extract_mesh, model_sdf_fn, evaluate_meshes
    mesh = extract_mesh(model_sdf_fn(model, 0), resolution=256)
    scores = evaluate_meshes(mesh, gt_head_mesh)   # {"head": {...}, "face": {...}}
"""

from .mesh import extract_mesh, grid_sdf, model_sdf_fn, sparse_grid_sdf
from .metrics import (DEFAULT_THRESHOLD, FACE_RADIUS, MM, chamfer_l1, compare_points, evaluate_meshes, f_score,
                      nearest_neighbors, normal_consistency, sample_points)

__all__ = [
    "extract_mesh", "grid_sdf", "sparse_grid_sdf", "model_sdf_fn", "MM", "DEFAULT_THRESHOLD", "FACE_RADIUS", "sample_points",
    "nearest_neighbors", "compare_points", "chamfer_l1", "normal_consistency", "f_score", "evaluate_meshes",
]
