"""Identity-model training (thesis Sec. 4.2, multi-stage schedule of Sec. 4.2.4,
optimisers and hyper-parameters of Sec. 5.2.2).

``IdentityTrainer(config, data_root, out_dir, resume=False)``; ``step(batch)`` is one
thesis step: 3D terms on the batch points (SDF values and gradients kept differentiable
so the eikonal and normal terms train), then, in stage 1, normal maps rendered from the
item's cameras (L1 against the GT maps; masked with ``nmr_masked``), the generator loss from D, and a
discriminator update with R1 on the real maps. ``train(epochs)`` loops over the data with
a CSV log, image grids and atomic checkpoints; a resumed run repeats the uninterrupted
one bit for bit.

Data parallel (``torchrun --nproc_per_node N -m npht train identity ...``; the helpers are
in :mod:`npht.train.distributed`): ``setup_distributed`` starts the process group from
torchrun's environment (nccl on GPUs, one per ``LOCAL_RANK``; gloo on CPUs). Each rank
takes ``batch_size`` items of the epoch's permutation (``rank::world``, padded to a
multiple of ``world`` like ``DistributedSampler``), so the global batch is ``batch_size x
world``, and a step on N ranks is a step on the combined batch (tested on gloo): the model
runs under :class:`torch.nn.parallel.DistributedDataParallel` (:class:`_IdentityStep`, the
whole generator-side forward), the discriminator under its own DDP; reduced by hand are
the sparse gradient of the auto-decoder codes (``reduce_sparse_grad``) and the density's,
which only the stages rendering into the loss use (out of DDP, so that DDP runs without
``find_unused_parameters``; ``reduce_dense_grads``).
On GPUs the generator's BatchNorm becomes SyncBatchNorm; on CPU (gloo) it normalises each
rank's batch (DDP refuses SyncBatchNorm there; a warning says so), so there the equality
holds only for generators without BatchNorm (the test's plane_resolution 16).
The error-bound sampler stops its rounds when the rays of all ranks have converged (its
``reduce_unconverged``: ``any_rank``), as on the combined batch. Not batch-independent:
the sampler's jitter (a stream per rank and step; switch it off with
``render_jitter=False``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import time
import traceback
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .._atomic import write_atomic
from ..ops._backend import resolve_backend
from ..ops.mlp import matmul_precision
from .distributed import (any_rank, rank_and_world, reduce_dense_grads, reduce_sparse_grad,
                          setup_distributed)
from .checkpoint import CheckpointedRun, check_limits, cli_overrides, resume_or_preset_config
from .runlog import train_loop
from .config import PRESETS, TrainConfig
from .losses import (discriminator_loss, edr_perturbation, identity_losses,
                     multi_stage_schedule, r1_penalty)

__all__ = ["IdentityTrainer", "build_identity_model", "collate", "add_train_parser", "train_identity_main",
           "setup_distributed", "LOG_COLUMNS"]

# X of eqs. 4.3/4.4 ("random 3D co-ordinates of free space within unit sphere"). The near-surface
# sets the thesis sub-samples (5.1.2) are not in X: 0.0025 from the surface, the non-surface
# penalty would push the SDF off zero there. The dataset still yields them (``counts``) for
# models that use ground-truth SDF off the surface.
SPACE_KEYS = ("ball_points",)
LOG_TERMS = ("ss", "sn", "eik", "nsp", "edr", "nmr", "g", "tv", "tp", "lat_id", "total", "d", "r1")
LOG_COLUMNS = ("epoch", "step", "stage") + LOG_TERMS + ("lr", "time", "mem_gib")  # mem_gib: GPU runs


def collate(items: List[dict]) -> dict:
    """Stack tensors (and numbers) of dict items; other values become lists."""
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], (int, float, np.integer, np.floating)):
            out[k] = torch.as_tensor(vals)
        else:
            out[k] = vals
    return out


def _seed_of(*keys: int) -> int:
    """A 63-bit seed from integer keys (independent streams for distinct keys)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]) >> 1


class _IdentityStep(torch.nn.Module):
    """The generator side of one step as a module: holds the model (the parameters
    DistributedDataParallel reduces, but the codes) and the density (reduced by hand, see
    :func:`reduce_dense_grads`) and returns ``(terms, maps)`` of
    :meth:`IdentityTrainer._losses`. The discriminator is *not* a submodule: the generator
    loss runs it unwrapped with ``requires_grad`` off; it is trained by its own step."""

    def __init__(self, trainer: "IdentityTrainer"):
        super().__init__()
        self.model, self.density = trainer.model, trainer.density
        self.trainer = trainer   # a plain object, not registered

    def forward(self, batch: dict, weights):
        return self.trainer._losses(batch, weights)


def _clip(params, max_norm: Optional[float]) -> float:
    """Gradient-norm clipping over dense and sparse gradients (none for ``max_norm`` None or
    0); returns the gradients' norm before clipping (0 without gradients; inf or nan, with
    nothing scaled, when they are not finite: the trainers then skip the update)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    grads = [g.coalesce() if g.is_sparse else g for g in grads]
    norms = [(g._values() if g.is_sparse else g).detach().norm() for g in grads]
    total = torch.stack(norms).norm()
    norm = float(total)
    if not max_norm or not math.isfinite(norm):
        return norm
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p, g in zip([p for p in params if p.grad is not None], grads):
        if g.is_sparse:
            p.grad = torch.sparse_coo_tensor(g._indices(), g._values() * scale, g.shape,
                                             check_invariants=False, is_coalesced=True)
        else:
            g.mul_(scale)
    return norm


def build_identity_model(cfg: TrainConfig, n_id: int) -> torch.nn.Module:
    """The identity model of ``cfg`` (tri-plane or NPM baseline) with ``n_id`` codes, as
    :class:`IdentityTrainer` builds it (also used to reload its checkpoints)."""
    from ..models import IdentityModel, NPMBaseline, TriplaneDecoder, TriplaneGenerator

    if cfg.model == "triplane":
        gen = TriplaneGenerator(cfg.z_dim, cfg.plane_channels, cfg.plane_resolution, base=cfg.generator_base,
                                upsample_mode=cfg.plane_upsample)
        dec = TriplaneDecoder(cfg.plane_channels, cfg.decoder_hidden, cfg.decoder_layers)
        if cfg.geometric_init:
            dec.geometric_init_()
        return IdentityModel(gen, dec, n_id, cfg.z_dim, init_std=cfg.code_init_std)
    if cfg.model == "npm":
        return NPMBaseline(n_id, cfg.z_dim, cfg.npm_hidden, cfg.npm_layers,
                           init_std=cfg.code_init_std, geometric_init=cfg.geometric_init,
                           skip_shrink=cfg.npm_skip_shrink)
    raise ValueError(f"model must be 'triplane' or 'npm', got {cfg.model!r}")


def auto_decoder_optimizers(net_params, code_params, cfg, no_decay_params=()):
    """Sec. 5.2.2's optimisers of an auto-decoder: AdamW for the networks, SparseAdam for
    the codes, each with its step decay (``cfg``: lr, weight_decay, lr_codes, lr_decay,
    decay_interval, decay_interval_codes). ``no_decay_params`` (the Laplace density's beta)
    join AdamW in a second group without weight decay: decay would pull beta_param to 0,
    i.e. the density towards its sharpest (beta_min). Returns ``(opt, opt_codes, sched,
    sched_codes)``."""
    groups = [{"params": list(net_params)}]
    if len(no_decay_params):
        groups.append({"params": list(no_decay_params), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_codes = torch.optim.SparseAdam(code_params, lr=cfg.lr_codes)
    return (opt, opt_codes, torch.optim.lr_scheduler.StepLR(opt, cfg.decay_interval, cfg.lr_decay),
            torch.optim.lr_scheduler.StepLR(opt_codes, cfg.decay_interval_codes, cfg.lr_decay))


def _check_normal_maps(data_root: str, views: int) -> None:
    """A ValueError in the command line's terms when the prepared folder ``data_root`` has
    fewer cameras per record than the ``views`` normal maps a step of a run with the 2D
    losses draws (HeadDataset's own error names its argument, no flag)."""
    from ..data.prepare import load_manifest

    cameras = load_manifest(data_root).get("config", {}).get("cameras", 0)
    if not cameras:
        raise ValueError(f"{data_root} has no normal maps (prepared with --cameras 0), and this preset trains with the "
                         f"2D losses, which need them: prepare the data again with --cameras N (e.g. 128), or train "
                         f"without normal maps (--preset npm: the NPM baseline, 3D losses only)")
    if views > cameras:
        raise ValueError(f"{data_root} has {cameras} normal maps per record (prepared with --cameras {cameras}); the "
                         f"run draws {views} per step: prepare the data with --cameras {views} or more")


class IdentityTrainer(CheckpointedRun):
    KIND = "identity"

    def __init__(self, config: TrainConfig, data_root: str, out_dir: str, *, resume: bool = False,
                 dataset=None):
        from ..data.dataset import HeadDataset
        from ..models import Discriminator
        from ..render import LaplaceDensity

        self.cfg = cfg = config.check()
        self.out_dir = os.fspath(out_dir)
        self._refuse_overwrite(resume)
        os.makedirs(self.out_dir, exist_ok=True)
        self.device = torch.device(cfg.device)
        if cfg.fused_matmul == "triton" and cfg.model == "triplane":
            resolve_backend("triton", self.device)  # fails here, not at the first step, where Triton cannot run
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.rank, self.world = rank_and_world()
        if self.world > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        views = cfg.views if cfg.uses_2d else 0
        if dataset is None and views:
            _check_normal_maps(data_root, views)
        self.dataset = dataset if dataset is not None else HeadDataset(
            data_root, "train", counts=cfg.counts, views=views, seed=cfg.seed)
        n_id = len(self.dataset.identity_index)
        self.model = build_identity_model(cfg, n_id)
        self.model.to(self.device)
        self.density = LaplaceDensity(cfg.beta_init, cfg.beta_min).to(self.device)
        self.disc = None
        if cfg.uses_2d:
            self.disc = Discriminator(cfg.d_resolution, 3, cfg.disc_base, cfg.disc_max_channels).to(self.device)
            self.rig = self.dataset.cameras(cfg.render_resolution).to(self.device)
        self.schedule = multi_stage_schedule(tuple(cfg.stage_epochs), cfg.weights)
        # optimisers (Sec. 5.2.2): AdamW networks, SparseAdam codes, SGD/Adam discriminator
        code_params = [self.model.codes.weight]
        net_params = [p for n, p in self.model.named_parameters() if not n.startswith("codes.")]
        density_params = list(self.density.parameters())
        self.net_params, self.code_params = net_params + density_params, code_params
        self.opt, self.opt_codes, self.sched, self.sched_codes = auto_decoder_optimizers(
            net_params, code_params, cfg, no_decay_params=density_params)
        self.opt_d = self.sched_d = None
        if self.disc is not None:
            if cfg.disc_optimizer == "sgd":
                self.opt_d = torch.optim.SGD(self.disc.parameters(), lr=cfg.lr_disc)
            elif cfg.disc_optimizer == "adam":
                self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr_disc, betas=cfg.disc_betas)
            else:
                raise ValueError(f"disc_optimizer must be 'sgd' or 'adam', got {cfg.disc_optimizer!r}")
            self.sched_d = torch.optim.lr_scheduler.StepLR(self.opt_d, cfg.decay_interval, cfg.lr_decay)
        # data parallel: DDP over the generator-side step (codes excluded: their sparse
        # gradient is reduced by reduce_sparse_grad) and over D for its own update
        if self.world > 1 and self.device.type == "cuda":
            # BatchNorm (the generator's) normalises over the global batch, as one process would
            # (SyncBatchNorm reuses the Parameters: the optimisers above still hold them). DDP
            # refuses SyncBatchNorm on CPU: there (gloo) BatchNorm uses each rank's batch.
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        elif self.world > 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            warnings.warn("data parallel on CPU (gloo): the generator's BatchNorm normalises each rank's batch "
                          "(DDP refuses SyncBatchNorm there), so a step on N ranks is not the step of one process "
                          "on the combined batch (CUDA runs convert it to SyncBatchNorm)", stacklevel=2)
        self.step_module = _IdentityStep(self)
        self.disc_module = self.disc
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # find_unused_parameters=True would cost a traversal of the autograd graph every step;
            # without it every parameter DDP reduces must get a gradient at every step. Measured
            # (one step per stage of cpu-demo, with and without BatchNorm, and of npm; parameters
            # left with grad None): the density's beta alone goes unused, wherever the rendered
            # maps are not in the generator loss (stages 2-3 drop L_nmr and L_g; 3D-only models).
            # So the density stays out of DDP like the codes, its gradient reduced by hand in the
            # stages that render into the loss (reduce_dense_grads); the model's parameters all
            # get one from any term of the SDF's value (_uses_sdf_values: presets, every stage).
            ignore = ["model.codes.weight"] + [f"density.{n}" for n, _ in self.density.named_parameters()]
            DDP._set_params_and_buffers_to_ignore_for_model(self.step_module, ignore)
            self.step_module = DDP(self.step_module, find_unused_parameters=not self._uses_sdf_values())
            if self.disc is not None:
                self.disc_module = DDP(self.disc)
        # sampler jitter: re-seeded every step from (seed, step, rank), so a resume (all
        # ranks load rank 0's checkpoint) draws what the uninterrupted run drew; EDR noise is
        # per item (_edr_points). The state stays in the checkpoint for older readers.
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self._start_run(LOG_COLUMNS, LOG_TERMS, "loss", resume)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        s = self._run_state()
        s.update(density=self.density.state_dict(), identity_names=dict(self.dataset.identity_index),
                 stage=self.stage.index, gen=self.gen.get_state())
        if self.disc is not None:
            s.update(disc=self.disc.state_dict(), opt_d=self.opt_d.state_dict(), sched_d=self.sched_d.state_dict())
        return s

    def load_state_dict(self, s: dict) -> None:
        self._check_identities(s)
        self._load_run_state(s)
        self.density.load_state_dict(s["density"])
        if self.disc is not None:
            self.disc.load_state_dict(s["disc"])
            self.opt_d.load_state_dict(s["opt_d"])
            self.sched_d.load_state_dict(s["sched_d"])
        self.gen.set_state(s["gen"].cpu())

    def _check_identities(self, s: dict) -> None:
        """ValueError unless the state's identity codes are this dataset's identities (their
        number, and their names where the state stores them): resuming on other data would
        fail in load_state_dict on the code table's size, or, with as many identities, train
        each stored code on another person."""
        data = getattr(self.dataset, "root", "the dataset")
        n_saved, n_data = s["model"]["codes.weight"].shape[0], len(self.dataset.identity_index)
        if n_saved != n_data:
            raise ValueError(f"the checkpoint was trained on {n_saved} identities but {data} has {n_data} training "
                             "identities: resume with the data the run was trained on (--data), or start a new run")
        names = s.get("identity_names")
        if names is not None and dict(names) != dict(self.dataset.identity_index):
            differ = sorted(set(names) ^ set(self.dataset.identity_index))[:8] or "their order"
            raise ValueError(f"the checkpoint was trained on other identities than {data}'s training identities "
                             f"(differing: {differ}): resume with the data the run was trained on (--data), or "
                             "start a new run")

    @property
    def stage(self):
        return self.schedule.stage_at(self.epoch)

    def _maps_in_loss(self, weights) -> bool:
        """Whether the rendered normal maps, and with them the density, enter the generator
        loss under ``weights`` (L_nmr or L_g; maps rendered for D alone are detached)."""
        return self.disc is not None and (weights.nmr != 0 or weights.g != 0)

    def _uses_sdf_values(self) -> bool:
        """Whether every stage's loss has a term of the SDF's values (L_ss, L_nsp, L_edr, or the
        maps), through which every parameter of the model gets a gradient at every step (DDP
        then runs without ``find_unused_parameters``). False for weights that leave a stage
        with L_sn / L_eik alone (the SDF's gradient: the last layer's bias has no part in it),
        or with the plane terms alone."""
        for stage in self.schedule.stages:
            w = self.schedule.weights.without(stage.disabled)
            if not (w.ss != 0 or w.nsp != 0 or w.edr != 0 or self._maps_in_loss(w)):
                return False
        return True

    # ------------------------------------------------------------------ step
    def _autocast(self):
        if self.cfg.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _precision(self):
        """TF32 (``cfg.tf32``) for the gradient computations, else the caller's setting."""
        return matmul_precision("high") if self.cfg.tf32 else contextlib.nullcontext()

    def _sdf_grad(self, planes, idx, pts):
        cfg = self.cfg
        with self._precision():
            if cfg.model == "npm":
                return self.model.sdf_and_gradient(pts, idx)
            return self.model.decoder.sdf_and_gradient(planes, pts, fused=cfg.fused_gradient and not cfg.bf16,
                                                       **cfg.fused_kwargs(), **self.model.sample_kwargs)

    def render_maps(self, planes, batch) -> torch.Tensor:
        """Normal maps ``[B, V, H, W, 3]`` (OpenGL camera frame) of each identity seen
        from its item's cameras."""
        from ..render import ErrorBoundSampler, render, sdf_and_gradient_autograd

        cfg, dec, kw = self.cfg, self.model.decoder, self.model.sample_kwargs
        cam_idx = batch["camera_index"]                       # [B, V]
        B, V = cam_idx.shape
        cams = self.rig[cam_idx.reshape(-1).tolist()]        # camera b*V+v sees identity b
        n, ne, nx = cfg.samples
        # under DDP the sampler's rounds stop when the rays of all ranks have converged, as
        # on the combined batch (all ranks render here at the same steps: a collective per round)
        sampler = ErrorBoundSampler(n, ne, nx, cfg.sampler_eps, cfg.beta_iters, cfg.max_total_iters,
                                    skip_converged=cfg.skip_converged,
                                    reduce_unconverged=any_rank if self.world > 1 else None)

        sdf_fn, sdf_and_gradient_fn = dec.grouped(planes, V, **kw)  # identity b's V cameras sampled together
        if cfg.fused_gradient and not cfg.bf16:
            def grad_fn(p):
                with self._precision():
                    return sdf_and_gradient_fn(p, fused=True, checkpoint=cfg.fused_checkpoint, **cfg.fused_kwargs())
        elif cfg.tf32:  # the renderer's own autograd shading, in TF32
            def grad_fn(p):
                with self._precision():
                    return sdf_and_gradient_autograd(sdf_fn, p, torch.is_grad_enabled())
        else:
            grad_fn = None
        out = render(sdf_fn, cams, cfg.render_resolution, density=self.density,
                     training=cfg.render_jitter, generator=self.gen, convention="opengl", sampler=sampler,
                     weight_threshold=cfg.weight_threshold, gradient_fn=grad_fn,
                     coarse_factor=cfg.render_coarse_factor)
        R = cfg.render_resolution
        return out.normals.reshape(B, V, R, R, 3)

    def _to_disc(self, maps: torch.Tensor) -> torch.Tensor:
        x = maps.reshape(-1, *maps.shape[-3:]).permute(0, 3, 1, 2)
        if x.shape[-1] != self.cfg.d_resolution:
            x = F.interpolate(x, size=self.cfg.d_resolution, mode="bilinear", align_corners=False)
        return x.contiguous()

    def _edr_points(self, space: torch.Tensor, batch: dict) -> torch.Tensor:
        """EDR's perturbed free-space points; the noise of an item is drawn from a
        generator keyed by (seed, step, the item's dataset index), so it does not depend on
        the batch the item is in (N ranks repeat the combined batch) nor on a resume."""
        B = space.shape[0]
        index = batch.get("index")
        index = index.tolist() if index is not None else list(range(B))
        out = []
        for b in range(B):
            g = torch.Generator(device=space.device).manual_seed(
                _seed_of(self.cfg.seed, 0xED5, self.global_step, index[b]))
            out.append(edr_perturbation(space[b], generator=g))
        return torch.stack(out)

    def _losses(self, batch: dict, weights):
        """The generator-side forward of a step (run through :attr:`step_module`): the
        weighted terms and the rendered maps (None in 3D-only stages)."""
        cfg = self.cfg
        idx = batch["identity_index"].long()
        with self._autocast():
            planes = self.model.planes(idx) if cfg.model == "triplane" else None
            surf = torch.cat([batch["surface_face_points"], batch["surface_nonface_points"]], 1)
            space = torch.cat([batch[k] for k in SPACE_KEYS], 1)
            sdf, grad = self._sdf_grad(planes, idx, torch.cat([surf, space], 1))
            sdf, grad = sdf.float(), grad.float()
            ns = surf.shape[1]
            perturbed = None
            if weights.edr != 0:
                pts = self._edr_points(space, batch)
                with self._precision():
                    perturbed = (self.model.decoder.sdf(planes, pts, **self.model.sample_kwargs) if planes is not None
                                 else self.model(pts, idx)).float()
            render_2d = self.disc is not None and (weights.nmr != 0 or weights.g != 0 or weights.d != 0)
            maps = d_fake = nmr_denominator = None
            if render_2d:
                maps = self.render_maps(planes, batch).float()
                if weights.g != 0:
                    self.disc.requires_grad_(False)
                    d_fake = self.disc(self._to_disc(maps)).float()
                    self.disc.requires_grad_(True)
                if self.world > 1 and weights.nmr != 0 and cfg.nmr_masked:
                    # the masked mean runs over the pixels of all ranks: each rank divides
                    # by (all ranks' count / world), so the ranks' mean is the combined one
                    count = batch["masks"].float().sum()
                    torch.distributed.all_reduce(count)
                    nmr_denominator = count.clamp_min(1.0) / self.world
            terms = identity_losses(batch, weights, surface_sdf=sdf[:, :ns], surface_grad=grad[:, :ns],
                                    space_sdf=sdf[:, ns:], space_grad=grad[:, ns:], space_sdf_perturbed=perturbed,
                                    normal_maps=maps, d_fake=d_fake, planes=None if planes is None else planes.float(),
                                    z_id=self.model.latent(idx), use_masks=cfg.nmr_masked, eikonal_mode=cfg.eikonal_mode,
                                    nmr_denominator=nmr_denominator)
        return terms, maps

    def step(self, batch: dict) -> Dict[str, float]:
        """One training step on a collated batch; returns the logged values (under DDP the
        mean over the ranks, i.e. the combined batch's)."""
        cfg, t0 = self.cfg, time.perf_counter()
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if "normal_maps" in batch and batch["normal_maps"].shape[-2] != cfg.render_resolution:
            batch["normal_maps"], batch["masks"] = resample_maps(batch["normal_maps"], batch["masks"],
                                                                 cfg.render_resolution)
        weights = self.schedule.active_weights(self.epoch)
        stage = self.stage
        # the renderer's jitter: one stream per rank and step (documented: N ranks do not
        # draw the combined batch's jitter; cfg.render_jitter=False renders deterministically)
        self.gen.manual_seed(_seed_of(cfg.seed, 0x7E4, self.global_step, self.rank))
        self.model.train()
        buffers = self._model_buffers()
        terms, maps = self.step_module(batch, weights)
        self.opt.zero_grad(set_to_none=True)
        self.opt_codes.zero_grad(set_to_none=True)
        with self._precision():
            terms["total"].backward()      # DDP averages the dense gradients over the ranks
        if self.world > 1:
            for p in self.code_params:
                reduce_sparse_grad(p, self.world)
            if self._maps_in_loss(weights):   # the density (not in DDP): used in these stages only
                reduce_dense_grads(self.density.parameters(), self.world)
        # after the reduction, as in one process (so every rank skips the same steps)
        norms = (_clip(self.net_params, cfg.grad_clip), _clip(self.code_params, cfg.grad_clip_codes))
        finite = self._update_if_finite(norms, (self.opt, self.opt_codes), "generator side", buffers)
        row = {k: v.detach().float() for k, v in terms.items()}
        render_2d = maps is not None
        if render_2d and weights.d != 0:
            d_row, d_finite = self._disc_step(maps.detach(), batch, weights.d)
            row.update(d_row)
            finite = finite and d_finite
        self._count_step(finite)
        row = self._mean_over_ranks(row)
        self.global_step += 1
        self.step_in_epoch += 1
        row.update(epoch=self.epoch, step=self.global_step, stage=stage.index, lr=self.opt.param_groups[0]["lr"],
                   time=time.perf_counter() - t0)
        self._last_maps = (maps.detach() if maps is not None else None, batch.get("normal_maps"))
        return row

    def _mean_over_ranks(self, row: Dict[str, torch.Tensor]) -> Dict[str, float]:
        keys = sorted(row)
        if self.world > 1 and keys:
            v = torch.stack([row[k].reshape(()) for k in keys])
            torch.distributed.all_reduce(v)
            row = dict(zip(keys, v / self.world))
        return {k: float(row[k]) for k in keys}

    def _disc_step(self, fake, batch, w_d) -> Dict[str, torch.Tensor]:
        fake = self._to_disc(fake)
        real = self._to_disc(batch["normal_maps"].float()).requires_grad_(True)
        with self._autocast():
            # one forward of fake and real together (one DDP forward per backward)
            d = self.disc_module(torch.cat([fake, real])).float()
            d_fake, d_real = d[:fake.shape[0]], d[fake.shape[0]:]
            # lambda_d * L_d, with L_d of eq. 4.8 including its lambda * L_gp
            loss_d = w_d * discriminator_loss(d_fake, d_real)
            r1 = w_d * r1_penalty(d_real, real, weight=self.cfg.weights.r1)
        self.opt_d.zero_grad(set_to_none=True)
        (loss_d + r1).backward()           # under DDP: averaged over the ranks
        norm = _clip(list(self.disc.parameters()), None)
        finite = self._update_if_finite((norm,), (self.opt_d,), "discriminator")
        return {"d": loss_d.detach(), "r1": r1.detach()}, finite

    # ------------------------------------------------------------------ loop
    def _batches(self, epoch: int) -> List[List[int]]:
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        if self.world > 1:   # DistributedSampler-style: padded so every rank takes as many steps
            total = -(-len(order) // self.world) * self.world
            order = (order * -(-total // len(order)))[:total]
            order = order[self.rank::self.world]
        bs = self.cfg.batch_size
        return [order[i:i + bs] for i in range(0, len(order), bs)]

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.sched.step()
        self.sched_codes.step()
        if self.sched_d is not None:
            with warnings.catch_warnings():   # D is not stepped in stages 2-3
                warnings.simplefilter("ignore", UserWarning)
                self.sched_d.step()

    def train(self, epochs: Optional[int] = None, max_steps: Optional[int] = None) -> None:
        """Train until ``epochs`` epochs are done in all (default: the three stages), or
        ``max_steps`` more steps were taken; a checkpoint is written at the end."""
        cfg = self.cfg
        check_limits(epochs, max_steps)
        end = sum(cfg.stage_epochs) if epochs is None else int(epochs)
        images = (lambda: self.save_images() if cfg.image_every and self.global_step % cfg.image_every == 0
                  else None)
        train_loop(self, end, max_steps, desc="train", show_bar=cfg.progress and self.rank == 0,
                   postfix=lambda row: dict(epoch=self.epoch, stage=row["stage"], loss=f"{row['total']:.4g}"),
                   after_step=images)

    def _log(self, row: dict) -> None:
        if self.rank != 0 or not self.cfg.log_every or self.global_step % self.cfg.log_every:
            return
        self.log.write(row, self.global_step)

    def save_images(self) -> Optional[str]:
        """PNG grid: rendered (top) vs GT (bottom) normal maps of the last step."""
        pred, gt = getattr(self, "_last_maps", (None, None))
        if pred is None or gt is None or self.rank != 0:
            return None
        from PIL import Image

        def row(m):
            m = m.reshape(-1, *m.shape[-3:]).float().cpu().clamp(-1, 1)
            return torch.cat(list((m + 1) * 0.5), dim=1)      # [H, N*W, 3]

        grid = torch.cat([row(pred), row(gt)], 0)
        path = os.path.join(self.out_dir, "images", f"step_{self.global_step:07d}.png")
        write_atomic(path, Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).save)
        return path


# ---------------------------------------------------------------------- CLI
def resample_maps(maps: torch.Tensor, masks: torch.Tensor, resolution: int):
    """GT normal maps ``[..., H, W, 3]`` and masks ``[..., H, W]`` resampled to
    ``resolution^2`` at the new pixel centres (bilinear, the points the renderer's rays go
    through), normals renormalised, mask = interpolated coverage > 0.5, 0 outside it."""
    lead = maps.shape[:-3]
    x = maps.reshape(-1, *maps.shape[-3:]).permute(0, 3, 1, 2).float()
    m = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False)
    m = F.interpolate(m, size=resolution, mode="bilinear", align_corners=False)[:, 0] > 0.5
    x = F.normalize(x.permute(0, 2, 3, 1), dim=-1) * m[..., None]
    return x.reshape(*lead, resolution, resolution, 3), m.reshape(*lead, resolution, resolution)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """``npht train identity --preset P --data DIR --out DIR [--resume] [--epochs ...]``."""
    from ..cli import HelpFormatter

    p = subparsers.add_parser("identity", help="train the identity model", formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default cpu-demo; with --resume and a checkpoint in --out: the run's own settings")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--out", required=True, help="output folder (log, images, checkpoint)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (without one: start a new run there); "
                        "without --resume a folder holding a run is refused")
    p.add_argument("--epochs", type=int, nargs=3, metavar=("E1", "E2", "E3"),
                   help="epochs of the three stages (default: the preset's)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many more steps (default: no limit; the run ends after the stages)")
    p.add_argument("--batch-size", type=int, help="identities per step (default: the preset's)")
    p.add_argument("--device", help="default: cuda when torch sees a GPU, else cpu")
    p.add_argument("--seed", type=int, help="seed of the initialisation, the data order and the samples "
                                            "(default: the preset's, 0)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward passes")
    p.add_argument("--tf32", action="store_true",
                   help="TF32 matmuls in the gradient computations (the sampler stays float32)")
    p.add_argument("--fused-gradient", action="store_true",
                   help="the decoder's value and gradient from npht.softplus_mlp_with_grad (presets but thesis-64 "
                        "and npm have it)")
    p.add_argument("--fused-matmul", choices=("torch", "triton"),
                   help="the fused decoder gradient's products (triton: elementwise steps fused in; GPU)")
    p.add_argument("--fused-h16", action="store_true",
                   help="float16 pre-activations in the fused gradient (with --fused-matmul triton)")
    p.add_argument("--fused-d16", action="store_true",
                   help="float16 gradient-pass vectors in the fused gradient (with --fused-matmul triton)")
    p.add_argument("--fused-keep", action="store_true",
                   help="the 3D terms keep the fused gradient's gradient pass (memory for time)")
    p.add_argument("--ckpt-every", type=int,
                   help="write checkpoint.pt every this many steps (0: only at the end; default: the preset's)")
    p.add_argument("--image-every", type=int,
                   help="write a rendered-vs-GT PNG every this many steps (0: never; default: the preset's)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 0: load in the main process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=train_identity_main)
    return p


def train_identity_main(args) -> int:
    from ..cli import check_device, check_out_folder

    check_out_folder(args.out)
    check_device(args.device)
    check_limits(max_steps=args.max_steps)
    over = cli_overrides(args, ("batch_size", "device", "seed", "ckpt_every", "image_every", "fused_matmul", "workers"),
                         ("bf16", "tf32", "fused_gradient", "fused_h16", "fused_d16", "fused_keep"))
    if args.epochs:
        over["stage_epochs"] = tuple(args.epochs)
    cfg = resume_or_preset_config(TrainConfig, args, over, "cpu-demo", "identity").check()
    device, started = setup_distributed(cfg.device)   # torchrun: process group, LOCAL_RANK's GPU
    trainer = None
    try:
        trainer = IdentityTrainer(cfg.replace(device=device), args.data, args.out, resume=args.resume)
        trainer.train(max_steps=args.max_steps)
    except BaseException:
        if started:  # the traceback's frames hold the trainer (Stopped included): clear their
            traceback.clear_frames(sys.exc_info()[2])  # locals; the traceback stays printable
        raise
    finally:
        if started:
            # the trainer's DDP wrappers hold the group: free them first (a reference cycle would
            # keep them, and gloo's threads, alive into the interpreter's exit, which aborts)
            trainer = None
            gc.collect()
            torch.distributed.destroy_process_group()
    return 0
