#!/usr/bin/env bash
# Fetch the pure-Python packages the GPU machine's image lacks into .whl/ (git-ignored via
# .git/info/exclude), for tools/gpu_check.sh: trimesh (the eval stage: metrics and mesh
# benchmarks) and expecttest (torch.library.opcheck in the tests). Run here, in the repo root;
# pass .whl in the device call's carry list. Python 3.12 wheels (the machine's python3).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "trimesh==5.2.0" "expecttest==0.3.0"
ls -la .whl
