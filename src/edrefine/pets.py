"""PETS2 ``.cif_pets`` and ``_dyn.cif_pets`` files: read, validate, write.

A PETS2 export is one CIF data block: the cell, the wavelength λ [Å], the orientation matrix
UB [Å⁻¹] (``_diffrn_orient_matrix_UB_ij``, columns a*, b*, c* in the lab frame), a free-text
``_diffrn_measurement_details`` field, a loop of (virtual) frames ``_diffrn_zone_axis_*`` and
a loop of reflections ``_refln_*``. Files re-exported by other programs may add an
``_orientation_*`` loop (per-frame orientation corrections, degrees) and an ``_atom_site_*``
loop (the structure used to simulate them). edrefine adds an optional per-frame thickness
distribution loop ``_edrefine_frame_thickness_{frame_id,node,weight}`` (node in Å, one row per
frame and node).

Values are host-side numpy arrays (read-only); angles stay in degrees as in the file. Every
problem with a file raises :class:`edrefine.errors.InputError` naming the file and line.
The orientation geometry lives in :mod:`edrefine.frames`.
"""

from __future__ import annotations

import os
import pathlib
import re
import tempfile
from typing import Literal, NamedTuple

import equinox as eqx
import gemmi
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


# ----------------------------------------------------------------------------- parsing


class _Loop(NamedTuple):
    tags: tuple[str, ...]
    values: np.ndarray
    row_lines: np.ndarray
    line: int


class _Document(NamedTuple):
    source: str
    lines: list[str]
    pairs: dict[str, tuple[str, str, int]]
    loops: list[_Loop]
    comments: tuple[str, ...]

    def error(self, message: str, line: int | None = None) -> InputError:
        return InputError(message, source=self.source, line=line)


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


_TOKEN = re.compile(r"""'[^']*'(?=\s|$)|"[^"]*"(?=\s|$)|\S+""")


def _tokens(line: str) -> list[str]:
    if "'" not in line and '"' not in line and "#" not in line:
        return line.split()
    out = []
    for token in _TOKEN.findall(line):
        if token.startswith("#"):
            break
        out.append(token)
    return out


def _scan_rows(lines: list[str], loop_line: int, ntags: int, source: str) -> np.ndarray:
    """1-based line of each row of the loop starting at ``loop_line``; one row per line."""
    index, rows = loop_line, []
    first_tag = lines[index].strip() if index < len(lines) else "loop_"
    while index < len(lines) and lines[index].strip().startswith("_"):
        index += 1
    for number in range(index + 1, len(lines) + 1):
        stripped = lines[number - 1].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("_") or stripped.lower().startswith(("loop_", "data_", "save_")):
            break
        count = len(_tokens(stripped))
        if count != ntags:
            raise InputError(
                f"{first_tag} loop: row has {count} values, expected {ntags}", source=source, line=number
            )
        rows.append(number)
    return np.asarray(rows, dtype=np.int64)


def _gemmi_error(exc: Exception, lines: list[str], source: str) -> InputError:
    message = str(exc)
    match = re.match(r"string:(\d+)", message)
    line = int(match.group(1)) if match else None
    if "Wrong number of values in loop" in message and line is not None:
        ntags = 0
        while line + ntags < len(lines) and lines[line + ntags].strip().startswith("_"):
            ntags += 1
        _scan_rows(lines, line, ntags, source)
    detail = re.sub(r"^string:[\d:()]*\s*(in data_\S*:\s*)?", "", message)
    return InputError(f"CIF syntax error: {detail}", source=source, line=line)


def _comments(lines: list[str]) -> tuple[str, ...]:
    out, in_text = [], False
    for line in lines:
        if line.startswith(";"):
            in_text = not in_text
        elif not in_text and line.lstrip().startswith("#"):
            out.append(line.rstrip())
    return tuple(out)


def _parse_document(text: str, source: str) -> _Document:
    lines = text.split("\n")
    try:
        doc = gemmi.cif.read_string(text)
    except (ValueError, RuntimeError) as exc:
        raise _gemmi_error(exc, lines, source) from None
    if len(doc) != 1:
        raise InputError(f"expected one CIF data block, found {len(doc)}", source=source)
    pairs, loops = {}, []
    for item in doc[0]:
        if item.pair is not None:
            tag, value = item.pair
            pairs[tag.lower()] = (tag, value, item.line_number)
        elif item.loop is not None:
            loop = item.loop
            values = np.array(list(loop.values), dtype=object).reshape(loop.length(), loop.width())
            row_lines = _scan_rows(lines, item.line_number, loop.width(), source)
            if len(row_lines) != loop.length():
                raise InputError("loop rows must be one per line", source=source, line=item.line_number)
            loops.append(_Loop(tuple(loop.tags), values, row_lines, item.line_number))
    return _Document(source, lines, pairs, loops, _comments(lines))


def _scalar(doc: _Document, tag: str, *, required: bool = True) -> float | None:
    if tag.lower() not in doc.pairs:
        if required:
            raise doc.error(f"missing {tag}")
        return None
    name, value, line = doc.pairs[tag.lower()]
    try:
        number = float(re.sub(r"\(\d+\)$", "", value))
    except ValueError:
        raise doc.error(f"{name}: non-numeric value {value!r}", line) from None
    if not np.isfinite(number):
        raise doc.error(f"{name}: non-finite value {value!r}", line)
    return number


def _find_loop(doc: _Document, kind: str, *, required: bool) -> _Loop | None:
    prefix = _PREFIXES[kind]
    found = [loop for loop in doc.loops if loop.tags[0].lower().startswith(prefix)]
    if len(found) > 1:
        raise doc.error(f"more than one {prefix}* loop", found[1].line)
    if not found:
        if required:
            raise doc.error(f"missing the {prefix}* loop")
        return None
    return found[0]


def _column(doc: _Document, loop: _Loop, tag: str, *, required: bool = True) -> np.ndarray | None:
    lowered = [t.lower() for t in loop.tags]
    if tag not in lowered:
        if required:
            raise doc.error(f"loop lacks column {tag}", loop.line)
        return None
    return loop.values[:, lowered.index(tag)]


def _is_number(text: str) -> bool:
    try:
        np.float64(text)
    except ValueError:
        return False
    return True


def _floats(doc: _Document, loop: _Loop, tag: str, *, required: bool = True) -> np.ndarray | None:
    column = _column(doc, loop, tag, required=required)
    if column is None:
        return None
    try:
        out = np.asarray(column.astype(str), dtype=np.float64)
    except ValueError:
        row = next(i for i, v in enumerate(column) if not _is_number(v))
        raise doc.error(f"{tag}: non-numeric value {column[row]!r}", int(loop.row_lines[row])) from None
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise doc.error(f"{tag}: non-finite value {column[bad[0]]!r}", int(loop.row_lines[bad[0]]))
    return out


def _ints(doc: _Document, loop: _Loop, tag: str) -> np.ndarray:
    out = _floats(doc, loop, tag)
    bad = np.flatnonzero(out != np.round(out))
    if bad.size:
        value = _column(doc, loop, tag)[bad[0]]
        raise doc.error(f"{tag}: expected an integer, got {value!r}", int(loop.row_lines[bad[0]]))
    bad = np.flatnonzero(np.abs(out) > _LARGEST_INDEX)
    if bad.size:
        value = _column(doc, loop, tag)[bad[0]]
        raise doc.error(f"{tag}: integer {value!r} is out of range", int(loop.row_lines[bad[0]]))
    return out.astype(np.int64)


def _extra_columns(loop: _Loop, known: tuple[str, ...], prefix: str) -> Columns:
    known_tags = {prefix + name for name in known}
    return tuple(
        (tag, tuple(str(v) for v in loop.values[:, j]))
        for j, tag in enumerate(loop.tags)
        if tag.lower() not in known_tags
    )


def _read_cell(doc: _Document) -> np.ndarray:
    cell = np.array([_scalar(doc, tag) for tag in _CELL_TAGS])
    cosines = np.cos(np.radians(cell[3:]))
    factor = 1 - np.sum(cosines**2) + 2 * np.prod(cosines)
    if np.any(cell[:3] <= 0) or factor <= 1e-12:
        raise doc.error(
            f"cell {' '.join(f'{x:g}' for x in cell)} has zero volume", doc.pairs[_CELL_TAGS[0]][2]
        )
    return cell


def _read_frames(doc: _Document) -> Frames:
    loop = _find_loop(doc, "frames", required=True)
    prefix = _PREFIXES["frames"]
    ids = _ints(doc, loop, prefix + "id")
    _, first = np.unique(ids, return_index=True)
    if len(first) < len(ids):
        duplicate = np.setdiff1d(np.arange(len(ids)), first)[0]
        raise doc.error(f"duplicate frame id {ids[duplicate]}", int(loop.row_lines[duplicate]))
    col = {name: _floats(doc, loop, prefix + name) for name in _FRAME_COLS[1:8]}
    scale = _floats(doc, loop, prefix + "scale", required=False)
    frames = Frames(
        id=_frozen(ids),
        zone_axis=_frozen(np.stack([col["u"], col["v"], col["w"]], axis=1)),
        half_width=_frozen(col["precession_angle"]),
        alpha=_frozen(col["alpha"]),
        beta=_frozen(col["beta"]),
        omega=_frozen(col["omega"]),
        scale=_frozen(np.ones_like(ids, dtype=np.float64) if scale is None else scale),
        extra_columns=_extra_columns(loop, _FRAME_COLS, prefix),
    )
    return frames


def _read_reflections(doc: _Document, frames: Frames, zero_sigma: str) -> Reflections:
    loop = _find_loop(doc, "reflections", required=True)
    p = _PREFIXES["reflections"]
    hkl = np.stack([_ints(doc, loop, p + name) for name in _REFLN_COLS[:3]], axis=1)
    intensity, sigma = _floats(doc, loop, p + "intensity_meas"), _floats(doc, loop, p + "intensity_sigma")
    frame_id = _ints(doc, loop, p + "zone_axis_id")
    unknown = np.flatnonzero(~np.isin(frame_id, frames.id))
    if unknown.size:
        r = unknown[0]
        message = f"reflection {' '.join(map(str, hkl[r]))} refers to frame {frame_id[r]}"
        raise doc.error(f"{message}, absent from the frame loop", int(loop.row_lines[r]))
    bad = np.flatnonzero((sigma < 0) | ((sigma == 0) & (zero_sigma != "drop")))
    if bad.size:
        r = bad[0]
        hint = "; read with zero_sigma='drop' to discard such rows" if sigma[r] == 0 else ""
        message = f"reflection {' '.join(map(str, hkl[r]))} in frame {frame_id[r]}: sigma {sigma[r]:g}"
        raise doc.error(f"{message} must be positive{hint}", int(loop.row_lines[r]))
    reflections = Reflections(
        _frozen(hkl),
        _frozen(intensity),
        _frozen(sigma),
        _frozen(frame_id),
        _extra_columns(loop, _REFLN_COLS, p),
    )
    return reflections.take(sigma > 0) if zero_sigma == "drop" else reflections


def _read_orientation(doc: _Document) -> OrientationCorrections | None:
    loop = _find_loop(doc, "orientation", required=False)
    if loop is None:
        return None
    p = _PREFIXES["orientation"]
    angles = [_frozen(_floats(doc, loop, p + name)) for name in _ORIENT_COLS[1:]]
    return OrientationCorrections(_frozen(_ints(doc, loop, p + "rotation_index")), *angles)


def _read_truth(doc: _Document) -> TruthSites | None:
    loop = _find_loop(doc, "atoms", required=False)
    if loop is None:
        return None
    p = _PREFIXES["atoms"]
    labels = tuple(gemmi.cif.as_string(v) for v in _column(doc, loop, p + "label"))
    symbols = _column(doc, loop, p + "type_symbol", required=False)
    occupancy = _floats(doc, loop, p + "occupancy", required=False)
    u_iso = _floats(doc, loop, p + "u_iso_or_equiv", required=False)
    return TruthSites(
        label=labels,
        type_symbol=None if symbols is None else tuple(gemmi.cif.as_string(v) for v in symbols),
        xyz=_frozen(np.stack([_floats(doc, loop, p + f"fract_{x}") for x in "xyz"], axis=1)),
        occupancy=_frozen(np.ones(len(labels)) if occupancy is None else occupancy),
        u_iso=None if u_iso is None else _frozen(u_iso),
        extra_columns=_extra_columns(loop, _ATOM_COLS, p),
    )


def _read_thickness(doc: _Document, frames: Frames) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    loop = _find_loop(doc, "thickness", required=False)
    if loop is None:
        return None, None
    p = _PREFIXES["thickness"]
    frame_id = _ints(doc, loop, p + "frame_id")
    node, weight = _floats(doc, loop, p + "node"), _floats(doc, loop, p + "weight")
    bad = np.flatnonzero(~np.isin(frame_id, frames.id) | (node < 0) | (weight < 0))
    if bad.size:
        raise doc.error(
            "thickness row: unknown frame id or negative node/weight", int(loop.row_lines[bad[0]])
        )
    per_frame = [np.flatnonzero(frame_id == i) for i in frames.id]
    counts = {len(rows) for rows in per_frame}
    if len(counts) != 1 or 0 in counts:
        raise doc.error("thickness loop must list the same number (> 0) of nodes for every frame", loop.line)
    rows = np.stack(per_frame)
    if np.any(weight[rows].sum(axis=1) <= 0):
        raise doc.error("thickness weights of a frame sum to zero", loop.line)
    return _frozen(node[rows]), _frozen(weight[rows])


def _check_measurement(doc: _Document) -> Measurement:
    if _DETAILS not in doc.pairs:
        return Measurement("")
    _, value, line = doc.pairs[_DETAILS]
    text = gemmi.cif.as_string(value).strip("\n")
    measurement = Measurement(text)
    try:
        for name in (
            "dstarmax",
            "rc_width",
            "mosaicity",
            "rotation_axis_position",
            "reflection_size",
            "virtual_frames",
        ):
            getattr(measurement, name)
    except InputError as exc:
        key = exc.message.split(":")[0]
        offset = next((i for i, t in enumerate(doc.lines[line - 1 :]) if key.lower() in t.lower()), None)
        raise doc.error(exc.message, None if offset is None else line + offset) from None
    return measurement


def parse_pets(
    text: str, source: str = "<string>", *, zero_sigma: Literal["raise", "drop"] = "raise"
) -> PetsData:
    """Parse the text of a ``.cif_pets`` file (LF or CRLF); see :func:`read_pets`."""
    doc = _parse_document(text.replace("\r\n", "\n").replace("\r", "\n"), source)
    cell = _read_cell(doc)
    wavelength = _scalar(doc, _WAVELENGTH)
    if wavelength <= 0:
        raise doc.error(f"wavelength {wavelength:g} Å must be positive", doc.pairs[_WAVELENGTH][2])
    ub = np.array([_scalar(doc, tag) for tag in _UB_TAGS]).reshape(3, 3)
    if abs(np.linalg.det(ub)) < 1e-12:
        raise doc.error("orientation matrix UB is singular", doc.pairs[_UB_TAGS[0].lower()][2])
    frames = _read_frames(doc)
    nodes, weights = _read_thickness(doc, frames)
    known_loops = {_PREFIXES[k] for k in _PREFIXES}
    return PetsData(
        cell=_frozen(cell),
        wavelength=wavelength,
        ub=_frozen(ub),
        measurement=_check_measurement(doc),
        frames=frames,
        reflections=_read_reflections(doc, frames, zero_sigma),
        pets_omega=_scalar(doc, _PETS_OMEGA, required=False),
        truth_sites=_read_truth(doc),
        orientation_corrections=_read_orientation(doc),
        thickness_nodes=nodes,
        thickness_weights=weights,
        extra_items=tuple(
            (tag, value) for key, (tag, value, _) in doc.pairs.items() if key not in _KNOWN_PAIRS
        ),
        extra_loops=tuple(
            ExtraLoop(loop.tags, tuple(tuple(str(v) for v in row) for row in loop.values))
            for loop in doc.loops
            if not any(loop.tags[0].lower().startswith(p) for p in known_loops)
        ),
        comments=doc.comments,
        source=source,
    )


def read_pets(path: str | os.PathLike, *, zero_sigma: Literal["raise", "drop"] = "raise") -> PetsData:
    """Read and validate a PETS2 ``.cif_pets`` / ``_dyn.cif_pets`` file.

    Args:
        path: the file; LF and CRLF line endings are both accepted.
        zero_sigma: ``"raise"`` (default) rejects reflections with σ = 0; ``"drop"`` discards
            them (simulated files list I = σ = 0 for zero counts). σ < 0 always raises.

    Raises:
        InputError: unreadable file, CIF syntax, missing items or loops, wrong column count,
            non-numeric or non-finite values, σ ≤ 0, duplicate frame ids, reflections of
            unknown frames, zero-volume cell, λ ≤ 0, singular UB.
    """
    source = str(path)
    try:
        raw = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", source=source) from None
    return parse_pets(_decode(raw), source, zero_sigma=zero_sigma)


# ----------------------------------------------------------------------------- writing


def _format_floats(values: np.ndarray) -> np.ndarray:
    """Text of each value with the fewest common decimals (≥ 1) that read back exactly."""
    values = np.asarray(values, dtype=np.float64)
    for decimals in range(1, 13):
        text = np.char.mod(f"%.{decimals}f", values)
        if np.array_equal(text.astype(np.float64), values):
            return text
    return np.array([repr(float(v)) for v in values.ravel()]).reshape(values.shape)


def _table(tags: list[str], columns: list[np.ndarray]) -> list[str]:
    widths = [max(int(np.char.str_len(c).max(initial=0)), 1) for c in columns]
    padded = [np.char.rjust(c.astype(str), w) for c, w in zip(columns, widths)]
    rows = padded[0]
    for column in padded[1:]:
        rows = np.char.add(np.char.add(rows, " "), column)
    return ["", "loop_", *tags, *(" " + r for r in rows.tolist())]


def _ints_text(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).astype(np.int64).astype(str)


def _quoted(values: tuple[str, ...]) -> np.ndarray:
    return np.array([v if v and re.fullmatch(r"[^\s'\"#_$;\[\]][^\s]*", v) else f"'{v}'" for v in values])


def _loop_lines(prefix: str, columns: list[tuple[str, np.ndarray]], extra: Columns = ()) -> list[str]:
    tags = [prefix + name for name, _ in columns] + [tag for tag, _ in extra]
    texts = [c for _, c in columns] + [np.array(v, dtype=str) for _, v in extra]
    return _table(tags, texts)


def _header_lines(data: PetsData) -> list[str]:
    cell = data.cell
    cosines = np.cos(np.radians(cell[3:]))
    volume = np.prod(cell[:3]) * np.sqrt(1 - np.sum(cosines**2) + 2 * np.prod(cosines))
    names = ["a", "b", "c", "alpha", "beta", "gamma"]
    tags = [f"_cell_{'length' if i < 3 else 'angle'}_{n}" for i, n in enumerate(names)]
    out = ["data_pets"] + [f"{t:<32} {_format_floats(v)}" for t, v in zip(tags, cell)]
    out.append(f"{'_cell_volume':<32} {volume:.5f}")
    out.append(f"_diffrn_radiation_wavelength {_format_floats(data.wavelength)}")
    ub = _format_floats(data.ub)
    out += [f"_diffrn_orient_matrix_UB_{i + 1}{j + 1} {ub[i, j]}" for i in range(3) for j in range(3)]
    if data.pets_omega is not None:
        out.append(f"_diffrn_pets_omega {_format_floats(data.pets_omega)}")
    out += [
        f"{tag}\n{value}" if value.startswith(";") else f"{tag} {value}" for tag, value in data.extra_items
    ]
    if data.measurement.text:
        if any(line.startswith(";") for line in data.measurement.text.split("\n")):
            raise InputError("measurement details contain a line starting with ';'", source=_DETAILS)
        out += [_DETAILS, ";", data.measurement.text, ";"]
    return out + ([""] + list(data.comments) if data.comments else [])


def _body_lines(data: PetsData) -> list[str]:
    f, r = data.frames, data.reflections
    out = _loop_lines(
        _PREFIXES["frames"],
        [("id", _ints_text(f.id))]
        + [(n, _format_floats(f.zone_axis[:, i])) for i, n in enumerate("uvw")]
        + [
            (n, _format_floats(a))
            for n, a in zip(_FRAME_COLS[4:], (f.half_width, f.alpha, f.beta, f.omega, f.scale))
        ],
        f.extra_columns,
    )
    out += _loop_lines(
        _PREFIXES["reflections"],
        [(n, _ints_text(r.hkl[:, i])) for i, n in enumerate(_REFLN_COLS[:3])]
        + [("intensity_meas", _format_floats(r.intensity)), ("intensity_sigma", _format_floats(r.sigma))]
        + [("zone_axis_id", _ints_text(r.frame_id))],
        r.extra_columns,
    )
    if (o := data.orientation_corrections) is not None:
        angles = [_format_floats(a) for a in (o.alpha, o.beta, o.omega)]
        out += _loop_lines(
            _PREFIXES["orientation"], list(zip(_ORIENT_COLS, [_ints_text(o.rotation_index), *angles]))
        )
    if (t := data.truth_sites) is not None:
        cols = [("label", _quoted(t.label))]
        cols += [] if t.type_symbol is None else [("type_symbol", _quoted(t.type_symbol))]
        cols += [(f"fract_{x}", _format_floats(t.xyz[:, i])) for i, x in enumerate("xyz")]
        cols += [("occupancy", _format_floats(t.occupancy))]
        cols += [] if t.u_iso is None else [("U_iso_or_equiv", _format_floats(t.u_iso))]
        out += _loop_lines(_PREFIXES["atoms"], cols, t.extra_columns)
    if data.thickness_nodes is not None:
        nodes, weights = data.thickness_nodes, data.thickness_weights
        ids = np.repeat(f.id, nodes.shape[1])
        cols = [_ints_text(ids), _format_floats(nodes.ravel()), _format_floats(weights.ravel())]
        out += _loop_lines(_PREFIXES["thickness"], list(zip(_THICK_COLS, cols)))
    for loop in (loop for loop in data.extra_loops if loop.rows):
        out += _table(list(loop.tags), [np.array(c, dtype=str) for c in zip(*loop.rows)])
    return out


def format_pets(data: PetsData) -> str:
    """The text of a ``.cif_pets`` file (LF line endings) that :func:`parse_pets` reads back to ``data``."""
    return "\n".join(_header_lines(data) + _body_lines(data)) + "\n"


def write_pets(path: str | os.PathLike, data: PetsData) -> None:
    """Write ``data`` as a ``.cif_pets`` file atomically (temporary file, then ``os.replace``)."""
    path = pathlib.Path(path)
    text = format_pets(data)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
