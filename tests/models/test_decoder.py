import pytest
import torch

import npht
from npht.models import TriplaneDecoder


def test_thesis_architecture():
    dec = TriplaneDecoder(feature_dim=32)
    linears = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(35, 256)] + [(256, 256)] * 3 + [(256, 1)]
    softplus = [m for m in dec.modules() if isinstance(m, torch.nn.Softplus)]
    assert len(softplus) == 4 and all(m.beta == 100 for m in softplus)


def test_sdf_of_triplanes_matches_manual_composition():
    dec = TriplaneDecoder(feature_dim=6, hidden=16)
    planes = torch.randn(2, 3, 6, 8, 8)
    points = torch.rand(2, 10, 3) * 2 - 1
    feat = npht.triplane_sample(planes, points)
    expected = dec.net(torch.cat([feat, points], -1)).squeeze(-1)
    torch.testing.assert_close(dec.sdf(planes, points), expected)
    assert dec.sdf(planes, points).shape == (2, 10)


def test_bad_feature_width():
    dec = TriplaneDecoder(feature_dim=6, hidden=16)
    with pytest.raises(ValueError, match=r"features must have 6 channels"):
        dec(torch.randn(2, 10, 5), torch.rand(2, 10, 3))
    with pytest.raises(ValueError, match=r"num_layers must be >= 2"):
        TriplaneDecoder(num_layers=1)
