"""``npht fit``: fit a trained identity model to your own data, a scan (points or a mesh)
or normal maps with their cameras, and write the code, a mesh and pictures.

    npht fit scan --model runs/tp/checkpoint.pt --scan head.ply --out fits/head
    npht fit normals --model runs/tp/checkpoint.pt --normals renders/tp/normals.npz --shape 1 --out fits/maps

Both start from the mean training code and minimise the thesis' objectives with NPHM's
Adam schedule (:class:`npht.fit.FitSchedule`, its milestones scaled to ``--iterations``):
``scan`` the mean ``|SDF|`` at the observed points (eq. 4.23, :func:`npht.fit.fit_identity`),
``normals`` the L1 normal-map loss through npht's VolSDF renderer
(:func:`npht.fit.fit_normal_maps`, the renderer settings the model was trained with plus
coarse culling). The data must be in the model's frame: heads normalised into the unit
sphere, y up, z towards the face (``--scale`` / ``--offset`` map a scan there).

Inputs. A scan: ``.npy`` ``[N, 3]``, ``.npz`` (array ``points``, or a mesh's ``vertices``
and ``faces``, the layout of ``npht data prepare``'s meshes), ``.xyz`` / ``.txt`` /
``.csv`` (x y z in the first three columns), or a mesh / point cloud that trimesh reads
(``.ply``, ``.obj``, ``.stl``, ``.off``, ...): a mesh is sampled uniformly on its surface,
a point cloud taken as it is; at most ``--points`` points are used (a seeded subset).
Normal maps: an ``.npz`` as ``npht render`` writes it: ``normals [V, H, W, 3]`` (or
``[S, V, H, W, 3]``, pick a shape with ``--shape``) in the ``--convention`` frame (default
OpenGL camera: x right, y up, z towards the camera), optional ``mask [V, H, W]`` (default:
pixels with a non-zero normal), and the cameras: ``K [V, 3, 3]`` (pixels) and
``cam2world [V, 4, 4]`` (OpenCV convention), or ``yaws [V]`` (degrees, plus optional
``pitch``, ``distance``, ``fov``: :func:`npht.eval.renders.view_cameras`).

Outputs in ``--out``: ``fit.npz`` (``code [z]``, the loss history), ``fit.json`` (the
settings, seconds, the objective before and after: mean ``|SDF|`` at the scan points, or
the mean angle between the model's and the given normals where both cover a pixel),
``fit.png`` (the fitted shape from ``--yaws``, or the given maps above the fitted model's at
their cameras) and, unless ``--mesh-resolution 0``, ``mesh.ply`` (marching cubes, clipped
to the unit ball). ``npht fit scan --expression CKPT``: a posed scan, fitted with an
expression model (identity and expression codes jointly, then the expression alone, as
``npht eval``'s posed rows): ``z_ex`` in fit.npz, ``mesh.ply`` posed, ``neutral.ply``, and
fit.png shows the neutral identity. A previous fit's files in ``--out`` are removed first
(those names only, said in one line); each file is written atomically (a temporary file,
then ``os.replace``) and fit.json last: its presence means a complete run.
"""

from __future__ import annotations

import math
import os
import time
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["read_scan", "read_normal_maps", "read_cameras", "read_npz", "mean_angle_deg", "add_fit_parser"]

_TEXT = (".xyz", ".txt", ".csv")


def read_scan(path: str, points: Optional[int] = 5000, seed: int = 0, scale: float = 1.0,
              offset: Tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """The points ``[n, 3]`` (float32) of a scan file, mapped by ``x * scale + offset`` into
    the model's frame, at most ``points`` of them (a subset seeded by ``seed``; a mesh is
    sampled uniformly on its surface). Raises ValueError for a file that holds no ``[N, 3+]``
    finite points, or whose points lie outside the unit sphere the heads are normalised to, and
    for a ``scale`` that is not positive and finite or an ``offset`` that is not finite."""
    _check_file(path, "--scan", "scan", "a points or mesh file (.npy, .npz, .xyz, .ply, .obj, ...)")
    if points is not None and (not isinstance(points, int) or points < 1):
        raise ValueError(f"points must be a positive int or None, got {points!r}")
    try:
        scale_ok, off = 0 < float(scale) < math.inf, np.asarray(offset, dtype=np.float64)
    except (TypeError, ValueError):
        scale_ok, off = False, np.zeros(0)
    if not scale_ok:  # 0 collapses the scan to a point, a negative scale mirrors it
        raise ValueError(f"--scale must be a positive finite number, got {scale!r}")
    if off.shape != (3,) or not np.isfinite(off).all():
        raise ValueError(f"--offset must be three finite numbers, got {offset!r}")
    ext = os.path.splitext(path)[1].lower()
    rng = np.random.default_rng(seed)
    if ext == ".npy":
        arr = np.load(path)
    elif ext == ".npz":
        f = read_npz(path, "--scan", "points [N, 3], or a mesh's vertices [V, 3] and faces [F, 3]")
        if "points" in f:
            arr = f["points"]
        elif "vertices" in f and "faces" in f:  # a mesh (npht's prepared datasets' layout)
            arr = _surface_points(np.asarray(f["vertices"]), np.asarray(f["faces"]), points, seed, path)
        else:
            raise ValueError(f"{path!r} has no array 'points' nor 'vertices' and 'faces' (it holds "
                             f"{', '.join(f) or 'nothing'})")
    elif ext in _TEXT:
        try:
            arr = np.loadtxt(path, delimiter="," if ext == ".csv" else None, ndmin=2)
        except ValueError as e:
            raise ValueError(f"{path!r} is not a table of numbers (x y z per line): {e}") from None
    else:
        import trimesh

        try:
            geom = trimesh.load(path, process=False)
        except Exception as e:
            raise ValueError(f"trimesh cannot read the scan {path!r}: {e}") from None
        if isinstance(geom, trimesh.Scene):
            geom = geom.to_geometry() if hasattr(geom, "to_geometry") else geom.dump(concatenate=True)
        faces = getattr(geom, "faces", None)
        if faces is not None and len(faces):
            arr = _surface_points(np.asarray(geom.vertices), np.asarray(faces), points, seed, path)
        else:
            arr = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))))
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] < 3 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"scan {path!r}: expected points [N, 3] (N >= 1), got an array of shape {arr.shape}")
    arr = arr[:, :3].astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"scan {path!r}: {int((~np.isfinite(arr)).any(1).sum())} points are not finite")
    arr = arr * float(scale) + off
    if points is not None and len(arr) > points:
        arr = arr[np.sort(rng.choice(len(arr), points, replace=False))]
    r = np.linalg.norm(arr, axis=1)
    outside = float((r > 1.05).mean())
    if outside > 0.01:
        raise ValueError(f"scan {path!r}: {100 * outside:.1f}% of the points lie outside the unit sphere (largest "
                         f"radius {r.max():.3g}); the model's frame has heads normalised into it (y up, z towards "
                         f"the face): map the scan there with --scale / --offset")
    return torch.from_numpy(arr.astype(np.float32))


def _check_file(path: str, flag: str, what: str, expected: str) -> None:
    """FileNotFoundError for a missing ``path``, ValueError for a folder (``expected``: the file it needs)."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder, not a file: it needs {expected}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} {'do' if what.endswith('s') else 'does'} not exist")


def read_npz(path: str, flag: str, needs: str) -> dict:
    """The arrays of the ``.npz`` archive ``path`` by name; a ValueError naming ``flag`` and
    what the file ``needs`` for anything else (``np.load`` gives a bare array for an
    ``.npy``, which has no names to look up), and for an archive that cannot be read to the
    end (truncated, corrupt: a bad CRC, a broken deflate stream, pickled arrays)."""
    try:
        f = np.load(path)
    except Exception as e:  # not a NumPy file at all (pickles refused)
        raise ValueError(f"{flag} {path!r} is not an .npz archive ({type(e).__name__}: {e}); it needs {needs}") \
            from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{flag} {path!r} is a single array (.npy), not an .npz archive of named arrays; it needs "
                         f"{needs}")
    with f:
        try:
            return {k: f[k] for k in f.files}
        except Exception as e:  # zipfile.BadZipFile, zlib.error, EOFError, ValueError (pickles), ...
            raise ValueError(f"{flag} {path!r} is a damaged .npz archive (truncated or corrupt: "
                             f"{type(e).__name__}: {e})") from None


def _surface_points(vertices: np.ndarray, faces: np.ndarray, points: Optional[int], seed: int, path: str):
    """``points`` (default 100000) points uniformly on a triangle mesh's surface."""
    import trimesh

    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or not len(faces):
        raise ValueError(f"scan {path!r}: a mesh needs vertices [V, 3] and faces [F, 3], got {vertices.shape} and "
                         f"{faces.shape}")
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    return trimesh.sample.sample_surface(mesh, points or 100_000, seed=int(seed))[0]


def _cameras(data: dict, V: int, H: int, W: int, path: str, pitch: float, distance: float, fov: float):
    """Cameras ``[V]`` of ``H x W`` images from a file's arrays: ``K`` + ``cam2world``, or ``yaws``."""
    from ..render import Cameras
    from .renders import view_cameras

    if "K" in data and "cam2world" in data:
        K = torch.from_numpy(np.asarray(data["K"], dtype=np.float32))
        c2w = torch.from_numpy(np.asarray(data["cam2world"], dtype=np.float32))
        if K.shape != (V, 3, 3) or c2w.shape != (V, 4, 4):
            raise ValueError(f"{path!r}: K must be [V={V}, 3, 3] and cam2world [V, 4, 4], got {tuple(K.shape)} and "
                             f"{tuple(c2w.shape)}")
        return Cameras(K, c2w, H, W)
    if "yaws" in data:
        yaws = [float(y) for y in np.asarray(data["yaws"]).reshape(-1)]
        if len(yaws) != V or H != W:
            raise ValueError(f"{path!r}: yaws cameras need one yaw per view ({V}) and square maps, got {len(yaws)} "
                             f"yaws for {H}x{W} maps")
        kw = dict(pitch=pitch, distance=distance, fov=fov)
        kw.update({k: float(data[k]) for k in kw if k in data})
        return view_cameras(yaws, H, **kw)
    raise ValueError(f"{path!r} has no cameras: it needs K [V, 3, 3] and cam2world [V, 4, 4] (OpenCV convention) "
                     f"or yaws [V] (degrees)")


def read_cameras(path: str, pitch: float = 5.0, distance: float = 2.6, fov: float = 30.0):
    """The cameras of an ``.npz``: ``K [V, 3, 3]`` + ``cam2world [V, 4, 4]`` (OpenCV) or ``yaws
    [V]``, their image size from ``normals [..., V, H, W, 3]`` or ``height`` / ``width``
    (``npht render --cameras``)."""
    _check_file(path, "--cameras", "cameras", "an .npz with cameras (K and cam2world, or yaws)")
    data = read_npz(path, "--cameras", "K [V, 3, 3] and cam2world [V, 4, 4] (OpenCV convention) or yaws [V] "
                                       "(degrees), and normals [..., V, H, W, 3] or height and width")
    if "normals" in data and data["normals"].ndim >= 4:
        V, H, W = data["normals"].shape[-4:-1]
    elif "height" in data and "width" in data:
        H, W = int(data["height"]), int(data["width"])
        V = len(data["K"]) if "K" in data else int(np.asarray(data.get("yaws", [])).size)
    else:
        raise ValueError(f"{path!r}: the image size comes from normals [..., V, H, W, 3] or height and width")
    if H < 1 or W < 1 or V < 1:
        raise ValueError(f"{path!r}: no cameras or an empty image size ({V} views of {H}x{W})")
    return _cameras(data, V, H, W, path, pitch, distance, fov)


def read_normal_maps(path: str, shape: int = 0, pitch: float = 5.0, distance: float = 2.6, fov: float = 30.0):
    """``(cameras [V], normals [V, H, W, 3], mask [V, H, W])`` from an ``.npz`` as ``npht
    render`` writes it (see the module's text); ``shape`` picks one of ``[S, V, ...]`` maps;
    ``pitch`` / ``distance`` / ``fov`` apply to ``yaws`` cameras when the file has none."""
    _check_file(path, "--normals", "normal maps", "an .npz with normals and cameras (as npht render's normals.npz)")
    data = read_npz(path, "--normals", "normals [V, H, W, 3] (or [S, V, H, W, 3]), optional mask, and the cameras: "
                                       "K [V, 3, 3] and cam2world [V, 4, 4] (OpenCV convention) or yaws [V] (degrees)")
    if "normals" not in data:
        raise ValueError(f"{path!r} has no array 'normals' (it holds {', '.join(sorted(data)) or 'nothing'})")
    normals, mask = data["normals"], data.get("mask")
    if normals.ndim == 5:
        if not 0 <= shape < normals.shape[0]:
            raise ValueError(f"--shape {shape} is out of range: {path!r} holds {normals.shape[0]} shapes")
        normals = normals[shape]
        mask = None if mask is None else mask[shape]
    elif shape != 0:
        raise ValueError(f"--shape {shape}: {path!r} holds the maps of one shape")
    if normals.ndim != 4 or normals.shape[-1] != 3:
        raise ValueError(f"{path!r}: normals must be [V, H, W, 3] or [S, V, H, W, 3], got {normals.shape}")
    V, H, W = normals.shape[:3]
    normals = torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float32))
    if not torch.isfinite(normals).all():
        raise ValueError(f"{path!r}: the normals hold non-finite values")
    if mask is None:
        mask = normals.norm(dim=-1) > 0.5
    else:
        if tuple(mask.shape) != (V, H, W):
            raise ValueError(f"{path!r}: mask must be [V={V}, H={H}, W={W}] like the normals, got {mask.shape}")
        mask = torch.from_numpy(np.asarray(mask)).bool()
    cams = _cameras(data, V, H, W, path, pitch, distance, fov)
    if not mask.any():
        raise ValueError(f"{path!r}: no pixel is covered (the mask is empty)")
    return cams, normals, mask


def _mean_abs_sdf(model, code: torch.Tensor, pts: torch.Tensor, expression=None, z_ex=None, schedule=None) -> float:
    """Mean ``|SDF|`` at the scan points: of the identity ``code``, or with an expression
    model at the canonical points root-found from them (eq. 4.22, the fit's own objective)."""
    from ..fit import invert_deformation

    z = code.reshape(1, -1)
    x = pts[None]
    with torch.no_grad():
        if expression is not None:
            x, _ = invert_deformation(lambda y: expression.deform(y, z, z_ex.reshape(1, -1)), x,
                                      iters=schedule.root_iters, tol=schedule.root_tol, method=schedule.root_method)
        return float(model(x, z).abs().mean())


def mean_angle_deg(normals: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor) -> float:
    """The mean angle in degrees between the directions of two sets of normal maps where
    both masks hold (``nan`` where they never meet)."""
    both = mask & target_mask
    a, b = normals[both].double(), target[both].double()
    if not len(a):
        return float("nan")
    # atan2(|a x b|, a . b): accurate at small angles too (acos of a cosine near 1 is not)
    return math.degrees(float(torch.atan2(torch.cross(a, b, dim=-1).norm(dim=-1), (a * b).sum(-1)).mean()))


def _schedule(args):
    from .fitting_eval import _scaled_schedule

    if args.iterations < 0:
        raise ValueError(f"--iterations must be >= 0, got {args.iterations}")
    schedule = _scaled_schedule(args.iterations).replace(
        relative_reg={"auto": "auto", "true": True, "false": False}[args.relative_reg])
    if args.lambda_id is not None:
        if not args.lambda_id >= 0:
            raise ValueError(f"--lambda-id must be >= 0, got {args.lambda_id}")
        schedule = schedule.replace(lambda_id=args.lambda_id)
    return schedule


def _check_common(args) -> None:
    from ..cli import check_device, check_out_folder

    if args.mesh_resolution and args.mesh_resolution < 2:
        raise ValueError(f"--mesh-resolution must be 0 (no mesh) or at least 2, got {args.mesh_resolution}")
    check_out_folder(args.out)
    check_device(args.device)


#: every file ``npht fit`` writes in ``--out`` (fit.json last: its presence means a complete run)
_OUTPUTS = ("fit.npz", "fit.png", "neutral.ply", "mesh.ply", "fit.json")


def _replace_previous(out: str) -> None:
    """Remove a previous fit's files from ``out`` (only _OUTPUTS), saying so: a new
    run that writes fewer files (no picture, no mesh) or is interrupted leaves none of
    another run's."""
    previous = [name for name in _OUTPUTS if os.path.isfile(os.path.join(out, name))]
    if previous:
        print(f"npht fit: replacing the previous fit in {out} ({', '.join(previous)})")
        for name in previous:
            os.remove(os.path.join(out, name))


def _finish(args, trained, res, record: dict, picture, z_ex=None, expression=None, seconds=None,
            arrays=None) -> int:
    """Writes fit.npz (the code, ``z_ex``, the history and ``arrays``), fit.png
    (``picture(path)``), mesh.ply (with an expression model: the neutral mesh moved forward
    to ``z_ex``, and neutral.ply) and, last, fit.json; each file atomically."""
    from ..fit import posed_vertices
    from .mesh import extract_mesh, model_sdf_fn
    from .._atomic import write_atomic, write_json_atomic

    os.makedirs(args.out, exist_ok=True)
    code = res.code[0].cpu()
    extra = dict(arrays or {})
    if z_ex is not None:
        extra["z_ex"] = z_ex.reshape(-1).cpu().numpy()
    extra.update({k: np.asarray(v, dtype=np.float64) for k, v in res.history.items()})
    write_atomic(os.path.join(args.out, "fit.npz"), lambda tmp: np.savez_compressed(tmp, code=code.numpy(), **extra))
    picture(os.path.join(args.out, "fit.png"))
    if args.mesh_resolution:
        t0 = time.perf_counter()
        mesh = extract_mesh(model_sdf_fn(trained.model, code.to(args.device)), resolution=args.mesh_resolution,
                            device=args.device, clip_radius=1.0, sparse=args.sparse_mesh,
                            progress=not args.no_progress)
        if expression is not None:
            import trimesh

            write_atomic(os.path.join(args.out, "neutral.ply"), mesh.export)
            with torch.no_grad():
                v = posed_vertices(expression, torch.as_tensor(mesh.vertices, dtype=torch.float32, device=args.device),
                                   code.to(args.device), z_ex.reshape(-1).to(args.device))
            mesh = trimesh.Trimesh(v.cpu().double().numpy(), mesh.faces, process=False)
        write_atomic(os.path.join(args.out, "mesh.ply"), mesh.export)
        record["mesh"] = dict(resolution=args.mesh_resolution, vertices=int(len(mesh.vertices)),
                              faces=int(len(mesh.faces)), seconds=time.perf_counter() - t0)
    seconds = res.seconds if seconds is None else seconds
    record.update(model=os.path.abspath(args.model), iterations=args.iterations, seconds=seconds,
                  relative_reg=args.relative_reg,
                  loss_first=res.losses[0] if res.losses else None, loss_last=res.losses[-1] if res.losses else None,
                  device=str(args.device), seed=args.seed)

    write_json_atomic(os.path.join(args.out, "fit.json"), record)
    return 0


def _fit_scan_main(args) -> int:
    from ..fit import fit_expression, fit_identity
    from ..fit.fitting import _mean_code
    from ..train.loading import check_expression_pair, load_expression, load_identity
    from .renders import image_grid, normals_to_rgb, render_identities, view_cameras

    _check_common(args)
    if args.no_expression_refine and not args.expression:
        raise ValueError("--no-expression-refine applies to a posed scan's fit: it needs --expression CKPT")
    if args.resolution < 0:
        raise ValueError(f"--resolution must be 0 (no picture) or positive, got {args.resolution}")
    schedule = _schedule(args)
    pts = read_scan(args.scan, args.points, args.seed, args.scale, tuple(args.offset))
    trained = load_identity(args.model, args.device)
    expr = None
    if args.expression:
        loaded_expr = load_expression(args.expression, args.device)
        check_expression_pair(trained, loaded_expr)
        expr = loaded_expr.model
    _replace_previous(args.out)
    pts = pts.to(args.device)
    init = trained.codes.mean(0).to(args.device)
    z_ex0 = None if expr is None else _mean_code(expr, int(expr.z_ex_dim)).to(args.device)
    res = fit_identity(trained.model, pts, schedule=schedule, init=init, expression_model=expr, z_ex_init=z_ex0,
                       seed=args.seed, progress=not args.no_progress)
    z_ex, seconds, refine = res.z_ex, res.seconds, {}
    if expr is not None and not args.no_expression_refine:  # thesis 4.4.2: then z_ex alone, z_id fixed
        ref = fit_expression(trained.model, expr, pts, res.code[0], schedule=schedule, init=res.z_ex[0],
                             seed=args.seed, progress=not args.no_progress)
        z_ex, seconds = ref.z_ex, seconds + ref.seconds
        refine = {f"refine_{k}": np.asarray(v, dtype=np.float64) for k, v in ref.history.items()}
    before = _mean_abs_sdf(trained.model, init, pts, expr, z_ex0, schedule)
    after = _mean_abs_sdf(trained.model, res.code[0], pts, expr, z_ex, schedule)
    what = "" if expr is None else " (identity and expression)"
    print(f"fitted {len(pts)} scan points{what} in {seconds:.1f} s ({args.iterations} iterations): mean |SDF| at "
          f"the points {before:.4g} -> {after:.4g} (model units)")

    def picture(path):
        if args.resolution:
            cams = view_cameras(args.yaws, args.resolution)
            n, m = render_identities(trained, res.code.cpu(), cams, device=args.device)
            image_grid([[normals_to_rgb(a, b) for a, b in zip(n[0], m[0])]], None, path)

    record = dict(kind="scan", lambda_id=schedule.lambda_id, scan=os.path.abspath(args.scan), points=len(pts),
                  scale=args.scale, offset=list(args.offset), mean_abs_sdf_before=before, mean_abs_sdf_after=after,
                  expression=os.path.abspath(args.expression) if expr is not None else None,
                  expression_refine=expr is not None and not args.no_expression_refine)
    _finish(args, trained, res, record, picture, z_ex=z_ex, expression=expr, seconds=seconds, arrays=refine)
    print(f"-> {args.out}")
    return 0


def _fit_normals_main(args) -> int:
    from ..fit import fit_normal_maps
    from ..train.loading import load_identity
    from .renders import image_grid, normals_to_rgb, render_identities, trained_sampler

    _check_common(args)
    if args.resolution < 0:
        raise ValueError(f"--resolution must be 0 (the maps' own) or positive, got {args.resolution}")
    schedule = _schedule(args)
    cams, target, mask = read_normal_maps(args.normals, args.shape, args.pitch, args.distance, args.fov)
    trained = load_identity(args.model, args.device)
    _replace_previous(args.out)
    init = trained.codes.mean(0).to(args.device)

    def maps(code):
        return render_identities(trained, code.reshape(1, -1).cpu(), cams, device=args.device,
                                 convention=args.convention)

    n0, m0 = maps(init)
    res = fit_normal_maps(trained.model, cams.to(args.device), target.to(args.device), mask.to(args.device),
                          resolution=args.resolution or None, density=trained.density, schedule=schedule, init=init,
                          seed=args.seed, progress=not args.no_progress, views_per_chunk=args.views_per_chunk,
                          tile=args.tile, convention=args.convention,
                          renderer_options=dict(sampler=trained_sampler(trained), coarse_factor=4),
                          fused_gradient={} if args.fused_gradient else None)
    n1, m1 = maps(res.code[0])
    before, after = mean_angle_deg(n0[0], m0[0], target, mask), mean_angle_deg(n1[0], m1[0], target, mask)
    V, H, W = mask.shape
    print(f"fitted {V} normal maps of {H}x{W} in {res.seconds:.1f} s ({args.iterations} iterations): mean angle to "
          f"the given normals {before:.2f} -> {after:.2f} deg")

    def picture(path):
        image_grid([[normals_to_rgb(a, b) for a, b in zip(target, mask)],
                    [normals_to_rgb(a, b) for a, b in zip(n1[0], m1[0])]], ["given", "fitted"], path)

    record = dict(kind="normals", lambda_id=schedule.lambda_id, normals=os.path.abspath(args.normals),
                  shape=args.shape, views=V, height=H, width=W, convention=args.convention,
                  fused_gradient=args.fused_gradient,
                  resolution=args.resolution or H,
                  angle_deg_before=before, angle_deg_after=after)
    _finish(args, trained, res, record, picture)
    print(f"-> {args.out}")
    return 0


def _common_args(p, mesh_default: int) -> None:
    p.add_argument("--model", required=True, help="identity checkpoint (npht train identity)")
    p.add_argument("--out", required=True, help="output folder (fit.npz, fit.json, fit.png, mesh.ply; a previous "
                                                "fit's files there are replaced)")
    p.add_argument("--iterations", type=int, default=700, help="Adam steps (NPHM's schedule scaled; default 700)")
    p.add_argument("--lambda-id", type=float, default=None,
                   help="weight of the latent prior ||z||^2 (default NPHM's 0.05, divided by 5 at 2/7 and 5/7 of the "
                        "iterations)")
    p.add_argument("--relative-reg", choices=("auto", "true", "false"), default="auto",
                   help="the latent regulariser's unit (npht.fit.FitSchedule.relative_reg)")
    p.add_argument("--mesh-resolution", type=int, default=mesh_default,
                   help=f"marching-cubes grid of mesh.ply (default {mesh_default}; 0: no mesh)")
    p.add_argument("--sparse-mesh", action="store_true", help="evaluate the SDF only near the surface for the mesh")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit (fit scan: also of the point subset)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_fit_parser(subparsers):
    """``npht fit scan ...`` and ``npht fit normals ...``."""
    from ..cli import HelpFormatter

    fit = subparsers.add_parser("fit", help="fit a trained identity model to a scan or to normal maps",
                                description=__doc__.split("\n\n")[0].replace("``", "'"))
    sub = fit.add_subparsers(dest="fit_command", required=True)
    s = sub.add_parser("scan", help="fit to observed surface points (a point cloud or mesh file)",
                       formatter_class=HelpFormatter,
                       description="Fit the identity code to a scan's points (eq. 4.23): .npy/.npz/.xyz/.txt/.csv "
                                   "points or a mesh / point cloud trimesh reads, in the model's frame (heads in the "
                                   "unit sphere, y up, z towards the face).")
    s.add_argument("--scan", required=True, help="the scan file")
    s.add_argument("--points", type=int, default=5000, help="at most this many points (a seeded subset; a mesh is "
                                                           "sampled on its surface; default 5000, the thesis' scans)")
    s.add_argument("--scale", type=float, default=1.0, help="x -> x * scale + offset into the model's frame")
    s.add_argument("--offset", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("X", "Y", "Z"),
                   help="added after --scale")
    s.add_argument("--expression", default=None, metavar="CKPT",
                   help="an expression checkpoint (npht train expression) trained on --model: a posed scan, the "
                        "identity and expression codes fitted jointly through the root-found inverse deformation "
                        "(eq. 4.22), then the expression alone (--no-expression-refine: the joint fit only); "
                        "mesh.ply is the neutral mesh moved to the expression, neutral.ply the identity's")
    s.add_argument("--no-expression-refine", action="store_true",
                   help="with --expression: the joint identity + expression fit only (default: then the expression "
                        "alone, thesis 4.4.2)")
    s.add_argument("--resolution", type=int, default=256, help="fit.png's view size (0: no picture)")
    s.add_argument("--yaws", type=float, nargs="+", default=[-40.0, 0.0, 40.0], help="fit.png's views (degrees)")
    _common_args(s, 128)
    s.set_defaults(func=_fit_scan_main)
    n = sub.add_parser("normals", help="fit to normal maps with their cameras (an .npz as npht render writes)",
                       formatter_class=HelpFormatter,
                       description="Fit the identity code to normal maps through npht's VolSDF renderer (L1 "
                                   "normal-map loss): an .npz with normals, optional mask and the cameras (K and "
                                   "cam2world, or yaws), as `npht render` writes it.")
    n.add_argument("--normals", required=True, help="the .npz file")
    n.add_argument("--shape", type=int, default=0, help="which shape of an [S, V, H, W, 3] file (default 0)")
    n.add_argument("--convention", choices=("opengl", "opencv", "world"), default="opengl",
                   help="the normals' frame (default opengl: npht render's)")
    n.add_argument("--resolution", type=int, default=0,
                   help="render resolution of the fit, the maps resampled to it (default 0: the maps' own)")
    n.add_argument("--views-per-chunk", type=int, default=None,
                   help="views rendered per backward (memory; default: all)")
    n.add_argument("--tile", type=int, default=None,
                   help="render tiles of tile x tile pixels (memory; default: whole maps)")
    n.add_argument("--fused-gradient", action="store_true",
                   help="tri-plane models: the shaded samples' normals from the decoder's fused value and gradient "
                        "(npht.softplus_mlp_with_grad) instead of autograd; the same fit to float32 rounding")
    n.add_argument("--pitch", type=float, default=5.0, help="yaws cameras: degrees above the horizon")
    n.add_argument("--distance", type=float, default=2.6, help="yaws cameras: distance to the origin")
    n.add_argument("--fov", type=float, default=30.0, help="yaws cameras: vertical field of view, degrees")
    _common_args(n, 128)
    n.set_defaults(func=_fit_normals_main)
    return fit
