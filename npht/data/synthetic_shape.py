"""The neutral procedural head as one signed distance function built from smooth
primitives, and the landmarks (layout) it shares with the deformation and the face region.

Units: the whole head (hair top to the flat neck cut) spans about 1.45 in y, so about one
unit is 17 cm; y up, face towards +z, every surface point within 0.93 of the origin for
all identity parameters in range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .synthetic_params import IdentityParams
from .synthetic_sdf import (ellipsoid, rotate_xz, rotate_yz, smax, smin, smoothstep, soft_abs, sphere, ssub,
                            tapered_capsule)

__all__ = ["Layout", "layout", "head_sdf", "face_region_mask"]

NECK_CUT_Y = -0.80  # flat bottom of the neck stump


@dataclass(frozen=True)
class Layout:
    """Landmark positions (world units) derived from an identity."""

    W: float  # cranium half width
    H: float  # cranium half height
    D: float  # cranium half depth
    cranium_c: tuple
    eye_x: float
    eye_y: float
    eye_z: float
    brow_y: float
    nose_tip: tuple
    nose_bottom_y: float
    mouth_y: float  # centre of the gap between the lips
    mouth_z: float  # front of the lips
    mouth_half_width: float
    chin_c: tuple
    chin_bottom_y: float
    jaw_half_width: float
    ear_c: tuple
    ear_half_height: float
    hinge: tuple  # jaw hinge axis (parallel to x) through (0, y, z)
    hairline_front_y: float
    hairline_back_y: float
    hairline_coef: tuple  # hairline height = sum_k coef[k] cos(k phi), phi around the y axis
    shear: float  # cranium sheared back with height: z -> z + shear * (y - cranium_c[1])


def layout(idp: IdentityParams) -> Layout:
    W, H, D = 0.36 * idp.head_width, 0.46 * idp.head_height, 0.45 * idp.head_depth
    fl = idp.face_length
    mouth_y = -0.225 * fl
    chin_bottom = -0.455 * fl
    ear_h = 0.115 * idp.ear_size
    front, back = 0.30 + 0.14 * idp.hairline, 0.02 - 0.24 * idp.hair_length
    return Layout(
        W=W, H=H, D=D, cranium_c=(0.0, 0.17, -0.06),
        eye_x=0.14 * idp.eye_spacing, eye_y=0.07, eye_z=0.262,
        brow_y=0.15,
        nose_tip=(0.0, -0.08 * fl - 0.02 * (idp.nose_length - 1.0), 0.50 + 0.07 * (idp.nose_length - 1.0)),
        nose_bottom_y=-0.125 * fl,
        mouth_y=mouth_y, mouth_z=0.405, mouth_half_width=0.1 * idp.mouth_width,
        chin_c=(0.0, chin_bottom + 0.075, 0.30 + 0.04 * (idp.chin - 1.0)),
        chin_bottom_y=chin_bottom,
        jaw_half_width=0.27 * idp.jaw_width,
        ear_c=(W - 0.01, 0.01, -0.075), ear_half_height=ear_h,
        hinge=(0.0, -0.03, -0.01),
        hairline_front_y=front, hairline_back_y=back,
        hairline_coef=_hairline(front, 0.2 + 0.16 * idp.hairline, 0.19, back),
        shear=-0.14 + 0.32 * idp.forehead_slope,
    )


def _hairline(front: float, temple: float, side: float, back: float) -> tuple:
    """Coefficients of ``sum_k c_k cos(k phi)`` (k = 0..3) through the hairline heights at
    phi = 0 (forehead), 55 deg (temples), 105 deg (over the ears) and 180 deg (nape)."""
    phis = np.radians([0.0, 55.0, 105.0, 180.0])
    A = np.cos(np.outer(phis, np.arange(4)))
    return tuple(float(c) for c in np.linalg.solve(A, [front, temple, side, back]))


def head_sdf(p: torch.Tensor, idp: IdentityParams, L: Layout) -> torch.Tensor:
    """Signed distance estimate of the neutral head at points ``p [..., 3]`` (negative
    inside). Exact sign; magnitude within a few percent of the true distance near the
    surface (smooth blends and the ellipsoid estimate)."""
    x, y, z = (p[..., i].contiguous() for i in range(3))
    pm = (soft_abs(x), y, z)  # mirrored: paired parts are built on x > 0
    p = (x, y, z)
    fl = idp.face_length

    # cranium, lower face, jaw, chin, cheeks, muzzle (the mouth's base)
    ps = (x, y, z + L.shear * (y - L.cranium_c[1]))  # sheared cranium frame (forehead slope)
    cranium = ellipsoid(ps, L.cranium_c, (L.W, L.H, L.D))
    d = cranium
    fw = idp.face_width
    face = ellipsoid(p, (0.0, -0.06 * fl, 0.07), (0.29 * fw, 0.34 * fl, 0.31))
    d = smin(d, face, 0.10)
    jc = (0.0, -0.25 * fl, 0.06)
    jaw = ellipsoid(rotate_yz(p, -0.45, jc), jc, (L.jaw_half_width, 0.17 * fl, 0.27))  # back end raised
    d = smin(d, jaw, 0.10)
    cs = 1.0 + 0.45 * (idp.chin - 1.0)  # size; the projection is in the layout
    chin = ellipsoid(p, L.chin_c, (0.085 * cs, 0.08 * cs, 0.075 * cs))
    d = smin(d, chin, 0.1)
    cb = idp.cheekbones
    cheek = sphere(pm, (0.15 * fw + 0.015 * cb, -0.01 + 0.01 * cb, 0.205 + 0.04 * cb), 0.12)
    d = smin(d, cheek, 0.10)
    muzzle = ellipsoid(p, (0.0, L.mouth_y + 0.01, 0.25), (0.14, 0.13 * fl, 0.125))
    d = smin(d, muzzle, 0.06)

    # brow ridge
    br = 0.018 + 0.024 * idp.brow_ridge
    dz = L.D - 0.45  # follows the forehead of shallow / deep crania
    brow = tapered_capsule(pm, (0.0, L.brow_y - 0.01, 0.385 + 0.4 * dz), (0.22 * fw, L.brow_y, 0.30 + 0.6 * dz),
                           br, 0.8 * br)
    d = smin(d, brow, 0.06)

    # eye sockets, eyeballs, lids (a shell around the eyeball, open along the eye slit)
    ec = (L.eye_x, L.eye_y, L.eye_z)
    d = ssub(d, ellipsoid(pm, (L.eye_x, L.eye_y + 0.006, 0.365), (0.072, 0.044, 0.065)), 0.035)
    eye = sphere(pm, ec, 0.054)
    slit = 0.016 - soft_abs(y - L.eye_y - 0.003, 0.004) - 0.15 * (pm[0] - L.eye_x) ** 2 / 0.05
    lids = smax(sphere(pm, ec, 0.066), slit, 0.008)
    d = smin(d, smin(eye, lids, 0.006), 0.015)

    # maxilla under the nose (philtrum): fills the hollow between the nose and the upper lip
    maxilla = ellipsoid(p, (0.0, L.nose_bottom_y - 0.035, 0.30), (0.10, 0.065, 0.095))
    d = smin(d, maxilla, 0.05)

    # nose: a wide base (side walls) along the dorsum blending into the cheeks, the dorsum,
    # the tip and the wings (alae); nostrils carved below
    tip = L.nose_tip
    nw = idp.nose_width
    bridge_top = (0.0, L.eye_y + 0.035, 0.35 + 0.025 * idp.nose_bridge)
    nose = tapered_capsule(p, bridge_top, tip, 0.024 + 0.008 * idp.nose_bridge, 0.034 * nw)
    nose = smin(nose, sphere(p, (0.0, tip[1] - 0.01, tip[2] - 0.03), 0.044 * nw), 0.03)
    mid = (0.0, 0.5 * (bridge_top[1] + L.nose_bottom_y) - 0.005, 0.5 * (bridge_top[2] + tip[2]) - 0.045)
    slope = math.atan2(tip[2] - bridge_top[2], bridge_top[1] - tip[1])
    base = ellipsoid(rotate_yz(p, slope, mid), mid, (0.052 * nw, 0.12, 0.06))
    nose = smin(nose, base, 0.03)
    wing = ellipsoid(pm, (0.046 * nw, L.nose_bottom_y + 0.03, tip[2] - 0.075), (0.03 * nw, 0.028, 0.042))
    nose = smin(nose, wing, 0.03)
    d = smin(d, nose, 0.045)
    nostril = ellipsoid(pm, (0.022 * nw, L.nose_bottom_y + 0.004, tip[2] - 0.05), (0.013 * nw, 0.008, 0.022))
    d = ssub(d, nostril, 0.006)

    # lips and the mouth gap (open in the canonical expression)
    lf, mw = idp.lip_fullness, L.mouth_half_width
    upper = ellipsoid(p, (0.0, L.mouth_y + 0.024, L.mouth_z - 0.04), (mw, 0.025 * lf, 0.04 * lf))
    lower = ellipsoid(p, (0.0, L.mouth_y - 0.026, L.mouth_z - 0.045), (0.88 * mw, 0.026 * lf, 0.04 * lf))
    d = smin(d, smin(upper, lower, 0.01), 0.035)
    gap = ellipsoid(p, (0.0, L.mouth_y, L.mouth_z), (mw + 0.002, 0.0085, 0.13))
    d = ssub(d, gap, 0.008)

    # ears: a plate (helix) with a lobe, turned out by the ear angle; the bowl carved outside
    ang = 0.12 + 0.33 * idp.ear_angle
    q = rotate_xz(pm, -ang, L.ear_c)  # ear frame: plate normal ~ x, back edge away from head
    q = rotate_yz(q, 0.15, L.ear_c)
    ex, ey, ez = L.ear_c
    h = L.ear_half_height
    ear = ellipsoid(q, (ex + 0.016, ey + 0.15 * h, ez), (0.026, 0.85 * h, 0.6 * h))
    lobe = ellipsoid(q, (ex + 0.014, ey - 0.55 * h, ez + 0.08 * h), (0.02, 0.42 * h, 0.36 * h))
    ear = smin(ear, lobe, 0.03)
    bowl = ellipsoid(q, (ex + 0.045, ey + 0.05 * h, ez + 0.06 * h), (0.022, 0.66 * h, 0.4 * h))
    ear = ssub(ear, bowl, 0.012)
    d = smin(d, ear, 0.025)

    # neck stump (leaning slightly forward, widening at the bottom), cut flat and closed
    nr = 0.205 * idp.neck_width * (1.0 + 0.12 * smoothstep((-0.55 - y) / 0.25))
    zc = -0.08 + 0.08 * (-0.2 - y)
    neck = torch.sqrt(x * x + ((z - zc) / 0.92) ** 2) * 0.96 - nr
    neck = smax(neck, y - 0.0, 0.05)
    d = smin(d, neck, 0.09)
    d = smax(d, NECK_CUT_Y - y, 0.0)

    # hair: an offset shell of the cranium (fuller on top) above a hairline running from
    # the forehead over the temples and ears down to the nape (periodic in the angle
    # around the y axis)
    t, top = 0.01 + 0.08 * idp.hair_volume, idp.hair_top
    cc = L.cranium_c
    cap = ellipsoid(ps, (cc[0], cc[1] + 0.03 * top, cc[2] + 0.03 * top),
                    (L.W + t + 0.01 * top, L.H + 1.4 * t + 0.06 * top, L.D + 1.2 * t + 0.03 * top))
    # bevelled edge: the cut rises with the height above the scalp
    cut = (hairline(x, z, L) - y + 1.5 * cranium.clamp_min(0.0)) * 0.6
    cap = smax(cap, cut, 0.04)
    d = smin(d, cap, 0.025)
    return d


def hairline(x: torch.Tensor, z: torch.Tensor, L: Layout) -> torch.Tensor:
    """Height of the hairline above ``(x, z)``: ``sum_k c_k cos(k phi)``, phi = atan2(x, z)."""
    r = torch.sqrt(x * x + z * z + 1e-4)
    c1, s1 = z / r, x / r
    c2 = c1 * c1 - s1 * s1
    c3 = c1 * (2.0 * c2 - 1.0)  # cos(3 phi) = cos(phi) (2 cos(2 phi) - 1)
    k = L.hairline_coef
    return k[0] + k[1] * c1 + k[2] * c2 + k[3] * c3


def face_region_mask(p: torch.Tensor, L: Layout) -> torch.Tensor:
    """NPHM-like face region of neutral points ``p [..., 3]``: face, forehead and ears
    (in front of the ears, above the chin, below the hairline; plus the ears), not the
    back of the head, the hair or the neck. A function of the neutral position only."""
    x, y, z = p.unbind(-1)
    front = (z > L.ear_c[2] + 0.06) & (y > L.chin_bottom_y - 0.03) & (y < hairline(x, z, L) - 0.01)
    front &= z > 0.25 * (L.chin_bottom_y - y) - 0.01  # not under the jaw
    ex, ey, ez = L.ear_c
    ear = ((x.abs() - ex - 0.03) ** 2 / 0.06**2 + (y - ey) ** 2 / (1.3 * L.ear_half_height) ** 2
           + (z - ez) ** 2 / 0.09**2) < 1.0
    return front | ear
