"""The README's self-contained Python examples (blocks that start with their imports) run."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def examples():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if b.startswith("import torch")]


def test_readme_has_runnable_examples():
    assert len(examples()) >= 2


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example_runs(index):
    if "npht.data" in examples()[index]:  # `make test` installs these; a bare GPU image may lack them
        for module in ("trimesh", "pyrender", "igl", "skimage"):
            pytest.importorskip(module)
    exec(compile(examples()[index], f"README example {index}", "exec"), {})
