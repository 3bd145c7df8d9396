"""The thesis' tri-plane decoder TP_dec (Sec. 4.2.2, Fig. 4.2): a 5-layer MLP, 256 wide,
softplus with beta = 100, whose input is the aggregated tri-plane feature concatenated
with the point, and whose output is the SDF."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from npht.ops import softplus_mlp_with_grad, triplane_sample
from npht.ops._backend import under_transform

from .deepsdf import center_zero_level_


class TriplaneDecoder(nn.Module):
    """``TP_dec(x, F) -> sdf``: ``num_layers`` linear layers (``num_layers - 1`` hidden
    layers of width ``hidden``, softplus(beta)) mapping ``[F, x]`` to one value."""

    def __init__(self, feature_dim: int = 32, hidden: int = 256, num_layers: int = 5,
                 beta: float = 100.0, point_dim: int = 3):
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2, got {num_layers}")
        dims = [feature_dim + point_dim] + [hidden] * (num_layers - 1) + [1]
        layers = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.Softplus(beta=beta))
        self.net = nn.Sequential(*layers)
        self.feature_dim, self.point_dim = feature_dim, point_dim
        self.beta = float(beta)

    def forward(self, features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """features ``[..., feature_dim]``, points ``[..., 3]`` -> sdf ``[...]``."""
        if features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"features must have {self.feature_dim} channels in the last dim, got {tuple(features.shape)}"
            )
        if points.shape[-1] != self.point_dim or points.shape[:-1] != features.shape[:-1]:
            raise ValueError(f"points must have shape {tuple(features.shape[:-1]) + (self.point_dim,)} (the features' "
                             f"leading dims, then {self.point_dim}), got {tuple(points.shape)}")
        # the network's dtype (e.g. float32 for features sampled from float16/bfloat16 planes)
        dtype = self.net[0].weight.dtype
        return self.net(torch.cat([features.to(dtype), points.to(dtype)], dim=-1)).squeeze(-1)

    def sdf(self, planes: torch.Tensor, points: torch.Tensor, **sample_kwargs) -> torch.Tensor:
        """SDF of ``points [B, N, 3]`` for tri-planes ``planes`` (sampled with
        :func:`npht.triplane_sample`, thesis default: sum aggregation)."""
        return self(triplane_sample(planes, points, **sample_kwargs), points)

    def grouped(self, planes: torch.Tensor, group: int, **sample_kwargs):
        """``(sdf_fn, sdf_and_gradient_fn)`` of the shapes of ``planes [B, 3, C, H, W]`` for
        points ``[B * group, n, 3]`` whose row ``b * group + g`` belongs to shape ``b`` (e.g.
        the ``group`` cameras rendering each shape, as :func:`npht.render.render` calls its
        SDF). A shape's rows are sampled together from its planes, put in the kernels'
        channels-last layout once, here: not from ``planes.repeat_interleave(group, 0)``
        (``group`` copies of the planes and of their gradient) nor with a layout copy per
        call (the renderer calls the SDF once per sampler round and chunk). The values are
        those of the repeated planes. ``sdf_and_gradient_fn(points, **options)`` takes
        :meth:`sdf_and_gradient`'s options (``fused``, ``checkpoint``, ...)."""
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be an int >= 1, got {group!r}")
        if sample_kwargs.pop("channels_last", False):
            planes_cl = planes
        else:
            if planes.dim() != 5:
                raise ValueError(f"planes must be [B, 3, C, H, W], got shape {tuple(planes.shape)}")
            planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()
        kw = dict(sample_kwargs, channels_last=True)
        B = planes_cl.shape[0]

        def rows(points: torch.Tensor) -> torch.Tensor:
            if points.dim() != 3 or points.shape[0] != B * group:
                raise ValueError(f"points must be [B * group = {B * group}, n, 3] (row b * group + g: shape b), "
                                 f"got {tuple(points.shape)}")
            return points.reshape(B, group * points.shape[1], points.shape[2])

        def sdf_fn(points: torch.Tensor) -> torch.Tensor:
            return self.sdf(planes_cl, rows(points), **kw).reshape(points.shape[:2])

        def sdf_and_gradient_fn(points: torch.Tensor, **options):
            sdf, grad = self.sdf_and_gradient(planes_cl, rows(points), **options, **kw)
            return sdf.reshape(points.shape[:2]), grad.reshape(points.shape)

        return sdf_fn, sdf_and_gradient_fn

    @torch.no_grad()
    def geometric_init_(self, radius: float = 0.5, feature_std: float = 1e-2,
                        generator: Optional[torch.Generator] = None) -> "TriplaneDecoder":
        """Geometric initialisation (Atzmon & Lipman, SAL; as in IGR/VolSDF): the SDF starts
        close to a sphere of ``radius``. Hidden layers ~ N(0, 2/fan_out), the last layer
        ~ N(sqrt(pi/fan_in), 1e-4) with bias ``-radius``; the first layer's weights of the
        tri-plane features ~ N(0, feature_std) (small: the planes start as a perturbation).
        The output bias is then shifted so that the SDF is 0 on average on that sphere (with
        zero features; :func:`npht.models.deepsdf.center_zero_level_`: geometric init is
        exact for ReLU, softplus adds up to log(2)/beta per unit). Returns self."""
        linears = [m for m in self.net if isinstance(m, nn.Linear)]

        def normal(t, std, mean=0.0):
            t.copy_(torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) * std + mean)

        for i, lin in enumerate(linears):
            out_dim, in_dim = lin.weight.shape
            if i == len(linears) - 1:
                normal(lin.weight, 1e-4, math.sqrt(math.pi) / math.sqrt(in_dim))
                lin.bias.fill_(-radius)
                continue
            normal(lin.weight, math.sqrt(2.0) / math.sqrt(out_dim))
            lin.bias.zero_()
            if i == 0:
                normal(lin.weight[:, : self.feature_dim], feature_std)
        center_zero_level_(self.net, linears[-1].bias, linears[0].in_features, radius)
        return self

    def layers(self):
        """``(weights, biases)`` of the linear layers, in order (nn.Linear layout)."""
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        return [m.weight for m in linears], [m.bias for m in linears]

    def sdf_and_gradient(self, planes: torch.Tensor, points: torch.Tensor, *, fused: bool = True,
                         checkpoint: bool = False, mlp_backend: str = "auto",
                         mlp_chunk_size: Optional[int] = None, mlp_matmul: str = "torch",
                         mlp_keep_gradient_pass: bool = False, mlp_h_dtype: Optional[torch.dtype] = None,
                         mlp_d_dtype: Optional[torch.dtype] = None, **sample_kwargs):
        """SDF ``[B, N]`` and its gradient w.r.t. the points ``[B, N, 3]`` (normals before
        normalisation), through the tri-plane features and the direct point input.

        With grad mode on, both are differentiable w.r.t. the planes, the decoder's
        parameters and the points: an eikonal or normal loss on the gradient
        backpropagates into all of them (double backward). ``fused=True`` takes the MLP's
        value and gradient from :func:`npht.softplus_mlp_with_grad` (hand-written
        backward, about a third of autograd's memory; ``checkpoint=True`` keeps nothing
        and recomputes in chunks; ``mlp_backend``: its ``backend``, the kernels of its
        backward's elementwise steps; ``mlp_chunk_size``: its ``chunk_size``, rows per
        chunk of its backward, which bounds the backward's working memory, default
        ``npht.ops.mlp.DEFAULT_CHUNK``; ``mlp_matmul``: its ``matmul``, torch's products
        or Triton's with the elementwise steps fused in; ``mlp_keep_gradient_pass``: its
        ``keep_gradient_pass``, more memory for no recompute; ``mlp_h_dtype``: its
        ``h_dtype``, ``torch.float16`` stores the pre-activations at half the memory and
        traffic with Triton products in float32; ``mlp_d_dtype``: its ``d_dtype``, likewise
        for the gradient pass' vectors); ``fused=False`` is plain autograd (the reference).
        With grad mode off, the results are plain tensors and no graph is kept; under
        ``torch.inference_mode()`` too (computed outside it on copies of the inputs: the
        gradient needs autograd, which inference mode switches off).
        """
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False), torch.no_grad():
                return self.sdf_and_gradient(
                    planes.clone(), points.clone(), fused=fused, checkpoint=checkpoint, mlp_backend=mlp_backend,
                    mlp_chunk_size=mlp_chunk_size, mlp_matmul=mlp_matmul, mlp_keep_gradient_pass=mlp_keep_gradient_pass,
                    mlp_h_dtype=mlp_h_dtype, mlp_d_dtype=mlp_d_dtype, **sample_kwargs)
        if not isinstance(points, torch.Tensor) or not points.is_floating_point():
            raise TypeError("points must be a floating-point tensor [B, N, 3] (float32; float64 with float64 "
                            f"planes), got {points.dtype if isinstance(points, torch.Tensor) else type(points).__name__}")
        mlp_options = dict(backend=mlp_backend, matmul=mlp_matmul, h_dtype=mlp_h_dtype, d_dtype=mlp_d_dtype,
                           **({} if mlp_chunk_size is None else {"chunk_size": mlp_chunk_size}))
        if under_transform(planes, points):
            return self._sdf_and_gradient_func(planes, points, fused, dict(mlp_options, checkpoint=checkpoint),
                                               sample_kwargs)
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            pts = points if points.requires_grad else points.detach().requires_grad_()
            feats = self._features(planes, pts, sample_kwargs)
            if fused:
                weights, biases = self.layers()
                x = torch.cat([feats.to(weights[0].dtype), pts.to(weights[0].dtype)], dim=-1)
                if not create:
                    x = x.detach()
                sdf, grad_x = softplus_mlp_with_grad(x, weights, biases, beta=self.beta,
                                                     checkpoint=checkpoint or not create,
                                                     keep_gradient_pass=mlp_keep_gradient_pass and create
                                                     and not checkpoint, **mlp_options)
                grad_feat, grad_pts = grad_x.split([self.feature_dim, grad_x.shape[-1] - self.feature_dim], -1)
                # chain the feature gradient through the tri-plane op's backward (which
                # skips the planes' gradient: the engine tells it this call does not use it)
                (grad_via_planes,) = torch.autograd.grad(feats, pts, grad_feat, create_graph=create)
                grad = grad_pts + grad_via_planes
            else:
                sdf = self(feats, pts)
                (grad,) = torch.autograd.grad(sdf.sum(), pts, create_graph=create)
        if not create:
            sdf, grad = sdf.detach(), grad.detach()
        return sdf, grad

    def _features(self, planes, points, sample_kwargs):
        feats = triplane_sample(planes, points, **sample_kwargs)
        if feats.shape[-1] != self.feature_dim:
            raise ValueError(f"the tri-plane features have {feats.shape[-1]} channels, the decoder expects "
                             f"{self.feature_dim}")
        return feats

    def _sdf_and_gradient_func(self, planes, points, fused, mlp_options, sample_kwargs):
        """:meth:`sdf_and_gradient` under torch.func transforms (vmap, grad, jacrev, ...,
        e.g. per-sample gradients through ``functional_call``) and forward-mode AD, where
        ``requires_grad_`` and ``torch.autograd.grad`` are refused: the gradient w.r.t. the
        points is a ``torch.func.vjp``, differentiable w.r.t. everything the enclosing
        transforms differentiate (second order in reverse mode)."""
        from torch.func import vjp

        if fused:
            weights, biases = self.layers()
            feats, feats_vjp = vjp(lambda p: self._features(planes, p, sample_kwargs), points)
            x = torch.cat([feats.to(weights[0].dtype), points.to(weights[0].dtype)], dim=-1)
            sdf, grad_x = softplus_mlp_with_grad(x, weights, biases, beta=self.beta, **mlp_options)
            grad_feat, grad_pts = grad_x.split([self.feature_dim, grad_x.shape[-1] - self.feature_dim], -1)
            (grad_via_planes,) = feats_vjp(grad_feat.to(feats.dtype))
            return sdf, grad_pts + grad_via_planes
        sdf, sdf_vjp = vjp(lambda p: self(self._features(planes, p, sample_kwargs), p), points)
        (grad,) = sdf_vjp(torch.ones_like(sdf))
        return sdf, grad
