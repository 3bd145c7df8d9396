import pytest
import torch

from npht.fit import FitResult, FitSchedule, fit_expression, fit_identity, fit_normal_maps
from npht.models import NPMBaseline

Z_STAR = torch.tensor([[0.8, -0.5, 0.3]])


def _surface(model, z, project, n=500, seed=1):
    x0 = torch.nn.functional.normalize(torch.randn(1, n, 3, generator=torch.Generator().manual_seed(seed)), dim=-1) * 0.5
    x = project(lambda p: model.sdf_and_gradient(p, z), x0)
    keep = x.norm(dim=-1)[0] < 0.95
    x = x[:, keep]
    assert x.shape[1] > n // 2 and model(x, z).abs().max() < 1e-5
    return x


def test_schedule_defaults_and_validation():
    s = FitSchedule()
    assert (s.iterations, s.lr, s.milestones, s.gamma, s.lambda_id, s.lambda_ex) == (700, 0.01, (200, 350, 500), 0.1,
                                                                                       0.05, 0.003)
    assert s.lr_at(199) == 0.01 and abs(s.lr_at(200) - 1e-3) < 1e-12 and abs(s.lr_at(500) - 1e-5) < 1e-15
    with pytest.raises(ValueError, match="milestones must be increasing"):
        FitSchedule(milestones=(300, 200))
    with pytest.raises(ValueError, match="lr must be > 0"):
        FitSchedule(lr=0)
    assert s.relative_reg == "auto"
    with pytest.raises(ValueError, match="relative_reg must be True, False or 'auto'"):
        FitSchedule(relative_reg="relative")


def test_fit_identity_recovers_known_code(tiny_id, project):
    model = tiny_id()
    x = _surface(model, Z_STAR, project)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sched = FitSchedule(iterations=300, lambda_id=0.0, milestones=(150, 250))
    assert model(x, torch.zeros(1, 3)).abs().mean() > 1e-3  # the start is far off
    res = fit_identity(model, x, schedule=sched, init=torch.zeros(3), progress=False)
    assert isinstance(res, FitResult) and res.z_ex is None and len(res.losses) == 300
    assert res.code.shape == (1, 3) and not res.code.requires_grad
    assert model(x, res.code).abs().max() < 1e-4
    torch.testing.assert_close(res.code, Z_STAR, atol=1e-2, rtol=0)
    assert res.losses[-1] < 1e-2 * res.losses[0]
    # the model is untouched: weights, requires_grad flags, no .grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_fit_identity_default_init_regularisation_and_determinism(tiny_id, project):
    model = tiny_id()
    x = _surface(model, Z_STAR, project)
    sched = FitSchedule(iterations=40, points_per_step=100)
    a = fit_identity(model, x, schedule=sched, seed=3, progress=False)
    b = fit_identity(model, x, schedule=sched, seed=3, progress=False)
    assert torch.equal(a.code, b.code) and a.losses == b.losses
    c = fit_identity(model, x, schedule=sched, seed=4, progress=False)
    assert not torch.equal(a.code, c.code)
    # regulariser: lambda_id ||z||^2 in the loss, starting from the mean training code; its
    # unit is the training codes' mean ||z||^2 (relative_reg=True, and "auto" -- the default --
    # when that mean is above 1) or 1 (False, and "auto" for small codes)
    def first_reg(**kw):
        res = fit_identity(model, x, schedule=sched.replace(iterations=1, lr=1e-12, **kw), progress=False)
        torch.testing.assert_close(res.code, model.codes.weight.detach().mean(0, keepdim=True))
        return res.history["reg"][0]

    def expected(unit):
        return 0.05 * float(model.codes.weight.detach().mean(0).square().sum()) / unit

    unit = float(model.codes.weight.detach().square().sum(-1).mean())
    assert unit > 1.2  # N(0, 1) codes in 3-D (4 of them)
    assert abs(first_reg() - expected(unit)) < 1e-6
    assert abs(first_reg(relative_reg=True) - expected(unit)) < 1e-6
    assert abs(first_reg(relative_reg=False) - expected(1.0)) < 1e-6
    with torch.no_grad():
        model.codes.weight.mul_(0.1)  # small codes (NPHM / NPM scale): "auto" is literal
    unit = float(model.codes.weight.detach().square().sum(-1).mean())
    assert unit < 0.1
    assert abs(first_reg() - expected(1.0)) < 1e-8
    assert abs(first_reg(relative_reg=True) - expected(unit)) < 1e-7
    assert abs(first_reg(relative_reg=0) - expected(1.0)) < 1e-8  # 0 / 1 mean False / True
    # a strong regulariser pulls the code to 0
    strong = fit_identity(model, x, schedule=FitSchedule(iterations=100, lambda_id=100.0), progress=False)
    assert strong.code.norm() < 0.05


def test_fit_identity_batch_and_npm(project):
    torch.manual_seed(0)
    model = NPMBaseline(3, z_dim=2, hidden=32, layers=3, skip=None, init_std=0.5)
    z_star = torch.tensor([[0.2, -0.15], [-0.1, 0.2]])
    x = project(lambda p: model.sdf_and_gradient(p, z_star),
                torch.nn.functional.normalize(torch.randn(2, 400, 3), dim=-1) * 0.5)
    # keep the 200 best projected points of each scan
    best = model(x, z_star).abs().topk(200, dim=1, largest=False).indices
    x = torch.gather(x, 1, best[..., None].expand(-1, -1, 3))
    assert model(x, z_star).abs().max() < 1e-4
    res = fit_identity(model, x, schedule=FitSchedule(iterations=200, lambda_id=0.0, milestones=(120, 170)),
                       init=torch.zeros(2), progress=False)
    assert res.code.shape == (2, 2)
    assert model(x, res.code).abs().mean() < 0.05 * model(x, torch.zeros(2, 2)).abs().mean()
    torch.testing.assert_close(res.code, z_star, atol=5e-2, rtol=0)


def test_fit_expression_recovers_known_code(tiny_id, tiny_expr, project):
    model, expr = tiny_id(), tiny_expr()
    x_neutral = _surface(model, Z_STAR, project, n=300)
    z_ex_star = torch.tensor([[0.7, -0.6]])
    with torch.no_grad():
        x_posed = expr.deform(x_neutral, Z_STAR, z_ex_star)
    shift = (x_posed - expr.deform(x_neutral, Z_STAR, torch.zeros(1, 2))).norm(dim=-1).mean()
    assert shift > 5e-3  # the expression moves the points
    sched = FitSchedule(iterations=200, lambda_ex=0.0, milestones=(120, 170), root_tol=1e-6)
    res = fit_expression(model, expr, x_posed, Z_STAR[0], schedule=sched, progress=False)
    assert res.z_ex.shape == (1, 2) and torch.equal(res.code, Z_STAR)
    assert res.history["converged"][-1] == 1.0
    torch.testing.assert_close(res.z_ex, z_ex_star, atol=2e-2, rtol=0)
    assert res.losses[-1] < 0.05 * res.losses[0]


def test_unconverged_points_leave_the_data_term(tiny_id, tiny_expr, project, monkeypatch):
    """Points whose root finding did not converge are no pre-images: the SDF term averages
    over the converged ones (NPHM, SNARF), per shape; a shape with none keeps all its points;
    drop_unconverged=False averages over all (the garbage x_c then reaches the loss)."""
    from npht.fit import fitting

    sdf = torch.tensor([[1.0, 2.0, float("nan"), 4.0], [1.0, 3.0, 5.0, 7.0]])
    ok = torch.tensor([[True, True, False, True], [False, False, False, False]])
    assert fitting._data_term(sdf, ok, True).item() == pytest.approx(((1 + 2 + 4) / 3 + 4.0) / 2)
    assert fitting._data_term(sdf[1:], None, True).item() == 4.0
    assert fitting._data_term(sdf, ok, False).isnan()
    with pytest.raises(ValueError, match="drop_unconverged must be a bool"):
        FitSchedule(drop_unconverged=1)

    model, expr = tiny_id(), tiny_expr()
    x_neutral = _surface(model, Z_STAR, project, n=300)
    with torch.no_grad():
        x_posed = expr.deform(x_neutral, Z_STAR, torch.tensor([[0.7, -0.6]]))
    real = fitting.invert_deformation

    def fails_on_every_third(fn, xp, **kw):  # as if root finding diverged there
        xc, good = real(fn, xp, **kw)
        bad = torch.zeros_like(good)
        bad[:, ::3] = True
        return torch.where(bad[..., None], 1e3 * torch.ones_like(xc), xc), good & ~bad

    monkeypatch.setattr(fitting, "invert_deformation", fails_on_every_third)
    sched = FitSchedule(iterations=100, lambda_ex=0.0, milestones=(80,), root_tol=1e-6)
    res = fit_expression(model, expr, x_posed, Z_STAR[0], schedule=sched, progress=False)
    assert max(res.history["converged"]) < 0.7
    assert res.losses[-1] < 0.05 * res.losses[0]  # the converged two thirds fit as before
    keep = fit_expression(model, expr, x_posed, Z_STAR[0], progress=False,
                          schedule=FitSchedule(iterations=100, lambda_ex=0.0, milestones=(80,), root_tol=1e-6,
                                               drop_unconverged=False))
    assert keep.losses[-1] > 10 * res.losses[-1]  # the far-off points dominate the plain mean


def test_fit_identity_with_expression_model_jointly(tiny_id, tiny_expr, project):
    model, expr = tiny_id(), tiny_expr()
    x_neutral = _surface(model, Z_STAR, project, n=300)
    with torch.no_grad():
        x_posed = expr.deform(x_neutral, Z_STAR, torch.tensor([[0.7, -0.6]]))
    sched = FitSchedule(iterations=150, lambda_id=1e-4, lambda_ex=1e-4, milestones=(100,), root_tol=1e-6)
    res = fit_identity(model, x_posed, schedule=sched, expression_model=expr, init=torch.zeros(3),
                       z_ex_init=torch.zeros(2), progress=False)
    assert res.z_ex.shape == (1, 2) and res.z_ex.abs().sum() > 0  # z_ex got gradients through x_c
    assert min(res.history["converged"]) > 0.99
    assert res.history["data"][-1] < 0.1 * res.history["data"][0]
    # the expression code goes most of the way to the true one (from 0); the identity code is
    # not identifiable from one posed scan of this tiny model (it trades off against z_ex)
    z_ex_star = torch.tensor([[0.7, -0.6]])
    assert (res.z_ex - z_ex_star).norm() < 0.35 * z_ex_star.norm()
    assert torch.nn.functional.cosine_similarity(res.z_ex, z_ex_star).item() > 0.98


def test_fit_errors(tiny_id, tiny_expr):
    model = tiny_id()
    with pytest.raises(ValueError, match=r"points must have shape \[N, 3\] or \[B, N, 3\]"):
        fit_identity(model, torch.zeros(10, 2), progress=False)
    with pytest.raises(ValueError, match=r"init must have shape \[3\] or \[B=1, 3\]"):
        fit_identity(model, torch.zeros(10, 3), init=torch.zeros(4), progress=False)
    with pytest.raises(ValueError, match="conditioned on identity codes of size 5"):
        fit_identity(model, torch.zeros(10, 3), expression_model=tiny_expr(z_id_dim=5), progress=False)
    with pytest.raises(ValueError, match="points must be finite"):
        fit_identity(model, torch.full((10, 3), float("nan")), progress=False)


def test_fit_normal_maps_moves_towards_known_code(tiny_id):
    from npht.render import ErrorBoundSampler, LaplaceDensity, fibonacci_cameras, render

    model = tiny_id()
    cams = fibonacci_cameras(2, resolution=16)
    density = LaplaceDensity(beta=0.01)
    opts = dict(sampler=ErrorBoundSampler(16, 16, 16, 0.1, 5, 5))  # a light sampler: 16 x 16 on CPU
    with torch.no_grad():
        target = render(model.sdf_fn(Z_STAR.expand(2, -1)), cams, 16, density=density, convention="opengl", **opts)
    masks = target.opacity > 0.5
    assert masks.sum() > 100
    z0 = torch.zeros(3)
    sched = FitSchedule(iterations=15, lr=0.05, lambda_id=0.0, milestones=())
    res = fit_normal_maps(model, cams, target.normals, masks, density=density, schedule=sched, init=z0,
                          progress=False, renderer_options=opts)
    assert res.history["data"][-1] < 0.4 * res.history["data"][0]
    assert (res.code - Z_STAR).norm() < 0.3 * (z0 - Z_STAR).norm()
    assert all(p.requires_grad and p.grad is None for p in list(model.parameters()) + list(density.parameters()))
    # chunking the views bounds memory and leaves the result as it is
    kw = dict(density=density, schedule=sched.replace(iterations=2), init=z0, progress=False, renderer_options=opts)
    one = fit_normal_maps(model, cams, target.normals, masks, **kw)
    two = fit_normal_maps(model, cams, target.normals, masks, views_per_chunk=1, **kw)
    torch.testing.assert_close(one.code, two.code, atol=1e-6, rtol=0)
    assert abs(one.history["data"][0] - two.history["data"][0]) < 1e-6
    # tiles render the same rays; the error-bound sampler decides its rounds per call (a
    # batch-wide stop), so a tile's few rays may get fewer rounds: equal to the sampler's
    # accuracy (opacities within ~1e-6, the loss within 1e-3 relative), not bitwise
    tiled = fit_normal_maps(model, cams, target.normals, masks, tile=5, **kw)  # ragged 5 x 5 tiles
    torch.testing.assert_close(one.code, tiled.code, atol=1e-5, rtol=0)
    assert abs(one.history["data"][0] - tiled.history["data"][0]) < 1e-3 * one.history["data"][0]
    # other render resolutions resample the targets
    half = fit_normal_maps(model, cams, target.normals, masks, 8, **{**kw, "schedule": sched.replace(iterations=1)})
    assert len(half.history["data"]) == 1 and half.history["data"][0] > 0


def test_fit_normal_maps_errors(tiny_id):
    from npht.render import fibonacci_cameras

    model, cams = tiny_id(), fibonacci_cameras(2, resolution=8)
    with pytest.raises(ValueError, match=r"target_normals must have shape \[V=2, H, W, 3\]"):
        fit_normal_maps(model, cams, torch.zeros(3, 8, 8, 3), progress=False)
    with pytest.raises(ValueError, match=r"masks must have shape \[V=2, H=8, W=8\]"):
        fit_normal_maps(model, cams, torch.zeros(2, 8, 8, 3), torch.ones(2, 4, 4), progress=False)
    with pytest.raises(ValueError, match="tile must be a positive int"):
        fit_normal_maps(model, cams, torch.zeros(2, 8, 8, 3), tile=0, progress=False)
    with pytest.raises(TypeError, match="cameras must be npht.render.Cameras"):
        fit_normal_maps(model, None, torch.zeros(2, 8, 8, 3), progress=False)


@pytest.mark.parametrize("options", [{}, {"checkpoint": True}, {"mlp_matmul": "triton"}])
def test_fit_normal_maps_fused_gradient(tiny_id, monkeypatch, options):
    """fused_gradient shades through the decoder's fused value and gradient (with its options)
    and fits what autograd's normals fit, to float32 rounding."""
    from npht.render import ErrorBoundSampler, LaplaceDensity, fibonacci_cameras, render

    if options.get("mlp_matmul") == "triton":
        from _backends import require_backend
        require_backend("triton")
    model = tiny_id()
    cams = fibonacci_cameras(2, resolution=12)
    density = LaplaceDensity(beta=0.01)
    opts = dict(sampler=ErrorBoundSampler(16, 16, 16, 0.1, 5, 5))
    with torch.no_grad():
        target = render(model.sdf_fn(Z_STAR.expand(2, -1)), cams, 12, density=density, convention="opengl", **opts)
    masks = target.opacity > 0.5
    kw = dict(density=density, schedule=FitSchedule(iterations=3, lr=0.05, lambda_id=0.0, milestones=()),
              init=torch.zeros(3), progress=False, renderer_options=opts)
    plain = fit_normal_maps(model, cams, target.normals, masks, **kw)
    seen, sdf_and_gradient = [], model.decoder.sdf_and_gradient

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return sdf_and_gradient(*args, **kwargs)

    monkeypatch.setattr(model.decoder, "sdf_and_gradient", spy)
    fused = fit_normal_maps(model, cams, target.normals, masks, fused_gradient=options, **kw)
    assert seen and all(k["fused"] and all(k[o] == v for o, v in options.items()) for k in seen)
    assert plain.history["data"][0] > 0
    for a, b in zip(plain.history["data"], fused.history["data"]):
        assert b == pytest.approx(a, rel=2e-5)
    torch.testing.assert_close(fused.code, plain.code, atol=1e-5, rtol=0)
    assert not torch.equal(fused.code, kw["init"][None])


def test_fit_normal_maps_fused_gradient_errors(tiny_id):
    from npht.render import fibonacci_cameras

    model, cams, target = tiny_id(), fibonacci_cameras(2, resolution=8), torch.zeros(2, 8, 8, 3)
    with pytest.raises(TypeError, match="fused_gradient must be None or a dict"):
        fit_normal_maps(model, cams, target, fused_gradient=True, progress=False)
    with pytest.raises(ValueError, match="fused_gradient needs a tri-plane model"):
        fit_normal_maps(NPMBaseline(2, z_dim=4, hidden=16, layers=2, skip=None), cams, target, fused_gradient={},
                        progress=False)
    with pytest.raises(ValueError, match="do not pass one in renderer_options"):
        fit_normal_maps(model, cams, target, fused_gradient={}, renderer_options=dict(gradient_fn=None),
                        progress=False)
    with pytest.raises(ValueError, match=r"must not set \['fused'\]"):
        fit_normal_maps(model, cams, target, fused_gradient={"fused": False}, progress=False)


def test_progress_bar_shown_only_when_asked(tiny_id, capsys):
    pts = torch.rand(20, 3) - 0.5
    res = fit_identity(tiny_id(), pts, schedule=FitSchedule(iterations=2), progress=True)
    assert len(res.losses) == 2 and res.seconds > 0
    err = capsys.readouterr().err
    assert "fit identity" in err and "loss=" in err
    fit_identity(tiny_id(), pts, schedule=FitSchedule(iterations=2), progress=False)
    assert capsys.readouterr().err == ""


def test_fit_normal_maps_at_256(tiny_id):
    """The 2D objective at the resolution it is meant for: one 256x256 view, rendered in
    128 x 128 tiles with coarse culling; the loss falls and the code moves towards the one
    that rendered the target."""
    from npht.render import ErrorBoundSampler, LaplaceDensity, fibonacci_cameras, render

    model = tiny_id()
    cams = fibonacci_cameras(1, resolution=256)
    density = LaplaceDensity(beta=0.01)
    opts = dict(sampler=ErrorBoundSampler(16, 16, 8, 0.1, 5, 3, skip_converged=True), coarse_factor=4)
    with torch.no_grad():
        target = render(model.sdf_fn(Z_STAR), cams, density=density, convention="opengl", **opts)
    masks = target.opacity > 0.5
    assert masks.sum() > 5000
    z0 = torch.zeros(3)
    sched = FitSchedule(iterations=4, lr=0.1, lambda_id=0.0, milestones=())
    res = fit_normal_maps(model, cams, target.normals, masks, density=density, schedule=sched, init=z0,
                          progress=False, tile=128, renderer_options=opts)
    data = res.history["data"]
    assert data[-1] < 0.8 * data[0], data
    assert (res.code - Z_STAR).norm() < (z0 - Z_STAR).norm()
