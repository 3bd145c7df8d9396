import pytest
import torch

from npht.models import ExpressionModel, IdentityModel, TriplaneDecoder, TriplaneGenerator


@pytest.fixture(autouse=True)
def _one_thread():
    """The fitting tests run many tiny ops, which one thread does fastest (and without
    contention on a shared machine); the previous setting is restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_identity_model(z_dim: int = 3, seed: int = 0, feature_scale: float = 10.0) -> IdentityModel:
    """A tiny tri-plane identity model whose SDF depends clearly on the code: sphere-like
    geometric init of the decoder plus random planes, the generator's head scaled up."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    gen = TriplaneGenerator(z_dim, 4, 16, base=4)
    dec = TriplaneDecoder(4, hidden=16).geometric_init_(generator=g)
    model = IdentityModel(gen, dec, 4, z_dim)
    with torch.no_grad():
        gen.head.weight.mul_(feature_scale)
        gen.head.bias.zero_()
    return model


def tiny_expression_model(z_id_dim: int = 3, z_ex_dim: int = 2, seed: int = 0, scale: float = 0.05) -> ExpressionModel:
    """A tiny expression model with a random (not zero) output layer, so offsets depend on
    the codes (moderate deformations, invertible)."""
    torch.manual_seed(seed)
    expr = ExpressionModel(z_id_dim, z_ex_dim, hidden=16, layers=2, skip=None)
    last = [m for m in expr.mlp.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.normal_(0.0, scale)
        last.bias.normal_(0.0, scale)
    return expr


def project_to_surface(sdf_and_gradient, x: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Newton steps x <- x - f(x) grad / |grad|^2 onto the zero level set."""
    for _ in range(steps):
        sdf, grad = sdf_and_gradient(x)
        x = (x - (sdf / grad.square().sum(-1).clamp_min(1e-12))[..., None] * grad).detach()
    return x


@pytest.fixture
def tiny_id():
    return tiny_identity_model


@pytest.fixture
def tiny_expr():
    return tiny_expression_model


@pytest.fixture
def project():
    return project_to_surface
