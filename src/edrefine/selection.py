"""Which measured reflections of a continuous-rotation frame enter the fit.

The rule of Jana2020 for continuous-rotation data (Klar et al. 2023, Nat. Chem. 15, 848;
Palatinus et al. 2015 for its precession form): at the frame centre, a reflection g sweeps an
excitation-error range

    ΔS_g = |g_⊥axis| · Δφ,       g_⊥axis = g − (g·â) â,

while the crystal turns by Δφ about the goniometer axis â (dS_g/dφ = |g_⊥axis| to first order
for g near the Ewald sphere). It is kept if

    |S_g| / ΔS_g < RSg     and     ΔS_g − |S_g| > DSg.

Δφ is the frame's **half-width** (``sweep="half"``, default): with the ±half-width
integration, |S_g| < ΔS_g means the Bragg condition is crossed inside the frame, and RSg < 1
keeps only such reflections. ``sweep="full"`` (Δφ = 2 × half-width) is kept for comparison:
on the quartz data it admits reflections with |S_g| up to 1.8 × the half-width sweep, which are
measured 2–3× stronger in |F| than a ±half-width integration gives, and R(obs) rises from ~6 %
to ~25 % (docs/measurement.md). Everything here is host-side numpy.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float

from .beams import excitation_errors
from .errors import InputError


def swept_range(
    g_lab: Float[np.ndarray, "refl 3"], axis: Float[np.ndarray, "3"], half_width: float, sweep: str = "half"
) -> Float[np.ndarray, " refl"]:
    """ΔS_g = |g_⊥axis| · Δφ [Å⁻¹]; Δφ = 2·half_width ("full") or half_width ("half"), [rad]."""
    if sweep not in ("full", "half"):
        raise InputError(f"sweep must be 'full' or 'half', got {sweep!r}", source="sweep")
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    g = np.asarray(g_lab, dtype=np.float64)
    perpendicular = g - np.outer(g @ a, a)
    width = 2.0 * half_width if sweep == "full" else half_width
    return np.linalg.norm(perpendicular, axis=1) * width


def excitation_rule(
    excitation_error: Float[np.ndarray, " refl"], delta_s: Float[np.ndarray, " refl"], rsg: float, dsg: float
) -> Bool[np.ndarray, " refl"]:
    """|S_g| / ΔS_g < RSg and ΔS_g − |S_g| > DSg (ΔS_g = 0 is always rejected)."""
    s = np.abs(np.asarray(excitation_error))
    d = np.asarray(delta_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d > 0, s / np.where(d > 0, d, 1.0), np.inf)
    return (ratio < rsg) & (d - s > dsg)


def select_frame_reflections(
    hkl: Float[np.ndarray, "refl 3"],
    orientation: Float[np.ndarray, "3 3"],
    axis: Float[np.ndarray, "3"],
    half_width: float,
    k_crystal: float,
    *,
    rsg: float,
    dsg: float,
    g_max: float,
    sweep: str = "half",
) -> tuple[Bool[np.ndarray, " refl"], Float[np.ndarray, " refl"]]:
    """Selection mask and centre excitation errors S_g [Å⁻¹] of one frame's reflections.

    Args:
        hkl: Miller indices of the frame's measured reflections.
        orientation: M of the frame centre (g_lab = M hkl) [Å⁻¹].
        axis: goniometer axis (lab unit vector); half_width: [rad].
        k_crystal: wavenumber K [Å⁻¹]; the incident wave vector is −K e_z.
        rsg, dsg: the rule's parameters (dimensionless, Å⁻¹); g_max: resolution limit [Å⁻¹].
    """
    g = np.asarray(hkl, dtype=np.float64) @ np.asarray(orientation).T
    s = excitation_errors(g, np.array([0.0, 0.0, -k_crystal]))
    keep = excitation_rule(s, swept_range(g, axis, half_width, sweep), rsg, dsg)
    keep &= np.linalg.norm(g, axis=1) <= g_max
    keep &= np.any(np.asarray(hkl) != 0, axis=1)
    return keep, s


def observed(intensity: Float[np.ndarray, " refl"], sigma: Float[np.ndarray, " refl"], cutoff: float = 3.0) -> Bool[np.ndarray, " refl"]:
    """I > cutoff · σ(I) (the "observed" reflections of R(obs))."""
    return np.asarray(intensity) > cutoff * np.asarray(sigma)
