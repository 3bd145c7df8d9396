"""Training objectives of the tri-plane neural parametric head model.

Pure functions on tensors: no model is called here. The caller evaluates the SDF (and its
gradient, ``torch.autograd.grad(..., create_graph=True)``) at the batch's point sets and
passes the values in. References are to the thesis ("Neural parametric head models with
2D adversarial objectives", Sec. 4.2.3 eqs. 4.1-4.16, Table 4.1, Sec. 4.2.4, Sec. 4.3.3
eqs. 4.17-4.21, Sec. 5.2.2) and to NPHM (supplementary D.2, eq. 23).

Conventions shared by all point losses:

* The thesis writes every point loss as a *sum* over the point set. Here ``reduction``
  chooses ``"mean"`` (default: mean over all points and batch entries, so the weights do
  not depend on the sample counts, as in the NPM/NPHM training code), ``"sum"`` (the
  thesis' literal form) or ``"none"`` (per-point values).
* Leading dimensions are free: ``sdf [..., N]``, ``grad [..., N, 3]``.
* Shape mismatches raise ``ValueError`` naming the argument and both shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

#: Terms of the identity objective (eq. 4.16 plus the discriminator loss and the optional
#: identity-latent regulariser).
IDENTITY_TERMS = ("ss", "sn", "eik", "nsp", "edr", "nmr", "g", "d", "tv", "tp", "lat_id")
#: Terms of the expression objective (eq. 4.21).
EXPRESSION_TERMS = ("c", "dp", "r")
TWO_D_TERMS = ("nmr", "g", "d")             # switched off in stage 2 (Sec. 4.2.4)
STAGE3_TERMS = ("edr", "tv", "tp")          # additionally switched off in stage 3


# --------------------------------------------------------------------------- helpers

def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_last(name: str, t: Tensor, size: int) -> None:
    _check_tensor(name, t)
    if t.dim() < 1 or t.shape[-1] != size:
        raise ValueError(f"{name} must have shape [..., {size}], got {tuple(t.shape)}")


def _check_same(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    _check_tensor(name_a, a)
    _check_tensor(name_b, b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


def _sdf_grad(sdf: Tensor, grad: Tensor) -> None:
    """sdf [..., N] (or [..., N, 1]) pairs with grad [..., N, 3]."""
    _check_last("grad", grad, 3)
    _check_tensor("sdf", sdf)
    if tuple(sdf.shape) not in (tuple(grad.shape[:-1]), tuple(grad.shape[:-1]) + (1,)):
        raise ValueError(f"sdf must have shape {tuple(grad.shape[:-1])} to match grad "
                         f"{tuple(grad.shape)}, got {tuple(sdf.shape)}")


def _reduce(v: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return v.mean()
    if reduction == "sum":
        return v.sum()
    if reduction == "none":
        return v
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _squeeze_sdf(sdf: Tensor) -> Tensor:
    return sdf.squeeze(-1) if sdf.dim() > 1 and sdf.shape[-1] == 1 else sdf


# --------------------------------------------------------------------------- 3D terms

def surface_sdf_loss(sdf: Tensor, reduction: str = "mean") -> Tensor:
    """L_ss = sum_{x in dX} |F_id(x, z)|   (eq. 4.1; Table 4.1 lambda_ss = 20).

    ``sdf [..., N]``: SDF values at surface samples."""
    _check_tensor("sdf", sdf)
    return _reduce(sdf.abs(), reduction)


def surface_normal_loss(grad: Tensor, normals: Tensor, reduction: str = "mean",
                        normalize: bool = True, eps: float = 1e-12) -> Tensor:
    """L_sn = sum_{x in dX} (1 - <grad F_id(x), n(x)>)   (eq. 4.2; lambda_sn = 3).

    ``grad, normals [..., N, 3]``. ``normalize=True`` (default) takes the cosine
    ``1 - <grad/||grad||, n/||n||>``, as NPM/NPHM implement it. ``normalize=False`` is eq.
    4.2's literal plain dot product, which is unbounded below in ``||grad||``: with Table
    4.1's weights (lambda_sn = 3 > lambda_eik = 2, eikonal ``| ||grad|| - 1 |``) the sum
    ``3 (1 - ||grad||) + 2 (||grad|| - 1)`` falls without end as the gradient grows along
    the normal, and training diverges (seen on the embedded heads: L_sn -> -4.8 within 50
    steps)."""
    _check_last("grad", grad, 3)
    _check_same("grad", grad, "normals", normals)
    if normalize:
        grad = F.normalize(grad, dim=-1, eps=eps)
        normals = F.normalize(normals, dim=-1, eps=eps)
    return _reduce(1.0 - (grad * normals).sum(-1), reduction)


def eikonal_loss(grad: Tensor, reduction: str = "mean", mode: str = "abs") -> Tensor:
    """L_eik = sum_{x in X u dX} | ||grad F_id(x)||_2 - 1 |   (eq. 4.3; lambda_eik = 2).

    Eq. 4.3 (and NPHM eq. 23) print ``(||grad|| - 1)`` with no absolute value, which is
    unbounded below; we read it as ``|.|`` (``mode="abs"``, the NPM/NPHM form). IGR's
    squared form is ``mode="square"``. ``grad [..., N, 3]``: gradients at the space and
    surface samples (concatenate them)."""
    _check_last("grad", grad, 3)
    r = grad.norm(dim=-1) - 1.0
    if mode == "abs":
        return _reduce(r.abs(), reduction)
    if mode == "square":
        return _reduce(r.square(), reduction)
    raise ValueError(f"mode must be 'abs' or 'square', got {mode!r}")


def non_surface_loss(sdf: Tensor, alpha: float = 10.0, reduction: str = "mean") -> Tensor:
    """L_nsp = sum_{x in X} exp(-alpha |F_id(x)|), alpha = 10   (eq. 4.4; lambda_nsp = 0.1).

    ``sdf [..., N]``: SDF values at free-space samples X."""
    _check_tensor("sdf", sdf)
    return _reduce(torch.exp(-alpha * sdf.abs()), reduction)


def edr_perturbation(points: Tensor, std: float = 0.01,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """x + omega with omega ~ N(0, 0.0001) (eq. 4.5). We read N(mu, sigma^2): the variance
    is 1e-4, i.e. ``std = 0.01``."""
    _check_last("points", points, 3)
    noise = torch.randn(points.shape, generator=generator, dtype=points.dtype,
                        device=points.device)
    return points + std * noise


def explicit_density_loss(sdf: Tensor, sdf_perturbed: Tensor,
                          reduction: str = "mean") -> Tensor:
    """L_edr = sum_{x in X} ||F_id(x) - F_id(x + omega)||_2^2   (eq. 4.5; lambda_edr = 1e-5).

    ``sdf, sdf_perturbed [..., N]``: the SDF at free-space samples and at the same samples
    moved by :func:`edr_perturbation`."""
    _check_same("sdf", sdf, "sdf_perturbed", sdf_perturbed)
    return _reduce((sdf - sdf_perturbed).square(), reduction)


# --------------------------------------------------------------------------- 2D terms

def normal_map_loss(pred: Tensor, target: Tensor, mask: Optional[Tensor] = None,
                    reduction: str = "mean") -> Tensor:
    """L_nmr = sum_v ||N_hat^(v) - N^(v)||_1   (eq. 4.6; lambda_nmr = 2).

    ``pred, target [..., V, H, W, 3]`` in the same frame (the dataset's maps are in the
    OpenGL camera frame and 0 in the background). ``mask [..., V, H, W]`` (bool or 0/1).

    Background: with ``mask=None`` every pixel counts, so the rendering is pulled to the
    target's 0 in the background (right for opacity-weighted normal renderings). With a
    mask only the covered pixels count and the background is ignored. Per pixel the
    error is the L1 norm over the 3 channels; ``"mean"`` averages it over the counted
    pixels (0 if none), ``"sum"`` adds it up (the thesis' literal sum), ``"none"``
    returns the per-pixel map with uncounted pixels 0."""
    _check_last("pred", pred, 3)
    _check_same("pred", pred, "target", target)
    err = (pred - target).abs().sum(-1)
    if mask is None:
        if reduction == "none":
            return err
        return _reduce(err, reduction)
    _check_tensor("mask", mask)
    if mask.shape != pred.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(pred.shape[:-1])} to match pred "
                         f"{tuple(pred.shape)}, got {tuple(mask.shape)}")
    w = mask.to(err.dtype)
    err = err * w
    if reduction == "mean":
        return err.sum() / w.sum().clamp_min(1.0)
    return _reduce(err, reduction)


def generator_loss(d_fake: Tensor) -> Tensor:
    """L_g = E[f(-D(G(z, v)))], f(u) = log(1 + exp(u))   (eqs. 4.9, 4.11; lambda_g = 1).

    Non-saturating GAN loss; ``d_fake [B]`` or ``[B, 1]`` logits on rendered maps."""
    _check_tensor("d_fake", d_fake)
    return F.softplus(-d_fake).mean()


def discriminator_loss(d_fake: Tensor, d_real: Tensor) -> Tensor:
    """E[f(D(fake))] + E[f(-D(real))]   (eq. 4.8 without its R1 term; lambda_d = 1).

    Add :func:`r1_penalty` for the full eq. 4.8. ``d_fake`` must be computed on detached
    renderings when training D."""
    _check_tensor("d_fake", d_fake)
    _check_tensor("d_real", d_real)
    return F.softplus(d_fake).mean() + F.softplus(-d_real).mean()


def r1_penalty(d_real: Tensor, x_real: Tensor, weight: float = 5.0,
               half: bool = False) -> Tensor:
    """lambda * L_gp, L_gp = E_real[||grad_x D(x)||^2]   (eqs. 4.8, 4.10; lambda = 5).

    ``x_real [B, ...]`` must require grad and ``d_real [B]``/``[B, 1]`` = D(x_real). The
    gradient is taken with ``create_graph=True`` so the penalty trains D. The thesis
    writes ``lambda * L_gp``; ``half=True`` gives Mescheder et al.'s ``(gamma/2) E||.||^2``
    (StyleGAN/EG3D convention)."""
    _check_tensor("d_real", d_real)
    _check_tensor("x_real", x_real)
    if not x_real.requires_grad:
        raise ValueError("x_real must require grad (call x_real.requires_grad_() before D)")
    if d_real.numel() != x_real.shape[0]:
        raise ValueError(f"d_real must hold one logit per x_real entry ({x_real.shape[0]}), "
                         f"got shape {tuple(d_real.shape)}")
    (g,) = torch.autograd.grad(d_real.sum(), x_real, create_graph=True)
    gp = g.reshape(g.shape[0], -1).square().sum(1).mean()
    return (0.5 * weight if half else weight) * gp


# --------------------------------------------------------------------------- plane terms

def _check_planes(planes: Tensor) -> None:
    _check_tensor("planes", planes)
    if planes.dim() != 5 or planes.shape[1] != 3:
        raise ValueError(f"planes must have shape [B, 3, C, H, W], got {tuple(planes.shape)}")


def total_variation_loss(planes: Tensor, mode: str = "shift") -> Tensor:
    """L_tv = sum_p ( sqrt(sum (t_p - s_h(t_p))^2) + sqrt(sum (t_p - s_v(t_p))^2) )
    (eq. 4.13; lambda_tv = 1e-4), averaged over the batch.

    ``planes [B, 3, C, H, W]``. Eq. 4.13 defines f_h, f_v as *flips* of the plane, which
    measures mirror asymmetry rather than variation; for a total variation (the term's
    name and its source) ``mode="shift"`` (default) uses neighbour differences along H and
    W (s = shift by one pixel, no wrap-around). ``mode="flip"`` is the literal reading."""
    _check_planes(planes)
    if mode == "shift":
        dh = planes[:, :, :, 1:, :] - planes[:, :, :, :-1, :]
        dw = planes[:, :, :, :, 1:] - planes[:, :, :, :, :-1]
    elif mode == "flip":
        dh = planes - planes.flip(3)
        dw = planes - planes.flip(4)
    else:
        raise ValueError(f"mode must be 'shift' or 'flip', got {mode!r}")
    # vector_norm: its gradient at a zero norm (a constant plane) is 0, sqrt's would be nan
    nh = torch.linalg.vector_norm(dh, dim=(2, 3, 4))   # [B, 3]
    nw = torch.linalg.vector_norm(dw, dim=(2, 3, 4))
    return (nh + nw).sum(1).mean()


def triplane_l2_loss(planes: Tensor) -> Tensor:
    """L_tp = sum_p ||t_p||_2   (eq. 4.14; lambda_tp = 1e-4): Frobenius norm (not squared)
    of each plane, summed over the 3 planes, averaged over the batch. ``planes
    [B, 3, C, H, W]``."""
    _check_planes(planes)
    return torch.linalg.vector_norm(planes, dim=(2, 3, 4)).sum(1).mean()   # gradient 0 at a zero plane


def latent_loss(z: Tensor) -> Tensor:
    """||z||_2^2 per code, averaged over the batch. ``z [B, D]`` (or ``[D]``).

    Expression codes: L_r (eq. 4.20), lambda_r = 5e-5. Identity codes: not a term of
    Table 4.1 (weight 0 in the thesis preset); NPHM D.2 uses lambda_reg^id = 0.005."""
    _check_tensor("z", z)
    if z.dim() == 1:
        z = z[None]
    if z.dim() != 2:
        raise ValueError(f"z must have shape [B, D] or [D], got {tuple(z.shape)}")
    return z.square().sum(1).mean()


# --------------------------------------------------------------------------- expression

def correspondence_loss(neutral: Tensor, delta: Tensor, posed: Tensor,
                        reduction: str = "mean") -> Tensor:
    """L_c = sum_{x in X} ||(x + dx) - x_posed||_2^2   (eqs. 4.17-4.18; lambda_c = 100).

    ``neutral, delta, posed [..., N, 3]``: CorrespondenceDataset's ``neutral``/``posed``
    and the deformation F_ex(neutral, z_ex, z_id)."""
    _check_last("neutral", neutral, 3)
    _check_same("neutral", neutral, "delta", delta)
    _check_same("neutral", neutral, "posed", posed)
    return _reduce((neutral + delta - posed).square().sum(-1), reduction)


def deformation_penalty(delta: Tensor, reduction: str = "mean") -> Tensor:
    """L_dp = sum_{x not in X} ||F_ex(x, z_ex, z_id)||_2^2   (eq. 4.19; lambda_dp = 1e-5).

    ``delta [..., N, 3]``: deformations at points outside the face region."""
    _check_last("delta", delta, 3)
    return _reduce(delta.square().sum(-1), reduction)


# --------------------------------------------------------------------------- weights

@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Loss weights; the defaults are Table 4.1 (identity) and eq. 4.21 (expression)."""

    ss: float = 20.0        # surface SDF, 2.0e1
    sn: float = 3.0         # surface normal
    eik: float = 2.0        # eikonal
    nsp: float = 0.1        # non-surface penalty, 1e-1
    edr: float = 1e-5       # explicit density regularisation
    nmr: float = 2.0        # normal-map reconstruction
    g: float = 1.0          # generator (non-saturating)
    d: float = 1.0          # discriminator
    tv: float = 1e-4        # total variation
    tp: float = 1e-4        # tri-plane L2
    lat_id: float = 0.0     # identity latent ||z_id||^2: not in Table 4.1
    r1: float = 5.0         # lambda of eq. 4.8 (inside L_d)
    alpha: float = 10.0     # eq. 4.4
    c: float = 100.0        # correspondence, eq. 4.21
    dp: float = 1e-5        # deformation penalty, eq. 4.21
    r: float = 5e-5         # expression latent, eq. 4.21

    @classmethod
    def thesis(cls) -> "LossWeights":
        """Table 4.1 / eq. 4.21 weights of the proposed model."""
        return cls()

    @classmethod
    def npm(cls) -> "LossWeights":
        """NPM baseline / 3D-only ablation (Sec. 5.2.2): lambda_ss = 2, lambda_sn = 0.3,
        lambda_eik = 0.1, lambda_nsv = 0.01 (= NPHM eq. 23's lambda_s, lambda_n, lambda_eik,
        lambda_0); no 2D or plane terms; identity latent 0.005 (NPHM D.2)."""
        return cls(ss=2.0, sn=0.3, eik=0.1, nsp=0.01, edr=0.0, nmr=0.0, g=0.0, d=0.0,
                   tv=0.0, tp=0.0, lat_id=0.005)

    def replace(self, **changes) -> "LossWeights":
        return dataclasses.replace(self, **changes)

    def without(self, terms: Sequence[str]) -> "LossWeights":
        """A copy with the named terms' weights set to 0."""
        bad = [t for t in terms if t not in IDENTITY_TERMS + EXPRESSION_TERMS]
        if bad:
            raise ValueError(f"unknown loss terms {bad}; known: "
                             f"{IDENTITY_TERMS + EXPRESSION_TERMS}")
        return dataclasses.replace(self, **{t: 0.0 for t in terms})


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: epochs ``[start, end)`` (``end=None``: open-ended) and the
    terms switched off."""

    index: int
    start: int
    end: Optional[int]
    disabled: Tuple[str, ...]

    def contains(self, epoch: int) -> bool:
        return epoch >= self.start and (self.end is None or epoch < self.end)


@dataclasses.dataclass(frozen=True)
class MultiStageSchedule:
    """Sec. 4.2.4: stage 1 all terms; stage 2 without the 2D terms (L_nmr, L_g, L_d);
    stage 3 additionally without L_edr, L_tp, L_tv, until convergence."""

    stages: Tuple[Stage, ...]
    weights: LossWeights = LossWeights()

    def stage_at(self, epoch: int) -> Stage:
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        for s in self.stages:
            if s.contains(epoch):
                return s
        return self.stages[-1]   # past the planned epochs: keep training in the last stage

    def active_weights(self, epoch: int) -> LossWeights:
        return self.weights.without(self.stage_at(epoch).disabled)


def multi_stage_schedule(epochs: Sequence[int] = (5000, 3000, 7000),
                         weights: Optional[LossWeights] = None) -> MultiStageSchedule:
    """Stages of ``epochs = (e1, e2, e3)`` epochs each (thesis: 5k, 3k, then until
    convergence at ~12k-15k in all). Stage 1 is ``[0, e1)``, stage 2 ``[e1, e1+e2)``,
    stage 3 ``[e1+e2, ...)`` (it continues past e1+e2+e3)."""
    epochs = tuple(epochs)
    if len(epochs) != 3 or any(not isinstance(e, int) or e < 0 for e in epochs):
        raise ValueError(f"epochs must be three ints >= 0, got {epochs!r}")
    b1, b2 = epochs[0], epochs[0] + epochs[1]
    stages = (Stage(1, 0, b1, ()), Stage(2, b1, b2, TWO_D_TERMS),
              Stage(3, b2, None, TWO_D_TERMS + STAGE3_TERMS))
    return MultiStageSchedule(stages, weights if weights is not None else LossWeights())


# --------------------------------------------------------------------------- combined

def surface_normals_from_batch(batch: Mapping[str, Tensor]) -> Tensor:
    """GT normals at the surface samples in the order face then non-face:
    ``cat([surface_face_normals, surface_nonface_normals], dim=-2)``."""
    parts = [batch[k] for k in ("surface_face_normals", "surface_nonface_normals") if k in batch]
    if not parts:
        raise KeyError("batch has neither 'surface_face_normals' nor 'surface_nonface_normals'")
    return torch.cat(parts, dim=-2)


def identity_losses(batch: Mapping[str, Tensor], weights: LossWeights = LossWeights(), *,
                    surface_sdf: Tensor, surface_grad: Tensor,
                    space_sdf: Optional[Tensor] = None, space_grad: Optional[Tensor] = None,
                    space_sdf_perturbed: Optional[Tensor] = None,
                    normal_maps: Optional[Tensor] = None, d_fake: Optional[Tensor] = None,
                    planes: Optional[Tensor] = None, z_id: Optional[Tensor] = None,
                    use_masks: bool = False, eikonal_mode: str = "abs",
                    nmr_denominator: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """Weighted identity terms (eq. 4.15 for one batch) and their ``"total"``.

    Inputs are values the caller computed (no model is called):

    * ``surface_sdf [..., Ns]``, ``surface_grad [..., Ns, 3]`` at the surface samples,
      ordered as :func:`surface_normals_from_batch` (face then non-face);
    * ``space_sdf [..., Nx]``, ``space_grad [..., Nx, 3]`` at free-space samples X (the
      trainer's: ``ball_points``, "random 3D co-ordinates of free space within unit sphere",
      eq. 4.3/4.4); ``space_sdf_perturbed`` at X + omega. Without ``space_grad`` the
      eikonal term runs over the surface samples alone;
    * ``normal_maps [..., V, H, W, 3]`` rendered in the frame of ``batch["normal_maps"]``
      (masked by ``batch["masks"]`` if ``use_masks``); ``d_fake`` = D(rendered maps);
    * ``planes [B, 3, C, H, W]``; ``z_id [B, D]``;
    * ``nmr_denominator``: with masks, what the summed masked normal-map error is divided
      by (default: this batch's masked pixel count, at least 1). Data-parallel training
      passes (all ranks' count) / world so that the mean over the ranks is the combined
      batch's masked mean.

    A term is computed when its inputs are given and its weight is non-zero. Each entry is
    weight * term; "total" is their sum (the discriminator loss is trained separately).
    """
    out: Dict[str, Tensor] = {}

    def add(name: str, w: float, fn):
        if w != 0.0:
            out[name] = w * fn()

    _sdf_grad(surface_sdf, surface_grad)
    add("ss", weights.ss, lambda: surface_sdf_loss(_squeeze_sdf(surface_sdf)))
    if weights.sn != 0.0:
        normals = surface_normals_from_batch(batch).to(surface_grad.dtype)
        if normals.shape != surface_grad.shape:
            raise ValueError(f"surface_grad {tuple(surface_grad.shape)} must match the batch's "
                             f"surface normals {tuple(normals.shape)} (face then non-face)")
        add("sn", weights.sn, lambda: surface_normal_loss(surface_grad, normals))
    if space_grad is not None:
        if space_grad.shape[:-2] != surface_grad.shape[:-2]:
            raise ValueError(f"space_grad {tuple(space_grad.shape)} and surface_grad "
                             f"{tuple(surface_grad.shape)} must share leading dimensions")
        both = torch.cat([space_grad, surface_grad], dim=-2)
    else:
        both = surface_grad
    add("eik", weights.eik, lambda: eikonal_loss(both, mode=eikonal_mode))
    if space_sdf is not None:
        if space_grad is not None:
            _sdf_grad(space_sdf, space_grad)
        sx = _squeeze_sdf(space_sdf)
        add("nsp", weights.nsp, lambda: non_surface_loss(sx, alpha=weights.alpha))
        if space_sdf_perturbed is not None:
            add("edr", weights.edr,
                lambda: explicit_density_loss(sx, _squeeze_sdf(space_sdf_perturbed)))
    if normal_maps is not None:
        target = batch["normal_maps"].to(normal_maps.dtype)
        mask = batch["masks"] if use_masks else None
        if nmr_denominator is not None and mask is not None:
            add("nmr", weights.nmr, lambda: normal_map_loss(normal_maps, target, mask, "sum") / nmr_denominator)
        else:
            add("nmr", weights.nmr, lambda: normal_map_loss(normal_maps, target, mask))
    if d_fake is not None:
        add("g", weights.g, lambda: generator_loss(d_fake))
    if planes is not None:
        add("tv", weights.tv, lambda: total_variation_loss(planes))
        add("tp", weights.tp, lambda: triplane_l2_loss(planes))
    if z_id is not None:
        add("lat_id", weights.lat_id, lambda: latent_loss(z_id))
    out["total"] = sum(out.values()) if out else surface_sdf.new_zeros(())
    return out


def expression_losses(weights: LossWeights = LossWeights(), *, neutral: Tensor,
                      delta: Tensor, posed: Tensor, delta_outside: Optional[Tensor] = None,
                      z_ex: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """Weighted expression terms of eq. 4.21 (c, dp, r) and their ``"total"``.

    ``neutral, posed [..., N, 3]`` from CorrespondenceDataset, ``delta`` = F_ex(neutral),
    ``delta_outside [..., M, 3]`` = F_ex at points outside the face region, ``z_ex [B, D]``.
    """
    out: Dict[str, Tensor] = {}
    if weights.c != 0.0:
        out["c"] = weights.c * correspondence_loss(neutral, delta, posed)
    if delta_outside is not None and weights.dp != 0.0:
        out["dp"] = weights.dp * deformation_penalty(delta_outside)
    if z_ex is not None and weights.r != 0.0:
        out["r"] = weights.r * latent_loss(z_ex)
    out["total"] = sum(out.values()) if out else delta.new_zeros(())
    return out
