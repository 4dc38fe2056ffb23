"""Space-group operators and site symmetry, on the host (numpy + gemmi).

A site x₀ in a space group G = {(Rᵢ, tᵢ)} (fractional coordinates, x' = R x + t) has

* a **site-symmetry group** S = {(R, t) ∈ G : R x₀ + t ≡ x₀ (mod lattice)};
* an **orbit**: one operator per distinct image in the unit cell, |orbit| = |G| / |S|, the
  site multiplicity;
* a **free subspace for coordinates**: x = x₀ + P θ with P the orthonormal null space of
  the stacked (R − I), R ∈ S (then R x + t ≡ x for every θ);
* a **free subspace for U**: the CIF tensor U (Trueblood et al. 1996) is related to the
  covariance of fractional displacements by U* = N U N, N = diag(a*, b*, c*). Since
  Δx' = R Δx, invariance R U* Rᵀ = U* reads M U Mᵀ = U with M = N⁻¹ R N. The basis of
  the invariant 6-vectors (U11, U22, U33, U12, U13, U23) is found numerically.

Both bases are canonical: Gram–Schmidt on the projections of the unit vectors, so the
general position gets the identity, a mirror z = ¼ gets (e_x, e_y), and so on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import gemmi
import numpy as np

from .errors import InputError

U_COMPONENTS = ("11", "22", "33", "12", "13", "23")
U_INDEX = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


@dataclasses.dataclass(frozen=True, eq=False)
class Operators:
    """All operators of a space group, centring translations included.

    Attributes:
        rotations: integer rotation parts, ``[op 3 3]``.
        translations: translation parts in [0, 1), ``[op 3]`` (fractional).
        triplets: the operators as ``x,y,z`` strings, in the same order.
        name: Hermann–Mauguin symbol when gemmi recognises the group, else "".
        number: International Tables number, 0 when unknown.
    """

    rotations: np.ndarray
    translations: np.ndarray
    triplets: tuple[str, ...]
    name: str
    number: int

    def __len__(self) -> int:
        return len(self.triplets)


def operators_from_gemmi(group: gemmi.GroupOps) -> Operators:
    """Operators of a gemmi group (all sym × centring ops), named when gemmi knows it."""
    ops = [op.wrap() for op in group]
    rotations = np.array([op.rot for op in ops], dtype=np.int64) // gemmi.Op.DEN
    translations = np.array([op.tran for op in ops], dtype=np.float64) / gemmi.Op.DEN
    spacegroup = gemmi.find_spacegroup_by_ops(group)
    name = spacegroup.xhm() if spacegroup is not None else ""
    number = spacegroup.number if spacegroup is not None else 0
    return Operators(rotations, translations, tuple(op.triplet() for op in ops), name, number)


def operators_from_triplets(triplets: Sequence[str], source: str | None = None) -> Operators:
    """Operators from ``x,y,z``-style strings (a CIF symop loop); must form a group."""
    ops = []
    for triplet in triplets:
        try:
            ops.append(gemmi.Op(triplet.replace(" ", "")).wrap())
        except (RuntimeError, ValueError) as err:
            raise InputError(f"bad symmetry operator '{triplet}': {err}", source=source) from err
    unique = {op.triplet(): op for op in ops}
    operators = operators_from_gemmi(gemmi.GroupOps(list(unique.values())))
    if not _is_group(operators):
        raise InputError("symmetry operators do not form a group", source=source)
    return operators


def operators_from_name(name: str, source: str | None = None) -> Operators:
    """Operators of a space group given by H-M symbol, Hall symbol or IT number."""
    text = name.strip()
    spacegroup = None
    if text.isdigit():
        spacegroup = gemmi.find_spacegroup_by_number(int(text))
    else:
        spacegroup = gemmi.find_spacegroup_by_name(text)
        if spacegroup is None:
            try:
                return operators_from_gemmi(gemmi.symops_from_hall(text))
            except (RuntimeError, ValueError):
                spacegroup = None
    if spacegroup is None:
        raise InputError(f"unknown space group '{name}'", source=source)
    return operators_from_gemmi(spacegroup.operations())


def inverted_operators(operators: Operators) -> Operators:
    """The group conjugated by the inversion x → −x: (R, t) → (R, −t)."""
    inversion = gemmi.Op("-x,-y,-z")
    ops = [(inversion * gemmi.Op(t) * inversion).wrap() for t in operators.triplets]
    return operators_from_gemmi(gemmi.GroupOps(ops))


def _is_group(operators: Operators) -> bool:
    rotations, translations = operators.rotations, operators.translations
    if len(operators) == 0:
        return False
    products = np.einsum("aij,bjk->abik", rotations, rotations)
    shifted = np.einsum("aij,bj->abi", rotations, translations) + translations[:, None]
    return bool(len(operators)) and bool(np.all(np.isin(
        _op_codes(products.reshape(-1, 3, 3), shifted.reshape(-1, 3)),
        _op_codes(rotations, translations),
    )))


def _op_codes(rotations: np.ndarray, translations: np.ndarray) -> np.ndarray:
    """One integer per operator (rotation entries in {-1, 0, 1}, translations in 1/24)."""
    rotation_code = (rotations.reshape(-1, 9) + 1) @ (3 ** np.arange(9))
    steps = np.round(np.mod(translations, 1.0) * 24).astype(np.int64) % 24
    return rotation_code * 24**3 + steps @ (24 ** np.arange(3))


@dataclasses.dataclass(frozen=True, eq=False)
class SiteSymmetry:
    """Symmetry of one site, with the parametrisation of its free subspaces.

    Attributes:
        position: site snapped onto its special position, ``[3]`` (fractional).
        snap: largest fractional change made by snapping (0 on a general position).
        stabiliser: indices into the operators of the site-symmetry group.
        orbit_rotations: one rotation per distinct image, ``[m 3 3]``; the first is I.
        orbit_translations: matching translations, ``[m 3]``, chosen so the images of
            ``position`` lie in [0, 1).
        position_basis: orthonormal free directions, ``[3 k]`` (fractional).
        u_basis: orthonormal basis of invariant CIF U 6-vectors, ``[6 l]``.
        u_operators: the maps U ↦ M U Mᵀ of the stabiliser on 6-vectors, ``[s 6 6]``.
    """

    position: np.ndarray
    snap: float
    stabiliser: tuple[int, ...]
    orbit_rotations: np.ndarray
    orbit_translations: np.ndarray
    position_basis: np.ndarray
    u_basis: np.ndarray
    u_operators: np.ndarray

    @property
    def multiplicity(self) -> int:
        """Number of distinct images of the site in the unit cell."""
        return len(self.orbit_rotations)

    def symmetrise_u(self, u_cif: np.ndarray) -> np.ndarray:
        """Average of M U Mᵀ over the stabiliser: the invariant part of U, ``[6]``."""
        return np.mean(self.u_operators @ np.asarray(u_cif, dtype=np.float64), axis=0)


def site_symmetry(
    operators: Operators,
    position: Sequence[float],
    cell_parameters: Sequence[float],
    tolerance: float = 1e-3,
) -> SiteSymmetry:
    """Site-symmetry group, orbit and free subspaces of one site.

    Args:
        operators: all operators of the space group.
        position: fractional coordinates of the site, ``[3]``.
        cell_parameters: a, b, c [Å], α, β, γ [degrees] (for the U metric N).
        tolerance: largest fractional distance of an image still counted as the site itself.
    """
    x0 = np.asarray(position, dtype=np.float64)
    rotations, translations = operators.rotations, operators.translations
    images = np.einsum("oij,j->oi", rotations, x0) + translations
    offsets = images - x0
    offsets -= np.round(offsets)
    stabiliser = tuple(np.flatnonzero(np.max(np.abs(offsets), axis=1) <= tolerance).tolist())
    if not stabiliser or len(operators) % len(stabiliser):
        raise InputError(f"site at {x0.tolist()} has an inconsistent site-symmetry group")
    snapped = x0 + np.mean(offsets[list(stabiliser)], axis=0)
    orbit_rotations, orbit_translations = _orbit(operators, snapped, tolerance)
    if len(orbit_rotations) * len(stabiliser) != len(operators):
        raise InputError(f"site at {x0.tolist()}: orbit and site symmetry disagree")
    u_operators = np.stack(
        [_u_operator(rotations[i], cell_parameters) for i in stabiliser]
    )
    return SiteSymmetry(
        position=snapped,
        snap=float(np.max(np.abs(snapped - x0))),
        stabiliser=stabiliser,
        orbit_rotations=orbit_rotations,
        orbit_translations=orbit_translations,
        position_basis=_invariant_basis(rotations[list(stabiliser)].astype(np.float64)),
        u_basis=_invariant_basis(u_operators),
        u_operators=u_operators,
    )


def _orbit(operators: Operators, x0: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    images = np.einsum("oij,j->oi", operators.rotations, x0) + operators.translations
    offsets = images[:, None, :] - images[None, :, :]
    close = np.max(np.abs(offsets - np.round(offsets)), axis=-1) <= tolerance
    is_identity = np.all(operators.rotations == np.eye(3, dtype=np.int64), axis=(1, 2)) & np.all(
        operators.translations == 0, axis=1
    )
    kept: list[int] = []
    for i in sorted(range(len(operators)), key=lambda i: not is_identity[i]):
        if not close[i, kept].any():
            kept.append(i)
    wrapped = images[kept] - np.floor(images[kept] + 1e-9)
    translations = operators.translations[kept] + (wrapped - images[kept])
    return operators.rotations[kept].astype(np.float64), translations


def _invariant_basis(operators: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
    """Orthonormal basis of {v : A v = v for all A}, canonical (Gram–Schmidt on e_i)."""
    n = operators.shape[-1]
    stacked = (operators - np.eye(n)).reshape(-1, n)
    _, singular, vt = np.linalg.svd(stacked)
    rank = int(np.sum(singular > rtol * max(1.0, singular.max(initial=0.0))))
    null = vt[rank:].T
    projector = null @ null.T
    columns: list[np.ndarray] = []
    for i in range(n):
        v = projector[:, i].copy()
        for c in columns:
            v -= (c @ v) * c
        if np.linalg.norm(v) > 1e-6 and len(columns) < null.shape[1]:
            columns.append(v / np.linalg.norm(v))
    basis = np.array(columns).T.reshape(n, len(columns))
    basis[np.abs(basis) < 1e-14] = 0.0
    return basis


def reciprocal_lengths(cell_parameters: Sequence[float]) -> np.ndarray:
    """a*, b*, c* [Å⁻¹] of a cell given as a, b, c [Å], α, β, γ [degrees]."""
    reciprocal = gemmi.UnitCell(*cell_parameters).reciprocal()
    return np.array([reciprocal.a, reciprocal.b, reciprocal.c])


def u_matrix(u6: np.ndarray) -> np.ndarray:
    """Symmetric ``[... 3 3]`` tensor from 6-vectors (U11, U22, U33, U12, U13, U23)."""
    u6 = np.asarray(u6)
    rows = [[0, 3, 4], [3, 1, 5], [4, 5, 2]]
    return u6[..., rows]


def u_vector(u: np.ndarray) -> np.ndarray:
    """6-vectors (U11, U22, U33, U12, U13, U23) of symmetric ``[... 3 3]`` tensors."""
    return np.stack([u[..., i, j] for i, j in U_INDEX], axis=-1)


def _u_operator(rotation: np.ndarray, cell_parameters: Sequence[float]) -> np.ndarray:
    """6×6 matrix of U ↦ M U Mᵀ, M = N⁻¹ R N, acting on CIF U 6-vectors."""
    n = reciprocal_lengths(cell_parameters)
    m = rotation / n[:, None] * n[None, :]
    basis = u_matrix(np.eye(6))
    return u_vector(m @ basis @ m.T).T
