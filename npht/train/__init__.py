"""Training objectives and schedules (thesis Sec. 4.2.3-4.2.4, 4.3.3)."""

from .losses import (
    EXPRESSION_TERMS, IDENTITY_TERMS, LossWeights, MultiStageSchedule, Stage,
    correspondence_loss, deformation_penalty, discriminator_loss, edr_perturbation,
    eikonal_loss, explicit_density_loss, expression_losses, generator_loss, identity_losses,
    latent_loss, multi_stage_schedule, non_surface_loss, normal_map_loss, r1_penalty,
    surface_normal_loss, surface_normals_from_batch, surface_sdf_loss, total_variation_loss,
    triplane_l2_loss,
)

from .config import PRESETS, TrainConfig
from .identity import IdentityTrainer, add_train_parser, build_identity_model, train_identity_main
from .expression import EXPRESSION_PRESETS, ExpressionConfig, ExpressionTrainer
from .loading import load_expression, load_identity

__all__ = [
    "PRESETS", "TrainConfig", "IdentityTrainer", "add_train_parser", "train_identity_main",
    "build_identity_model", "load_identity", "load_expression", "EXPRESSION_PRESETS", "ExpressionConfig", "ExpressionTrainer",
    "EXPRESSION_TERMS", "IDENTITY_TERMS", "LossWeights", "MultiStageSchedule", "Stage",
    "correspondence_loss", "deformation_penalty", "discriminator_loss", "edr_perturbation",
    "eikonal_loss", "explicit_density_loss", "expression_losses", "generator_loss",
    "identity_losses", "latent_loss", "multi_stage_schedule", "non_surface_loss",
    "normal_map_loss", "r1_penalty", "surface_normal_loss", "surface_normals_from_batch",
    "surface_sdf_loss", "total_variation_loss", "triplane_l2_loss",
]
