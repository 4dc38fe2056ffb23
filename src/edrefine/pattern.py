"""A zone-axis (or any single-orientation) dynamical diffraction pattern.

This is the engine's simplest complete use: one crystal, one incident direction, a list of
thicknesses. It is what ``edrefine pattern`` prints.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .beams import centring_vectors, lattice_points, pad_beam_sets, select_beams
from .crystal import Crystal
from .diffraction import crystal_potential, incident_geometry, orientation_amplitudes
from .electron import crystal_wavenumber, lorentz_factor, wavelength
from .errors import InputError
from .structure_factor import form_factors_for, site_element_index


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Intensities of one orientation (host-side numpy arrays).

    Attributes:
        hkl: [beam, 3] Miller indices, the incident beam first.
        g: [beam] |g| [Å⁻¹].
        excitation_error: [beam] S_g [Å⁻¹].
        thickness: [thickness] [Å].
        intensity: [thickness, beam] fraction of the incident beam.
    """

    hkl: np.ndarray
    g: np.ndarray
    excitation_error: np.ndarray
    thickness: np.ndarray
    intensity: np.ndarray

    def records(self) -> list[dict]:
        """One record per (thickness, beam) with keys h, k, l, g, sg, thickness, intensity."""
        return [
            {
                "h": int(h[0]), "k": int(h[1]), "l": int(h[2]),
                "g": float(g), "sg": float(s), "thickness": float(t), "intensity": float(i),
            }
            for t, row in zip(self.thickness, self.intensity)
            for h, g, s, i in zip(self.hkl, self.g, self.excitation_error, row)
        ]


def beam_direction_from_zone(crystal: Crystal, zone: tuple[float, float, float]) -> np.ndarray:
    """Electron propagation direction (unit, Cartesian crystal frame) for zone axis [uvw].

    The zone axis u a + v b + w c points back towards the source, as in PETS2 files and the
    usual TEM convention, so the electrons travel along −[uvw].
    """
    direct = np.asarray(crystal.cell.orthogonalisation()) @ np.asarray(zone, dtype=float)
    norm = np.linalg.norm(direct)
    if not norm > 0:
        raise InputError(f"zone axis {list(zone)} is the zero vector", source="zone")
    return -direct / norm


def simulate_pattern(
    crystal: Crystal,
    energy_kev: float,
    zone: tuple[float, float, float],
    thickness: list[float],
    g_max: float = 2.0,
    sg_max: float = 0.02,
    form_factors: str = "lobato",
    absorption: float | None = None,
) -> Pattern:
    """Dynamical intensities for the incident beam along −[uvw] at several thicknesses [Å]."""
    if any(not t >= 0 for t in thickness):
        raise InputError(f"thicknesses must be non-negative, got {thickness}", source="thickness")
    lam = wavelength(energy_kev)
    gamma = lorentz_factor(energy_kev)
    factors = form_factors_for(crystal, form_factors)
    element_index = jnp.asarray(site_element_index(crystal, factors))
    reciprocal = np.asarray(crystal.cell.reciprocal_matrix())
    mean_potential = jnp.real(crystal_potential(crystal, factors, element_index, jnp.zeros((1, 3), int), gamma)[0])
    k_crystal = float(crystal_wavenumber(lam, mean_potential))
    direction = beam_direction_from_zone(crystal, zone)
    beams = select_beams(lattice_points(reciprocal, g_max, centring_vectors(crystal.symops)), reciprocal, k_crystal * direction, sg_max)
    sets = pad_beam_sets([beams])
    u_table = crystal_potential(crystal, factors, element_index, jnp.asarray(sets.coupling_hkl), gamma)
    thickness_array = jnp.asarray(thickness, dtype=u_table.real.dtype)
    amplitudes = jax.jit(orientation_amplitudes, static_argnames=("wavelength",))(
        u_table,
        jnp.asarray(sets.coupling_index[0]),
        jnp.asarray(sets.hkl[0]),
        jnp.asarray(sets.mask[0]),
        jnp.asarray(reciprocal),
        jnp.asarray(direction),
        wavelength=lam,
        thickness=thickness_array,
        absorption=None if absorption is None else jnp.asarray(absorption),
    )
    excitation, _, _ = incident_geometry(jnp.asarray(beams), jnp.asarray(reciprocal), jnp.asarray(direction), k_crystal)
    n = len(beams)
    return Pattern(
        hkl=beams,
        g=np.linalg.norm(beams @ reciprocal.T, axis=1),
        excitation_error=np.asarray(excitation),
        thickness=np.asarray(thickness, dtype=float),
        intensity=np.abs(np.asarray(amplitudes)[:, :n]) ** 2,
    )
