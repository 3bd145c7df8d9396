import math

import pytest
import torch

import npht
from npht.models import (Discriminator, ExpressionModel, IdentityModel, NPMBaseline, TriplaneDecoder,
                         TriplaneGenerator)
from npht.render import fibonacci_cameras, render


def tiny_identity(num=3, z_dim=8, channels=4, resolution=16, **kw):
    gen = TriplaneGenerator(z_dim, channels, resolution, base=4)
    dec = TriplaneDecoder(channels, hidden=16).geometric_init_(generator=torch.Generator().manual_seed(0))
    return IdentityModel(gen, dec, num, z_dim, **kw)


# --- generator -------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_generator_output_resolution(resolution):
    torch.manual_seed(0)
    gen = TriplaneGenerator(z_dim=8, channels=5, resolution=resolution, base=4)
    planes = gen(torch.randn(2, 8))
    assert planes.shape == (2, 3, 5, resolution, resolution) and planes.dtype == torch.float32
    # the DCGAN part ends at R/4, the head upsamples x4 to 3 * C channels
    convt = [m for m in gen.dcgan if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convt) == int(math.log2(resolution)) - 3
    assert gen.head.out_channels == 15
    assert not any(isinstance(m, torch.nn.Tanh) for m in gen.modules())


def test_generator_thesis_layout():
    gen = TriplaneGenerator()  # 512 -> 3 x 32 x 256^2, DCGAN widths 512..64
    convt = [m for m in gen.dcgan if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in convt] == [(512, 512), (512, 256), (256, 128), (128, 64), (64, 96)]
    assert (gen.head.in_channels, gen.head.out_channels, gen.head.kernel_size) == (96, 96, (3, 3))
    assert gen.upsample.scale_factor == 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(resolution=8), "resolution must be a power of two >= 16, got 8"),
    (dict(resolution=48), "resolution must be a power of two >= 16, got 48"),
    (dict(channels=0), "channels must be a positive int"),
    (dict(z_dim=-1), "z_dim must be a positive int"),
    (dict(upsample_mode="area"), "upsample_mode must be 'nearest', 'bilinear' or 'bicubic', got 'area'"),
])
def test_generator_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TriplaneGenerator(**kwargs)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_generator_upsample_mode(mode):
    """nearest: the DCGAN output's 4x4 blocks survive as steps between texel blocks (the
    3x3 head sees constant 4x4 interiors, so the planes' second differences along a row
    vanish inside blocks and jump at their edges); bilinear: no such step pattern."""
    torch.manual_seed(0)
    gen = TriplaneGenerator(8, 2, 32, base=4, upsample_mode=mode)
    assert gen.upsample.mode == mode
    up = gen.upsample(torch.randn(1, 3, 8, 8))
    d = up[..., 1:] - up[..., :-1]  # differences along a row of the upsampled map
    inside = d[..., [i for i in range(d.shape[-1]) if i % 4 != 3]]
    if mode == "nearest":
        assert not inside.any() and d[..., 3::4].abs().max() > 0
    else:
        assert inside.abs().max() > 0


def test_build_identity_model_plane_upsample():
    from npht.train.config import TrainConfig
    from npht.train.identity import build_identity_model

    cfg = TrainConfig.preset("cpu-demo")
    assert cfg.plane_upsample == "bilinear" and TrainConfig.preset("thesis-64").plane_upsample == "nearest"
    assert build_identity_model(cfg, 2).generator.upsample.mode == "bilinear"
    old = cfg.to_dict()
    del old["plane_upsample"]  # a checkpoint written before the field existed
    assert TrainConfig.from_dict(old).plane_upsample == "nearest"


def test_generator_bad_z():
    with pytest.raises(ValueError, match=r"z must have shape \[B, 8\]"):
        TriplaneGenerator(8, 4, 16, base=4)(torch.randn(2, 7))


# --- identity model --------------------------------------------------------------------

def test_identity_forward_and_sparse_codes():
    torch.manual_seed(0)
    model = tiny_identity()
    assert model.codes.sparse
    idx = torch.tensor([2, 0])
    points = torch.rand(2, 11, 3) * 2 - 1
    sdf = model(points, idx)
    assert sdf.shape == (2, 11) and sdf.dtype == torch.float32
    # same as composing the parts by hand
    planes = model.generator(model.codes.weight[idx])
    torch.testing.assert_close(sdf, model.decoder(npht.triplane_sample(planes, points), points))
    sdf.abs().mean().backward()
    grad = model.codes.weight.grad
    assert grad.is_sparse
    rows = set(grad.coalesce().indices()[0].tolist())
    assert rows == {0, 2}
    before = model.codes.weight.detach().clone()
    torch.optim.SparseAdam(list(model.codes.parameters()), lr=1e-2).step()
    changed = (model.codes.weight.detach() != before).any(dim=1)
    assert changed.tolist() == [True, False, True]


def test_identity_eikonal_double_backward_reaches_generator():
    torch.manual_seed(0)
    model = tiny_identity()
    points = torch.rand(2, 13, 3) * 2 - 1
    for fused in (False, True):
        model.zero_grad()
        sdf, grad = model.sdf_and_gradient(points, torch.tensor([1, 2]), fused=fused)
        assert grad.shape == (2, 13, 3) and grad.abs().sum() > 0
        ((grad.norm(dim=-1) - 1) ** 2).mean().backward()
        head = model.generator.head.weight.grad
        first = model.generator.dcgan[0].weight.grad
        assert head is not None and head.abs().sum() > 0
        assert first is not None and first.abs().sum() > 0
        assert model.codes.weight.grad is not None


def test_identity_sdf_fn_drives_renderer_and_reaches_codes():
    torch.manual_seed(0)
    model = tiny_identity(num=2)
    fn = model.sdf_fn(torch.tensor([0, 1]))
    assert fn.planes.shape == (2, 3, 4, 16, 16)
    out = render(fn, fibonacci_cameras(2, resolution=16), 16)
    assert out.normals.shape == (2, 16, 16, 3)
    assert out.opacity.max() > 0.5  # the geometric init's sphere is seen
    out.normals.sum().backward()
    grad = model.codes.weight.grad.coalesce().to_dense()
    assert (grad.abs().sum(dim=1) > 0).tolist() == [True, True]


def test_sdf_fn_groups_cameras_per_identity():
    """sdf_fn(identity, group=V): rows b*V .. b*V+V-1 belong to identity b; the same values as
    the codes repeated V times (planes generated once per identity: the generator runs on B
    codes, not B*V), for the tri-plane model and the NPM baseline."""
    torch.manual_seed(0)
    points = torch.rand(2 * 3, 5, 3) * 1.6 - 0.8
    ids = torch.tensor([1, 0])
    for model in (tiny_identity(num=2), NPMBaseline(2, z_dim=8, hidden=32, layers=8, skip=4)):
        with torch.no_grad():
            grouped = model.sdf_fn(ids, group=3)
            torch.testing.assert_close(grouped(points), model.sdf_fn(ids.repeat_interleave(3))(points))
        if hasattr(grouped, "planes"):
            assert grouped.planes.shape[0] == 2
        with pytest.raises(ValueError, match="group must be an int >= 1"):
            model.sdf_fn(ids, group=0)


def test_identity_accepts_codes_and_checks_args():
    model = tiny_identity()
    z = torch.randn(2, 8, requires_grad=True)
    model(torch.rand(2, 5, 3), z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"out of range \[0, 3\)"):
        model(torch.rand(1, 5, 3), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"points must have shape \[B=2, N, 3\]"):
        model(torch.rand(1, 5, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="decoder expects feature_dim=6"):
        IdentityModel(TriplaneGenerator(8, 4, 16, base=4), TriplaneDecoder(6), 2, 8)
    with pytest.raises(ValueError, match="z_dim=16 but the generator takes codes of size 8"):
        IdentityModel(TriplaneGenerator(8, 4, 16, base=4), TriplaneDecoder(4), 2, 16)
    with pytest.raises(ValueError, match="num_identities must be a positive int"):
        IdentityModel(TriplaneGenerator(8, 4, 16, base=4), TriplaneDecoder(4), 0, 8)


# --- NPM baseline ----------------------------------------------------------------------

def test_npm_skip_connection_and_thesis_layout():
    npm = NPMBaseline(2, z_dim=8, hidden=32, layers=8, skip=4)
    lins = npm.mlp.linears
    assert len(lins) == 9
    assert lins[0].in_features == 11
    # NPHM's DeepSDF: layer 4 outputs hidden - in, layer 5 sees [h, z, x], hidden wide
    assert lins[3].out_features == 32 - 11 and lins[4].in_features == 32
    assert all(lins[i].in_features == 32 for i in (1, 2, 3, 5, 6, 7, 8))
    assert lins[8].out_features == 1 and npm.mlp.act.beta == 100
    assert npm.codes.sparse and npm.codes.weight.shape == (2, 8)
    big = NPMBaseline(1)
    assert [m.in_features for m in big.mlp.linears] == [515] + [1024] * 8
    assert [m.out_features for m in big.mlp.linears] == [1024] * 3 + [1024 - 515] + [1024] * 4 + [1]
    # the layout before skip_shrink: the skip layer takes hidden + in
    old = NPMBaseline(1, z_dim=8, hidden=32, layers=8, skip=4, skip_shrink=False)
    assert old.mlp.linears[3].out_features == 32 and old.mlp.linears[4].in_features == 32 + 11
    x = torch.rand(1, 5, 3)
    assert npm(x, torch.tensor([0])).shape == old(x, torch.tensor([0])).shape == (1, 5)
    with pytest.raises(ValueError, match="skip_shrink needs hidden > in_dim"):
        NPMBaseline(1, z_dim=8, hidden=11, layers=8, skip=4)


def test_npm_geometric_init_sphere():
    torch.manual_seed(0)
    npm = NPMBaseline(3, z_dim=8, hidden=128, layers=8)
    dirs = torch.nn.functional.normalize(torch.randn(3, 20, 3), dim=-1)
    pts = torch.cat([torch.zeros(3, 1, 3), 0.1 * dirs, 2.0 * dirs], 1)
    sdf = npm(pts, torch.arange(3))
    assert sdf.shape == (3, 41)
    assert (sdf[:, :21] < 0).all() and (sdf[:, 21:] > 0).all()
    assert (sdf[:, 21:] > sdf[:, 1:21]).all()  # grows outwards along every direction
    s, g = npm.sdf_and_gradient(pts, torch.arange(3))
    torch.testing.assert_close(s, sdf)
    assert g.shape == (3, 41, 3)
    # the gradient points roughly radially outwards
    cos = (torch.nn.functional.normalize(g[:, 21:], dim=-1) * dirs).sum(-1)
    assert cos.min() > 0.5 and cos.mean() > 0.85
    with torch.inference_mode():  # autograd is off there: computed outside it, as under no_grad
        s2, g2 = npm.sdf_and_gradient(pts.clone(), torch.arange(3))
    torch.testing.assert_close(s2, s.detach())
    torch.testing.assert_close(g2, g.detach())
    # points in float64 go through the float32 model (as IdentityModel's)
    torch.testing.assert_close(npm(pts.double(), torch.arange(3)), sdf)
    with pytest.raises(ValueError, match="skip must be None or an int"):
        NPMBaseline(1, z_dim=8, hidden=16, layers=4, skip=4)
    with pytest.raises(ValueError, match="z_dim must be a positive int"):
        NPMBaseline(1, z_dim=0)


def test_npm_thesis_size_geometric_init_has_its_sphere():
    """8 x 1024 with softplus(100): each unit adds up to log(2)/100 over ReLU, which summed
    to +0.6 and left no zero level in the unit ball before the zero level was re-centred."""
    torch.manual_seed(0)
    npm = NPMBaseline(2)
    dirs = torch.nn.functional.normalize(torch.randn(2, 200, 3), dim=-1)
    with torch.no_grad():
        centre = npm(torch.zeros(2, 1, 3), torch.arange(2))
        on = npm(dirs * 0.5, torch.zeros(2, 512))  # zero codes: the sphere itself
        out = npm(dirs * 0.95, torch.arange(2))
    assert (centre < -0.05).all() and (out > 0.1).all()
    assert on.mean().abs() < 0.02 and on.std() < 0.05  # the sphere of radius 0.5


# --- expression model ------------------------------------------------------------------

def test_expression_identity_at_init_and_gradients_flow():
    torch.manual_seed(0)
    ex = ExpressionModel(z_id_dim=8, z_ex_dim=6, hidden=32, layers=6, skip=3, num_expressions=4)
    x = torch.rand(2, 9, 3) * 2 - 1
    z_id = torch.randn(2, 8)
    idx = torch.tensor([3, 1])
    offset = ex(x, z_id, idx)
    assert offset.shape == (2, 9, 3)
    assert torch.equal(offset, torch.zeros_like(offset))
    assert torch.equal(ex.deform(x, z_id, idx), x)
    target = x + 0.05
    loss = ((ex.deform(x, z_id, idx) - target) ** 2).mean()
    loss.backward()
    assert ex.mlp.linears[-1].weight.grad.abs().sum() > 0
    torch.optim.SGD(ex.mlp.parameters(), lr=0.5).step()
    ex.zero_grad()
    loss2 = ((ex.deform(x, z_id, idx) - target) ** 2).mean()
    assert loss2 < loss
    loss2.backward()
    assert ex.mlp.linears[0].weight.grad.abs().sum() > 0
    g = ex.codes.weight.grad.coalesce()
    assert g.is_sparse and set(g.indices()[0].tolist()) == {1, 3}


def test_expression_layout_and_errors():
    ex = ExpressionModel()  # thesis: DeepSDF, 3 + 512 + 200 in, 8 x 1024, 3 out
    assert ex.mlp.linears[0].in_features == 715 and ex.mlp.linears[-1].out_features == 3
    assert ex.mlp.linears[3].out_features == 1024 - 715 and ex.mlp.linears[4].in_features == 1024
    assert len(ex.mlp.linears) == 9 and ex.codes is None
    small = ExpressionModel(4, 2, hidden=12, layers=3, skip=2)
    out = small(torch.rand(1, 5, 3), torch.randn(1, 4), torch.randn(1, 5, 2))
    assert out.shape == (1, 5, 3)
    with pytest.raises(ValueError, match="has no codes"):
        small(torch.rand(1, 5, 3), torch.randn(1, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"z_id must have shape \[B=1, 4\]"):
        small(torch.rand(1, 5, 3), torch.randn(1, 3), torch.randn(1, 2))
    # float64 inputs go through the float32 model
    x, zi, ze = torch.rand(1, 5, 3), torch.randn(1, 4), torch.randn(1, 5, 2)
    torch.testing.assert_close(small(x.double(), zi.double(), ze.double()), small(x, zi, ze))


# --- discriminator ---------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [64, 128, 256, 512])
def test_discriminator_logits(resolution):
    torch.manual_seed(0)
    d = Discriminator(resolution, in_channels=4, base=1, max_channels=4)
    assert len(d.blocks) == int(math.log2(resolution)) - 1
    logits = d(torch.randn(2, 4, resolution, resolution))
    assert logits.shape == (2, 1) and logits.dtype == torch.float32
    with pytest.raises(ValueError, match=f"configured for resolution {resolution}"):
        d(torch.randn(2, 4, resolution // 2, resolution // 2))


def test_discriminator_pigan_widths():
    d = Discriminator(256)
    widths = [b.shortcut.out_channels for b in d.blocks]
    assert d.from_image[0].out_channels == 32
    assert widths == [64, 128, 256, 400, 400, 400, 400]
    d64 = Discriminator(64)
    assert d64.from_image[0].out_channels == 128 and len(d64.blocks) == 5


def test_discriminator_pigan_init():
    """pi-GAN's kaiming_leaky_init on the residual blocks' convs: N(0, gain^2 / fan_in)
    with gain sqrt(2 / (1 + 0.2^2)); the 1x1 shortcuts keep PyTorch's default."""
    torch.manual_seed(0)
    d = Discriminator(64)
    gain = math.sqrt(2.0 / (1.0 + 0.2 ** 2))
    for block in d.blocks:
        for conv in (block.body[0].conv, block.body[2].conv):
            fan_in = conv.weight[0].numel()
            std = conv.weight.std().item()
            assert abs(std * math.sqrt(fan_in) / gain - 1) < 0.05, (std, fan_in)
        bound = 1 / math.sqrt(block.shortcut.weight[0].numel())  # default: U(-b, b), std b / sqrt(3)
        assert block.shortcut.weight.abs().max() <= bound


def test_discriminator_errors():
    d = Discriminator(64, base=1, max_channels=4)
    with pytest.raises(ValueError, match=r"resolution 64 with 3 channels expects input \[B, 3, 64, 64\]"):
        d(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="resolution 64"):
        d(torch.randn(1, 3, 64, 32))
    with pytest.raises(ValueError, match=r"resolution must be one of \(64, 128, 256, 512\), got 32"):
        Discriminator(32)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        Discriminator(64, in_channels=0)


def test_discriminator_r1_double_backward():
    torch.manual_seed(0)
    d = Discriminator(64, base=1, max_channels=4)
    real = torch.randn(2, 3, 64, 64, requires_grad=True)
    logits = d(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    r1 = grad.pow(2).reshape(2, -1).sum(1).mean()
    (torch.nn.functional.softplus(-logits).mean() + 5 * r1).backward()
    for p in (d.from_image[0].weight, d.blocks[0].body[0].conv.weight, d.final.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the R1 term alone reaches the first layer's weights (a true second-order term)
    d.zero_grad()
    logits = d(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    grad.pow(2).sum().backward()
    assert d.from_image[0].weight.grad.abs().sum() > 0
