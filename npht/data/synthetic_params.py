"""Parameters of the procedural heads: identity (shape) and expression (deformation).

Every field has a documented closed range; constructing a parameter set outside it raises
a ``ValueError`` that names the field. ``sample(seed)`` draws each field from a Beta law
stretched over its range (identities Beta(1.2, 1.2), nearly uniform for diverse heads;
expressions Beta(2, 2); never outside), so a seed fixes the parameters on every machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Tuple, Union

import numpy as np

from .sampling import as_generator

__all__ = ["IdentityParams", "ExpressionParams", "EXPRESSION_PRESETS"]

SeedLike = Union[int, np.random.Generator]


def _p(default: float, lo: float, hi: float, doc: str):
    return field(default=default, metadata={"range": (lo, hi), "doc": doc})


class _Params:
    """Shared behaviour: range checks, vectors, sampling."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            lo, hi = f.metadata["range"]
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"{type(self).__name__}.{f.name} must be a number, got {v!r}") from None
            if not (lo <= v <= hi):  # also rejects NaN
                raise ValueError(f"{type(self).__name__}.{f.name} = {v!r} is outside its range [{lo}, {hi}]")
            object.__setattr__(self, f.name, v)

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        """Field names, in vector order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def ranges(cls) -> Dict[str, Tuple[float, float]]:
        """``{name: (low, high)}`` for every field."""
        return {f.name: f.metadata["range"] for f in dataclasses.fields(cls)}

    def to_vector(self) -> np.ndarray:
        """The fields as a float64 vector ``[len(names())]``, in field order."""
        return np.array([getattr(self, n) for n in self.names()], dtype=np.float64)

    @classmethod
    def from_vector(cls, vector):
        """Inverse of :meth:`to_vector` (validates the ranges)."""
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (len(cls.names()),):
            raise ValueError(f"{cls.__name__}.from_vector needs a vector of shape ({len(cls.names())},), "
                             f"got {v.shape}")
        return cls(**{n: float(x) for n, x in zip(cls.names(), v)})

    def replace(self, **changes):
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def _sample(cls, seed: SeedLike, defaults: dict, concentration: float = 2.0):
        rng = as_generator(seed, "seed")
        values = {}
        for f in dataclasses.fields(cls):
            lo, hi = f.metadata["range"]
            u = rng.beta(concentration, concentration)
            values[f.name] = defaults.get(f.name, lo + (hi - lo) * u)
        return cls(**values)


@dataclass(frozen=True)
class IdentityParams(_Params):
    """Shape of one procedural head. Scale factors are relative to the mean head (1.0);
    the others are blends in their range. Ranges (low, high), mean in brackets:

    - ``head_width`` 0.86-1.14 [1.0], ``head_height`` 0.9-1.1 [1.0], ``head_depth``
      0.88-1.12 [1.0]: cranium proportions (x, y, z).
    - ``forehead_slope`` 0-1 [0.5]: the cranium sheared back with height (upright,
      bulging forehead at 0; sloping forehead and high back at 1).
    - ``face_length`` 0.86-1.14 [1.0]: length of the lower face (mouth and chin move down);
      ``face_width`` 0.88-1.12 [1.0]: width of the face and cheeks.
    - ``nose_length`` 0.75-1.3 [1.0], ``nose_width`` 0.8-1.3 [1.0], ``nose_bridge`` 0-1
      [0.5]: nose projection and width, bridge height between the eyes.
    - ``jaw_width`` 0.8-1.2 [1.0], ``chin`` 0.6-1.4 [1.0] (chin size and projection),
      ``cheekbones`` 0-1 [0.5].
    - ``ear_size`` 0.8-1.25 [1.0], ``ear_angle`` 0-1 [0.5]: how far the ears stand out
      (0.05 to 0.45 rad from the head).
    - ``eye_spacing`` 0.9-1.1 [1.0], ``brow_ridge`` 0-1 [0.5].
    - ``lip_fullness`` 0.65-1.35 [1.0], ``mouth_width`` 0.85-1.15 [1.0].
    - ``neck_width`` 0.8-1.2 [1.0].
    - ``hair_volume`` 0-1 [0.5]: thickness of the hair cap (0.01 to 0.09);
      ``hair_length`` 0-1 [0.5]: how far down the back of the head the hair reaches;
      ``hairline`` 0-1 [0.5]: height of the front hairline (low to receding temples);
      ``hair_top`` 0-1 [0.5]: extra volume on top and in front (short crop to quiff).

    ``sample`` draws identity fields from Beta(1.2, 1.2) (nearly uniform: distinct
    identities); expressions keep Beta(2, 2).
    """

    head_width: float = _p(1.0, 0.86, 1.14, "cranium width (x) factor")
    head_height: float = _p(1.0, 0.9, 1.1, "cranium height (y) factor")
    head_depth: float = _p(1.0, 0.88, 1.12, "cranium depth (z) factor")
    face_length: float = _p(1.0, 0.86, 1.14, "lower face length factor")
    nose_length: float = _p(1.0, 0.75, 1.3, "nose length / projection factor")
    nose_width: float = _p(1.0, 0.8, 1.3, "nose width factor")
    nose_bridge: float = _p(0.5, 0.0, 1.0, "bridge height")
    jaw_width: float = _p(1.0, 0.8, 1.2, "jaw width factor")
    chin: float = _p(1.0, 0.6, 1.4, "chin size and projection factor")
    cheekbones: float = _p(0.5, 0.0, 1.0, "cheekbone prominence")
    ear_size: float = _p(1.0, 0.8, 1.25, "ear size factor")
    ear_angle: float = _p(0.5, 0.0, 1.0, "ear protrusion")
    eye_spacing: float = _p(1.0, 0.9, 1.1, "distance between the eyes factor")
    brow_ridge: float = _p(0.5, 0.0, 1.0, "brow ridge prominence")
    lip_fullness: float = _p(1.0, 0.65, 1.35, "lip thickness factor")
    mouth_width: float = _p(1.0, 0.85, 1.15, "mouth width factor")
    neck_width: float = _p(1.0, 0.8, 1.2, "neck radius factor")
    hair_volume: float = _p(0.5, 0.0, 1.0, "hair cap thickness")
    hair_length: float = _p(0.5, 0.0, 1.0, "hair reach down the back")
    face_width: float = _p(1.0, 0.88, 1.12, "face and cheek width (x) factor")
    forehead_slope: float = _p(0.5, 0.0, 1.0, "forehead slope (0 upright, 1 sloping back)")
    hairline: float = _p(0.5, 0.0, 1.0, "hairline height (0 low, 1 receding)")
    hair_top: float = _p(0.5, 0.0, 1.0, "hair volume on top (0 crop, 1 raised quiff)")

    @classmethod
    def mean(cls) -> "IdentityParams":
        """The mean head (every field at its default)."""
        return cls()

    @classmethod
    def sample(cls, seed: SeedLike) -> "IdentityParams":
        """Random identity: each field Beta(1.2, 1.2) over its range (nearly uniform, so
        identities are clearly distinct); deterministic in ``seed``."""
        return cls._sample(seed, {}, concentration=1.2)


@dataclass(frozen=True)
class ExpressionParams(_Params):
    """An expression: amplitudes of the analytic deformation of the neutral head. All zero
    is the canonical (neutral) expression, whose mouth is slightly open as in NPHM. Ranges:

    - ``jaw_open`` 0-1: jaw rotation about the hinge axis in front of the ears, up to
      0.26 rad.
    - ``smile`` -1-1: mouth corners up, out and back, cheeks up (negative: frown).
    - ``mouth_wide`` -1-1: mouth corners sideways (negative: narrower).
    - ``pucker`` 0-1: lips forward, corners inward.
    - ``brow_raise`` -1-1: eyebrows and forehead up (negative: lowered brows).
    - ``cheek_puff`` 0-1: cheeks outward.
    """

    jaw_open: float = _p(0.0, 0.0, 1.0, "jaw rotation (0.26 rad at 1)")
    smile: float = _p(0.0, -1.0, 1.0, "mouth corners up/out (negative: frown)")
    mouth_wide: float = _p(0.0, -1.0, 1.0, "mouth corners sideways")
    pucker: float = _p(0.0, 0.0, 1.0, "lips forward, corners in")
    brow_raise: float = _p(0.0, -1.0, 1.0, "eyebrows up (negative: down)")
    cheek_puff: float = _p(0.0, 0.0, 1.0, "cheeks out")

    @classmethod
    def neutral(cls) -> "ExpressionParams":
        """The canonical expression (all zero): the deformation is the identity."""
        return cls()

    @property
    def is_neutral(self) -> bool:
        return not np.any(self.to_vector())

    @classmethod
    def sample(cls, seed: SeedLike) -> "ExpressionParams":
        """Random expression: each field Beta(2, 2) over its range; deterministic in ``seed``."""
        return cls._sample(seed, {})


#: Named expressions, in the order datasets take them (the first k are the default set).
EXPRESSION_PRESETS: Dict[str, ExpressionParams] = {
    "neutral": ExpressionParams(),
    "jaw_open": ExpressionParams(jaw_open=0.85),
    "smile": ExpressionParams(smile=1.0, mouth_wide=0.3, jaw_open=0.1),
    "brow_raise": ExpressionParams(brow_raise=1.0),
    "surprise": ExpressionParams(jaw_open=0.7, brow_raise=1.0, pucker=0.3, mouth_wide=-0.3),
    "pucker": ExpressionParams(pucker=1.0, mouth_wide=-0.5),
    "frown": ExpressionParams(smile=-0.8, brow_raise=-0.8),
    "cheek_puff": ExpressionParams(cheek_puff=1.0, pucker=0.3),
}
