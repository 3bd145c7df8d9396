"""Checkpoints written before the NPHM skip layout (npm_skip_shrink / skip_shrink) still
load: a config without the field means the old layout (the skip layer takes hidden + in);
new configs default to NPHM's (the layer before the skip outputs hidden - in)."""

import pytest
import torch

from npht.models import ExpressionModel, NPMBaseline
from npht.train.config import TrainConfig
from npht.train.expression import ExpressionConfig
from npht.train.loading import load_expression, load_identity


def _npm_config(**kw):
    return TrainConfig.preset("npm", z_dim=8, npm_hidden=32, npm_layers=6, **kw)


def test_old_npm_checkpoint_loads_with_its_layout(tmp_path):
    assert TrainConfig().npm_skip_shrink and ExpressionConfig().skip_shrink  # NPHM's layout by default
    cfg = _npm_config().to_dict()
    del cfg["npm_skip_shrink"]  # as written before the field existed
    old = NPMBaseline(3, 8, 32, 6, skip_shrink=False)
    torch.save({"config": cfg, "model": old.state_dict()}, tmp_path / "old.pt")
    loaded = load_identity(tmp_path / "old.pt")
    assert not loaded.config.npm_skip_shrink
    x = torch.rand(1, 7, 3)
    torch.testing.assert_close(loaded.model(x, torch.tensor([2])), old(x, torch.tensor([2])))
    # a current checkpoint records its layout and loads it
    new = NPMBaseline(3, 8, 32, 6)
    torch.save({"config": _npm_config().to_dict(), "model": new.state_dict()}, tmp_path / "new.pt")
    loaded = load_identity(tmp_path / "new.pt")
    assert loaded.config.npm_skip_shrink
    torch.testing.assert_close(loaded.model(x, torch.tensor([1])), new(x, torch.tensor([1])))


def test_old_expression_checkpoint_loads_with_its_layout(tmp_path):
    cfg = ExpressionConfig(z_ex_dim=4, hidden=24, layers=4, skip=2).to_dict()
    del cfg["skip_shrink"]
    old = ExpressionModel(6, 4, 24, 4, 2, num_expressions=2, skip_shrink=False)
    with torch.no_grad():
        old.mlp.linears[-1].weight.normal_()
    torch.save({"config": cfg, "model": old.state_dict(), "z_id": torch.zeros(1, 6),
                "expression_keys": [["a", "smile"], ["a", "open"]], "identity_names": {"a": 0}}, tmp_path / "old.pt")
    loaded = load_expression(tmp_path / "old.pt")
    x = torch.rand(1, 5, 3)
    z = torch.randn(1, 6)
    torch.testing.assert_close(loaded.model(x, z, torch.tensor([1])), old(x, z, torch.tensor([1])))


def test_a_run_folder_stands_for_its_checkpoint(tmp_path):
    """`--model RUN` / `--identity RUN`: a folder holding checkpoint.pt loads it; a folder without
    one is named as such, not as a path that does not exist."""
    import pytest

    from npht.train.loading import read_identity_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    net = NPMBaseline(3, 8, 32, 6)
    torch.save({"config": _npm_config().to_dict(), "model": net.state_dict()}, run / "checkpoint.pt")
    loaded = load_identity(run)
    assert loaded.path == str(run / "checkpoint.pt")   # the file (eval's resume key: its size and time)
    x = torch.rand(1, 7, 3)
    torch.testing.assert_close(loaded.model(x, torch.tensor([1])), net(x, torch.tensor([1])))
    assert read_identity_checkpoint(str(run))[0].model == "npm"
    empty = tmp_path / "empty"
    empty.mkdir()
    for load in (load_identity, load_expression, read_identity_checkpoint):
        with pytest.raises(FileNotFoundError, match=r"checkpoint '.*empty' is a directory without checkpoint.pt"):
            load(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_identity(tmp_path / "missing.pt")


def test_check_expression_pair():
    """An expression model is accepted only with the identity model whose codes it was
    trained on (npht eval / npht fit scan --expression)."""
    from types import SimpleNamespace

    from npht.train.loading import check_expression_pair

    codes = torch.randn(3, 5)
    identity = SimpleNamespace(codes=codes, path="id.pt")
    check_expression_pair(identity, SimpleNamespace(z_id=codes.clone(), path="ex.pt"))
    with pytest.raises(ValueError, match="was trained on another identity model than 'id.pt'"):
        check_expression_pair(identity, SimpleNamespace(z_id=codes + 0.5, path="ex.pt"))
    with pytest.raises(ValueError, match="was trained on another identity model"):
        check_expression_pair(identity, SimpleNamespace(z_id=codes[:2], path="ex.pt"))
    with pytest.raises(ValueError, match="conditioned on identity codes of size 4, the identity model 'id.pt' has"):
        check_expression_pair(identity, SimpleNamespace(z_id=codes[:, :4], path="ex.pt"))
