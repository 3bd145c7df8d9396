"""Writes docs/heads.png: procedural heads of npht.data.synthetic (4 identities of the default
dataset, picked to be far apart in parameter space, x the first 4 expression presets, plus
a side view), rendered by npht's ground-truth normal-map
renderer (pyrender, headless) with world normals as colours (n + 1) / 2. CPU, ~1 minute:
    python docs/heads_example.py"""

import math
import os

import numpy as np
import torch


def cameras_at(yaw_degrees, pitch_degrees=8.0, size=300, fov_degrees=34.0, distance=2.9):
    """npht Cameras (OpenCV) on a circle around the head, looking at the origin."""
    from npht.render import Cameras, intrinsics_from_fov, look_at

    yaw, pitch = math.radians(yaw_degrees), math.radians(pitch_degrees)
    eye = distance * torch.tensor([[math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)]])
    return Cameras(intrinsics_from_fov(fov_degrees, size), look_at(eye), size, size)


def diverse_identities(n, pool=24, seed=0):
    """``n`` identity indices of the default dataset, picked greedily among the first
    ``pool`` so that each is farthest (parameters scaled to their ranges) from those picked."""
    from npht.data.synthetic import IdentityParams, synthetic_head

    lo, hi = np.array(list(IdentityParams.ranges().values())).T
    v = np.stack([(synthetic_head(i, seed).identity.to_vector() - lo) / (hi - lo) for i in range(pool)])
    picked = [0]
    while len(picked) < n:
        dist = np.min(np.linalg.norm(v[:, None] - v[picked][None], axis=-1), axis=1)
        picked.append(int(np.argmax(dist)))
    return picked


def main(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "heads.png"), n_ids=4, resolution=160):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npht.data.normal_maps import NormalMapRenderer
    from npht.data.synthetic import EXPRESSION_PRESETS, synthetic_head

    def picture(renderer, mesh, yaw):
        maps = renderer.render(mesh, cameras_at(yaw), convention="world")
        rgb = (maps.normals[0].numpy() + 1.0) / 2.0
        rgb[~maps.mask[0].numpy()] = 1.0  # white background
        return np.clip(rgb, 0.0, 1.0)

    names = list(EXPRESSION_PRESETS)[:4]
    ids = diverse_identities(n_ids)
    fig, axes = plt.subplots(n_ids, len(names) + 1, figsize=(2.6 * (len(names) + 1), 2.6 * n_ids + 0.3))
    with NormalMapRenderer() as renderer:
        for i in range(n_ids):
            head = synthetic_head(ids[i])
            for j, name in enumerate(names):
                axes[i, j].imshow(picture(renderer, head.mesh(name, resolution), 30.0))
                if i == 0:
                    axes[i, j].set_title(name, fontsize=9)
            axes[i, -1].imshow(picture(renderer, head.mesh(None, resolution), 90.0))
            axes[i, 0].text(-10, 150, head.name, rotation=90, va="center", ha="right", fontsize=9)
    axes[0, -1].set_title("neutral, side", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"npht.data.synthetic: procedural heads (world normals), marching cubes at {resolution}^3",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
