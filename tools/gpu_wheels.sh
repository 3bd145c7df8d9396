#!/usr/bin/env bash
# What the GPU machine's image lacks, for tools/gpu_check.sh (both folders git-ignored via
# .git/info/exclude; pass ".whl" and ".gpu_data" in the device call's carry list):
# - .whl/: the pure-Python packages trimesh (the eval stage: metrics and mesh benchmarks) and
#   expecttest (torch.library.opcheck in the tests); Python 3.12 wheels (the machine's python3);
# - .gpu_data/: prepared datasets (the image has no libigl / pyrender to prepare them): the
#   tests' (tests/_datasets.py; the tests copy them via NPHT_TEST_DATA) and bench/ for the
#   train stage (benchmarks/train_step.py: 4 identities, 8 cameras, 64^2 maps; ~10 MB).
# Run here, in the repo root, with npht installed (make install-test).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for d in /.whl/ /.gpu_data/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "trimesh==5.2.0" "expecttest==0.3.0"
ls -la .whl
python3 tests/_datasets.py .gpu_data
[ -f .gpu_data/bench/manifest.json ] || python3 -m npht data prepare --source synthetic --out .gpu_data/bench --quiet \
  --identities 4 --expressions 1 --mesh-resolution 96 --cameras 8 --resolution 64 --test-identities 0
du -sh .gpu_data .whl
