"""Models built on npht's ops: the thesis' tri-plane generator and decoder, the identity
model, the expression (deformation) model, the discriminator and the NPM baseline."""

from .decoder import TriplaneDecoder
from .deepsdf import SkipMLP
from .discriminator import CoordConv2d, Discriminator
from .expression import ExpressionModel
from .generator import TriplaneGenerator
from .identity import IdentityModel
from .npm import NPMBaseline

__all__ = [
    "CoordConv2d",
    "Discriminator",
    "ExpressionModel",
    "IdentityModel",
    "NPMBaseline",
    "SkipMLP",
    "TriplaneDecoder",
    "TriplaneGenerator",
]
