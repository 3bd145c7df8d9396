"""Diagnostic: the raw ops' argument checks must raise, not crash. Each case runs in its
own process so that a crash in one does not hide the others."""
import subprocess
import sys

CASES = {
    "axes4": "torch.ops.npht_C.triplane_fwd(pl, pt, [0, 1, 1, 2], 1.0, 0, 0, False)",
    "agg5": "torch.ops.npht_C.triplane_fwd(pl, pt, [0, 1, 1, 2, 0, 2], 1.0, 5, 0, False)",
    "axes9": "torch.ops.npht_C.triplane_fwd(pl, pt, [0, 1, 1, 2, 0, 9], 1.0, 0, 0, False)",
    "shape": "torch.ops.npht_C.triplane_fwd(pl, pt[:1], [0, 1, 1, 2, 0, 2], 1.0, 0, 0, False)",
    "contig": "torch.ops.npht_C.triplane_fwd(pl, pt.transpose(0, 1).contiguous().transpose(0, 1), [0, 1, 1, 2, 0, 2], 1.0, 0, 0, False)",
    "torch_own": "torch.ones(2, 3) @ torch.ones(4, 5)",
}
for dev in sys.argv[1:] or ["cpu"]:
    for name, call in CASES.items():
        code = (f"import torch, npht\npl = torch.randn(2, 3, 5, 6, 4, device='{dev}')\n"
                f"pt = torch.rand(2, 7, 3, device='{dev}')\n"
                f"try:\n    {call}\n    print('no error')\n"
                f"except RuntimeError as e:\n    print('raised:', str(e).splitlines()[0][:100])\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        err = r.stderr.strip().splitlines()[-1:] if r.returncode else ""
        print(f"{dev:5s} {name:9s} rc={r.returncode} {r.stdout.strip()[:110]} {err}", flush=True)
