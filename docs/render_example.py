"""Renders analytic SDFs with npht.render.render and writes docs/normals.png: normal maps
(OpenGL camera frame, shown as (n + 1) / 2) and opacity, from two of the thesis' Fibonacci
cameras. Runs on CPU in about a minute:  python docs/render_example.py"""

import os

import torch

from npht.render import LaplaceDensity, fibonacci_cameras, render


def torus(p, R=0.45, r=0.15):
    q = torch.stack([torch.sqrt(p[..., 0] ** 2 + p[..., 2] ** 2) - R, p[..., 1]], -1)
    return q.norm(dim=-1) - r


def rounded_box(p, half=(0.35, 0.3, 0.4), rounding=0.05):
    q = p.abs() - torch.tensor(half) + rounding
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0) - rounding


def blobs(p, k=0.1):  # a smooth union of two spheres
    a = (p - torch.tensor([0.0, 0.25, 0.0])).norm(dim=-1) - 0.3
    b = (p + torch.tensor([0.0, 0.2, 0.0])).norm(dim=-1) - 0.35
    h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
    return b * (1 - h) + a * h - k * h * (1 - h)


def main(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "normals.png"), res=128):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cameras = fibonacci_cameras(128, radius=2.6)[torch.tensor([5, 70])]
    density = LaplaceDensity(beta=1e-3)
    shapes = {"torus": torus, "rounded box": rounded_box, "smooth union": blobs}
    fig, axes = plt.subplots(2, 2 * len(shapes), figsize=(3 * 2 * len(shapes), 6.4))
    for col, (name, sdf) in enumerate(shapes.items()):
        with torch.no_grad():
            out = render(sdf, cameras, res, density=density, convention="opengl")
        for row in range(2):
            rgb = ((out.normals[row] + 1) / 2 * out.opacity[row, ..., None]).clamp(0, 1)
            axes[row, 2 * col].imshow(rgb.numpy())
            axes[row, 2 * col + 1].imshow(out.opacity[row].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, 2 * col].set_title(f"{name}: normals", fontsize=9)
        axes[0, 2 * col + 1].set_title(f"{name}: opacity", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"npht.render.render, {res}x{res}, beta 1e-3, thesis sampler, OpenGL camera frame", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
