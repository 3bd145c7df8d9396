"""Auto-decoder latent codes shared by the identity models."""

import torch
from torch import nn


def lookup_codes(codes: nn.Embedding, identity: torch.Tensor) -> torch.Tensor:
    """Identity indices ``[B]`` (integer) -> rows of ``codes`` ``[B, z_dim]``; a float tensor
    ``[B, z_dim]`` (e.g. a code being fitted) is returned as is. Clear errors otherwise."""
    z_dim, count = codes.embedding_dim, codes.num_embeddings
    if identity.is_floating_point():
        if identity.dim() != 2 or identity.shape[1] != z_dim:
            raise ValueError(f"z must have shape [B, {z_dim}], got {tuple(identity.shape)}")
        return identity
    if identity.dim() != 1:
        raise ValueError(f"identity_index must have shape [B], got {tuple(identity.shape)}")
    if identity.numel() and (int(identity.min()) < 0 or int(identity.max()) >= count):
        raise ValueError(f"identity_index out of range [0, {count})")
    return codes(identity)
