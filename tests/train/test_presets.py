"""Every identity preset trains: its own optimisers, learning rates, loss weights and
renderer options, shrunk only in size (widths, points, resolutions) to run on 2 cores;
the loss falls over a few dozen steps on a tiny prepared set."""

import pytest
import torch

from npht.train.config import TrainConfig
from npht.train.identity import IdentityTrainer, collate

# sizes only: every optimisation / loss / schedule setting stays the preset's own
SIZE_FIELDS = ("z_dim", "plane_channels", "plane_resolution", "generator_base", "decoder_hidden",
               "decoder_layers", "counts", "disc_base", "disc_max_channels", "samples", "beta_iters",
               "max_total_iters")


def tiny(name: str) -> TrainConfig:
    preset = TrainConfig.preset(name)
    demo = TrainConfig.preset("cpu-demo")
    sizes = {k: getattr(demo, k) for k in SIZE_FIELDS}
    # keep each preset's render/discriminator resolution ratio: thesis-64 -> 16, npht-256 -> 32
    res = max(16, preset.render_resolution // 8) if preset.uses_2d else demo.render_resolution
    return TrainConfig.preset(name, **sizes, npm_hidden=32, npm_layers=6, batch_size=2, render_resolution=res,
                              disc_resolution=64, progress=False, ckpt_every=0, image_every=0)


@pytest.mark.parametrize("name", ["thesis-64", "npht-256", "npm", "cpu-demo", "gpu-demo"])
def test_preset_loss_falls(name, data_root, tmp_path):
    cfg = tiny(name)
    ref = TrainConfig.preset(name)
    assert (cfg.lr, cfg.lr_codes, cfg.weights, cfg.disc_optimizer, cfg.model) == \
        (ref.lr, ref.lr_codes, ref.weights, ref.disc_optimizer, ref.model)
    torch.manual_seed(0)
    tr = IdentityTrainer(cfg, data_root, tmp_path)
    assert tr.stage.index == 1 and (tr.disc is not None) == ref.uses_2d
    batch = collate([tr.dataset[i] for i in range(len(tr.dataset))])
    rows = [tr.step(batch) for _ in range(40)]
    if ref.uses_2d:
        assert {"nmr", "g", "d", "r1"} <= set(rows[0])
        assert rows[0]["nmr"] > 0
    # the generator's objective without its adversarial term (weighted terms: total = their
    # sum): G's adversarial loss is a minimax game's, it rises as D learns (pi-GAN's init
    # makes D learn within these 40 steps)
    totals = [r["total"] - r.get("g", 0.0) for r in rows]
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert last < 0.95 * first, totals
    if ref.uses_2d:  # and the discriminator's own loss falls
        assert sum(r["d"] for r in rows[-5:]) < sum(r["d"] for r in rows[:5])
    # the 3D surface term falls as well (not only the regularisers)
    assert sum(r["ss"] for r in rows[-5:]) < sum(r["ss"] for r in rows[:5])


def test_npht_256_renders_with_the_sample_efficient_options(data_root, tmp_path, monkeypatch):
    """npht-256 renders with coarse culling, skip_converged and the checkpointed fused
    gradient (each measured within the renderer's accuracy bounds); thesis-64 with none."""
    import npht.render

    for name, expect in (("npht-256", True), ("gpu-demo", True), ("thesis-64", False)):
        cfg = tiny(name)
        tr = IdentityTrainer(cfg, data_root, tmp_path / name)
        seen, ckpt = {}, []
        render, sdf_and_gradient = npht.render.render, tr.model.decoder.sdf_and_gradient

        def spy(*args, **kwargs):
            seen.update(kwargs)
            return render(*args, **kwargs)

        def spy_grad(*args, **kwargs):
            ckpt.append(kwargs.get("checkpoint", False))
            return sdf_and_gradient(*args, **kwargs)

        monkeypatch.setattr(npht.render, "render", spy)
        monkeypatch.setattr(tr.model.decoder, "sdf_and_gradient", spy_grad)
        tr.step(collate([tr.dataset[i] for i in range(len(tr.dataset))]))
        assert (seen["coarse_factor"] == 4) == expect and seen["sampler"].skip_converged == expect
        assert (seen["gradient_fn"] is not None) == expect
        assert (True in ckpt) == expect  # the shading pass's fused gradient is checkpointed
        monkeypatch.undo()
