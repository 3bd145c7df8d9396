"""Writes docs/heads.png: procedural heads of npht.data.synthetic (4 identities x the first
4 expression presets, plus a side view), rendered with pyrender (headless EGL) with world
normals as colours (n + 1) / 2. Runs on CPU in well under a minute:
    python docs/heads_example.py"""

import math
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402


def render_normals(mesh, yaw_degrees=30.0, pitch_degrees=8.0, size=256, renderer=None, fov_degrees=34.0):
    """World-normal image [size, size, 3] (uint8) of a HeadMesh from a camera on a circle."""
    import pyrender
    import trimesh

    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    colors = np.concatenate([(tm.vertex_normals + 1.0) / 2.0, np.ones((len(tm.vertices), 1))], 1)
    tm.visual.vertex_colors = (colors * 255).round().astype(np.uint8)
    scene = pyrender.Scene(bg_color=[1.0, 1.0, 1.0, 1.0], ambient_light=[1.0, 1.0, 1.0])
    scene.add(pyrender.Mesh.from_trimesh(tm, smooth=True))
    yaw, pitch, dist = math.radians(yaw_degrees), math.radians(pitch_degrees), 2.7
    eye = dist * np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    fwd = -eye / np.linalg.norm(eye)  # look at the origin
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, -fwd, eye  # OpenGL camera
    scene.add(pyrender.PerspectiveCamera(yfov=math.radians(fov_degrees)), pose=pose)
    r = renderer or pyrender.OffscreenRenderer(size, size)
    color, _ = r.render(scene, flags=pyrender.RenderFlags.FLAT)
    if renderer is None:
        r.delete()
    return color


def main(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "heads.png"), n_ids=4, resolution=160):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyrender

    from npht.data.synthetic import EXPRESSION_PRESETS, synthetic_head

    names = list(EXPRESSION_PRESETS)[:4]
    renderer = pyrender.OffscreenRenderer(300, 300)
    fig, axes = plt.subplots(n_ids, len(names) + 1, figsize=(2.6 * (len(names) + 1), 2.6 * n_ids + 0.3))
    for i in range(n_ids):
        head = synthetic_head(i)
        for j, name in enumerate(names):
            mesh = head.mesh(name, resolution)
            axes[i, j].imshow(render_normals(mesh, renderer=renderer))
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
        axes[i, -1].imshow(render_normals(head.mesh(None, resolution), yaw_degrees=90.0, renderer=renderer))
        axes[i, 0].text(-10, 150, head.name, rotation=90, va="center", ha="right", fontsize=9)
    axes[0, -1].set_title("neutral, side", fontsize=9)
    renderer.delete()
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("npht.data.synthetic: procedural heads (world normals), marching cubes at 160^3", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
