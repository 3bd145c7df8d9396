"""tools/triton_check.py's choice of launches to compile: every recorded (argument, type or
constexpr value) pair, in few launches."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    spec = importlib.util.spec_from_file_location("triton_check", os.path.join(ROOT, "tools", "triton_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _launch(name, dtype, **constexprs):
    args = [("x", "*" + dtype, None), ("n", "i32", None)] + [(k, "constexpr", v) for k, v in constexprs.items()]
    return ("npht.kernels.k", name, args, {"num_warps": 4})


def test_cover_keeps_every_type_and_value():
    tool = _tool()
    specs = [_launch("a", "fp32", A=a, B=b) for a in (0, 1, 2) for b in (False, True)]
    specs += [_launch("a", "fp64", A=0, B=False), _launch("b", "fp32", A=0, B=False)]
    chosen = tool.cover(specs)
    want = set().union(*map(tool.features, specs))
    assert set().union(*map(tool.features, chosen)) == want
    # kernel a needs 3 launches (A), b one; greedy may spend one more on a's fp64
    assert len(chosen) <= 5 < len(specs)
    assert tool.cover([]) == []
    assert "a(A=0, B=False; *fp64; num_warps=4)" in tool.describe(specs[-2])
