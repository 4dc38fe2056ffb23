"""Parsing PETS2 ``.cif_pets`` text into :class:`~edrefine.pets.PetsData`, with every problem an
:class:`~edrefine.errors.InputError` naming the file and line."""

from __future__ import annotations

import os
import pathlib
import re
from typing import Literal, NamedTuple

import gemmi
import numpy as np

from .errors import InputError
from ._pets_model import (
    _CELL_TAGS, _UB_TAGS, _WAVELENGTH, _DETAILS, _PETS_OMEGA, _KNOWN_PAIRS, _FRAME_COLS, _REFLN_COLS,
    _ORIENT_COLS, _ATOM_COLS, _PREFIXES, Columns, _LARGEST_INDEX, _frozen, Measurement, Frames, Reflections,
    TruthSites, OrientationCorrections, ExtraLoop, PetsData,
)


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
