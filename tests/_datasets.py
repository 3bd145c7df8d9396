"""The tests' prepared datasets by name: ``prepared(name, root)`` writes one into ``root``.

With ``NPHT_TEST_DATA`` set to a folder that holds ``<name>/`` (prepared with the same
settings, which are checked), the dataset is copied from there instead of prepared: the GPU
machine's image lacks libigl and pyrender, so ``python tests/_datasets.py FOLDER`` prepares
them on a machine that has both and the device call carries the folder (tools/gpu_wheels.sh).
"""

import json
import os
import shutil
import sys

CONFIGS = {
    # tests/train: the trainers (2 identities, 4 cameras, 16^2 maps)
    "heads": dict(identities=2, expressions=1, mesh_resolution=48, cameras=4, resolution=16,
                  surface_face=300, surface_nonface=100, ball=100, test_identities=0),
    # tests/train/test_expression.py: expressions with correspondences, no maps
    "expressions": dict(identities=2, expressions=3, mesh_resolution=32, cameras=0, surface_face=300,
                        surface_nonface=100, ball=100, correspondences=2000, test_identities=0),
    "expressions3": dict(identities=3, expressions=3, mesh_resolution=32, cameras=0, surface_face=300,
                         surface_nonface=100, ball=100, correspondences=2000, test_identities=0),
}


def prepared(name: str, root) -> str:
    """Dataset ``name`` of :data:`CONFIGS` in ``root`` (copied from ``$NPHT_TEST_DATA/name``
    when that exists, else prepared); returns ``str(root)``."""
    from npht.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(**CONFIGS[name])
    cache = os.environ.get("NPHT_TEST_DATA")
    src = os.path.join(cache, name) if cache else None
    if src and os.path.isdir(src):
        with open(os.path.join(src, "config.json")) as f:
            have = json.load(f)
        differ = {k: (have.get(k), v) for k, v in CONFIGS[name].items() if have.get(k) != v}
        if differ:
            raise RuntimeError(f"{src} was prepared with other settings than the tests' {name!r} (have, want): "
                               f"{differ}; prepare it again: python tests/_datasets.py {cache}")
        shutil.copytree(src, str(root), dirs_exist_ok=True)
    else:
        prepare(cfg, str(root), progress=False)
    return str(root)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/_datasets.py FOLDER   (prepares every dataset of CONFIGS into FOLDER/<name>)")
    for name in CONFIGS:
        out = os.path.join(sys.argv[1], name)
        shutil.rmtree(out, ignore_errors=True)
        prepared(name, out)
        print(f"prepared {out}")
