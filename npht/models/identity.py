"""The thesis' identity model F_id (Sec. 4.2): auto-decoded identity codes z_id, the
tri-plane generator TP_gen and the tri-plane decoder TP_dec.

``F_id(x, z_id) = TP_dec(sum_k sample(TP_gen(z_id)_k, proj_k(x)), x)``.

The "TP_3D" ablation (tri-planes with the 3D losses only) is this same model trained
without the 2D objectives: a training configuration, not a model change.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .decoder import TriplaneDecoder
from .generator import TriplaneGenerator
from .latent import lookup_codes

__all__ = ["IdentityModel"]


class IdentityModel(nn.Module):
    """``IdentityModel(generator, decoder, num_identities, z_dim=512)``.

    ``codes``: ``nn.Embedding(num_identities, z_dim, sparse=True)`` (train it with
    ``torch.optim.SparseAdam``, as the thesis does), initialised ~ N(0, init_std^2); the
    thesis initialises z_id from a standard normal (Sec. 4.2.1), hence ``init_std=1``.
    ``sample_kwargs`` go to :func:`npht.triplane_sample` (thesis: ``aggregate="sum"``).
    """

    def __init__(self, generator: TriplaneGenerator, decoder: TriplaneDecoder, num_identities: int,
                 z_dim: int = 512, init_std: float = 1.0, **sample_kwargs):
        super().__init__()
        if not isinstance(num_identities, int) or num_identities < 1:
            raise ValueError(f"num_identities must be a positive int, got {num_identities!r}")
        if getattr(generator, "z_dim", z_dim) != z_dim:
            raise ValueError(f"z_dim={z_dim} but the generator takes codes of size {generator.z_dim}")
        channels = getattr(generator, "channels", None)
        aggregate = sample_kwargs.get("aggregate", "sum")
        expected = channels * 3 if aggregate == "concat" and channels is not None else channels
        if expected is not None and expected != decoder.feature_dim:
            raise ValueError(
                f"the generator makes {channels}-channel planes ({aggregate} aggregation: {expected} features), "
                f"the decoder expects feature_dim={decoder.feature_dim}"
            )
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        self.generator, self.decoder = generator, decoder
        self.z_dim, self.num_identities = z_dim, num_identities
        self.codes = nn.Embedding(num_identities, z_dim, sparse=True)
        with torch.no_grad():
            self.codes.weight.normal_(0.0, init_std)
        self.sample_kwargs = dict(sample_kwargs)

    @classmethod
    def thesis(cls, num_identities: int, geometric_init: bool = True, **kwargs) -> "IdentityModel":
        """The thesis configuration: z_id 512, planes 3 x 32 x 256^2, decoder 5 x 256 with
        the geometric initialisation (as ``npht train``'s presets build it)."""
        dec = TriplaneDecoder(32)
        if geometric_init:
            dec.geometric_init_()
        return cls(TriplaneGenerator(512, 32, 256), dec, num_identities, 512, **kwargs)

    def latent(self, identity: torch.Tensor) -> torch.Tensor:
        """Identity indices ``[B]`` (integer) -> codes ``[B, z_dim]``; a float tensor
        ``[B, z_dim]`` (e.g. a code being fitted) is returned as is."""
        return lookup_codes(self.codes, identity)

    def planes(self, identity: torch.Tensor) -> torch.Tensor:
        """Indices ``[B]`` or codes ``[B, z_dim]`` -> tri-planes ``[B, 3, C, R, R]``."""
        return self.generator(self.latent(identity))

    def _check_points(self, points, B):
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != B:
            raise ValueError(f"points must have shape [B={B}, N, 3], got {tuple(points.shape)}")

    def forward(self, points: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """``points [B, N, 3]``, indices ``[B]`` or codes ``[B, z_dim]`` -> sdf ``[B, N]``."""
        planes = self.planes(identity)
        self._check_points(points, planes.shape[0])
        return self.decoder.sdf(planes, points, **self.sample_kwargs)

    def sdf_fn(self, identity: torch.Tensor, group: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
        """A callable ``points [B * group, n, 3] -> sdf [B * group, n]`` (row b * group + g:
        identity b, e.g. ``group`` cameras per identity), as :func:`npht.render.render` takes
        it. The planes are generated once per identity, here, and put in the sampling
        kernels' layout once (:meth:`TriplaneDecoder.grouped`), so the renderer's many
        evaluations reuse them; gradients reach the generator and codes."""
        planes = self.planes(identity)
        fn = self.decoder.grouped(planes, group, **self.sample_kwargs)[0]
        fn.planes = planes
        return fn

    def sdf_and_gradient(self, points: torch.Tensor, identity: torch.Tensor, **kwargs):
        """SDF ``[B, N]`` and its gradient w.r.t. the points ``[B, N, 3]``; with grad mode
        on, a loss on the gradient (eikonal, normals) reaches the decoder, the generator
        and the codes. ``kwargs``: :meth:`TriplaneDecoder.sdf_and_gradient`'s."""
        planes = self.planes(identity)
        self._check_points(points, planes.shape[0])
        return self.decoder.sdf_and_gradient(planes, points, **{**self.sample_kwargs, **kwargs})
