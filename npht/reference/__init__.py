"""Pure-PyTorch implementations of every npht op: the tests' oracle and the fallback."""

from .triplane import eg3d_sample_from_planes, triplane_sample

__all__ = ["eg3d_sample_from_planes", "triplane_sample"]
