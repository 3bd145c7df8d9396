"""Models built on npht's ops (tri-plane decoder so far)."""

from .decoder import TriplaneDecoder

__all__ = ["TriplaneDecoder"]
