"""How the Triton kernels run here: under the interpreter (TRITON_INTERPRET=1, CPU tests)
or compiled for a GPU, and which block sizes the launchers pick."""

import os


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreter_blocks() -> bool:
    """Block sizes for the interpreter (large: its cost is per program and per op), unless
    NPHT_TRITON_GPU_BLOCKS=1 asks for the GPU's even there (tools/triton_check.py records
    the launches a GPU would compile)."""
    return interpreting() and os.environ.get("NPHT_TRITON_GPU_BLOCKS", "0") in ("", "0")


def block_override(var: str, fields: str, minima):
    """The ints of environment variable ``var`` (``fields``: their names, comma-separated),
    each a power of two at least its entry of ``minima``; None if unset. Block sizes to try
    on a GPU without editing a launcher (tools/tune_*.py)."""
    value = os.environ.get(var)
    if not value:
        return None
    n = len(fields.split(","))
    try:
        ints = tuple(int(v) for v in value.split(","))
    except ValueError:
        ints = ()
    if len(ints) != n:
        raise ValueError(f"{var} must be '{fields}' (ints), got {value!r}")
    if any(v < lo or v & (v - 1) for v, lo in zip(ints, minima)):
        want = ", ".join(f"{f} >= {lo}" for f, lo in zip(fields.split(","), minima))
        raise ValueError(f"{var}: each must be a power of two ({want}), got {value!r}")
    return ints
