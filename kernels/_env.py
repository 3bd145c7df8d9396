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
