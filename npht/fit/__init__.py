"""Model fitting and latent-space utilities (thesis Sec. 4.4, 6.1.2, 6.1.3, 6.4.1; NPHM
C.2-C.5): root finding for the forward deformation with implicit gradients, identity /
expression / normal-map fitting, code interpolation, Gaussian sampling and expression
transfer."""

from .fitting import FitResult, FitSchedule, fit_expression, fit_identity, fit_normal_maps
from .latent import (ExpressionTransfer, fit_gaussian, interpolate_codes, posed_vertices, sample_codes,
                     transfer_expression)
from .root_finding import deformation_jacobian, invert_deformation

__all__ = [
    "ExpressionTransfer",
    "FitResult",
    "FitSchedule",
    "deformation_jacobian",
    "fit_expression",
    "fit_gaussian",
    "fit_identity",
    "fit_normal_maps",
    "interpolate_codes",
    "invert_deformation",
    "posed_vertices",
    "sample_codes",
    "transfer_expression",
]
