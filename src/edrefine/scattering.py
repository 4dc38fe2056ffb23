"""Elastic electron scattering factors of neutral atoms.

Three published parametrisations, each a data file in ``edrefine/data`` with its
citation in the header; all take |g| = 1/d in Å⁻¹ (no 2π) and give f_e in Å.

``lobato`` (default; Lobato & Van Dyck 2014, Acta Cryst. A70, 636), Z = 1–103::

    f(g) = Σ_{i=1..5} a_i (2 + b_i g²) / (1 + b_i g²)²

a_i in Å, b_i in Å²; fitted for 0 ≤ g ≤ 12 Å⁻¹ and built to reach the bare-nucleus
(Mott–Bethe) limit Z / (2π² a₀ g²) at large g.

``kirkland`` (Kirkland 2010, Advanced Computing in Electron Microscopy, App. C), Z = 1–103::

    f(q) = Σ_{i=1..3} a_i / (q² + b_i) + Σ_{i=1..3} c_i exp(−d_i q²),   q = g

a_i in Å⁻¹, b_i in Å⁻², c_i in Å, d_i in Å²; fitted for 0 ≤ q ≤ 12 Å⁻¹.

``peng`` (Peng, Ren, Dudarev & Whelan 1996, Acta Cryst. A52, 257 = ITC Vol. C
Table 4.3.2.2; aliases ``itc``, ``c4322``), Z = 1–98::

    f(s) = Σ_{i=1..5} a_i exp(−b_i s²),   s = sinθ/λ = g/2

a_i in Å, b_i in Å²; valid for 0 ≤ s ≤ 2 Å⁻¹ (g ≤ 4 Å⁻¹) only, beyond which the
Gaussians fall off faster than the physical 1/g² tail.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import re
import types
from collections.abc import Mapping, Sequence

import equinox as eqx
import gemmi
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .errors import InputError

PARAMETRISATIONS: tuple[str, ...] = ("lobato", "kirkland", "peng")
_FILES = types.MappingProxyType(
    {"lobato": "lobato2014.csv", "kirkland": "kirkland2010.csv", "peng": "peng1996.csv"}
)
_ALIASES = types.MappingProxyType({"itc": "peng", "c4322": "peng"})
_LEADING_LETTERS = re.compile(r"[A-Za-z]+")


@functools.lru_cache(maxsize=1)
def _element_symbols() -> Mapping[str, str]:
    """Upper-case symbol → symbol for Z = 1–118, from gemmi's periodic table."""
    names = (gemmi.Element(z).name for z in range(1, 119))
    return types.MappingProxyType({name.upper(): name for name in names})


def element_symbol(label_or_type: str) -> str:
    """Element symbol from a CIF atom type or site label.

    Case is ignored and a trailing charge, number or label suffix is stripped:
    "Si", "SI", "si4+" → "Si"; "O2-", "O1A", "Ow" → "O"; "Fe3+" → "Fe". Of the
    leading letters, a two-letter element symbol wins over a one-letter one, so
    site labels that start with an element symbol followed by a letter can be
    ambiguous ("Ca1" → Ca, "Co2" → Co): use ``_atom_site_type_symbol`` where a CIF
    gives it. Deuterium "D" maps to "H" (same electron scattering). Ionic charge is
    ignored: all tables here are for neutral atoms.

    Raises:
        InputError: no element symbol can be read from ``label_or_type``.
    """
    match = _LEADING_LETTERS.match(label_or_type.strip())
    letters = match.group(0).upper() if match else ""
    symbols = _element_symbols()
    if letters[:1] == "D" and letters[:2] not in symbols:
        return "H"
    for candidate in (letters[:2], letters[:1]):
        if candidate and candidate in symbols:
            return symbols[candidate]
    raise InputError(f"cannot read an element symbol from {label_or_type!r}")


def _canonical(parametrisation: str) -> str:
    name = parametrisation.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in PARAMETRISATIONS:
        raise InputError(
            f"unknown scattering-factor parametrisation {parametrisation!r};"
            f" choose one of {', '.join(PARAMETRISATIONS)}",
            source="form-factors",
        )
    return name


@functools.lru_cache(maxsize=None)
def _read_table(name: str) -> Mapping[str, np.ndarray]:
    """Parse a coefficient table: symbol → read-only float64 array (kind, term).

    Columns named ``<letter><index>`` are grouped by letter in order of first
    appearance (a, b for Lobato and Peng; a, b, c, d for Kirkland).
    """
    path = importlib.resources.files("edrefine") / "data" / _FILES[name]
    with path.open(encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip() and not line.startswith("#")]
    reader = csv.reader(lines)
    header = next(reader)
    kinds = list(dict.fromkeys(column[0] for column in header[2:]))
    table = {}
    for row in reader:
        values = dict(zip(header[2:], map(float, row[2:]), strict=True))
        rows = [[v for k, v in values.items() if k[0] == kind] for kind in kinds]
        array = np.array(rows, dtype=np.float64)
        array.setflags(write=False)
        table[row[1]] = array
    return types.MappingProxyType(table)


def _lobato(c: Float[Array, "element 2 *ones term"], g2: Float[Array, "1 *batch 1"]):
    bg2 = c[:, 1] * g2
    return jnp.sum(c[:, 0] * (2 + bg2) / jnp.square(1 + bg2), axis=-1)


def _kirkland(c: Float[Array, "element 4 *ones term"], g2: Float[Array, "1 *batch 1"]):
    lorentzians = c[:, 0] / (g2 + c[:, 1])
    gaussians = c[:, 2] * jnp.exp(-c[:, 3] * g2)
    return jnp.sum(lorentzians + gaussians, axis=-1)


def _peng(c: Float[Array, "element 2 *ones term"], g2: Float[Array, "1 *batch 1"]):
    return jnp.sum(c[:, 0] * jnp.exp(-c[:, 1] * (g2 / 4)), axis=-1)


_FORMULAS = types.MappingProxyType({"lobato": _lobato, "kirkland": _kirkland, "peng": _peng})


class ScatteringFactors(eqx.Module):
    """Electron scattering factors f_e(|g|) of a fixed tuple of elements.

    Attributes:
        coefficients: the table rows, ``[element, kind, term]``: kinds (a, b) with
            5 terms for ``lobato`` and ``peng``, (a, b, c, d) with 3 terms for
            ``kirkland`` (units as in the module docstring).
        parametrisation: one of :data:`PARAMETRISATIONS` (static).
        elements: element symbols, in row order (static).
    """

    coefficients: Float[Array, "element kind term"]
    parametrisation: str = eqx.field(static=True)
    elements: tuple[str, ...] = eqx.field(static=True)

    def __check_init__(self):
        if self.parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"unknown parametrisation {self.parametrisation!r}")
        if self.coefficients.shape[0] != len(self.elements):
            raise ValueError("one coefficient row per element is needed")

    def __call__(self, g: Float[ArrayLike, "*batch"]) -> Float[Array, "element *batch"]:
        """f_e in Å at reciprocal-vector length ``g`` = |g| = 1/d (Å⁻¹).

        Computed in the dtype of ``g`` (the default float dtype for integer or
        Python input); differentiable in ``g`` and in the coefficients.
        """
        g = jnp.asarray(g)
        if not jnp.issubdtype(g.dtype, jnp.floating):
            g = g.astype(jnp.asarray(0.0).dtype)
        g2 = jnp.square(g)[None, ..., None]
        c = self.coefficients.astype(g.dtype)
        c = c.reshape(c.shape[:2] + (1,) * g.ndim + c.shape[2:])
        return _FORMULAS[self.parametrisation](c, g2)


def load_scattering_factors(
    elements: Sequence[str], parametrisation: str = "lobato"
) -> ScatteringFactors:
    """Read the coefficient rows of ``elements`` from a parametrisation's table.

    Args:
        elements: element symbols, CIF type symbols or site labels (normalised by
            :func:`element_symbol`; ionic charges are ignored).
        parametrisation: ``"lobato"`` (default), ``"kirkland"`` or ``"peng"``
            (aliases ``"itc"``, ``"c4322"``); case-insensitive.

    Returns:
        ScatteringFactors with rows in the order of ``elements``.

    Raises:
        InputError: unknown parametrisation, unreadable symbol, or an element
            that the chosen table does not cover (Peng stops at Z = 98).
    """
    name = _canonical(parametrisation)
    if isinstance(elements, str):
        elements = (elements,)
    if not elements:
        raise InputError("no elements given for the scattering factors", source="form-factors")
    table = _read_table(name)
    symbols = tuple(element_symbol(label) for label in elements)
    for label, symbol in zip(elements, symbols):
        if symbol not in table:
            raise InputError(
                f"element {symbol} ({label!r}) is not in the {name} scattering-factor table"
                f" ({_FILES[name]})",
                source="form-factors",
            )
    rows = np.stack([table[symbol] for symbol in symbols])
    return ScatteringFactors(jnp.asarray(rows), name, symbols)
