"""Training configurations for the identity model and their presets.

Presets (``TrainConfig.preset(name, **overrides)``):

* ``thesis-64``: the thesis (Sec. 4.2, 5.2.2): TP model (z 512, planes 3 x 32 x 256^2,
  decoder 5 x 256), Table 4.1 weights, 64x64 normal maps rendered by the full VolSDF
  renderer (error-bound sampler 32/32, eps 0.1, beta 1e-3, beta_min 1e-4, beta_iters 10,
  max_iter 10; every sample shaded, autograd normals), batch 4, lr 5e-5 (AdamW, weight
  decay 0.02), codes lr 1e-3 (SparseAdam), discriminator lr 2e-4 (SGD, as written in
  5.2.2), step decay 0.75 every 1000 (networks) / 2000 (codes) epochs, gradient-norm
  clipping 0.1, stages 5k / 3k / 7k epochs (Sec. 4.2.4).
* ``npht-256``: the same model and hyper-parameters, 256x256 normal maps with npht's
  renderer options (``weight_threshold`` 1e-6, the fused decoder value+gradient for the
  shading pass), discriminator at 256 with Adam (pi-GAN's betas (0, 0.9)).
* ``cpu-demo``: tiny widths, few points, 16x16 maps (the discriminator sees them
  upsampled to 64x64, its smallest resolution), a small sampler, bilinear x4 upsampling in
  the generator (its DCGAN part ends at 16^2: nearest would leave visible 4-texel steps);
  minutes on 2 cores.
* ``gpu-demo``: what ``npht demo`` trains on a GPU: between the two (z 64, planes 3 x 16 x
  128^2, decoder 4 x 128, the thesis' point counts, 64x64 maps with npht-256's renderer
  options, Adam for the discriminator, the cpu-demo's learning rates), stages sized for
  about 3000 steps on the demo's 14 training identities.
* ``npm``: the NPM baseline (8 x 1024 DeepSDF), 3D losses only (NPM weights of 5.2.2),
  batch 32.

The fused decoder gradient's fast paths are off in every preset (not timed on a GPU yet):
``fused_matmul="triton"``, ``fused_h16``, ``fused_d16``, ``fused_keep`` and ``tf32`` (TF32 where gradients
are computed); :meth:`TrainConfig.check` refuses contradicting settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from .losses import LossWeights

__all__ = ["TrainConfig", "PRESETS", "check_counts"]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_counts(cfg, at_least_1=(), at_least_0=()) -> None:
    """ValueError ``"NAME must be >= 1, got X"`` for the first field of ``cfg`` named in
    ``at_least_1`` that is not an int >= 1 (likewise ``at_least_0``)."""
    for names, low in ((at_least_1, 1), (at_least_0, 0)):
        for name in names:
            v = getattr(cfg, name)
            if not _is_int(v) or v < low:
                raise ValueError(f"{name} must be >= {low}, got {v!r}")


@dataclass
class TrainConfig:
    # model
    model: str = "triplane"              # "triplane" | "npm"
    z_dim: int = 512
    plane_channels: int = 32
    plane_resolution: int = 256
    generator_base: int = 64
    plane_upsample: str = "nearest"      # TP_gen's x4 upsample: nn.Upsample's default (thesis: unstated)
    decoder_hidden: int = 256
    decoder_layers: int = 5
    code_init_std: float = 1.0           # Sec. 4.2.1: z_id ~ N(0, I)
    geometric_init: bool = True
    npm_hidden: int = 1024
    npm_layers: int = 8
    npm_skip_shrink: bool = True         # NPHM's DeepSDF: the layer before the skip outputs hidden - in
    # losses and schedule
    weights: LossWeights = field(default_factory=LossWeights.thesis)
    stage_epochs: Tuple[int, int, int] = (5000, 3000, 7000)
    eikonal_mode: str = "abs"
    # data
    batch_size: int = 4
    views: int = 1                       # normal maps per identity per step
    counts: Optional[Dict[str, int]] = None   # points per step (None: dataset default)
    workers: int = 0
    # rendering
    render_resolution: int = 64
    disc_resolution: Optional[int] = None     # None: = render_resolution
    disc_base: int = 32
    disc_max_channels: int = 400
    samples: Tuple[int, int, int] = (32, 32, 32)   # N_samples, N_samples_eval, N_samples_extra
    sampler_eps: float = 0.1
    beta_iters: int = 10
    max_total_iters: int = 10
    beta_init: float = 1e-3
    beta_min: float = 1e-4
    weight_threshold: Optional[float] = None
    render_coarse_factor: Optional[int] = None   # renderer's coarse_factor: cull rays with no surface nearby
    skip_converged: bool = False         # the sampler stops refining rays that meet eps
    fused_gradient: bool = False         # fused decoder value+gradient (3D terms and shading)
    fused_checkpoint: bool = False       # ... keeping nothing for the backward in the shading pass (memory)
    fused_matmul: str = "torch"          # ... its products: "torch" | "triton" (elementwise steps fused in; GPU)
    fused_h16: bool = False              # ... its pre-activations stored in float16 (needs fused_matmul="triton")
    fused_d16: bool = False              # ... its gradient pass' vectors stored in float16 (likewise)
    fused_keep: bool = False             # ... the 3D terms keep its gradient pass (memory for one product less)
    # TF32 (torch's "high" float32 matmul precision) where gradients are computed: the 3D
    # terms' SDF and gradient, the shading pass and the backward; the sampler's no-grad SDF
    # evaluations stay IEEE float32 (TF32 there moves unconverged rays' samples: README)
    tf32: bool = False
    # L_nmr over every pixel (GT background 0: a rendering with fog or floaters in the
    # background is penalised, eq. 4.6's whole-map L1); True: the GT mask's pixels only
    nmr_masked: bool = False
    render_jitter: bool = True           # VolSDF's random sampling while training (False: deterministic)
    # optimisation (Sec. 5.2.2)
    lr: float = 5e-5
    lr_codes: float = 1e-3
    lr_disc: float = 2e-4
    disc_optimizer: str = "sgd"          # "sgd" (thesis text) | "adam"
    disc_betas: Tuple[float, float] = (0.0, 0.9)
    weight_decay: float = 0.02
    lr_decay: float = 0.75
    decay_interval: int = 1000           # epochs
    decay_interval_codes: int = 2000     # epochs
    grad_clip: Optional[float] = 0.1
    grad_clip_codes: Optional[float] = 0.1
    # run
    seed: int = 0
    bf16: bool = False
    device: str = "cpu"
    ckpt_every: int = 1000               # steps (0: only at the end)
    image_every: int = 500               # steps (0: never)
    log_every: int = 1
    progress: bool = True

    def check(self) -> "TrainConfig":
        """Raises ValueError for counts out of range (a batch of 0 items, negative epochs or
        cadences: they would fail deep in the loop or silently train nothing) and for settings
        that contradict each other (the fused decoder gradient's options without it or on a
        model without it, float16 storage without Triton products); returns self."""
        check_counts(self, at_least_1=("batch_size",),
                     at_least_0=("views", "workers", "ckpt_every", "image_every", "log_every"))
        e = self.stage_epochs
        if not isinstance(e, (tuple, list)) or len(e) != 3 or not all(_is_int(x) and x >= 0 for x in e):
            raise ValueError(f"stage_epochs must be three ints >= 0, got {e!r}")
        if self.fused_matmul not in ("torch", "triton"):
            raise ValueError(f"fused_matmul must be 'torch' or 'triton', got {self.fused_matmul!r}")
        fused_opts = [k for k in ("fused_checkpoint", "fused_h16", "fused_d16", "fused_keep") if getattr(self, k)]
        if self.fused_matmul != "torch":
            fused_opts.append("fused_matmul")
        fast = [k for k in fused_opts if k != "fused_checkpoint"]  # (bf16 on a preset with it stays allowed)
        # the model first: on the NPM baseline "set fused_gradient" would only lead to this error
        if fast and self.model != "triplane":
            raise ValueError(f"{', '.join(fast)} configure the tri-plane decoder's fused gradient; the {self.model!r} "
                             f"model computes its gradient with autograd")
        if fused_opts and not self.fused_gradient:
            raise ValueError(f"{', '.join(fused_opts)} configure the fused decoder gradient: set fused_gradient=True "
                             f"(npht train identity --fused-gradient)")
        if fast and self.bf16:
            raise ValueError(f"bf16 runs the decoder's gradient through autograd (the fused gradient takes "
                             f"float32): {', '.join(fast)} would have no effect")
        for k in ("fused_h16", "fused_d16"):
            if getattr(self, k) and self.fused_matmul != "triton":
                raise ValueError(f"{k} stores float16 in the Triton products' kernels: set fused_matmul='triton'")
        return self

    def fused_kwargs(self) -> dict:
        """:meth:`npht.models.TriplaneDecoder.sdf_and_gradient`'s options of the fused gradient."""
        return dict(mlp_matmul=self.fused_matmul, mlp_h_dtype=torch.float16 if self.fused_h16 else None,
                    mlp_d_dtype=torch.float16 if self.fused_d16 else None, mlp_keep_gradient_pass=self.fused_keep)

    @property
    def uses_2d(self) -> bool:
        w = self.weights
        return self.model == "triplane" and (w.nmr != 0 or w.g != 0 or w.d != 0)

    @property
    def d_resolution(self) -> int:
        return self.disc_resolution or self.render_resolution

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    #: values of fields that checkpoints written before the field existed were trained with
    LEGACY = {"npm_skip_shrink": False}   # before NPHM's skip layout (2a75f46)

    @classmethod
    def from_saved(cls, d: dict) -> "TrainConfig":
        """The config a checkpoint's ``config`` dict was trained with (older ones included)."""
        return cls.from_dict({**cls.LEGACY, **d})

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        if isinstance(d.get("weights"), dict):
            d["weights"] = LossWeights(**d["weights"])
        if "r1_weight" in d:  # configs written before the R1 weight moved into LossWeights.r1
            r1 = d.pop("r1_weight")
            d["weights"] = dataclasses.replace(d.get("weights", LossWeights.thesis()), r1=r1)
        for k in ("stage_epochs", "samples", "disc_betas"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrainConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]().replace(**overrides)


def _thesis_64() -> TrainConfig:
    return TrainConfig()


def _npht_256() -> TrainConfig:
    # the renderer's sample-efficient options, each within the renderer issue's accuracy
    # bounds on the render benchmark (README, "Cost at high resolution"); the checkpointed
    # shading pass keeps a 256^2 batch of 4 far below 24 GiB
    return TrainConfig(render_resolution=256, weight_threshold=1e-6, render_coarse_factor=4, skip_converged=True,
                       fused_gradient=True, fused_checkpoint=True, disc_optimizer="adam")


def _cpu_demo() -> TrainConfig:
    counts = dict(surface_face=96, surface_nonface=32, near1_face=8, near1_nonface=8,
                  near2_face=8, near2_nonface=8, ball=64)
    # plane_upsample bilinear: the DCGAN part ends at 16^2 here, and nearest x4 upsampling
    # (the thesis generator's) leaves steps every 4 texels that show as bands in the normals
    return TrainConfig(z_dim=16, plane_channels=4, plane_resolution=64, generator_base=8,
                       plane_upsample="bilinear",
                       decoder_hidden=32, decoder_layers=3, code_init_std=0.1,
                       batch_size=2, counts=counts, render_resolution=16, disc_resolution=64,
                       disc_base=2, disc_max_channels=16, samples=(8, 8, 4), beta_iters=4,
                       max_total_iters=2, beta_init=0.01, weight_threshold=1e-6,
                       fused_gradient=True, lr=1e-3, lr_codes=1e-2, disc_optimizer="adam",
                       stage_epochs=(200, 100, 200), decay_interval=200, decay_interval_codes=400,
                       ckpt_every=100, image_every=50)


def _gpu_demo() -> TrainConfig:
    # sizes between cpu-demo and the thesis; the sample-efficient renderer options of npht-256
    return TrainConfig(z_dim=64, plane_channels=16, plane_resolution=128, generator_base=16,
                       plane_upsample="bilinear", decoder_hidden=128, decoder_layers=4, code_init_std=0.1,
                       batch_size=4, render_resolution=64, disc_base=16, disc_max_channels=128,
                       samples=(32, 32, 16), beta_init=0.01, weight_threshold=1e-6, render_coarse_factor=4,
                       skip_converged=True, fused_gradient=True, fused_checkpoint=True, lr=1e-3, lr_codes=1e-2,
                       disc_optimizer="adam", stage_epochs=(400, 150, 200), decay_interval=250,
                       decay_interval_codes=500, ckpt_every=500, image_every=250)


def _npm() -> TrainConfig:
    return TrainConfig(model="npm", weights=LossWeights.npm(), batch_size=32, views=0,
                       code_init_std=0.01)


PRESETS = {"thesis-64": _thesis_64, "npht-256": _npht_256, "cpu-demo": _cpu_demo, "gpu-demo": _gpu_demo,
           "npm": _npm}
