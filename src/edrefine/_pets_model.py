"""The PETS2 data model: what a ``.cif_pets`` file holds, as frozen host-side values.

Read by :mod:`edrefine._pets_read`, written by :mod:`edrefine._pets_write`; the public names are
re-exported by :mod:`edrefine.pets`, whose docstring describes the format.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import equinox as eqx
import numpy as np

from .errors import InputError

_CELL_TAGS = tuple(f"_cell_length_{x}" for x in "abc") + tuple(
    f"_cell_angle_{x}" for x in ("alpha", "beta", "gamma")
)
_UB_TAGS = tuple(f"_diffrn_orient_matrix_UB_{i}{j}" for i in "123" for j in "123")
_WAVELENGTH = "_diffrn_radiation_wavelength"
_DETAILS = "_diffrn_measurement_details"
_PETS_OMEGA = "_diffrn_pets_omega"
_KNOWN_PAIRS = {
    t.lower() for t in (*_CELL_TAGS, *_UB_TAGS, _WAVELENGTH, _DETAILS, _PETS_OMEGA, "_cell_volume")
}
_FRAME_COLS = ("id", "u", "v", "w", "precession_angle", "alpha", "beta", "omega", "scale")
_REFLN_COLS = ("index_h", "index_k", "index_l", "intensity_meas", "intensity_sigma", "zone_axis_id")
_ORIENT_COLS = ("rotation_index", "alpha_degrees", "beta_degrees", "omega_degrees")
_ATOM_COLS = ("label", "type_symbol", "fract_x", "fract_y", "fract_z", "occupancy", "u_iso_or_equiv")
_THICK_COLS = ("frame_id", "node", "weight")
_PREFIXES = {
    "frames": "_diffrn_zone_axis_",
    "reflections": "_refln_",
    "orientation": "_orientation_",
    "atoms": "_atom_site_",
    "thickness": "_edrefine_frame_thickness_",
}
Columns = tuple[tuple[str, tuple[str, ...]], ...]


_LARGEST_INDEX = 2**31 - 1
"""Largest |integer| accepted in an integer column (Miller indices, frame numbers)."""



def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array)
    array.flags.writeable = False
    return array


class VirtualFrameSettings(NamedTuple):
    """PETS2 virtual-frame settings: raw frames merged per virtual frame, step, summing flag."""

    merged_frames: int
    step: int
    sum_all_intensities: int


class Measurement(eqx.Module):
    """The ``_diffrn_measurement_details`` text; its fields are parsed on access.

    ``text`` is what is written back. Properties are None when a field is absent. Angles in
    degrees, ``dstarmax`` in Å⁻¹.
    """

    text: str = eqx.field(static=True)

    def get(self, key: str) -> str | None:
        """The value after ``key:`` (case-insensitive) up to the end of its line, or None."""
        match = re.search(rf"{re.escape(key)}\s*:[ \t]*(\S[^\n]*)", self.text, re.IGNORECASE)
        return match.group(1).strip() if match else None

    def number(self, key: str) -> float | None:
        value = self.get(key)
        if value is None:
            return None
        try:
            return float(value.split()[0])
        except ValueError:
            raise InputError(f"{key}: non-numeric value {value!r}", source=_DETAILS) from None

    @property
    def geometry(self) -> str | None:
        """Data-collection geometry, e.g. ``continuous rotation`` or ``precession``."""
        return self.get("data collection geometry")

    @property
    def dstarmax(self) -> float | None:
        return self.number("dstarmax")

    @property
    def rc_width(self) -> float | None:
        return self.number("rc width")

    @property
    def mosaicity(self) -> float | None:
        return self.number("mosaicity")

    @property
    def rotation_axis_position(self) -> float | None:
        """In-plane angle of the goniometer axis from lab x [deg]."""
        return self.number("rotation axis position")

    @property
    def reflection_size(self) -> float | None:
        return self.number("reflection size")

    @property
    def virtual_frames(self) -> VirtualFrameSettings | None:
        keys = ("number of merged frames", "step between frames", "sum all intensities")
        values = [self.number(k) for k in keys]
        if any(v is None for v in values):
            return None
        return VirtualFrameSettings(*(int(v) for v in values))


class Frames(eqx.Module):
    """The ``_diffrn_zone_axis_*`` loop, one entry per (virtual) frame, file order.

    Attributes:
        id: frame ids, Int[ndarray, "frame"].
        zone_axis: listed zone axis u v w (direct lattice, largest |component| = 1),
            Float[ndarray, "frame 3"].
        half_width: ``precession_angle`` [deg]; in a continuous-rotation ``_dyn`` file the
            half-width of the virtual frame, in a precession file the precession angle.
        alpha, beta, omega: frame angles [deg], Float[ndarray, "frame"].
        scale: PETS2 frame scale, Float[ndarray, "frame"] (1 when the column is absent).
        extra_columns: any further columns, (tag, values as text).
    """

    id: np.ndarray
    zone_axis: np.ndarray
    half_width: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    omega: np.ndarray
    scale: np.ndarray
    extra_columns: Columns = eqx.field(static=True, default=())

    def __check_init__(self):
        n = self.id.shape[0]
        if self.zone_axis.shape != (n, 3) or any(
            a.shape != (n,) for a in (self.half_width, self.alpha, self.beta, self.omega, self.scale)
        ):
            raise ValueError("Frames: inconsistent array shapes")


class Reflections(eqx.Module):
    """The ``_refln_*`` loop: one observation per row.

    Attributes:
        hkl: Int[ndarray, "refl 3"]; intensity, sigma: Float[ndarray, "refl"] (σ > 0);
        frame_id: Int[ndarray, "refl"], an id of :class:`Frames`; extra_columns as in Frames.
    """

    hkl: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    frame_id: np.ndarray
    extra_columns: Columns = eqx.field(static=True, default=())

    def __check_init__(self):
        n = self.hkl.shape[0]
        if self.hkl.shape != (n, 3) or any(
            a.shape != (n,) for a in (self.intensity, self.sigma, self.frame_id)
        ):
            raise ValueError("Reflections: inconsistent array shapes")

    def take(self, index: np.ndarray) -> Reflections:
        """The rows selected by an integer index or boolean mask, extra columns included."""
        rows = np.arange(self.hkl.shape[0])[index]
        extra = tuple((tag, tuple(values[i] for i in rows)) for tag, values in self.extra_columns)
        return Reflections(
            _frozen(self.hkl[rows]),
            _frozen(self.intensity[rows]),
            _frozen(self.sigma[rows]),
            _frozen(self.frame_id[rows]),
            extra,
        )


class TruthSites(eqx.Module):
    """An embedded ``_atom_site_*`` loop: fractional coordinates, occupancy, U_iso [Å²]."""

    label: tuple[str, ...] = eqx.field(static=True)
    type_symbol: tuple[str, ...] | None = eqx.field(static=True)
    xyz: np.ndarray
    occupancy: np.ndarray
    u_iso: np.ndarray | None
    extra_columns: Columns = eqx.field(static=True, default=())


class OrientationCorrections(eqx.Module):
    """An ``_orientation_*`` loop: per-rotation angle corrections [deg].

    ``rotation_index`` is 0-based in the synthetic files (frame in file order).
    """

    rotation_index: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    omega: np.ndarray


class ExtraLoop(eqx.Module):
    """A loop edrefine does not interpret, kept verbatim for writing."""

    tags: tuple[str, ...] = eqx.field(static=True)
    rows: tuple[tuple[str, ...], ...] = eqx.field(static=True)


class PetsData(eqx.Module):
    """Everything in a ``.cif_pets`` file.

    Attributes:
        cell: a, b, c [Å], α, β, γ [deg], Float[ndarray, "6"].
        wavelength: λ [Å].
        ub: UB [Å⁻¹], Float[ndarray, "3 3"], rows as ``_diffrn_orient_matrix_UB_ij``; g = UB hkl.
        measurement, frames, reflections: see the classes.
        pets_omega: ``_diffrn_pets_omega`` [deg] if present.
        truth_sites, orientation_corrections: embedded loops if present.
        thickness_nodes, thickness_weights: per-frame thickness distribution, nodes [Å],
            Float[ndarray, "frame node"] aligned with ``frames``, if present.
        extra_items: other key-value items (tag, raw CIF value), written back unchanged.
        extra_loops: other loops; comments: ``#`` lines; source: file the data came from.
    """

    cell: np.ndarray
    wavelength: float
    ub: np.ndarray
    measurement: Measurement
    frames: Frames
    reflections: Reflections
    pets_omega: float | None = None
    truth_sites: TruthSites | None = None
    orientation_corrections: OrientationCorrections | None = None
    thickness_nodes: np.ndarray | None = None
    thickness_weights: np.ndarray | None = None
    extra_items: tuple[tuple[str, str], ...] = eqx.field(static=True, default=())
    extra_loops: tuple[ExtraLoop, ...] = ()
    comments: tuple[str, ...] = eqx.field(static=True, default=())
    source: str = eqx.field(static=True, default="")

    def __check_init__(self):
        if (self.thickness_nodes is None) != (self.thickness_weights is None):
            raise ValueError("PetsData: thickness nodes and weights must be given together")
        if self.thickness_nodes is not None:
            shape = self.thickness_nodes.shape
            if (
                len(shape) != 2
                or shape[0] != self.frames.id.shape[0]
                or self.thickness_weights.shape != shape
            ):
                raise ValueError("PetsData: thickness arrays must be [frame, node], one row per frame")


