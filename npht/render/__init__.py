"""Cameras, rays, the Laplace density, VolSDF's error-bound sampler and the normal-map
renderer."""

from .cameras import (
    OPENCV_TO_OPENGL,
    Cameras,
    fibonacci_cameras,
    fibonacci_sphere,
    generate_rays,
    intrinsics_from_focal,
    intrinsics_from_fov,
    look_at,
    near_frontal_cameras,
    ray_box_bounds,
    ray_sphere_bounds,
    world_normals_to_camera,
)
from .density import LaplaceDensity, laplace_density
from .renderer import RenderOutput, render_reference, sdf_and_gradient_autograd
from .sampler import ErrorBoundSampler, evaluate_sdf
from .volsdf import Render, VolSDFRenderer, render

__all__ = [
    "OPENCV_TO_OPENGL",
    "Cameras",
    "ErrorBoundSampler",
    "LaplaceDensity",
    "Render",
    "RenderOutput",
    "VolSDFRenderer",
    "evaluate_sdf",
    "fibonacci_cameras",
    "fibonacci_sphere",
    "generate_rays",
    "intrinsics_from_focal",
    "intrinsics_from_fov",
    "laplace_density",
    "look_at",
    "near_frontal_cameras",
    "ray_box_bounds",
    "ray_sphere_bounds",
    "render",
    "render_reference",
    "sdf_and_gradient_autograd",
    "world_normals_to_camera",
]
