"""VolSDF's error-bound sampler (Algorithm 1), with VolSDF/MonoSDF semantics and
parameters. The caller's SDF is evaluated between iterations without grad (in chunks);
the per-ray math (bisection for beta, upsampling, merging) runs as the fused ops of
:mod:`npht.ops.sampler` on the sampler's ``backend``; ``backend="reference"`` is
:mod:`npht.reference.sampler`, the original pure-PyTorch sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from npht.ops import _backend as npht_backend
from npht.ops import sampler as ops
from npht.reference import sampler as ref

__all__ = ["ErrorBoundSampler", "evaluate_sdf", "evaluate_sdf_rays", "pad_by_batch"]


def evaluate_sdf(sdf_fn: Callable, points: torch.Tensor, chunk: int = 1 << 18) -> torch.Tensor:
    """``sdf_fn`` on ``points [B, ..., 3]`` without grad, in chunks of ``chunk`` points per
    batch element -> ``[B, ...]``. ``sdf_fn`` maps ``[B, n, 3]`` to ``[B, n]`` (batch
    element b is shape b: its own tri-planes/latent)."""
    B = points.shape[0]
    flat = points.reshape(B, -1, 3)
    with torch.no_grad():
        out = [sdf_fn(flat[:, i:i + chunk]).reshape(B, -1) for i in range(0, flat.shape[1], chunk)]
    res = torch.cat(out, 1) if out else flat.new_zeros(B, 0)
    return res.reshape(points.shape[:-1])


def pad_by_batch(flat: torch.Tensor, batch: torch.Tensor, B: int):
    """Rows ``flat [M, ...]`` of batch elements ``batch [M]`` (sorted ascending) ->
    ``[B, Nmax, ...]`` zero-padded, and the column ``j [M]`` of each row in it."""
    counts = torch.bincount(batch, minlength=B)
    n_max = int(counts.max()) if flat.shape[0] else 0
    starts = torch.cumsum(counts, 0) - counts
    j = torch.arange(flat.shape[0], device=flat.device) - starts[batch]
    out = flat.new_zeros((B, max(n_max, 1)) + flat.shape[1:])
    out[batch, j] = flat
    return out, j


def evaluate_sdf_rays(sdf_fn: Callable, points: torch.Tensor, rays: torch.Tensor, rays_per_batch: int, B: int,
                      chunk: int = 1 << 18) -> torch.Tensor:
    """``sdf_fn`` without grad at ``points [n, k, 3]`` of a subset of rays: ``rays [n]``
    (ascending) index the B * rays_per_batch rays, ray r looking at shape
    r // rays_per_batch -> ``[n, k]``."""
    k = points.shape[1]
    batch = torch.div(rays, rays_per_batch, rounding_mode="floor").repeat_interleave(k)
    padded, j = pad_by_batch(points.reshape(-1, 3), batch, B)
    return evaluate_sdf(sdf_fn, padded, chunk)[batch, j].reshape(-1, k)


@dataclass
class ErrorBoundSampler:
    """``N_samples`` final samples per ray drawn from the rendering weights at a beta whose
    opacity error is <= ``eps`` (found by ``beta_iters`` bisection steps), after up to
    ``max_total_iters`` rounds that add ``N_samples_eval`` samples where the error bound is
    large; plus ``N_samples_extra`` of the evaluation samples and the ray's near/far.
    ``backend`` runs the per-ray math (:mod:`npht.ops.sampler`): ``"auto"``, ``"cuda"``,
    ``"triton"``, ``"cpu"`` or ``"reference"``.

    ``skip_converged`` (off by default, VolSDF's semantics): VolSDF keeps adding samples to
    every ray until all rays meet eps; with it, a ray whose beta already meets eps gets no
    new samples (its new slots repeat its far sample, zero-length intervals that change
    nothing) and the SDF is evaluated only on the rays still converging. ``last_stats``
    holds the rounds run and the SDF evaluations of the last call.

    ``reduce_unconverged`` (None by default: this call's rays alone decide): the rounds
    stop once every ray meets eps, a decision over the whole batch, so processes that each
    sample a part of a batch (data parallel) stop at other rounds than one process sampling
    all of it. Given, it is called once per round but the last (``max_total_iters`` ends
    that one everywhere) with this call's answer, a 0-dim int32 tensor on the rays' device
    (1: some ray is still above eps), and returns the answer for the whole batch (anything
    ``bool()`` reads); under :mod:`torch.distributed`, an ``all_reduce`` of it with
    ``ReduceOp.MAX``. Every process then runs the same rounds, so each must call the sampler
    as often as the others: :class:`~npht.render.VolSDFRenderer` does, for the same
    resolution, options and grad mode (its calls, a coarse pass and one per ray chunk, do not
    depend on the rays; with no ray in bounds it samples a zero-length dummy ray)."""

    N_samples: int = 64
    N_samples_eval: int = 128
    N_samples_extra: int = 32
    eps: float = 0.1
    beta_iters: int = 10
    max_total_iters: int = 5
    add_tiny: float = 1e-6
    backend: str = "auto"
    skip_converged: bool = False
    reduce_unconverged: Optional[Callable[[torch.Tensor], object]] = None

    def __post_init__(self):
        self.last_stats = {}
        for name in ("N_samples", "N_samples_eval", "max_total_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.N_samples_extra < 0 or self.beta_iters < 0:
            raise ValueError("N_samples_extra and beta_iters must be >= 0")
        if self.N_samples_extra > self.N_samples_eval:
            raise ValueError(
                f"N_samples_extra ({self.N_samples_extra}) cannot exceed N_samples_eval ({self.N_samples_eval})"
            )
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.reduce_unconverged is not None and not callable(self.reduce_unconverged):
            raise TypeError("reduce_unconverged must be callable or None, got "
                            f"{type(self.reduce_unconverged).__name__}")
        if self.backend not in npht_backend.BACKENDS:
            raise ValueError(f"backend must be one of {npht_backend.BACKENDS}, got {self.backend!r}")

    @classmethod
    def volsdf(cls) -> "ErrorBoundSampler":
        """VolSDF/MonoSDF defaults: 64 / 128 / 32, eps 0.1, 10 beta iterations, 5 rounds.
        ``add_tiny`` 1e-6 is MonoSDF's (VolSDF's code has 0.0, which gives NaN on rays whose
        error bound is zero everywhere: an all-zero CDF)."""
        return cls(64, 128, 32, 0.1, 10, 5)

    @classmethod
    def thesis(cls) -> "ErrorBoundSampler":
        """Thesis Sec. 5.2.2: 32 samples, 32 evaluation samples, eps 0.1, beta_iters 10,
        max_iter 10 (N_samples_extra is not stated: MonoSDF's 32)."""
        return cls(32, 32, 32, 0.1, 10, 10)

    @property
    def samples_per_ray(self) -> int:
        return self.N_samples + self.N_samples_extra + 2

    def __call__(self, sdf_fn: Callable, origins: torch.Tensor, dirs: torch.Tensor, near: torch.Tensor,
                 far: torch.Tensor, beta0, *, training: bool = False,
                 generator: Optional[torch.Generator] = None, chunk: int = 1 << 18,
                 return_sdf: bool = False):
        """Depths ``[B, R, samples_per_ray]`` (sorted) for rays ``origins, dirs [B, R, 3]``
        in ``[near, far]`` (``[B, R]``); ray b, r samples shape b of ``sdf_fn``.
        ``training`` draws stratified initial samples, random final quantiles and random
        extra samples (VolSDF); otherwise all is deterministic.

        ``return_sdf`` also returns ``sdf [B, R, samples_per_ray]``: the SDF values the
        sampler already evaluated at its output depths (the extra samples, and near/far
        when not ``training``), NaN where it did not (the final ``N_samples``)."""
        if origins.dim() != 3 or origins.shape[-1] != 3 or dirs.shape != origins.shape:
            raise ValueError(
                f"origins and dirs must both be [B, R, 3], got {tuple(origins.shape)} and {tuple(dirs.shape)}"
            )
        if near.shape != origins.shape[:2] or far.shape != origins.shape[:2]:
            raise ValueError(
                f"near and far must be [B, R] = {tuple(origins.shape[:2])}, got {tuple(near.shape)} "
                f"and {tuple(far.shape)}"
            )
        B, Rb = origins.shape[:2]
        R = B * Rb
        dev, dt = origins.device, origins.dtype
        beta0 = torch.as_tensor(beta0, dtype=dt, device=dev).detach().reshape(())
        near, far = near.reshape(R, 1).to(dt), far.reshape(R, 1).to(dt)
        origins, dirs = origins.reshape(R, 3), dirs.reshape(R, 3)
        gen_dev = generator.device if generator is not None else dev
        backend = npht_backend.resolve_backend(self.backend, dev)

        def rand(*shape):
            return torch.rand(*shape, generator=generator, dtype=dt, device=gen_dev).to(dev)

        t = torch.linspace(0.0, 1.0, self.N_samples_eval, dtype=dt, device=dev)
        z = near * (1.0 - t) + far * t
        if training:  # stratified in the intervals around each sample
            mids = 0.5 * (z[:, 1:] + z[:, :-1])
            upper = torch.cat([mids, z[:, -1:]], -1)
            lower = torch.cat([z[:, :1], mids], -1)
            z = lower + (upper - lower) * rand(*z.shape)
        beta = ref.initial_beta(z, self.eps)

        def points(depths):  # [R, k] -> [B, Rb * k, 3]
            return (origins[:, None] + depths[..., None] * dirs[:, None]).reshape(B, -1, 3)

        samples, order, sdf, active = z, None, None, None
        evaluations = 0
        for it in range(self.max_total_iters):
            if active is None:
                # in the rays' dtype (a float32 network under float64 cameras, say), as below
                new_sdf = evaluate_sdf(sdf_fn, points(samples), chunk).reshape(R, -1).to(dt)
                evaluations += new_sdf.numel()
            else:  # converged rays repeat their far sample: its sdf is known
                new_sdf = far_sdf.expand(-1, samples.shape[1]).clone()
                rays = torch.nonzero(active).squeeze(1)
                pts = origins[rays, None] + samples[rays, :, None] * dirs[rays, None]
                new_sdf[rays] = evaluate_sdf_rays(sdf_fn, pts, rays, Rb, B, chunk).to(new_sdf.dtype)
                evaluations += rays.numel() * samples.shape[1]
            sdf = new_sdf if order is None else torch.gather(torch.cat([sdf, new_sdf], -1), 1, order)
            beta = ops.eb_bisect_beta(z, sdf, beta0, beta, self.eps, self.beta_iters, backend=backend)
            last_round = it + 1 >= self.max_total_iters
            if not last_round:
                unconverged = beta.max() > beta0
                if self.reduce_unconverged is not None:  # the batch's answer: the same rounds everywhere
                    unconverged = self.reduce_unconverged(unconverged.to(torch.int32))
                last_round = not bool(unconverged)
            if not last_round:  # sample where the error bound is large
                u = torch.linspace(0.0, 1.0, self.N_samples_eval, dtype=dt, device=dev).expand(R, -1)
                samples = ops.eb_upsample(z, sdf, beta, u, "bound", self.add_tiny, backend=backend)
                if self.skip_converged:
                    active = beta > beta0
                    far_sdf = sdf[:, -1:]
                    samples = torch.where(active[:, None], samples, z[:, -1:].expand_as(samples))
                z, order = ops.eb_merge(z, samples, backend=backend)
            else:  # final samples from the weights at the converged beta
                if training:
                    u = rand(R, self.N_samples)
                else:
                    u = torch.linspace(0.0, 1.0, self.N_samples, dtype=dt, device=dev).expand(R, -1)
                samples = ops.eb_upsample(z, sdf, beta, u, "weights", 1e-5, backend=backend)
                break
        self.last_stats = {"rounds": it + 1, "sdf_evaluations": evaluations}
        n = z.shape[1]
        if self.N_samples_extra > 0:
            if training:
                perm = torch.randperm(n, generator=generator, device=gen_dev)[: self.N_samples_extra].to(dev)
            else:
                perm = torch.linspace(0, n - 1, self.N_samples_extra, device=dev).long()
            extra, extra_sdf = torch.cat([near, far, z[:, perm]], -1), sdf[:, perm]
        else:
            extra, extra_sdf = torch.cat([near, far], -1), sdf[:, :0]
        depths, idx = torch.sort(torch.cat([samples, extra], -1), dim=-1, stable=True)
        depths = depths.reshape(B, Rb, -1)
        if not return_sdf:
            return depths
        # near/far are z's ends unless the initial samples were jittered (training)
        ends = torch.full_like(extra[:, :2], float("nan")) if training else sdf[:, [0, -1]].to(dt)
        known = torch.cat([torch.full_like(samples, float("nan")), ends, extra_sdf.to(dt)], -1)
        return depths, torch.gather(known, 1, idx).reshape(B, Rb, -1)
