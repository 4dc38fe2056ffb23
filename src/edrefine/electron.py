"""The fast electron: relativistic wavelength, Lorentz factor and the interaction constant.

Physical constants are CODATA 2018 exact or recommended values (SI). Everything returned is in
crystallographic units: Å, Å⁻¹ with |k| = 1/λ (no 2π), keV.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jaxtyping import Array, Float

PLANCK = 6.62607015e-34
"""Planck constant h [J s] (exact, SI 2019)."""
ELECTRON_MASS = 9.1093837015e-31
"""Electron rest mass m₀ [kg] (CODATA 2018)."""
ELEMENTARY_CHARGE = 1.602176634e-19
"""Elementary charge e [C] (exact, SI 2019)."""
SPEED_OF_LIGHT = 299792458.0
"""Speed of light c [m s⁻¹] (exact)."""
REST_ENERGY_KEV = ELECTRON_MASS * SPEED_OF_LIGHT**2 / ELEMENTARY_CHARGE / 1e3
"""Electron rest energy m₀c² [keV] (≈ 510.999)."""


def wavelength(energy_kev: float) -> float:
    """Relativistic electron wavelength λ = h / sqrt(2 m₀ e E (1 + eE / 2m₀c²)).

    Args:
        energy_kev: accelerating voltage times e, E [keV]; must be positive.

    Returns:
        λ [Å]; 200 keV gives 0.025079 Å, 120 keV 0.033492 Å.
    """
    if not energy_kev > 0:
        raise ValueError(f"electron energy must be positive, got {energy_kev} keV")
    joules = energy_kev * 1e3 * ELEMENTARY_CHARGE
    momentum = math.sqrt(2 * ELECTRON_MASS * joules * (1 + joules / (2 * ELECTRON_MASS * SPEED_OF_LIGHT**2)))
    return PLANCK / momentum * 1e10


def energy_from_wavelength(wavelength_angstrom: float) -> float:
    """Inverse of :func:`wavelength`: the kinetic energy E [keV] of an electron of wavelength λ [Å]."""
    if not wavelength_angstrom > 0:
        raise ValueError(f"wavelength must be positive, got {wavelength_angstrom} Å")
    pc_kev = PLANCK * SPEED_OF_LIGHT / (wavelength_angstrom * 1e-10) / ELEMENTARY_CHARGE / 1e3
    return math.sqrt(pc_kev**2 + REST_ENERGY_KEV**2) - REST_ENERGY_KEV


def lorentz_factor(energy_kev: float) -> float:
    """γ = 1 + eE / m₀c² (dimensionless); 200 keV gives 1.3914."""
    return 1.0 + energy_kev / REST_ENERGY_KEV


def potential_from_structure_factor(
    structure_factor: Float[Array, "*g"], gamma: float, volume: Float[Array, ""] | float
) -> Float[Array, "*g"]:
    """Optical potential coefficient U_g = γ F_g / (π Ω).

    Args:
        structure_factor: electron structure factor F_g [Å] (complex or real).
        gamma: Lorentz factor γ.
        volume: unit-cell volume Ω [Å³].

    Returns:
        U_g [Å⁻²], the coefficient in the wave equation (∇² + 4π²(K² + U(r))) ψ = 0.
    """
    return gamma * structure_factor / (jnp.pi * volume)


def crystal_wavenumber(wavelength_angstrom: float, mean_potential: Float[Array, ""]) -> Float[Array, ""]:
    """Wavenumber inside the crystal K = sqrt(1/λ² + U₀) [Å⁻¹], U₀ the mean inner potential [Å⁻²]."""
    return jnp.sqrt(1.0 / wavelength_angstrom**2 + mean_potential)
