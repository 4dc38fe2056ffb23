"""Writing :class:`~edrefine.pets.PetsData` as ``.cif_pets`` text that reads back exactly."""

from __future__ import annotations

import os
import pathlib
import re
import tempfile

import numpy as np

from .errors import InputError
from ._pets_model import (
    _DETAILS, _FRAME_COLS, _REFLN_COLS, _ORIENT_COLS, _THICK_COLS, _PREFIXES, Columns, PetsData,
)


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
