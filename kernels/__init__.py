"""Triton kernels of npht, installed as ``npht.kernels``. Importing a kernel module needs
triton; on a machine without a GPU set TRITON_INTERPRET=1 before importing."""
