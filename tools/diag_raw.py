"""Diagnostic: the raw ops' argument checks must raise, not crash (run with -X faulthandler)."""
import torch
import npht  # noqa: F401  (loads npht._C)

devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devs:
    planes = torch.randn(2, 3, 5, 6, 4, device=dev)
    points = torch.rand(2, 7, 3, device=dev)
    for name, args in [("axes4", ([0, 1, 1, 2], 1.0, 0, 0, False)),
                       ("agg5", ([0, 1, 1, 2, 0, 2], 1.0, 5, 0, False)),
                       ("axes9", ([0, 1, 1, 2, 0, 9], 1.0, 0, 0, False))]:
        print(dev, name, "...", flush=True)
        try:
            torch.ops.npht_C.triplane_fwd(planes, points, *args)
            print("  no error")
        except RuntimeError as e:
            print("  raised:", str(e).splitlines()[0][:120], flush=True)
