"""Model fitting (thesis Sec. 4.4; NPHM C.2-C.5): find the codes of an unseen head from a
(partial) observation with the networks frozen.

* :func:`fit_identity` -- eq. 4.23: ``mean_p |F_id(x_c, z_id)| + lambda_id ||z_id||^2
  (+ lambda_ex ||z_ex||^2)`` over the observed points, where ``x_c`` is ``x_p`` (the
  ablation setting, Sec. 6.3: the scan is assumed perfectly neutral) or, with an
  expression model, the root-found canonical point of eq. 4.22 (identity and expression
  codes are then fitted jointly, gradients through ``x_c`` by the implicit function
  theorem, :func:`npht.fit.invert_deformation`).
* :func:`fit_expression` -- Sec. 4.4.2: the same objective over ``z_ex`` only, ``z_id``
  fixed.
* :func:`fit_normal_maps` -- the 2D objective: the identity code fitted to ground-truth
  normal maps through npht's VolSDF renderer with the L1 normal-map loss (eq. 4.6).

Optimisation (NPHM C.5, which the thesis follows; the thesis states no fitting values of
its own): Adam, 700 iterations, lr 0.01 decayed x0.1 after 200, 350 and 500 iterations,
``lambda_id = 0.05`` (NPHM's lambda_glob, divided by 5 after 200 and 500 iterations),
``lambda_ex = 0.003``. The data term is the mean over the points (NPHM's code; the paper
writes a sum), the regulariser ``||z||^2`` per code, averaged over the batch, in units of
NPHM's literal units, or, for models whose training codes are larger than unit norm on average
(the thesis' N(0, I) codes), in units of their mean ``||z||^2`` (``FitSchedule.relative_reg``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .root_finding import invert_deformation

__all__ = ["FitSchedule", "FitResult", "fit_identity", "fit_expression", "fit_normal_maps"]


@dataclass(frozen=True)
class FitSchedule:
    """Hyper-parameters of a fit (defaults: NPHM C.5).

    ``iterations`` Adam steps at ``lr``, multiplied by ``gamma`` after each of
    ``milestones``; ``lambda_id``/``lambda_ex`` weight ``||z_id||^2``/``||z_ex||^2``;
    ``lambda_id`` is multiplied by ``reg_gamma`` after each of ``reg_milestones`` (NPHM
    divides lambda_glob by 5 at 200 and 500: first the coarse shape and expression, then
    the identity's details). ``points_per_step``: a random subset of that many observed
    points per step (``None``: all, as NPHM). ``root_iters``, ``root_tol``,
    ``root_method``: the root finding of eq. 4.22 (fits with an expression model).
    ``drop_unconverged`` (default on, as NPHM's and SNARF's fitting): the SDF term averages
    over the points whose root finding converged; the others' ``x_c`` is no pre-image and
    the implicit gradient through it is meaningless (a shape with no converged point keeps
    all of its points).

    ``relative_reg`` sets the regulariser's unit. ``"auto"`` (default): NPHM's lambdas are
    used literally (``lambda ||z||^2``; NPHM fits its NPM baseline with "the exact same
    hyperparameters") unless the model's training codes have a mean ``||z||^2`` above 1; then
    each ``||z||^2`` is divided by that mean. NPHM's lambdas were tuned for its small codes; the
    thesis' identity codes start ~ N(0, 1) in 512-D with no latent term in training (Table 4.1),
    where the absolute ``||z_id||^2 ~ 512`` times 0.05 would outweigh the SDF term by orders of
    magnitude and pull the code to 0. ``True``: always relative (a lambda means the same for
    every code scale; for small codes this is a much stronger prior: the demo's NPM codes have
    mean ``||z||^2`` 0.019, so its lambda becomes 52x NPHM's, and its held-out fits in the README's
    evaluation were 32% worse in head Chamfer than with the literal one). ``False``: always
    literal.

    >>> s = FitSchedule()
    >>> [round(s.lambda_id_at(i), 6) for i in (0, 200, 600)], [round(s.lr_at(i), 6) for i in (0, 350, 699)]
    ([0.05, 0.01, 0.002], [0.01, 0.0001, 1e-05])
    """

    iterations: int = 700
    lr: float = 0.01
    milestones: Tuple[int, ...] = (200, 350, 500)
    gamma: float = 0.1
    lambda_id: float = 0.05
    lambda_ex: float = 0.003
    reg_milestones: Tuple[int, ...] = (200, 500)
    reg_gamma: float = 0.2
    points_per_step: Optional[int] = None
    root_iters: int = 10
    root_tol: float = 1e-5
    relative_reg: Union[bool, str] = "auto"
    root_method: str = "broyden"
    drop_unconverged: bool = True

    def __post_init__(self):
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {self.iterations!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        for name in ("lambda_id", "lambda_ex", "gamma", "reg_gamma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.drop_unconverged, bool):
            raise ValueError(f"drop_unconverged must be a bool, got {self.drop_unconverged!r}")
        for name in ("milestones", "reg_milestones"):
            ms = tuple(getattr(self, name))
            if any(int(m) != m or m < 0 for m in ms) or list(ms) != sorted(ms):
                raise ValueError(f"{name} must be increasing non-negative ints, got {ms!r}")
            object.__setattr__(self, name, tuple(int(m) for m in ms))
        if self.points_per_step is not None and (not isinstance(self.points_per_step, int) or self.points_per_step < 1):
            raise ValueError(f"points_per_step must be a positive int or None, got {self.points_per_step!r}")
        if self.relative_reg not in (True, False, "auto"):
            raise ValueError(f"relative_reg must be True, False or 'auto', got {self.relative_reg!r}")
        if self.relative_reg != "auto":
            object.__setattr__(self, "relative_reg", bool(self.relative_reg))
        if self.root_method not in ("broyden", "newton"):
            raise ValueError(f"root_method must be 'broyden' or 'newton', got {self.root_method!r}")

    def replace(self, **changes) -> "FitSchedule":
        return replace(self, **changes)

    def lr_at(self, step: int) -> float:
        return self.lr * self.gamma ** sum(step >= m for m in self.milestones)

    def lambda_id_at(self, step: int) -> float:
        return self.lambda_id * self.reg_gamma ** sum(step >= m for m in self.reg_milestones)


@dataclass
class FitResult:
    """``code [B, z_dim]`` the fitted identity code(s) (detached), ``z_ex [B, d_ex]`` the
    fitted expression code(s) or ``None``, ``history``: per iteration ``loss`` (total),
    ``data`` (the SDF or normal-map term), ``reg``, ``lr`` and, with root finding,
    ``converged`` (fraction of points), ``seconds`` the wall time."""

    code: torch.Tensor
    z_ex: Optional[torch.Tensor]
    history: Dict[str, List[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def losses(self) -> List[float]:
        return self.history.get("loss", [])


# --------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def _frozen(*modules: Optional[nn.Module]):
    """Networks frozen for the fit (no weight gradients computed or accumulated) and in
    eval mode; restored afterwards."""
    saved = []
    for m in modules:
        if m is None:
            continue
        saved.append((m, m.training, [(p, p.requires_grad) for p in m.parameters()]))
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training, params in saved:
            m.train(training)
            for p, rg in params:
                p.requires_grad_(rg)


def _points(points: torch.Tensor) -> torch.Tensor:
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points must be a tensor, got {type(points).__name__}")
    if points.dim() == 2:
        points = points[None]
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] < 1:
        raise ValueError(f"points must have shape [N, 3] or [B, N, 3] with N >= 1, got {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"points must be floating point, got {points.dtype}")
    if not torch.isfinite(points).all():
        raise ValueError("points must be finite")
    return points.detach()


def _model_dim(model: nn.Module) -> int:
    dim = getattr(model, "z_dim", None)
    if dim is None:
        raise TypeError(f"{type(model).__name__} has no z_dim: expected an IdentityModel or NPMBaseline")
    return int(dim)


def _code(given: Optional[torch.Tensor], default: torch.Tensor, dim: int, B: int, name: str,
          like: torch.Tensor) -> torch.Tensor:
    z = default if given is None else given
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor [{dim}] or [B, {dim}]")
    if z.dim() == 1:
        z = z[None]
    if z.dim() != 2 or z.shape[1] != dim or z.shape[0] not in (1, B):
        raise ValueError(f"{name} must have shape [{dim}] or [B={B}, {dim}], got {tuple(z.shape)}")
    return z.detach().to(device=like.device, dtype=torch.float32).expand(B, dim).clone()


def _mean_code(module: nn.Module, dim: int) -> torch.Tensor:
    codes = getattr(module, "codes", None)
    if isinstance(codes, nn.Embedding) and codes.num_embeddings > 0:
        return codes.weight.detach().mean(0)
    return torch.zeros(dim)


def _sq(z: torch.Tensor) -> torch.Tensor:
    return z.square().sum(-1).mean()


def _code_scale(module: Optional[nn.Module], schedule: "FitSchedule") -> float:
    """The regulariser's unit (``FitSchedule.relative_reg``): the mean ``||z||^2`` of
    ``module``'s training codes (``True``; ``"auto"`` when it is above 1), else 1."""
    codes = getattr(module, "codes", None)
    if schedule.relative_reg is False or not isinstance(codes, nn.Embedding) or codes.num_embeddings == 0:
        return 1.0
    scale = float(codes.weight.detach().square().sum(-1).mean())
    if schedule.relative_reg == "auto":
        return max(scale, 1.0)
    return scale if scale > 0 else 1.0


def _subset(points: torch.Tensor, n: Optional[int], gen: torch.Generator) -> torch.Tensor:
    N = points.shape[1]
    if n is None or n >= N:
        return points
    idx = torch.randperm(N, generator=gen, device=gen.device)[:n].to(points.device)
    return points[:, idx]


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(range(total), disable=not enabled, desc=desc, leave=False, dynamic_ncols=True)


def _run(params: Sequence[torch.Tensor], schedule: FitSchedule, step_fn, progress: bool, desc: str
         ) -> Tuple[Dict[str, List[float]], float]:
    """Adam with the schedule's step decay; ``step_fn(step) -> (loss or None, stats)``
    (``None`` when the step function has already run backward itself)."""
    opt = torch.optim.Adam(list(params), lr=schedule.lr)
    history: Dict[str, List[float]] = {}
    t0 = time.perf_counter()
    bar = _progress(schedule.iterations, progress, desc)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss, stats = step_fn(step)
        if loss is not None:
            loss.backward()
        opt.step()
        stats["lr"] = schedule.lr_at(step)
        for k, v in stats.items():
            history.setdefault(k, []).append(float(v))
        if progress:
            bar.set_postfix(loss=f"{stats['loss']:.3e}")
    return history, time.perf_counter() - t0


# --------------------------------------------------------------------------- 3D fitting

def fit_identity(model: nn.Module, points: torch.Tensor, *, schedule: Optional[FitSchedule] = None,
                 expression_model: Optional[nn.Module] = None, init: Optional[torch.Tensor] = None,
                 z_ex_init: Optional[torch.Tensor] = None, seed: int = 0, progress: bool = True) -> FitResult:
    """Fit the identity code (eq. 4.23) to observed surface points.

    Args:
        model: :class:`~npht.models.IdentityModel` or :class:`~npht.models.NPMBaseline`
            (anything with ``z_dim`` and ``forward(points [B, N, 3], codes [B, z_dim])``),
            frozen during the fit (its weights get no gradient).
        points: observed surface points ``[N, 3]`` or ``[B, N, 3]`` (B scans fitted
            independently, e.g. :func:`npht.data.partial_point_cloud`).
        schedule: :class:`FitSchedule` (default NPHM C.5).
        expression_model: with an :class:`~npht.models.ExpressionModel`, ``z_ex`` is fitted
            jointly and the SDF is evaluated at the canonical points ``x_c`` root-found from
            ``x_p`` (eq. 4.22, ``x_init = x_p``); without it ``x_c = x_p``.
        init: initial code ``[z_dim]`` or ``[B, z_dim]``; default the mean training code
            ``model.codes.weight.mean(0)``. ``z_ex_init``: likewise for ``z_ex`` (default the
            mean expression code, or zeros when the model has none).
        seed: seeds the point subsets (``schedule.points_per_step``).
        progress: a tqdm bar.

    Returns a :class:`FitResult`.

    >>> import torch
    >>> from npht.models import NPMBaseline
    >>> torch.manual_seed(0) and None
    >>> model = NPMBaseline(2, z_dim=4, hidden=16, layers=2, skip=None)
    >>> pts = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1) * 0.5
    >>> res = fit_identity(model, pts, schedule=FitSchedule(iterations=5), progress=False)
    >>> res.code.shape, len(res.losses)
    (torch.Size([1, 4]), 5)
    """
    schedule = schedule or FitSchedule()
    pts = _points(points)
    B = pts.shape[0]
    dim = _model_dim(model)
    z = _code(init, _mean_code(model, dim), dim, B, "init", pts).requires_grad_(True)
    params = [z]
    z_ex = None
    if expression_model is not None:
        d_ex = int(expression_model.z_ex_dim)
        if int(expression_model.z_id_dim) != dim:
            raise ValueError(f"the expression model is conditioned on identity codes of size "
                             f"{expression_model.z_id_dim}, the identity model's are {dim}")
        z_ex = _code(z_ex_init, _mean_code(expression_model, d_ex), d_ex, B, "z_ex_init", pts).requires_grad_(True)
        params.append(z_ex)
    gen = torch.Generator(device=pts.device).manual_seed(seed)
    unit_id, unit_ex = _code_scale(model, schedule), _code_scale(expression_model, schedule)

    def step(i):
        x_p = _subset(pts, schedule.points_per_step, gen)
        stats = {}
        ok = None
        if expression_model is None:
            x_c = x_p
        else:
            x_c, ok = invert_deformation(lambda x: expression_model.deform(x, z, z_ex), x_p,
                                         iters=schedule.root_iters, tol=schedule.root_tol,
                                         method=schedule.root_method)
            stats["converged"] = float(ok.float().mean())
        data = _data_term(model(x_c.to(pts.dtype), z), ok, schedule.drop_unconverged)
        reg = schedule.lambda_id_at(i) * _sq(z) / unit_id
        if z_ex is not None:
            reg = reg + schedule.lambda_ex * _sq(z_ex) / unit_ex
        loss = data + reg
        stats.update(loss=float(loss.detach()), data=float(data.detach()), reg=float(reg.detach()))
        return loss, stats

    with _frozen(model, expression_model):
        history, secs = _run(params, schedule, step, progress, "fit identity")
    return FitResult(z.detach(), None if z_ex is None else z_ex.detach(), history, secs)


def _data_term(sdf: torch.Tensor, ok: Optional[torch.Tensor], drop: bool) -> torch.Tensor:
    """mean |sdf| of ``[B, N]``: each shape's mean, over its converged points when ``drop``
    (``ok [B, N]``; all points of a shape with none), then the mean over the shapes."""
    a = sdf.abs().reshape(sdf.shape[0], -1)
    if ok is None or not drop:
        return a.mean()
    ok = ok.reshape(a.shape)
    use = ok | ~ok.any(-1, keepdim=True)
    return (torch.where(use, a, 0.0).sum(-1) / use.sum(-1)).mean()


def fit_expression(model: nn.Module, expression_model: nn.Module, points: torch.Tensor, z_id: torch.Tensor, *,
                   schedule: Optional[FitSchedule] = None, init: Optional[torch.Tensor] = None, seed: int = 0,
                   progress: bool = True) -> FitResult:
    """Fit the expression code (Sec. 4.4.2) of posed points ``[N, 3]`` / ``[B, N, 3]`` with
    the identity code ``z_id [z_dim]`` / ``[B, z_dim]`` fixed: minimise
    ``mean |F_id(x_c, z_id)| + lambda_ex ||z_ex||^2`` with ``x_c`` root-found from the
    posed points (eq. 4.22). ``init``: initial ``z_ex`` (default: the mean expression
    code, or zeros); typically the ``z_ex`` of :func:`fit_identity`.

    >>> import torch
    >>> from npht.models import ExpressionModel, NPMBaseline
    >>> torch.manual_seed(0) and None
    >>> model = NPMBaseline(2, z_dim=4, hidden=16, layers=2, skip=None)
    >>> expr = ExpressionModel(4, 2, hidden=16, layers=2, skip=None)
    >>> pts = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1) * 0.5
    >>> res = fit_expression(model, expr, pts, torch.zeros(4), schedule=FitSchedule(iterations=3), progress=False)
    >>> res.z_ex.shape
    torch.Size([1, 2])
    """
    schedule = schedule or FitSchedule()
    pts = _points(points)
    B = pts.shape[0]
    dim = _model_dim(model)
    if int(expression_model.z_id_dim) != dim:
        raise ValueError(f"the expression model is conditioned on identity codes of size "
                         f"{expression_model.z_id_dim}, the identity model's are {dim}")
    zid = _code(z_id, None, dim, B, "z_id", pts)
    d_ex = int(expression_model.z_ex_dim)
    z_ex = _code(init, _mean_code(expression_model, d_ex), d_ex, B, "init", pts).requires_grad_(True)
    gen = torch.Generator(device=pts.device).manual_seed(seed)
    unit_ex = _code_scale(expression_model, schedule)

    def step(i):
        x_p = _subset(pts, schedule.points_per_step, gen)
        x_c, ok = invert_deformation(lambda x: expression_model.deform(x, zid, z_ex), x_p,
                                     iters=schedule.root_iters, tol=schedule.root_tol, method=schedule.root_method)
        data = _data_term(model(x_c.to(pts.dtype), zid), ok, schedule.drop_unconverged)
        reg = schedule.lambda_ex * _sq(z_ex) / unit_ex
        loss = data + reg
        return loss, dict(loss=float(loss.detach()), data=float(data.detach()), reg=float(reg.detach()),
                          converged=float(ok.float().mean()))

    with _frozen(model, expression_model):
        history, secs = _run([z_ex], schedule, step, progress, "fit expression")
    return FitResult(zid, z_ex.detach(), history, secs)


# --------------------------------------------------------------------------- 2D fitting

def fit_normal_maps(model: nn.Module, cameras, target_normals: torch.Tensor, masks: Optional[torch.Tensor] = None,
                    resolution: Optional[int] = None, *, density=None, schedule: Optional[FitSchedule] = None,
                    init: Optional[torch.Tensor] = None, seed: int = 0, progress: bool = True,
                    views_per_chunk: Optional[int] = None, tile: Optional[int] = None, convention: str = "opengl",
                    jitter: bool = False,
                    renderer_options: Optional[dict] = None,
                    fused_gradient: Optional[dict] = None) -> FitResult:
    """Fit one identity code to ground-truth normal maps through npht's VolSDF renderer
    with the L1 normal-map loss (eq. 4.6, :func:`npht.train.losses.normal_map_loss`) plus
    ``lambda_id ||z||^2``.

    Args:
        model: IdentityModel or NPMBaseline (frozen).
        cameras: :class:`npht.render.Cameras` ``[V]`` the maps were rendered from.
        target_normals: ``[V, H, W, 3]`` in the ``convention`` camera frame (the dataset's
            maps: OpenGL, 0 in the background). ``masks [V, H, W]``: pixels that count
            (``None``: all, the background pulled to 0).
        resolution: render resolution; default ``H``. Other values resample the targets
            (bilinear at the new pixel centres, as the trainer does).
        density: :class:`npht.render.LaplaceDensity` (default: the thesis' beta 0.001);
            frozen.
        views_per_chunk: render and backpropagate this many views at a time (memory is
            bounded by one chunk's rendering; the gradients are summed, the loss is the
            same mean over all counted pixels). ``None``: all views at once.
        tile: further split each image into ``tile x tile`` pixel tiles rendered one at a
            time (cropped intrinsics: the same rays), for high resolutions. The
            error-bound sampler stops its rounds per render call (batch-wide), so tiled
            renders agree with whole ones to the sampler's accuracy, not bitwise.
        jitter: randomise the renderer's sampling (VolSDF's training mode) with a
            generator seeded by ``seed``; off: deterministic samples.
        renderer_options: further :class:`npht.render.VolSDFRenderer` fields.
        fused_gradient: tri-plane models: the shaded samples' SDF and normals from the
            decoder's fused value and gradient (``model.decoder.sdf_and_gradient(...,
            fused=True, **fused_gradient)``: ``{}``, or options such as
            ``{"checkpoint": True}`` for memory or ``{"mlp_matmul": "triton",
            "mlp_h_dtype": torch.float16}`` on a GPU) instead of autograd through the
            decoder; ``None`` (default): autograd. The same numbers to float32 rounding.

    >>> import torch
    >>> from npht.models import NPMBaseline
    >>> from npht.render import fibonacci_cameras
    >>> torch.manual_seed(0) and None
    >>> model = NPMBaseline(2, z_dim=4, hidden=16, layers=2, skip=None)
    >>> cams = fibonacci_cameras(2, resolution=8)
    >>> target = torch.zeros(2, 8, 8, 3)
    >>> res = fit_normal_maps(model, cams, target, schedule=FitSchedule(iterations=2), progress=False)
    >>> len(res.history["data"])
    2
    """
    from ..render import Cameras, LaplaceDensity, VolSDFRenderer
    from ..train.losses import normal_map_loss

    schedule = schedule or FitSchedule()
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be npht.render.Cameras, got {type(cameras).__name__}")
    V = len(cameras)
    if not isinstance(target_normals, torch.Tensor) or target_normals.dim() != 4 or target_normals.shape[-1] != 3 \
            or target_normals.shape[0] != V:
        raise ValueError(f"target_normals must have shape [V={V}, H, W, 3], got "
                         f"{tuple(target_normals.shape) if isinstance(target_normals, torch.Tensor) else target_normals!r}")
    H, W = target_normals.shape[1:3]
    if masks is not None and (not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (V, H, W)):
        raise ValueError(f"masks must have shape [V={V}, H={H}, W={W}], got "
                         f"{tuple(masks.shape) if isinstance(masks, torch.Tensor) else masks!r}")
    if convention not in ("world", "opencv", "opengl"):
        raise ValueError(f"convention must be 'world', 'opencv' or 'opengl', got {convention!r}")
    if views_per_chunk is not None and (not isinstance(views_per_chunk, int) or views_per_chunk < 1):
        raise ValueError(f"views_per_chunk must be a positive int or None, got {views_per_chunk!r}")
    if tile is not None and (not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile must be a positive int or None, got {tile!r}")
    triplane = hasattr(model, "planes") and hasattr(model, "decoder")
    if fused_gradient is not None:
        if not isinstance(fused_gradient, dict):
            raise TypeError(f"fused_gradient must be None or a dict of sdf_and_gradient options, "
                            f"got {type(fused_gradient).__name__}")
        if not triplane:
            raise ValueError(f"fused_gradient needs a tri-plane model (planes and decoder), got "
                             f"{type(model).__name__}")
        if "gradient_fn" in (renderer_options or {}):
            raise ValueError("fused_gradient sets the renderer's gradient_fn: do not pass one in renderer_options")
        reserved = {"fused", "planes", "points"} & set(fused_gradient)
        if reserved:
            raise ValueError(f"fused_gradient must not set {sorted(reserved)} (the fit passes them)")
    device = cameras.device
    unit_id = _code_scale(model, schedule)
    target = target_normals.detach().to(device=device, dtype=torch.float32)
    mask = None if masks is None else masks.detach().to(device)
    R = int(resolution) if resolution is not None else H
    if R < 1:
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    if (R, R) != (H, W):
        from ..train.identity import resample_maps

        m = mask if mask is not None else torch.ones(V, H, W, device=device)
        target, mask2 = resample_maps(target, m, R)
        mask = mask2 if masks is not None else None
    count = float(mask.float().sum()) if mask is not None else float(V * R * R)
    count = max(count, 1.0)

    dim = _model_dim(model)
    z = _code(init, _mean_code(model, dim), dim, 1, "init", target).requires_grad_(True)
    density = density if density is not None else LaplaceDensity().to(device)
    renderer = VolSDFRenderer(density=density, **(renderer_options or {}))
    gen = torch.Generator(device=device).manual_seed(seed)
    chunk = views_per_chunk or V
    cams_r = cameras.resized(R, R)
    t = tile or R
    tiles = [(y, x, min(t, R - y), min(t, R - x)) for y in range(0, R, t) for x in range(0, R, t)]

    def crop(cams, y, x, h, w):
        K = cams.K.clone()
        K[:, 0, 2] -= x
        K[:, 1, 2] -= y
        return Cameras(K, cams.cam2world, h, w)

    def step(i):
        data_total = 0.0
        if triplane:
            planes = model.planes(z)                      # [1, 3, C, R, R], generated once
            # a channels-last leaf: every tile's render samples it without a copy
            planes_d = planes.detach().permute(0, 1, 3, 4, 2).contiguous().requires_grad_(True)
        for s in range(0, V, chunk):
            idx = list(range(s, min(s + chunk, V)))
            v = len(idx)
            if triplane:  # the v views' points sampled together from the one set of planes
                sdf_fn, sdf_and_gradient_fn = model.decoder.grouped(planes_d, v, channels_last=True,
                                                                     **model.sample_kwargs)
                render_v = renderer
                if fused_gradient is not None:
                    render_v = replace(renderer, gradient_fn=partial(sdf_and_gradient_fn, fused=True,
                                                                     **fused_gradient))
            else:
                sdf_fn, render_v = model.sdf_fn(z, group=v), renderer
            for (y, x, h, w) in tiles:
                cams = crop(cams_r[idx], y, x, h, w) if (h, w) != (R, R) else cams_r[idx]
                out = render_v(sdf_fn, cams, None, training=jitter, generator=gen, convention=convention)
                tgt = target[idx][:, y:y + h, x:x + w]
                m = None if mask is None else mask[idx][:, y:y + h, x:x + w]
                part = normal_map_loss(out.normals, tgt, m, reduction="sum") / count
                part.backward()
                data_total += float(part.detach())
        if triplane:
            planes.backward(planes_d.grad.permute(0, 1, 4, 2, 3))
        reg = schedule.lambda_id_at(i) * _sq(z) / unit_id
        reg.backward()
        return None, dict(loss=data_total + float(reg.detach()), data=data_total, reg=float(reg.detach()))

    with _frozen(model, density):
        history, secs = _run([z], schedule, step, progress, "fit normal maps")
    return FitResult(z.detach(), None, history, secs)
