"""Fixtures of the trainer tests: a tiny prepared dataset (2 identities, 16^2 maps)."""

import pytest

from npht.data.prepare import PrepareConfig, prepare


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    prepare(PrepareConfig(identities=2, expressions=1, mesh_resolution=48, cameras=4, resolution=16,
                          surface_face=300, surface_nonface=100, ball=100, test_identities=0), str(root),
            progress=False)
    return str(root)
