"""Thickness models for simulating datasets: per-frame thickness distributions.

Each model is a small frozen value whose :meth:`distribution` maps the frames' goniometer
angles α [deg] to nodes t [Å] and weights w (Σ w = 1 per frame), Float[ndarray, "frame node"].
The simulated intensity of a frame is the incoherent average Σ_n w_n I(t_n)
(:func:`edrefine.measurement.thickness_average`). Host-side numpy; not differentiated.

Models (α_n: goniometer angle at which the plate normal is along the beam):

- ``Constant(t)``: one node t.
- ``PerFrame(values)``: one node per frame, ``values`` in file order.
- ``Plate(t0, normal_tilt_deg)``: one node t0 / cos(α − α_n) (path length through a slab of
  thickness t0 whose normal is tilted by α − α_n from the beam).
- ``Wedge(t_min, t_max, nodes, normal_tilt_deg)``: uniform distribution over
  [t_min, t_max] / cos(α − α_n), sampled at the ``nodes`` cell midpoints
  t_j = (t_min + (j + ½)(t_max − t_min)/nodes) / cos(α − α_n), equal weights; the mean is the
  centre (t_min + t_max) / 2 / cos(α − α_n).
- ``Bimodal(t1, t2, fraction, width)``: mixture f·N(t1, width²) + (1 − f)·N(t2, width²),
  independent of α, each Gaussian sampled by 5-point Gauss–Hermite quadrature
  (t_k = t_i + √2·width·x_k, weights w_k/√π), so the mean f t1 + (1 − f) t2 and the variance
  are exact.

:func:`parse_thickness_model` reads the command-line form, e.g. ``constant:400``,
``plate:300,10``, ``wedge:200,600``, ``bimodal:250,700,0.4``, ``perframe:thickness.csv``.
"""

from __future__ import annotations

import pathlib

import equinox as eqx
import numpy as np
from jaxtyping import Float

from .errors import InputError

_SOURCE = "thickness"
_HERMITE_NODES = 5
MAX_TILT_FROM_NORMAL = 80.0
"""Largest |α − α_n| [deg] a plate or wedge accepts (1/cos grows without bound at 90°)."""

Distribution = tuple[Float[np.ndarray, "frame node"], Float[np.ndarray, "frame node"]]


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive thickness [Å], got {value}", source=_SOURCE)
    return value


def _angles(tilt_angles_deg) -> np.ndarray:
    return np.atleast_1d(np.asarray(tilt_angles_deg, dtype=np.float64))


def _path_factor(tilt_angles_deg, normal_tilt_deg: float) -> np.ndarray:
    """1 / cos(α − α_n) per frame; InputError beyond :data:`MAX_TILT_FROM_NORMAL`."""
    off = _angles(tilt_angles_deg) - normal_tilt_deg
    if np.any(np.abs(off) > MAX_TILT_FROM_NORMAL):
        raise InputError(
            f"a frame is tilted {np.max(np.abs(off)):.1f}° from the plate normal (limit {MAX_TILT_FROM_NORMAL}°)",
            source=_SOURCE,
        )
    return 1.0 / np.cos(np.deg2rad(off))


class Constant(eqx.Module):
    """The same single thickness t [Å] for every frame."""

    t: float = eqx.field(converter=lambda v: _positive(v, "t"))

    def distribution(self, tilt_angles_deg) -> Distribution:
        n = _angles(tilt_angles_deg).size
        return np.full((n, 1), self.t), np.ones((n, 1))


class PerFrame(eqx.Module):
    """One thickness per frame [Å], in the frames' file order."""

    values: tuple[float, ...] = eqx.field(converter=lambda v: tuple(_positive(x, "thickness") for x in v))

    def distribution(self, tilt_angles_deg) -> Distribution:
        n = _angles(tilt_angles_deg).size
        if n != len(self.values):
            raise InputError(f"{len(self.values)} per-frame thicknesses for {n} frames", source=_SOURCE)
        return np.asarray(self.values, dtype=np.float64)[:, None], np.ones((n, 1))


class Plate(eqx.Module):
    """A slab of thickness t0 [Å]: t = t0 / cos(α − α_n), α_n = ``normal_tilt_deg``."""

    t0: float = eqx.field(converter=lambda v: _positive(v, "t0"))
    normal_tilt_deg: float = eqx.field(default=0.0, converter=float)

    def distribution(self, tilt_angles_deg) -> Distribution:
        t = self.t0 * _path_factor(tilt_angles_deg, self.normal_tilt_deg)
        return t[:, None], np.ones((t.size, 1))


class Wedge(eqx.Module):
    """Uniform thickness over [t_min, t_max] / cos(α − α_n), ``nodes`` midpoint samples."""

    t_min: float = eqx.field(converter=lambda v: _positive(v, "t_min"))
    t_max: float = eqx.field(converter=lambda v: _positive(v, "t_max"))
    nodes: int = eqx.field(default=8, converter=int, static=True)
    normal_tilt_deg: float = eqx.field(default=0.0, converter=float)

    def __check_init__(self):
        if self.t_max < self.t_min:
            raise InputError(f"wedge: t_max {self.t_max} < t_min {self.t_min}", source=_SOURCE)
        if self.nodes < 1:
            raise InputError(f"wedge: node count must be ≥ 1, got {self.nodes}", source=_SOURCE)

    def distribution(self, tilt_angles_deg) -> Distribution:
        fractions = (np.arange(self.nodes) + 0.5) / self.nodes
        base = self.t_min + fractions * (self.t_max - self.t_min)
        t = _path_factor(tilt_angles_deg, self.normal_tilt_deg)[:, None] * base[None, :]
        return t, np.full(t.shape, 1.0 / self.nodes)


class Bimodal(eqx.Module):
    """Mixture f·N(t1, width²) + (1 − f)·N(t2, width²) [Å], the same for every frame."""

    t1: float = eqx.field(converter=lambda v: _positive(v, "t1"))
    t2: float = eqx.field(converter=lambda v: _positive(v, "t2"))
    fraction: float = eqx.field(converter=float)
    width: float = eqx.field(default=25.0, converter=float)

    def __check_init__(self):
        if not 0.0 <= self.fraction <= 1.0:
            raise InputError(f"bimodal: fraction must be in [0, 1], got {self.fraction}", source=_SOURCE)
        if not (np.isfinite(self.width) and self.width >= 0):
            raise InputError(f"bimodal: width must be ≥ 0, got {self.width}", source=_SOURCE)
        if np.min(self._nodes()) <= 0:
            raise InputError("bimodal: width too large, a quadrature node is ≤ 0 Å", source=_SOURCE)

    def _nodes(self) -> np.ndarray:
        x, _ = np.polynomial.hermite.hermgauss(_HERMITE_NODES)
        spread = np.sqrt(2.0) * self.width * x
        return np.concatenate([self.t1 + spread, self.t2 + spread])

    def distribution(self, tilt_angles_deg) -> Distribution:
        n = _angles(tilt_angles_deg).size
        _, w = np.polynomial.hermite.hermgauss(_HERMITE_NODES)
        w = w / np.sqrt(np.pi)
        weights = np.concatenate([self.fraction * w, (1.0 - self.fraction) * w])
        return np.tile(self._nodes(), (n, 1)), np.tile(weights / weights.sum(), (n, 1))


ThicknessModel = Constant | PerFrame | Plate | Wedge | Bimodal

_ARITY = {"constant": (1, 1), "plate": (1, 2), "wedge": (2, 4), "bimodal": (3, 4)}


def _numbers(kind: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{kind}: expected comma-separated numbers, got {text!r}", source=_SOURCE) from None
    low, high = _ARITY.get(kind, (1, None))
    if len(values) < low or (high is not None and len(values) > high):
        raise InputError(f"{kind}: expected {low}–{high} numbers, got {len(values)}", source=_SOURCE)
    return values


def read_thickness_values(path: str | pathlib.Path) -> tuple[float, ...]:
    """Per-frame thicknesses [Å] from a text/CSV file: the last comma- or space-separated field of
    each line, in order; ``#`` lines, blank lines and one non-numeric header line are skipped."""
    try:
        lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read per-frame thicknesses: {exc.strerror}", source=str(path)) from None
    values = []
    for number, line in enumerate(lines, start=1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            values.append(_positive(fields[-1], "thickness"))
        except (ValueError, InputError):
            if values or number > 1:
                raise InputError(f"bad thickness {fields[-1]!r}", source=str(path), line=number) from None
    if not values:
        raise InputError("no thickness values", source=str(path))
    return tuple(values)


def parse_thickness_model(text: str) -> ThicknessModel:
    """A model from ``kind:arguments`` text (whitespace ignored, kind case-insensitive).

    ``constant:t``, ``plate:t0[,normal_tilt_deg]``, ``wedge:t_min,t_max[,nodes[,normal_tilt_deg]]``,
    ``bimodal:t1,t2,fraction[,width]`` (fraction = weight of t1), ``perframe:FILE`` (see
    :func:`read_thickness_values`) or ``perframe:t1,t2,...``. Thicknesses in Å, angles in deg.
    """
    kind, sep, rest = str(text).strip().partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    if not sep or not rest:
        raise InputError(f"thickness model {text!r}: expected KIND:ARGUMENTS, e.g. constant:400", source=_SOURCE)
    if kind == "perframe":
        try:
            inline = [float(v) for v in rest.split(",")]
        except ValueError:
            return PerFrame(read_thickness_values(rest))
        return PerFrame(inline)
    if kind not in _ARITY:
        raise InputError(f"unknown thickness model {kind!r} (constant, perframe, plate, wedge, bimodal)", source=_SOURCE)
    values = _numbers(kind, rest)
    if kind == "wedge" and len(values) > 2 and values[2] != int(values[2]):
        raise InputError(f"wedge: node count must be an integer, got {values[2]}", source=_SOURCE)
    return {"constant": Constant, "plate": Plate, "wedge": Wedge, "bimodal": Bimodal}[kind](*values)


def mean_thickness(model: ThicknessModel, tilt_angles_deg) -> Float[np.ndarray, " frame"]:
    """Σ_n w_n t_n per frame [Å]."""
    nodes, weights = model.distribution(tilt_angles_deg)
    return np.sum(nodes * weights, axis=1)
