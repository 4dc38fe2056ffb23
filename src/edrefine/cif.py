"""Read and write small-molecule CIFs (the I/O layer of the crystal model), with gemmi.

Reads the cell, the space group (the symop loop when present, else the H-M name, Hall
symbol or IT number), the ``_atom_site_`` loop (labels, type symbols, fractional
coordinates, occupancy, U_iso or B_iso) and the ``_atom_site_aniso_`` loop (U_ij or B_ij,
columns in any order), with standard uncertainties in parentheses kept in a parallel
:class:`Uncertainties`. B values are converted with U = B / (8π²).
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import tempfile

import equinox as eqx
import gemmi
import numpy as np
from jaxtyping import Array, Float

from . import symmetry
from .crystal import Crystal, build_crystal
from .errors import InputError

_CELL_TAGS = tuple(f"_cell_{n}" for n in
                   ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"))
_SYMOP_TAGS = ("_space_group_symop_operation_xyz", "_symmetry_equiv_pos_as_xyz",
               "_space_group_symop.operation_xyz")
_NAME_TAGS = ("_space_group_name_h-m_alt", "_symmetry_space_group_name_h-m",
              "_space_group_name_hall", "_symmetry_space_group_name_hall",
              "_space_group_it_number", "_symmetry_int_tables_number")
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:\((\d+)\))?$")
_B_TO_U = 1.0 / (8.0 * math.pi**2)


class Uncertainties(eqx.Module):
    """Standard uncertainties parallel to a crystal's values; NaN where none is known.

    Attributes:
        cell: s.u. of a, b, c [Å], α, β, γ [degrees], ``[6]``.
        positions: s.u. of fractional coordinates, ``[site 3]``.
        u: s.u. of the CIF U 6-vector (U11, U22, U33, U12, U13, U23) [Å²], ``[site 6]``;
            for isotropic sites column 0 is the s.u. of U_iso.
        occupancy: ``[site]``.
    """

    cell: Float[Array, "6"]
    positions: Float[Array, "site 3"]
    u: Float[Array, "site 6"]
    occupancy: Float[Array, " site"]


class _Block:
    """Tags of one CIF block, lower-cased, with their loop column and line number."""

    def __init__(self, block: gemmi.cif.Block, source: str):
        self.source = source
        self.pairs: dict[str, tuple[str, int]] = {}
        self.loops: dict[str, tuple[gemmi.cif.Loop, int, int]] = {}
        for item in block:
            if item.pair is not None:
                self.pairs[item.pair[0].lower()] = (item.pair[1], item.line_number)
            elif item.loop is not None:
                for col, tag in enumerate(item.loop.tags):
                    self.loops[tag.lower()] = (item.loop, col, item.line_number)

    def has(self, tag: str) -> bool:
        return tag in self.pairs or tag in self.loops

    def line(self, tag: str) -> int | None:
        if tag in self.pairs:
            return self.pairs[tag][1]
        return self.loops[tag][2] if tag in self.loops else None

    def pair(self, tag: str) -> str | None:
        value = self.pairs.get(tag, (None,))[0]
        return None if value is None or gemmi.cif.is_null(value) else gemmi.cif.as_string(value)

    def column(self, tag: str, length: int | None = None) -> list[str] | None:
        if tag not in self.loops:
            value = self.pairs.get(tag, (None,))[0]
            return None if value is None else [value] * (length or 1)
        loop, col, _ = self.loops[tag]
        return list(loop.values[col::loop.width()])

    def error(self, message: str, tag: str | None = None) -> InputError:
        return InputError(message, source=self.source, line=self.line(tag) if tag else None)

    def number(self, text: str, tag: str, what: str = "") -> tuple[float, float]:
        """(value, s.u.) of a CIF number like ``0.4718(8)``; NaN for ``?`` and ``.``."""
        if gemmi.cif.is_null(text):
            return math.nan, math.nan
        match = _NUMBER.match(gemmi.cif.as_string(text).strip())
        if match is None:
            raise self.error(f"{what}{tag}: non-numeric value '{text}'", tag)
        value, digits = match.groups()
        if not math.isfinite(float(value)):
            raise self.error(f"{what}{tag}: value '{text}' is out of range", tag)
        decimals = len(value.split(".")[1].split("e")[0].split("E")[0]) if "." in value else 0
        su = int(digits) * 10.0**-decimals if digits else math.nan
        return float(value), su


def read_crystal(path: str | os.PathLike, tolerance: float = 1e-3) -> Crystal:
    """Read a crystal from a CIF (the first block with an ``_atom_site_fract_x`` column)."""
    return read_crystal_with_uncertainties(path, tolerance)[0]


def read_crystal_with_uncertainties(
    path: str | os.PathLike, tolerance: float = 1e-3
) -> tuple[Crystal, Uncertainties]:
    """Read a crystal and the s.u.s given in parentheses.

    Raises:
        InputError: unreadable file, missing or bad cell, space group, atom_site fields,
            element, occupancy or ADPs; the message names the file and field or site.
    """
    block = _open_block(path)
    cell, cell_su = _read_cell(block)
    operators = _read_operators(block)
    sites = _read_sites(block)
    aniso, aniso_su = _read_aniso(block, sites["labels"])
    labels = sites["labels"]
    anisotropic = [label in aniso for label in labels]
    u_aniso = np.array([aniso.get(label, [math.nan] * 6) for label in labels]).reshape(-1, 6)
    try:
        crystal = build_crystal(
            cell, operators, labels, sites["elements"], sites["positions"],
            u_iso=sites["u_iso"], u_aniso=u_aniso, anisotropic=anisotropic,
            occupancy=sites["occupancy"], tolerance=tolerance,
        )
    except InputError as err:
        raise block.error(err.message, "_atom_site_fract_x") from err
    u_su = np.array([aniso_su[label] if label in aniso else [su] + [math.nan] * 5
                     for label, su in zip(labels, sites["u_iso_su"])]).reshape(-1, 6)
    uncertainties = Uncertainties(cell_su, sites["positions_su"], u_su, sites["occupancy_su"])
    return crystal, uncertainties


def _open_block(path: str | os.PathLike) -> _Block:
    source = str(path)
    try:
        raw = pathlib.Path(source).read_bytes()
    except FileNotFoundError as err:
        raise InputError("file not found", source=source) from err
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", source=source) from err
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(f"not a text file (byte 0x{raw[err.start]:02x} is not UTF-8)", source=source,
                         line=line) from None
    try:
        document = gemmi.cif.read(source)
    except FileNotFoundError as err:
        raise InputError("file not found", source=source) from err
    except (RuntimeError, ValueError, OSError) as err:
        raise InputError(f"cannot parse CIF: {err}", source=source) from err
    for block in document:
        parsed = _Block(block, source)
        if parsed.has("_atom_site_fract_x"):
            return parsed
    for block in document:
        parsed = _Block(block, source)
        if any(tag.startswith("_atom_site_") for tag in parsed.loops):
            return parsed
    raise InputError("no _atom_site_ loop", source=source)


def _read_cell(block: _Block) -> tuple[list[float], np.ndarray]:
    values, sus = [], []
    for tag in _CELL_TAGS:
        if not block.has(tag) or block.pair(tag) is None:
            raise block.error(f"missing {tag}")
        value, su = block.number(block.pair(tag), tag)
        values.append(value)
        sus.append(su)
    lengths, angles = np.array(values[:3]), np.deg2rad(values[3:])
    c = np.cos(angles)
    volume_squared = 1 - np.sum(c**2) + 2 * np.prod(c)
    if np.any(lengths <= 0) or np.any(np.sin(angles) <= 0) or not volume_squared > 1e-12:
        raise block.error("cell volume is zero or negative", _CELL_TAGS[0])
    return values, np.array(sus)


def _read_operators(block: _Block) -> symmetry.Operators:
    for tag in _SYMOP_TAGS:
        triplets = block.column(tag)
        if triplets:
            strings = [gemmi.cif.as_string(t) for t in triplets]
            try:
                return symmetry.operators_from_triplets(strings)
            except InputError as err:
                raise block.error(err.message, tag) from err
    names = [(tag, block.pair(tag)) for tag in _NAME_TAGS if block.pair(tag) is not None]
    for tag, name in names:
        try:
            return symmetry.operators_from_name(name)
        except InputError:
            continue
    if names:
        raise block.error(f"unknown space group '{names[0][1]}'", names[0][0])
    raise block.error("no space group: neither a symop loop nor a space-group name")


def _read_sites(block: _Block) -> dict[str, list | np.ndarray]:
    for axis in "xyz":
        if block.column(f"_atom_site_fract_{axis}") is None:
            raise block.error(f"missing _atom_site_fract_{axis}", "_atom_site_fract_x")
    count = len(block.column("_atom_site_fract_x"))
    labels_raw = block.column("_atom_site_label", count)
    types = block.column("_atom_site_type_symbol", count)
    if labels_raw is None and types is None:
        raise block.error("missing _atom_site_label and _atom_site_type_symbol",
                          "_atom_site_fract_x")
    labels = ([gemmi.cif.as_string(v) for v in labels_raw] if labels_raw
              else [f"{gemmi.cif.as_string(t)}{i + 1}" for i, t in enumerate(types)])
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise block.error(f"duplicate site label {duplicates[0]}", "_atom_site_fract_x")
    symbols = [gemmi.cif.as_string(t) for t in types] if types else labels
    elements = [_element_symbol(symbol, label, block) for symbol, label in zip(symbols, labels)]
    numbers = lambda tag: _numbers(block, tag, labels, count)  # noqa: E731
    coordinates = [numbers(f"_atom_site_fract_{axis}") for axis in "xyz"]
    occupancy, occupancy_su = numbers("_atom_site_occupancy")
    u_iso, u_iso_su = numbers("_atom_site_u_iso_or_equiv")
    if not block.has("_atom_site_u_iso_or_equiv") and block.has("_atom_site_b_iso_or_equiv"):
        b_iso, b_iso_su = numbers("_atom_site_b_iso_or_equiv")
        u_iso, u_iso_su = b_iso * _B_TO_U, b_iso_su * _B_TO_U
    return {
        "labels": labels,
        "elements": elements,
        "positions": np.stack([c[0] for c in coordinates], axis=1),
        "positions_su": np.stack([c[1] for c in coordinates], axis=1),
        "occupancy": np.where(np.isnan(occupancy), 1.0, occupancy),
        "occupancy_su": occupancy_su,
        "u_iso": u_iso,
        "u_iso_su": u_iso_su,
    }


def _numbers(
    block: _Block, tag: str, labels: list[str], count: int
) -> tuple[np.ndarray, np.ndarray]:
    raw = block.column(tag, count) or ["?"] * count
    pairs = [block.number(value, tag, f"site {label}: ") for value, label in zip(raw, labels)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _read_aniso(block: _Block, labels: list[str]) -> tuple[dict, dict]:
    names = block.column("_atom_site_aniso_label")
    if names is None:
        return {}, {}
    prefix, scale = "_atom_site_aniso_u_", 1.0
    if block.column(prefix + "11") is None and block.column("_atom_site_aniso_b_11") is not None:
        prefix, scale = "_atom_site_aniso_b_", _B_TO_U
    columns = []
    for ij in symmetry.U_COMPONENTS:
        values = block.column(prefix + ij)
        if values is None:
            raise block.error(f"missing {prefix}{ij}", "_atom_site_aniso_label")
        columns.append(values)
    values, sus = {}, {}
    for row, raw_label in enumerate(names):
        label = gemmi.cif.as_string(raw_label)
        if label not in labels:
            raise block.error(f"aniso site {label} is not in the _atom_site_ loop",
                              "_atom_site_aniso_label")
        pairs = [block.number(col[row], prefix + ij, f"site {label}: ")
                 for col, ij in zip(columns, symmetry.U_COMPONENTS)]
        values[label] = [p[0] * scale for p in pairs]
        sus[label] = [p[1] * scale for p in pairs]
    return values, sus


def _element_symbol(text: str, label: str, block: _Block) -> str:
    """Element of a type symbol or label: 'O2-' → 'O', 'Cs1' → 'Cs', 'SI' → 'Si'."""
    letters = re.match(r"[A-Za-z]+", text.strip())
    for candidate in (letters.group()[:2], letters.group()[:1]) if letters else ():
        element = gemmi.Element(candidate)
        if element.atomic_number != 0:
            return element.name
    raise block.error(f"site {label}: unknown element '{text}'", "_atom_site_fract_x")


def write_crystal(
    path: str | os.PathLike,
    crystal: Crystal,
    uncertainties: Uncertainties | None = None,
    block_name: str = "edrefine",
    provenance: dict[str, str] | None = None,
) -> None:
    """Write a crystal as a CIF, atomically (temporary file, then ``os.replace``).

    Writes the cell, the space-group name and symop loop, the ``_atom_site_`` loop
    (U_iso, or U_eq for anisotropic sites) and the ``_atom_site_aniso_`` loop. Values
    carry their s.u. in parentheses when ``uncertainties`` gives a positive one.
    ``provenance`` (name → text: program version, seed, input checksums, settings) goes into
    ``_computing_structure_refinement`` and an ``_edrefine_provenance_`` loop.
    """
    document = gemmi.cif.Document()
    block = document.add_new_block(block_name)
    su = _su_arrays(crystal, uncertainties)
    if provenance:
        version = provenance.get("edrefine_version", "")
        block.set_pair("_computing_structure_refinement", gemmi.cif.quote(f"edrefine {version}".strip()))
        loop = block.init_loop("_edrefine_provenance_", ["name", "value"])
        for name, value in provenance.items():
            loop.add_row([gemmi.cif.quote(str(name)), gemmi.cif.quote(str(value))])
    _write_cell(block, crystal, su["cell"])
    _write_symmetry(block, crystal)
    _write_sites(block, crystal, su)
    options = gemmi.cif.WriteOptions()
    options.align_pairs = 33
    options.align_loops = 20
    _write_atomically(pathlib.Path(path), document.as_string(options))


def format_value(value: float, su: float = math.nan, decimals: int = 6) -> str:
    """A number with its s.u. in parentheses, rounded by the rule of 19.

    The s.u. keeps two digits when they are at most 19, else one, and the value is rounded
    to the same place: ``format_value(0.47183, 0.00081)`` → ``'0.4718(8)'``,
    ``format_value(0.00893, 0.0013)`` → ``'0.0089(13)'``. Without a positive s.u. the
    value is written with ``decimals`` decimals.
    """
    if not (math.isfinite(su) and su > 0):
        return _unsigned_zero(f"{value:.{decimals}f}")
    exponent = math.floor(math.log10(su))
    two_digits = round(su / 10.0 ** (exponent - 1))
    if two_digits <= 19:
        places, digits = 1 - exponent, two_digits
    else:
        places, digits = -exponent, round(su / 10.0**exponent)
    if places > 0:
        return f"{_unsigned_zero(f'{value:.{places}f}')}({digits})"
    scale = 10**-places
    return f"{round(value / scale) * scale}({digits * scale})"


def _unsigned_zero(text: str) -> str:
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _su_arrays(crystal: Crystal, uncertainties: Uncertainties | None) -> dict[str, np.ndarray]:
    count = len(crystal.labels)
    if uncertainties is None:
        return {"cell": np.full(6, np.nan), "positions": np.full((count, 3), np.nan),
                "u": np.full((count, 6), np.nan), "occupancy": np.full(count, np.nan)}
    return {name: np.asarray(getattr(uncertainties, name), dtype=np.float64)
            for name in ("cell", "positions", "u", "occupancy")}


def _write_cell(block: gemmi.cif.Block, crystal: Crystal, su: np.ndarray) -> None:
    for tag, value, s in zip(_CELL_TAGS, crystal.cell.parameters(), su):
        block.set_pair(tag, format_value(value, s))
    block.set_pair("_cell_volume", format_value(float(crystal.cell.volume()), decimals=4))


def _write_symmetry(block: gemmi.cif.Block, crystal: Crystal) -> None:
    name = crystal.space_group_name
    spacegroup = gemmi.find_spacegroup_by_name(name) if name else None
    block.set_pair("_space_group_name_H-M_alt", gemmi.cif.quote(name) if name else "?")
    if spacegroup is not None:
        block.set_pair("_space_group_IT_number", str(spacegroup.number))
    loop = block.init_loop("_space_group_symop_", ["id", "operation_xyz"])
    for i, triplet in enumerate(crystal.symops, start=1):
        loop.add_row([str(i), gemmi.cif.quote(triplet)])


def _write_sites(block: gemmi.cif.Block, crystal: Crystal, su: dict[str, np.ndarray]) -> None:
    positions = np.asarray(crystal.positions())
    occupancy = np.asarray(crystal.params.occupancy)
    u_iso = np.asarray(crystal.u_iso())
    u_cif = np.asarray(crystal.u_cif())
    multiplicity = np.asarray(crystal.multiplicities())
    loop = block.init_loop("_atom_site_", [
        "label", "type_symbol", "fract_x", "fract_y", "fract_z", "U_iso_or_equiv",
        "adp_type", "occupancy", "site_symmetry_multiplicity"])
    for i, (label, element, aniso) in enumerate(
            zip(crystal.labels, crystal.elements, crystal.anisotropic)):
        loop.add_row([
            gemmi.cif.quote(label), element,
            *(format_value(positions[i, k], su["positions"][i, k]) for k in range(3)),
            format_value(u_iso[i], np.nan if aniso else su["u"][i, 0]),
            "Uani" if aniso else "Uiso",
            format_value(occupancy[i], su["occupancy"][i]),
            str(int(multiplicity[i])),
        ])
    if not any(crystal.anisotropic):
        return
    loop = block.init_loop("_atom_site_aniso_", ["label", "type_symbol"] + [
        f"U_{ij}" for ij in symmetry.U_COMPONENTS])
    for i, (label, element, aniso) in enumerate(
            zip(crystal.labels, crystal.elements, crystal.anisotropic)):
        if aniso:
            loop.add_row([gemmi.cif.quote(label), element] + [
                format_value(u_cif[i, k], su["u"][i, k]) for k in range(6)])


def _write_atomically(path: pathlib.Path, text: str) -> None:
    try:
        handle = tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        )
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror}", source=str(path)) from err
    try:
        with handle:
            handle.write(text)
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        pathlib.Path(handle.name).unlink(missing_ok=True)
        raise
