"""Dynamical diffraction of one crystal orientation: from the potential table to amplitudes.

The pieces, each a pure function, are joined in :func:`orientation_amplitudes`, which is what
batched and integrated calculations ``vmap`` over orientations:

1. the potential coefficients U(g) on the shared coupling table (:func:`crystal_potential`);
2. the incident geometry: excitation errors S_g, surface-normal components g·n̂ and K·n̂;
3. the structure matrix and its absorptive part (:mod:`edrefine.bloch`);
4. propagation to every thickness from one eigendecomposition.

Directions are in the Cartesian crystal frame of :meth:`Cell.orthogonalisation`. The incident
wave vector K points along the electron propagation, i.e. *opposite* to a zone axis given in
the PETS2 and TEM convention (which points back towards the source).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Complex, Float, Int

from . import bloch
from .bethe import strong_rows_propagate
from .crystal import Crystal
from .electron import crystal_wavenumber
from .scattering import ScatteringFactors
from .structure_factor import potential_coefficients


@eqx.filter_jit
def crystal_potential(
    crystal: Crystal,
    form_factors: ScatteringFactors,
    element_index: Int[Array, " site"],
    coupling_hkl: Int[Array, "coupling 3"],
    gamma: float,
) -> Complex[Array, " coupling"]:
    """U(g) [Å⁻²] on the coupling table; entry 0 must be the origin (U₀, the mean inner potential)."""
    return potential_coefficients(crystal, form_factors, element_index, coupling_hkl, gamma)


def incident_geometry(
    beam_hkl: Int[Array, "beam 3"],
    reciprocal_matrix: Float[Array, "3 3"],
    beam_direction: Float[Array, "3"],
    k_crystal: Float[Array, ""],
    surface_normal: Float[Array, "3"] | None = None,
) -> tuple[Float[Array, " beam"], Float[Array, " beam"], Float[Array, ""]]:
    """Excitation errors and surface-normal components for one incident direction.

    Args:
        beam_hkl: Miller indices of the beams.
        reciprocal_matrix: B with g = B hkl [Å⁻¹].
        beam_direction: electron propagation direction (any length; normalised here).
        k_crystal: wavenumber in the crystal K [Å⁻¹].
        surface_normal: unit entrance-surface normal pointing into the crystal (along the
            beam for normal incidence, the default).

    Returns:
        S_g = (K² − |K + g|²) / 2K [Å⁻¹], g·n̂ [Å⁻¹] and K·n̂ [Å⁻¹].
    """
    direction = beam_direction / jnp.linalg.norm(beam_direction)
    normal = direction if surface_normal is None else surface_normal
    g_cart = jnp.asarray(beam_hkl, dtype=reciprocal_matrix.dtype) @ reciprocal_matrix.T
    k_vector = k_crystal * direction
    excitation = -(2.0 * g_cart @ k_vector + jnp.sum(g_cart**2, axis=-1)) / (2.0 * k_crystal)
    return excitation, g_cart @ normal, k_vector @ normal


def orientation_amplitudes(
    u_table: Complex[Array, " coupling"],
    coupling_index: Int[Array, "beam beam"],
    beam_hkl: Int[Array, "beam 3"],
    beam_mask: Bool[Array, " beam"],
    reciprocal_matrix: Float[Array, "3 3"],
    beam_direction: Float[Array, "3"],
    wavelength: float,
    thickness: Float[Array, " thickness"],
    surface_normal: Float[Array, "3"] | None = None,
    absorption: Float[Array, ""] | None = None,
    strong_beams: int = 0,
    single_precision: bool = False,
) -> Complex[Array, "thickness beam"]:
    """Bloch-wave amplitudes ψ_g(t) of every beam at every thickness for one orientation.

    Args:
        u_table: U(g) on the coupling table [Å⁻²], entry 0 the mean inner potential U₀.
        coupling_index: index into ``u_table`` of g_i − g_j.
        beam_hkl, beam_mask: the (padded) beam set, beam 0 the incident beam.
        reciprocal_matrix: B [Å⁻¹].
        beam_direction: electron propagation direction in the crystal frame.
        wavelength: vacuum wavelength λ [Å].
        thickness: crystal thicknesses along the surface normal [Å].
        surface_normal: unit normal; default along the beam.
        absorption: κ of the proportional absorptive potential U′ = κU (None: elastic only).
        strong_beams: 0 (or ≥ the beam count) for the full matrix, else the number of beams of
            smallest |S_g| solved exactly, the others by Bethe perturbation (:mod:`edrefine.bethe`).
        single_precision: build, diagonalise and propagate the matrix in float32 / complex64
            (static); the geometry (S_g, whose 2g·K and g² nearly cancel) is computed in the
            inputs' precision first. ψ is then complex64.

    Returns:
        ψ [thickness, beam], with |ψ|² the current-normalised intensity (zero on padding).
    """
    mean_potential = jnp.real(u_table[0])
    k_crystal = crystal_wavenumber(wavelength, mean_potential)
    excitation, g_normal, k_normal = incident_geometry(
        beam_hkl, reciprocal_matrix, beam_direction, k_crystal, surface_normal
    )
    phase = bloch.thickness_phase(thickness, k_normal)
    if single_precision:
        u_table = u_table.astype(jnp.complex64 if jnp.iscomplexobj(u_table) else jnp.float32)
        excitation, g_normal, k_crystal, k_normal, phase, mean_potential = (
            x.astype(jnp.float32) for x in (excitation, g_normal, k_crystal, k_normal, phase, mean_potential))
        absorption = None if absorption is None else jnp.asarray(absorption).astype(jnp.float32)
    if 0 < strong_beams < beam_hkl.shape[0]:
        return strong_rows_propagate(u_table, coupling_index, excitation, g_normal, k_crystal, k_normal, beam_mask,
                                     phase, strong_beams, absorption)
    coupling = u_table[coupling_index]
    matrix = bloch.structure_matrix(excitation, coupling, k_crystal, g_normal, k_normal, beam_mask)
    absorptive = None if absorption is None else bloch.absorptive_matrix(
        absorption * coupling, absorption * mean_potential, g_normal, k_normal, beam_mask)
    return bloch.propagate(matrix, phase, absorption=absorptive)
