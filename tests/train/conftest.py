"""Fixtures of the trainer tests: a tiny prepared dataset (2 identities, 16^2 maps)."""

import pytest
from _datasets import prepared


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return prepared("heads", tmp_path_factory.mktemp("heads"))
