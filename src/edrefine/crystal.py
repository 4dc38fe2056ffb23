"""The crystal model: cell, sites with site-symmetry constraints, and the expansion to the cell.

Frames (gemmi's): r_cart = O x_frac with a along x and b in the xy plane; reciprocal
matrix B = O⁻ᵀ so g_cart = B h [Å⁻¹, no 2π] and g·r = h·x. ADPs follow the CIF U_ij
convention (Trueblood et al., Acta Cryst. A52, 770, 1996): U_cart = O N U N Oᵀ with
N = diag(a*, b*, c*); an isotropic site has U_cart = U_iso I.

Each site carries raw parameters (:class:`SiteParameters`) in its free subspaces:
x = x₀ + P θ and U = Q φ (anisotropic) or U_iso = φ₀ (isotropic), so special-position
constraints hold for every parameter value. :func:`build_crystal` finds x₀, P, Q and the
orbit operators on the host; everything else is pure JAX.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import equinox as eqx
import gemmi
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from . import symmetry
from .errors import InputError

MIN_CELL_LENGTH = 0.5
"""Shortest cell edge accepted [Å] (shorter is not a crystal; no element is that small)."""
MAX_CELL_LENGTH = 2000.0
"""Longest cell edge accepted [Å] (larger than any protein crystal cell)."""
MAX_FRACTIONAL = 1e3
"""Largest |fractional coordinate| accepted (a finite, sane image of a site)."""


def _as_float(value: ArrayLike) -> Array:
    value = jnp.asarray(value)
    return value if jnp.issubdtype(value.dtype, jnp.inexact) else value.astype(float)


class Cell(eqx.Module):
    """Unit cell: a, b, c [Å] and α, β, γ [degrees], as JAX scalars."""

    a: Float[Array, ""] = eqx.field(converter=_as_float)
    b: Float[Array, ""] = eqx.field(converter=_as_float)
    c: Float[Array, ""] = eqx.field(converter=_as_float)
    alpha: Float[Array, ""] = eqx.field(converter=_as_float)
    beta: Float[Array, ""] = eqx.field(converter=_as_float)
    gamma: Float[Array, ""] = eqx.field(converter=_as_float)

    def _cosines(self) -> tuple[Array, Array, Array]:
        return tuple(jnp.cos(jnp.deg2rad(v)) for v in (self.alpha, self.beta, self.gamma))

    def volume(self) -> Float[Array, ""]:
        """Cell volume [Å³]."""
        ca, cb, cg = self._cosines()
        return self.a * self.b * self.c * jnp.sqrt(1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg)

    def orthogonalisation(self) -> Float[Array, "3 3"]:
        """O with r_cart [Å] = O x_frac (gemmi/PDB convention: a ∥ x, b in the xy plane)."""
        ca, cb, cg = self._cosines()
        sg = jnp.sin(jnp.deg2rad(self.gamma))
        zero = jnp.zeros_like(self.a)
        return jnp.stack([
            jnp.stack([self.a, self.b * cg, self.c * cb]),
            jnp.stack([zero, self.b * sg, self.c * (ca - cb * cg) / sg]),
            jnp.stack([zero, zero, self.volume() / (self.a * self.b * sg)]),
        ])

    def reciprocal_matrix(self) -> Float[Array, "3 3"]:
        """B = O⁻ᵀ with g_cart [Å⁻¹] = B h; its columns are a*, b*, c*."""
        return jnp.linalg.inv(self.orthogonalisation()).T

    def reciprocal_lengths(self) -> Float[Array, "3"]:
        """a*, b*, c* [Å⁻¹]."""
        return jnp.linalg.norm(self.reciprocal_matrix(), axis=0)

    def isotropic_u_cif(self) -> Float[Array, "6"]:
        """CIF U 6-vector of U_cart = I: U_ij = a_i*·a_j* / (a_i* a_j*)."""
        b = self.reciprocal_matrix()
        n = self.reciprocal_lengths()
        g = (b.T @ b) / (n[:, None] * n[None, :])
        return jnp.stack([g[i, j] for i, j in symmetry.U_INDEX])

    def parameters(self) -> tuple[float, ...]:
        """(a, b, c, α, β, γ) as Python floats (host side)."""
        return tuple(float(v) for v in (self.a, self.b, self.c, self.alpha, self.beta, self.gamma))


class SiteParameters(eqx.Module):
    """Refinable raw parameters, batched over sites and zero-padded.

    Attributes:
        position_free: θ, coefficients of the free coordinate directions, ``[site 3]``
            (fractional units; entries beyond a site's free dimension stay 0).
        u_free: φ, coefficients of the invariant-U basis [Å²], ``[site 6]``; for an
            isotropic site column 0 is U_iso.
        occupancy: site occupancy as in the CIF, ``[site]``.
    """

    position_free: Float[Array, "site 3"]
    u_free: Float[Array, "site 6"]
    occupancy: Float[Array, " site"]


class AtomsInCell(eqx.Module):
    """All atoms of the unit cell, padded per site to the largest multiplicity m.

    Attributes:
        positions: fractional coordinates of each image, ``[site m 3]``.
        u_cart: Cartesian ADP tensors of each image [Å²], ``[site m 3 3]``.
        occupancy: ``[site]``.
        mask: True for real images, ``[site m]``; padded entries repeat the site.
        elements: element symbol per site.
    """

    positions: Float[Array, "site m 3"]
    u_cart: Float[Array, "site m 3 3"]
    occupancy: Float[Array, " site"]
    mask: Bool[Array, "site m"]
    elements: tuple[str, ...] = eqx.field(static=True)


class Crystal(eqx.Module):
    """A crystal structure with exact site-symmetry constraints.

    Refine ``params`` (and optionally ``cell``); the other arrays are fixed structure.
    ``u_basis`` of an isotropic site is e₀ (its U_iso); ``u_cif`` and ``u_cart`` use the
    cell metric for those sites instead.
    """

    cell: Cell
    params: SiteParameters
    position_origin: Float[Array, "site 3"]
    position_basis: Float[Array, "site 3 3"]
    u_basis: Float[Array, "site 6 6"]
    orbit_rotations: Float[Array, "site m 3 3"]
    orbit_translations: Float[Array, "site m 3"]
    orbit_mask: Bool[Array, "site m"]
    labels: tuple[str, ...] = eqx.field(static=True)
    elements: tuple[str, ...] = eqx.field(static=True)
    anisotropic: tuple[bool, ...] = eqx.field(static=True)
    symops: tuple[str, ...] = eqx.field(static=True)
    space_group_name: str = eqx.field(static=True)

    def _aniso(self) -> Bool[Array, " site"]:
        return jnp.asarray(self.anisotropic, dtype=bool).reshape(len(self.labels))

    def positions(self) -> Float[Array, "site 3"]:
        """Fractional coordinates x = x₀ + P θ of the sites."""
        return self.position_origin + jnp.einsum(
            "sij,sj->si", self.position_basis, self.params.position_free
        )

    def u_cif(self) -> Float[Array, "site 6"]:
        """CIF U 6-vectors (U11, U22, U33, U12, U13, U23) [Å²]; isotropic sites expanded."""
        aniso = jnp.einsum("sij,sj->si", self.u_basis, self.params.u_free)
        iso = self.params.u_free[:, :1] * self.cell.isotropic_u_cif()[None, :]
        return jnp.where(self._aniso()[:, None], aniso, iso)

    def u_iso(self) -> Float[Array, " site"]:
        """U_iso, or U_eq = tr(U_cart)/3 for anisotropic sites [Å²]."""
        u_eq = jnp.trace(self.u_cart(), axis1=-2, axis2=-1) / 3
        return jnp.where(self._aniso(), u_eq, self.params.u_free[:, 0])

    def u_cart(self) -> Float[Array, "site 3 3"]:
        """Cartesian ADP tensors U_cart = O N U N Oᵀ [Å²]; U_iso I for isotropic sites."""
        o = self.cell.orthogonalisation()
        n = self.cell.reciprocal_lengths()
        u_frac = _u_matrix(self.u_cif()) * (n[:, None] * n[None, :])[None]
        aniso = jnp.einsum("ij,sjk,lk->sil", o, u_frac, o)
        iso = self.params.u_free[:, 0, None, None] * jnp.eye(3)[None]
        return jnp.where(self._aniso()[:, None, None], aniso, iso)

    def multiplicities(self) -> Int[Array, " site"]:
        """Number of distinct images of each site in the cell."""
        return jnp.sum(self.orbit_mask, axis=1)

    def expand(self) -> AtomsInCell:
        """All images R x + t, with U rotated by R_cart = O R O⁻¹ (isotropic U unchanged)."""
        x = self.positions()
        images = jnp.einsum("smij,sj->smi", self.orbit_rotations, x) + self.orbit_translations
        o = self.cell.orthogonalisation()
        r_cart = jnp.einsum("ij,smjk,kl->smil", o, self.orbit_rotations, jnp.linalg.inv(o))
        u = self.u_cart()
        rotated = jnp.einsum("smij,sjk,smlk->smil", r_cart, u, r_cart)
        u_images = jnp.where(self._aniso()[:, None, None, None], rotated, u[:, None])
        return AtomsInCell(images, u_images, self.params.occupancy, self.orbit_mask, self.elements)

    def parameter_mask(self) -> SiteParameters:
        """Boolean pytree like ``params``: True for real (not padding) free parameters.

        For an isotropic site only ``u_free[:, 0]`` (U_iso) is free. The count of True
        entries is the number of refinable structural parameters.
        """
        return SiteParameters(
            position_free=jnp.linalg.norm(self.position_basis, axis=1) > 0,
            u_free=jnp.linalg.norm(self.u_basis, axis=1) > 0,
            occupancy=jnp.ones(len(self.labels), dtype=bool),
        )

    def with_params(self, params: SiteParameters) -> Crystal:
        """The same crystal with other raw parameters."""
        return eqx.tree_at(lambda c: c.params, self, params)

    def with_cell(self, cell: Cell) -> Crystal:
        """The same crystal with another cell."""
        return eqx.tree_at(lambda c: c.cell, self, cell)

    def invert(self) -> Crystal:
        """The enantiomorphic model: x → −x, operators conjugated by the inversion: (R, −t).

        Structure factors of the result are the complex conjugates of the original's
        (without anomalous terms); raw parameters are unchanged.
        """
        origin = _wrap(-self.position_origin)
        target = _wrap(
            -jnp.einsum("smij,sj->smi", self.orbit_rotations, self.position_origin)
            - self.orbit_translations
        )
        translations = target - jnp.einsum("smij,sj->smi", self.orbit_rotations, origin)
        operators = symmetry.inverted_operators(symmetry.operators_from_triplets(self.symops))
        inverted = eqx.tree_at(
            lambda c: (c.position_origin, c.position_basis, c.orbit_translations),
            self,
            (origin, -self.position_basis, translations),
        )
        return _replace_static(inverted, symops=operators.triplets, space_group_name=operators.name)


def _wrap(x: Array) -> Array:
    return x - jnp.floor(x + 1e-9)


def _u_matrix(u6: Float[Array, "... 6"]) -> Float[Array, "... 3 3"]:
    rows = jnp.array([[0, 3, 4], [3, 1, 5], [4, 5, 2]])
    return u6[..., rows]


def _replace_static(crystal: Crystal, **changes) -> Crystal:
    fields = {name: getattr(crystal, name) for name in crystal.__dataclass_fields__}
    fields.update(changes)
    return Crystal(**fields)


def build_crystal(
    cell: Cell | Sequence[float],
    operators: symmetry.Operators | Sequence[str] | str,
    labels: Sequence[str],
    elements: Sequence[str],
    positions: ArrayLike,
    u_iso: ArrayLike | None = None,
    u_aniso: ArrayLike | None = None,
    anisotropic: Sequence[bool] | None = None,
    occupancy: ArrayLike | None = None,
    tolerance: float = 1e-3,
    u_tolerance: float = 1e-3,
) -> Crystal:
    """Build a crystal from plain values (host side), finding each site's constraints.

    Sites near a special position (within ``tolerance``, fractional) are snapped onto it
    (a warning names those moved by more than 1e-5); anisotropic U is projected onto
    its invariant subspace, an error if that changes U_cart by more than ``u_tolerance``.

    Args:
        cell: a :class:`Cell` or (a, b, c [Å], α, β, γ [degrees]).
        operators: all space-group operators, ``x,y,z`` triplets, or a space-group name.
        labels, elements: one per site; elements are normalised (``"cs"`` → ``"Cs"``).
        positions: fractional coordinates, ``[site 3]``.
        u_iso: U_iso [Å²], ``[site]``; needed for isotropic sites.
        u_aniso: CIF U (U11, U22, U33, U12, U13, U23) [Å²], ``[site 6]``; for anisotropic sites.
        anisotropic: per site; default: all True when ``u_aniso`` is given, else all False.
        occupancy: ``[site]``, default 1.

    Raises:
        InputError: bad cell, element, occupancy, U, or space group; the message names the site.
    """
    cell = cell if isinstance(cell, Cell) else Cell(*cell)
    cell_parameters = cell.parameters()
    if not np.all(np.isfinite(cell_parameters)) or not gemmi.UnitCell(*cell_parameters).volume > 0:
        raise InputError("cell volume is not positive", source="cell")
    if not all(MIN_CELL_LENGTH <= length <= MAX_CELL_LENGTH for length in cell_parameters[:3]):
        raise InputError(f"cell lengths must lie in [{MIN_CELL_LENGTH:g}, {MAX_CELL_LENGTH:g}] Å", source="cell")
    if isinstance(operators, str):
        operators = symmetry.operators_from_name(operators)
    elif not isinstance(operators, symmetry.Operators):
        operators = symmetry.operators_from_triplets(operators)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    count = len(positions)
    if count == 0:
        raise InputError("no atom sites")
    if anisotropic is None:
        anisotropic = [u_aniso is not None] * count
    u_iso = np.full(count, np.nan) if u_iso is None else np.asarray(u_iso, dtype=np.float64)
    u_aniso = np.full((count, 6), np.nan) if u_aniso is None else np.asarray(u_aniso, np.float64)
    occupancy = np.ones(count) if occupancy is None else np.asarray(occupancy, dtype=np.float64)
    sites, u_free = [], []
    for i, label in enumerate(labels):
        if not 0.0 <= occupancy[i] <= 1.0 + 1e-9:
            raise InputError(f"site {label}: occupancy {occupancy[i]:g} outside [0, 1]")
        if not np.all(np.abs(positions[i]) <= MAX_FRACTIONAL):
            raise InputError(f"site {label}: fractional coordinates {positions[i].tolist()} missing or not finite")
        site = symmetry.site_symmetry(operators, positions[i], cell_parameters, tolerance)
        if site.snap > 1e-5:
            warnings.warn(f"site {label}: moved by {site.snap:.1e} (fractional) onto its "
                          "special position", stacklevel=2)
        sites.append(site)
        if anisotropic[i]:
            u_free.append(_aniso_free(site, label, u_aniso[i], cell_parameters, u_tolerance))
        elif np.isfinite(u_iso[i]) and u_iso[i] >= 0:
            u_free.append(np.eye(6)[0] * u_iso[i])
        else:
            raise InputError(f"site {label}: U_iso {u_iso[i]:g} is missing or negative")
    return _assemble(cell, operators, labels, elements, anisotropic, occupancy, sites, u_free)


def _aniso_free(site: symmetry.SiteSymmetry, label: str, u_aniso: np.ndarray,
                cell_parameters: tuple[float, ...], u_tolerance: float) -> np.ndarray:
    """Coefficients φ [6] of the invariant part of a CIF U, after checks."""
    if not np.all(np.isfinite(u_aniso)):
        raise InputError(f"site {label}: anisotropic U is missing")
    o = np.array(gemmi.UnitCell(*cell_parameters).orth.mat.tolist())
    n = symmetry.reciprocal_lengths(cell_parameters)
    invariant = site.symmetrise_u(u_aniso)
    to_cart = lambda u6: o @ (symmetry.u_matrix(u6) * np.outer(n, n)) @ o.T  # noqa: E731
    error = np.max(np.abs(to_cart(u_aniso) - to_cart(invariant)))
    if error > u_tolerance:
        raise InputError(
            f"site {label}: anisotropic U breaks the site symmetry by {error:.2g} Å²"
        )
    if np.linalg.eigvalsh(to_cart(invariant)).min() <= 0:
        raise InputError(f"site {label}: anisotropic U is not positive definite")
    u_free = np.zeros(6)
    u_free[: site.u_basis.shape[1]] = site.u_basis.T @ invariant
    return u_free


def _assemble(cell, operators, labels, elements, anisotropic, occupancy, sites, u_free) -> Crystal:
    count = len(sites)
    m = max(site.multiplicity for site in sites)
    origin = np.zeros((count, 3))
    position_basis = np.zeros((count, 3, 3))
    u_basis = np.zeros((count, 6, 6))
    rotations = np.tile(np.eye(3), (count, m, 1, 1))
    translations = np.zeros((count, m, 3))
    mask = np.zeros((count, m), dtype=bool)
    for i, site in enumerate(sites):
        origin[i] = site.position
        u_site = site.u_basis if anisotropic[i] else np.eye(6)[:, :1]
        k, l, j = site.position_basis.shape[1], u_site.shape[1], site.multiplicity
        position_basis[i, :, :k] = site.position_basis
        u_basis[i, :, :l] = u_site
        rotations[i, :j] = site.orbit_rotations
        translations[i, :j] = site.orbit_translations
        mask[i, :j] = True
    params = SiteParameters(
        position_free=jnp.zeros((count, 3)),
        u_free=jnp.asarray(np.stack(u_free)),
        occupancy=jnp.asarray(occupancy),
    )
    return Crystal(
        cell=cell,
        params=params,
        position_origin=jnp.asarray(origin),
        position_basis=jnp.asarray(position_basis),
        u_basis=jnp.asarray(u_basis),
        orbit_rotations=jnp.asarray(rotations),
        orbit_translations=jnp.asarray(translations),
        orbit_mask=jnp.asarray(mask),
        labels=tuple(str(label) for label in labels),
        elements=tuple(_element(str(e), str(label)) for e, label in zip(elements, labels)),
        anisotropic=tuple(bool(a) for a in anisotropic),
        symops=operators.triplets,
        space_group_name=operators.name,
    )


def _element(symbol: str, label: str) -> str:
    element = gemmi.Element(symbol.strip())
    if element.atomic_number == 0:
        raise InputError(f"site {label}: unknown element '{symbol}'")
    return element.name


def perturb(crystal: Crystal, key: PRNGKeyArray, rms_angstrom: float | Array) -> Crystal:
    """Random displacements within each site's free subspace.

    A Gaussian Cartesian displacement per site is projected (least squares) onto the free
    directions, then all are scaled so that their root-mean-square over sites (fixed sites
    count as 0) is ``rms_angstrom`` [Å]; ``coordinate_rmsd(result, crystal)`` equals it for
    small displacements.
    """
    o = crystal.cell.orthogonalisation()
    free_cart = jnp.einsum("ij,sjk->sik", o, crystal.position_basis)
    direction = jax.random.normal(key, crystal.position_origin.shape, dtype=o.dtype)
    step = jnp.einsum("sij,sj->si", jnp.linalg.pinv(free_cart), direction)
    moved = jnp.einsum("sij,sj->si", free_cart, step)
    rms = jnp.sqrt(jnp.mean(jnp.sum(moved**2, axis=-1)))
    scale = jnp.where(rms > 0, rms_angstrom / jnp.where(rms > 0, rms, 1.0), 0.0)
    params = eqx.tree_at(
        lambda p: p.position_free, crystal.params, crystal.params.position_free + scale * step
    )
    return crystal.with_params(params)


def coordinate_rmsd(a: Crystal, b: Crystal) -> Float[Array, ""]:
    """RMS over sites of the distance [Å] from each site of ``a`` to the nearest image of
    the same site in ``b`` (any orbit operator, any lattice translation), in ``a``'s cell."""
    if a.labels != b.labels:
        raise ValueError(f"different sites: {a.labels} and {b.labels}")
    atoms = b.expand()
    diff = a.positions()[:, None, :] - atoms.positions
    diff = diff - jnp.round(diff)
    shifts = jnp.asarray(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)), dtype=diff.dtype)
    candidates = diff[:, :, None, :] + shifts[None, None]
    cart = jnp.einsum("ij,smkj->smki", a.cell.orthogonalisation(), candidates)
    squared = jnp.where(atoms.mask[:, :, None], jnp.sum(cart**2, axis=-1), jnp.inf)
    return jnp.sqrt(jnp.mean(jnp.min(squared, axis=(1, 2))))
