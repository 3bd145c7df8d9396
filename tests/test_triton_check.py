"""tools/triton_check.py's choice of launches to compile: every recorded (argument, type or
constexpr value) pair, in few launches."""

import ast
import os
import pickle
import subprocess
import sys

import pytest
from _backends import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    return load_script("tools", "triton_check")


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


def test_production_launches_are_all_chosen():
    """Every TF32 launch is compiled, not only a covering subset of them."""
    tool = _tool()
    specs = [_launch("a", "fp32", PREC=p, A=a) for p in ("tf32", "ieee") for a in range(4)]
    prod = tool.production(specs)
    assert prod == specs[:4]
    assert len(tool.cover(specs)) < len(specs)  # the cover alone would leave some TF32 launches out


def _mm_spec(**over):
    """A recorded launch of kernels/mlp_mm.py's product kernel (float32, small blocks)."""
    names = ["a_ptr", "a2_ptr", "b_ptr", "bias_ptr", "out_ptr", "e1_ptr", "e2_ptr", "out2_ptr", "colsum_ptr",
             "scalars"]
    ints = ["M", "N", "K", "s_am", "s_ak", "s_a2m", "s_bk", "s_bn", "s_om", "s_e1m", "s_e2m", "s_o2m"]
    cx = dict(PRO=0, EPI=0, HAS_BIAS=False, HAS_E1=False, COLSUM=False, PREC="tf32", BLOCK_M=32, BLOCK_N=32,
              BLOCK_K=16)
    cx.update(over)
    args = [(n, "*fp32", None) for n in names] + [(n, "i32", None) for n in ints]
    args += [(k, "constexpr", v) for k, v in cx.items()]
    return ("npht.kernels.mlp_mm", "_mm_kernel", args, {"num_warps": 4})


def _compile(spec, arch, shared_limit=None):
    """compile_one in a child process without the interpreter (the tests may run under
    TRITON_INTERPRET=1, which replaces kernels with interpreted functions at import)."""
    code = (f"import pickle, sys; sys.path.insert(0, {os.path.join(ROOT, 'tools')!r}); import triton_check as t\n"
            f"if {shared_limit!r} is not None: t.SHARED_LIMIT[{arch}] = {shared_limit!r}\n"
            f"print(repr(t.compile_one(pickle.loads({pickle.dumps(spec)!r}), {arch})))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


def test_compile_reports_registers_and_spills():
    pytest.importorskip("triton")
    res = _compile(_mm_spec(), 90)
    assert res.returncode == 0, res.stderr[-2000:]
    out = ast.literal_eval(res.stdout.strip().splitlines()[-1])
    assert out["shared"] > 0 and out["cubin_bytes"] > 0
    assert 0 < out["regs"] <= 255 and out["stack"] == 0


def test_compile_fails_over_the_shared_memory_limit():
    pytest.importorskip("triton")
    res = _compile(_mm_spec(), 80, shared_limit=1024)
    assert res.returncode != 0
    assert "shared memory per block, sm_80 allows 1024" in res.stderr


def test_passed_tests_are_listed_then_left_out_of_the_main_run(tmp_path):
    """The record plugin lists the node ids of a passing session (NPHT_TRITON_PASSED); the
    main run (tests/conftest.py, NPHT_DESELECT_PASSED) deselects exactly those, and runs
    everything when the list is absent."""
    pytest.importorskip("triton")
    listed = tmp_path / "passed.txt"
    tests = ["tests/test_mkl.py", "tests/test_triton_check.py::test_cover_keeps_every_type_and_value"]
    env = dict(os.environ, NPHT_TRITON_PASSED=str(listed), NPHT_TRITON_SPECS=str(tmp_path / "specs.pkl"),
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(ROOT, "tools"), os.environ.get("PYTHONPATH")])))
    env.pop("NPHT_DESELECT_PASSED", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "triton_record", "-k", "not every_vml_op",
                          *tests], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]
    ids = listed.read_text().split()
    assert sorted(ids) == sorted(["tests/test_mkl.py::test_import_npht_resolves_before_user_code",
                                  "tests/test_mkl.py::test_results_unchanged_by_the_warm_up",
                                  "tests/test_triton_check.py::test_cover_keeps_every_type_and_value"])

    main_env = {k: v for k, v in os.environ.items() if k != "NPHT_DESELECT_PASSED"}
    main = subprocess.run([sys.executable, "-m", "pytest", "-q", *tests], cwd=ROOT, capture_output=True, text=True,
                          env=dict(main_env, NPHT_DESELECT_PASSED=str(listed)))
    assert main.returncode == 0, main.stdout[-2000:]
    assert "1 passed, 3 deselected" in main.stdout and "3 Triton tests passed" in main.stdout

    listed.unlink()
    full = subprocess.run([sys.executable, "-m", "pytest", "-q", *tests], cwd=ROOT, capture_output=True, text=True,
                          env=dict(main_env, NPHT_DESELECT_PASSED=str(listed)))
    assert full.returncode == 0 and "4 passed" in full.stdout and "NPHT_DESELECT_PASSED: no test of" in full.stdout


def test_a_failing_record_session_lists_nothing(tmp_path):
    pytest.importorskip("triton")
    listed = tmp_path / "passed.txt"
    (tmp_path / "test_red.py").write_text("def test_ok():\n    pass\n\ndef test_red():\n    assert False\n")
    env = dict(os.environ, NPHT_TRITON_PASSED=str(listed), NPHT_TRITON_SPECS=str(tmp_path / "specs.pkl"),
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(ROOT, "tools"), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "triton_record", "-p", "no:cacheprovider",
                          str(tmp_path / "test_red.py")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "1 failed, 1 passed" in run.stdout
    assert not listed.exists()
