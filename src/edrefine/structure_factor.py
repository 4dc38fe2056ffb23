"""Structure factors and the crystal potential on a set of reciprocal-lattice vectors.

Conventions (see docs/conventions.md):

* crystallographic structure factor F(h) = Σ_j occ_j f_j(|g|) T_j(g) exp(+2πi h·x_j) [Å], summed
  over every atom of the unit cell, with the electron scattering factor f_j in Å;
* the crystal potential V(r) = Σ_g V_g exp(+2πi g·r), so the coefficient that couples beam h
  into beam g is U(g − h) with U(g) = γ F(−g) / (π Ω) [Å⁻²]; for real scattering factors
  F(−g) = F(g)*;
* Debye–Waller factor T_j(g) = exp(−2π² gᵀ U_j g) with U_j the Cartesian ADP tensor [Å²],
  which is exp(−8π² U_iso s²) for isotropic atoms (s = |g|/2).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, Int

from .crystal import AtomsInCell, Crystal
from .electron import potential_from_structure_factor
from .scattering import ScatteringFactors, element_symbol, load_scattering_factors


def debye_waller(g_cart: Float[Array, "refl 3"], u_cart: Float[Array, "*atom 3 3"]) -> Float[Array, "*atom refl"]:
    """Debye–Waller factor T(g) = exp(−2π² gᵀ U g).

    Args:
        g_cart: reciprocal vectors in the Cartesian crystal frame [Å⁻¹].
        u_cart: Cartesian displacement tensors [Å²].
    """
    quadratic = jnp.einsum("ri,...ij,rj->...r", g_cart, u_cart, g_cart)
    return jnp.exp(-2.0 * jnp.pi**2 * quadratic)


def site_element_index(crystal: Crystal, form_factors: ScatteringFactors) -> np.ndarray:
    """Row of ``form_factors`` for each site of ``crystal`` (host side)."""
    symbols = [element_symbol(e) for e in form_factors.elements]
    return np.array([symbols.index(element_symbol(e)) for e in crystal.elements], dtype=np.int32)


def form_factors_for(crystal: Crystal, parametrisation: str = "lobato") -> ScatteringFactors:
    """Scattering factors of the distinct elements of ``crystal`` (host side)."""
    distinct = tuple(dict.fromkeys(element_symbol(e) for e in crystal.elements))
    return load_scattering_factors(distinct, parametrisation)


def structure_factors(
    atoms: AtomsInCell,
    form_factors: ScatteringFactors,
    element_index: Int[Array, " site"],
    hkl: Float[Array, "refl 3"],
    reciprocal_matrix: Float[Array, "3 3"],
) -> Complex[Array, " refl"]:
    """Crystallographic electron structure factors F(h) = Σ occ f T exp(+2πi h·x) [Å].

    Args:
        atoms: the unit-cell contents (sites × orbit images, padded with a mask).
        form_factors: electron scattering factors of the elements used.
        element_index: row of ``form_factors`` for each site.
        hkl: Miller indices (integers stored as floats or ints).
        reciprocal_matrix: B with g_cart = B hkl [Å⁻¹].
    """
    hkl = jnp.asarray(hkl, dtype=atoms.positions.dtype)
    g_cart = hkl @ reciprocal_matrix.T
    g_squared = jnp.sum(g_cart**2, axis=-1)
    g_length = jnp.where(g_squared > 0, jnp.sqrt(jnp.where(g_squared > 0, g_squared, 1.0)), 0.0)
    f_site = form_factors(g_length)[element_index]
    temperature = debye_waller(g_cart, atoms.u_cart)
    phase = 2.0 * jnp.pi * jnp.einsum("smi,ri->smr", atoms.positions, hkl)
    weight = jnp.where(atoms.mask, 1.0, 0.0)[..., None] * temperature
    image_sum = jnp.sum(weight * jnp.exp(1j * phase), axis=1)
    return jnp.sum(atoms.occupancy[:, None] * f_site * image_sum, axis=0)


def potential_coefficients(
    crystal: Crystal,
    form_factors: ScatteringFactors,
    element_index: Int[Array, " site"],
    hkl: Float[Array, "refl 3"],
    gamma: float,
) -> Complex[Array, " refl"]:
    """Potential coefficients U(g) = γ F(−g) / (π Ω) [Å⁻²] for the vectors g = ``hkl``.

    U(g_i − g_j) is the coupling of beam j into beam i in the Bloch-wave structure matrix;
    U(0) is the mean inner potential U₀. When the space group has an inversion centre at the
    origin, U(g) is real for every parameter value, and a real array is returned so that the
    structure matrix and its eigendecomposition run in real arithmetic (about four times
    cheaper than complex).
    """
    hkl = jnp.asarray(hkl, dtype=crystal.cell.a.dtype)
    f_minus = structure_factors(crystal.expand(), form_factors, element_index, -hkl, crystal.cell.reciprocal_matrix())
    potential = potential_from_structure_factor(f_minus, gamma, crystal.cell.volume())
    return jnp.real(potential) if is_centrosymmetric_at_origin(crystal) else potential


def is_centrosymmetric_at_origin(crystal: Crystal) -> bool:
    """True when −x, −y, −z is one of the space-group operators (host side, static)."""
    return any(_is_inversion(triplet) for triplet in crystal.symops)


def _is_inversion(triplet: str) -> bool:
    return "".join(triplet.lower().split()) == "-x,-y,-z"
