"""Normal maps of a trained identity model from a ring of views, at any resolution:
``npht render`` and :func:`render_identities` (also the demo's pictures: view cameras,
normals as RGB, captioned grids).

    npht render --model runs/tp/checkpoint.pt --out renders/tp --resolution 512 --device cuda
    npht render --model runs/tp/checkpoint.pt --out renders/samples --identities --samples 8
    npht render --model runs/tp/checkpoint.pt --out renders/fit --codes fits/head/fit.npz --resolution 512

writes ``normals.npz`` (``normals [N, V, H, W, 3]`` float32 in the OpenGL camera frame, 0
off the shape; ``mask [N, V, H, W]`` opacity > 0.5; ``codes [N, z]``; ``names [N]``; the
cameras ``K [V, 3, 3]``, ``cam2world [V, 4, 4]`` (OpenCV convention) and, for ``--yaws``
views, ``yaws [V]``, ``pitch``, ``distance``, ``fov``: ``npht fit normals`` reads the file
back), one PNG per shape (its views side by side, normals as ``(n + 1) / 2`` on white),
``grid.png`` (all of them, captioned) and, with ``--mesh-resolution R``,
``meshes/<name>.ply`` (marching cubes at ``R^3``, clipped to the unit ball). ``--cameras
NPZ`` renders from a file's cameras instead (:func:`npht.eval.fit_command.read_cameras`).
A previous render's files in ``--out`` are removed first (normals.npz, grid.png, and the PNGs
and meshes of the names in that normals.npz: no other file), and each file is written
atomically (a temporary file, then ``os.replace``: an interrupted run leaves no truncated file).
A shape given twice (``--identities 0 ada``) is rendered once; different codes under one
name (two fit.npz in folders of one name) are renamed ``head``, ``head_2``, ...; a shape's
files are named after it (characters other than letters, digits and ``-_.`` replaced by
``_``, names that would give one file name or ``grid`` numbered); ``--identities none``:
no training identity.
Rendering runs without grad, rays in chunks (``ray_chunk``), with the error-bound sampler
the model was trained with, skipping converged rays, and npht's sample-efficient shading
(weights below 1e-6 not shaded).
"""

from __future__ import annotations

import math
import os
import time
from typing import List, Optional, Sequence

import numpy as np
import torch

from .._atomic import write_atomic

__all__ = ["view_cameras", "normals_to_rgb", "image_grid", "trained_sampler", "render_identities", "select_codes",
           "read_codes", "write_atomic", "add_render_parser"]


def view_cameras(yaws: Sequence[float], size: int, distance: float = 2.6, fov: float = 30.0, pitch: float = 5.0):
    """:class:`npht.render.Cameras` ``[len(yaws)]`` looking at the origin from ``distance``,
    at ``yaws`` degrees around the y axis (0: from +z, the face) and ``pitch`` degrees above
    the horizon, ``size x size`` pixels, vertical field of view ``fov`` degrees."""
    from ..render import Cameras, intrinsics_from_fov, look_at

    eyes = torch.tensor([[math.sin(math.radians(y)) * math.cos(math.radians(pitch)), math.sin(math.radians(pitch)),
                          math.cos(math.radians(y)) * math.cos(math.radians(pitch))] for y in yaws]) * distance
    n = len(yaws)
    return Cameras(intrinsics_from_fov(fov, size).expand(n, 3, 3).clone(), look_at(eyes), size, size)


def normals_to_rgb(normals: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Normal maps ``[..., H, W, 3]`` -> uint8 RGB ``(n + 1) / 2`` on white (off ``mask``)."""
    rgb = ((normals.float().clamp(-1, 1) + 1) * 0.5).cpu().numpy()
    rgb[~mask.cpu().numpy().astype(bool)] = 1.0
    return (rgb * 255).round().astype(np.uint8)


def image_grid(rows: List[List[np.ndarray]], captions: Optional[List[str]] = None, path: str = "") -> str:
    """Tile images (rows of equal-size HxWx3 uint8 arrays) into one PNG at ``path``, a
    caption line above each row; returns ``path``."""
    from PIL import Image, ImageDraw

    h, w = rows[0][0].shape[:2]
    pad, cap = 4, (14 if captions else 0)
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad + cap) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        y = pad + i * (h + pad + cap)
        if captions:
            draw.text((pad, y), captions[i], fill="black")
        for j, img in enumerate(row):
            canvas.paste(Image.fromarray(img), (pad + j * (w + pad), y + cap))
    return write_atomic(path, canvas.save)


def trained_sampler(trained):
    """The error-bound sampler ``trained`` (:class:`npht.train.TrainedIdentity`) was trained
    with, skipping converged rays."""
    from ..render import ErrorBoundSampler

    c = trained.config
    return ErrorBoundSampler(*c.samples, c.sampler_eps, c.beta_iters, c.max_total_iters, skip_converged=True)


def render_identities(trained, codes: torch.Tensor, cameras, *, device="cpu", ray_chunk: int = 1 << 16,
                      progress: bool = False, convention: str = "opengl"):
    """Normal maps of each code seen from every camera: ``codes [N, z]`` (or code indices
    ``[N]``), ``cameras [V]`` -> ``(normals [N, V, H, W, 3]`` in the ``convention`` frame
    (default the OpenGL camera frame; ``"opencv"``, ``"world"``), ``mask [N, V, H, W]``
    opacity > 0.5), on the CPU; one render call per code (its V views as the batch)."""
    from ..render import VolSDFRenderer

    from tqdm.auto import tqdm

    if not isinstance(ray_chunk, int) or ray_chunk < 1:
        raise ValueError(f"ray_chunk must be a positive int, got {ray_chunk!r}")
    renderer = VolSDFRenderer(density=trained.density, sampler=trained_sampler(trained), weight_threshold=1e-6,
                              ray_chunk=ray_chunk)
    cams = cameras.to(device)
    V = len(cams)
    normals, masks = [], []
    with torch.no_grad():
        for code in tqdm(codes, desc="render", disable=not progress, leave=False):
            out = renderer(trained.model.sdf_fn(code.to(device)[None], group=V), cams, None, convention=convention)
            normals.append(out.normals.cpu())
            masks.append((out.opacity > 0.5).cpu())
    if not normals:
        H, W = cams.height, cams.width
        return torch.zeros(0, V, H, W, 3), torch.zeros(0, V, H, W, dtype=torch.bool)
    return torch.stack(normals), torch.stack(masks)


def select_codes(trained, identities: Optional[Sequence[str]] = None, samples: int = 0, seed: int = 0):
    """``(codes [N, z], names [N])``: the training identities named in ``identities``
    (code indices or identity names; ``None``: the first four), then ``samples`` codes drawn
    from a Gaussian fitted to all training codes (seeded), named ``sample_<i>``."""
    from ..fit import fit_gaussian, sample_codes

    all_codes = trained.codes.cpu()
    n_id = all_codes.shape[0]
    names_of = {i: n for n, i in (trained.identity_names or {}).items()}
    if identities is None:
        chosen = list(range(min(4, n_id)))
    else:
        index_of = dict(trained.identity_names or {})
        chosen = []
        for token in identities:
            t = str(token)
            if t in index_of:
                chosen.append(int(index_of[t]))
            elif t.lstrip("-").isdigit():
                i = int(t)
                if not 0 <= i < n_id:
                    raise ValueError(f"identity index {i} is out of range: the model has {n_id} identity codes")
                chosen.append(i)
            else:
                known = ", ".join(sorted(index_of)[:8]) or "none stored"
                raise ValueError(f"unknown identity {t!r}: give a code index (0..{n_id - 1}) or a name ({known})")
    if not isinstance(samples, int) or samples < 0:
        raise ValueError(f"samples must be a non-negative int, got {samples!r}")
    codes = [all_codes[i] for i in chosen]
    names = [names_of.get(i, f"code_{i}") for i in chosen]
    if samples:
        mean, cov = fit_gaussian(all_codes)
        drawn = sample_codes(mean, cov, samples, generator=torch.Generator().manual_seed(seed))
        codes += list(drawn)
        names += [f"sample_{i}" for i in range(samples)]
    if not codes:
        raise ValueError("nothing to render: no identities chosen and samples=0")
    return torch.stack(codes), names


def read_codes(paths: Sequence[str], z_dim: int):
    """``(codes [N, z_dim], names [N])`` from ``.npz`` files: ``code [z]`` (``npht fit``'s
    fit.npz, named after its folder) or ``codes [n, z]`` with optional ``names [n]`` (``npht
    render``'s normals.npz; else ``<file>_<i>``)."""
    from .fit_command import read_npz

    codes, names = [], []
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"--codes {path!r} is a folder, not a file: give .npz files (npht fit's fit.npz, npht "
                             f"render's normals.npz)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"codes {path!r} do not exist")
        stem = os.path.splitext(os.path.basename(path))[0]
        f = read_npz(path, "--codes", "code [z] (npht fit's fit.npz) or codes [n, z] and optional names [n] (npht "
                                      "render's normals.npz)")
        if "code" in f:
            c = np.asarray(f["code"], dtype=np.float32).reshape(1, -1)
            folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
            n = [folder if stem == "fit" and folder else stem]
        elif "codes" in f:
            c = np.asarray(f["codes"], dtype=np.float32)
            n = [str(x) for x in f["names"]] if "names" in f else [f"{stem}_{i}" for i in range(len(c))]
        else:
            raise ValueError(f"{path!r} has no array 'code' nor 'codes' (it holds {', '.join(f) or 'nothing'})")
        if c.ndim != 2 or c.shape[1] != z_dim or len(n) != len(c):
            raise ValueError(f"{path!r}: codes must be [n, {z_dim}] (the model's code size) with a name each, got "
                             f"{c.shape} and {len(n)} names")
        if not np.isfinite(c).all():
            raise ValueError(f"{path!r}: the codes hold non-finite values")
        codes.append(torch.from_numpy(c))
        names += n
    return torch.cat(codes), names


def _render_main(args) -> int:
    from ..cli import check_device, check_out_folder
    from ..train.loading import load_identity

    check_out_folder(args.out)
    check_device(args.device)
    if args.resolution < 1:
        raise ValueError(f"--resolution must be positive, got {args.resolution}")
    if args.mesh_resolution and args.mesh_resolution < 2:
        raise ValueError(f"--mesh-resolution must be 0 (no meshes) or at least 2, got {args.mesh_resolution}")
    if not args.yaws:
        raise ValueError("--yaws needs at least one angle")
    if args.cameras:
        from .fit_command import read_cameras

        cams = read_cameras(args.cameras, pitch=args.pitch, distance=args.distance, fov=args.fov)
    else:
        cams = view_cameras(args.yaws, args.resolution, distance=args.distance, fov=args.fov, pitch=args.pitch)
    trained = load_identity(args.model, args.device)
    if args.identities and "none" in args.identities and "none" not in (trained.identity_names or {}):
        if len(args.identities) > 1:
            raise ValueError(f"--identities none (no training identity) cannot come with others, got "
                             f"{' '.join(args.identities)}")
        args.identities = []
    if args.codes:
        given, given_names = read_codes(args.codes, int(trained.codes.shape[1]))
        picked = [] if args.identities is None else args.identities
        if picked or args.samples:
            codes, names = select_codes(trained, picked, args.samples, args.seed)
            codes, names = torch.cat([codes, given]), names + given_names
        else:
            codes, names = given, given_names
    else:
        codes, names = select_codes(trained, args.identities, args.samples, args.seed)
    codes, names, repeated, renamed = _unique(codes, names)
    if repeated:
        print(f"npht render: {', '.join(repeated)} given more than once: rendered once")
    if renamed:
        print("npht render: different codes under one name renamed: " + ", ".join(f"{a} -> {b}" for a, b in renamed))
    os.makedirs(args.out, exist_ok=True)  # before the renders: an unwritable folder fails now, not after them
    previous = _previous_render(args.out)
    if previous:
        print(f"npht render: replacing the previous render in {args.out} ({len(previous)} files)")
        _remove(previous)
    t0 = time.perf_counter()
    normals, mask = render_identities(trained, codes, cams, device=args.device, ray_chunk=args.ray_chunk,
                                      progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    arrays = dict(normals=normals.numpy(), mask=mask.numpy(), codes=codes.numpy(), names=np.array(names),
                  K=cams.K.numpy(), cam2world=cams.cam2world.numpy())
    if not args.cameras:
        arrays.update(yaws=np.array(args.yaws, dtype=np.float32), pitch=np.float32(args.pitch),
                      distance=np.float32(args.distance), fov=np.float32(args.fov))
    # normals.npz first: its names tell a later run which PNGs and meshes this one wrote
    write_atomic(os.path.join(args.out, "normals.npz"), lambda tmp: np.savez_compressed(tmp, **arrays))
    rows = [[normals_to_rgb(n, m) for n, m in zip(normals[i], mask[i])] for i in range(len(names))]
    for stem, row in zip(_file_names(names), rows):
        image_grid([row], None, os.path.join(args.out, f"{stem}.png"))
    image_grid(rows, names, os.path.join(args.out, "grid.png"))
    views = len(names) * len(cams)
    size = f"{cams.height}^2" if cams.height == cams.width else f"{cams.height}x{cams.width}"
    print(f"rendered {len(names)} shapes x {len(cams)} views at {size} in {seconds:.1f} s "
          f"({seconds / views:.2f} s per view) -> {args.out}")
    if args.mesh_resolution:
        _write_meshes(trained, codes, names, args)
    return 0


def _write_meshes(trained, codes, names, args) -> None:
    """Marching-cubes meshes of the codes (clipped to the unit ball the model is rendered in)
    as ``meshes/<name>.ply``."""
    from tqdm.auto import tqdm

    from .mesh import extract_mesh, model_sdf_fn

    folder = os.path.join(args.out, "meshes")
    os.makedirs(folder, exist_ok=True)
    t0 = time.perf_counter()
    for code, stem in tqdm(list(zip(codes, _file_names(names))), desc="meshes", disable=args.no_progress,
                           leave=False):
        mesh = extract_mesh(model_sdf_fn(trained.model, code.to(args.device)), resolution=args.mesh_resolution,
                            device=args.device, clip_radius=1.0, sparse=args.sparse_mesh)
        write_atomic(os.path.join(folder, f"{stem}.ply"), mesh.export)
    print(f"extracted {len(names)} meshes at {args.mesh_resolution}^3 in {time.perf_counter() - t0:.1f} s -> {folder}")


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "shape"


def _file_names(names: Sequence[str]) -> List[str]:
    """The file stem of each shape's PNG and mesh: its name with characters other than
    letters, digits, ``-_.`` replaced by ``_``, made unique (``_2``, ``_3``, ... where two
    names give one stem, compared without case: case-insensitive file systems) and never
    ``grid`` (the contact sheet). A function of ``names`` alone: a later run finds the files
    of a previous one from the names in its normals.npz."""
    taken, out = {"grid"}, []
    for name in names:
        stem = base = _file_name(name)
        k = 1
        while stem.lower() in taken:
            k += 1
            stem = f"{base}_{k}"
        taken.add(stem.lower())
        out.append(stem)
    return out


def _unique(codes: torch.Tensor, names: List[str]):
    """``(codes, names, repeated, renamed)``: each (name, code) once, in the order of first
    occurrence (``--identities 0 ada`` names one identity twice; ``repeated``: the names
    dropped); a name given to different codes (two fit.npz in folders of one name) made
    unique with ``_2``, ``_3``, ... (``renamed``: (old, new) pairs)."""
    keep, repeated, kept_of = [], [], {}
    for i, name in enumerate(names):
        if any(torch.equal(codes[i], codes[j]) for j in kept_of.get(name, ())):
            if name not in repeated:
                repeated.append(name)
            continue
        kept_of.setdefault(name, []).append(i)
        keep.append(i)
    codes = codes[keep] if len(keep) != len(names) else codes
    used, taken = {names[i] for i in keep}, set()
    kept, renamed = [], []
    for i in keep:
        name = names[i]
        if name in taken:   # a different code under a name already given to one
            k = 2
            while f"{name}_{k}" in used:
                k += 1
            renamed.append((name, f"{name}_{k}"))
            name = f"{name}_{k}"
            used.add(name)
        taken.add(name)
        kept.append(name)
    return codes, kept, repeated, renamed


def _previous_render(out: str) -> List[str]:
    """The files a previous ``npht render`` wrote in ``out`` that are still there:
    normals.npz, grid.png and, for the names in that normals.npz, ``<name>.png`` and
    ``meshes/<name>.ply`` (no other file: a normals.npz that cannot be read names none)."""
    npz = os.path.join(out, "normals.npz")
    files, names = [npz, os.path.join(out, "grid.png")], []
    if os.path.isfile(npz):
        try:
            with np.load(npz) as f:
                names = [str(n) for n in f["names"].reshape(-1)] if "names" in f.files else []
        except Exception:  # truncated or not npht's: its shapes' PNGs cannot be told from other files
            names = []
    for stem in _file_names(names):
        files += [os.path.join(out, f"{stem}.png"), os.path.join(out, "meshes", f"{stem}.ply")]
    return sorted({f for f in files if os.path.isfile(f)})


def _remove(files: List[str]) -> None:
    """Remove ``files``, then their folders' ``meshes`` left empty."""
    for f in files:
        os.remove(f)
    for folder in {os.path.dirname(f) for f in files if os.path.basename(os.path.dirname(f)) == "meshes"}:
        try:
            os.rmdir(folder)
        except OSError:  # other files in it
            pass


def add_render_parser(subparsers):
    """``npht render --model CKPT --out DIR [--identities ...] [--samples K] ...``."""
    from ..cli import HelpFormatter

    p = subparsers.add_parser("render", help="normal maps of a trained identity model from a ring of views",
                              formatter_class=HelpFormatter,
                              description="Render normal maps of training identities (and codes sampled from a "
                                          "Gaussian fitted to them) of an `npht train identity` checkpoint: "
                                          "normals.npz, one PNG per shape and grid.png in --out.")
    p.add_argument("--model", required=True, help="identity checkpoint (npht train identity)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--identities", nargs="*", default=None, metavar="ID",
                   help="code indices or identity names (default: the first four; 'none' or a bare --identities: "
                        "no training identity, only --samples / --codes)")
    p.add_argument("--samples", type=int, default=0, help="codes drawn from a Gaussian fitted to the training codes")
    p.add_argument("--codes", nargs="+", default=None, metavar="NPZ",
                   help="codes from files: npht fit's fit.npz (code) or npht render's normals.npz (codes, names); "
                        "rendered alone unless --identities / --samples are given too")
    p.add_argument("--seed", type=int, default=0, help="seed of --samples")
    p.add_argument("--resolution", type=int, default=256, help="the views' size in pixels (square)")
    p.add_argument("--yaws", type=float, nargs="+", default=[-40.0, 0.0, 40.0],
                   help="view angles in degrees around the vertical axis (0: the face)")
    p.add_argument("--cameras", default=None, metavar="NPZ",
                   help="render from the cameras of an .npz instead (K + cam2world, OpenCV convention, or yaws; the "
                        "image size from its normals or height / width), e.g. the normal maps given to npht fit "
                        "normals; --yaws and --resolution then do not apply")
    p.add_argument("--pitch", type=float, default=5.0, help="the views' degrees above the horizon")
    p.add_argument("--distance", type=float, default=2.6, help="the cameras' distance to the origin")
    p.add_argument("--fov", type=float, default=30.0, help="vertical field of view, degrees")
    p.add_argument("--ray-chunk", type=int, default=1 << 16, help="rays per render chunk (memory)")
    p.add_argument("--mesh-resolution", type=int, default=0,
                   help="also write marching-cubes meshes of the shapes at this grid resolution (e.g. 256) to "
                        "meshes/<name>.ply (default 0: none)")
    p.add_argument("--sparse-mesh", action="store_true",
                   help="evaluate the SDF only near the surface for the meshes (the same mesh for SDFs with "
                        "|grad| <= 2, ~10x fewer evaluations at 256^3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_render_main)
    return p

