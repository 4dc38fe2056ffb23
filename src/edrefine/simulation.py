"""Simulated continuous-rotation 3D-ED datasets with known truth (host-side orchestration).

Protocol (after Malik et al. 2026, Nat. Commun., synthetic benchmarks):

1. Geometry from a template :class:`~edrefine.pets.PetsData` (UB, frame angles, half-widths,
   wavelength, rotation axis), e.g. a real file or :func:`synthetic_template`.
2. Per frame, every lattice point with |g| ≤ g_max kept by the RSg/DSg rule
   (:mod:`edrefine.selection`) at the frame centre is a reflection.
3. Integrated intensities exactly as :func:`edrefine.score.score_dataset` computes them: beam
   set = union over tilts of |S_g| ≤ sg_max plus the reflections, tilt quadrature over
   ±half-width, then the incoherent average over the frame's thickness distribution from the
   thickness model (:mod:`edrefine.thickness`).
4. One scale for the whole dataset, c = counts / max I, so the strongest reflection has
   ``counts`` expected counts; observed I ~ Poisson(c·I) from ``numpy.random.default_rng(seed)``
   (or I = c·I when ``noise=False``); σ(I) = √I; reflections with I < 1 count are dropped.
5. The result carries the true structure (``truth_sites``) and the true per-frame thickness
   distribution (``thickness_nodes``, ``thickness_weights``); every frame scale is 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from . import measurement, selection
from .beams import centring_vectors, lattice_points
from .crystal import Cell, Crystal
from .diffraction import crystal_potential
from .electron import crystal_wavenumber, energy_from_wavelength, lorentz_factor, wavelength as electron_wavelength
from .errors import InputError
from .frames import frame_orientations, orientation_matrices, rotation_axis, ub_with_cell, zone_axis_from_orientation
from .pets import Frames, Measurement, PetsData, Reflections, TruthSites
from .structure_factor import form_factors_for, site_element_index
from .thickness import ThicknessModel


def _cell_parameters(cell: Cell | Sequence[float]) -> np.ndarray:
    values = np.asarray(cell.parameters() if isinstance(cell, Cell) else cell, dtype=np.float64)
    if values.shape != (6,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"cell must be 6 positive numbers, got {values.tolist()}", source="cell")
    return values


def random_rotation(seed: int) -> np.ndarray:
    """A uniformly distributed rotation matrix (QR of a Gaussian matrix, sign-fixed, det +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    return q if np.linalg.det(q) > 0 else -q


def synthetic_template(
    cell: Cell | Sequence[float],
    *,
    energy_kev: float = 200.0,
    wavelength: float | None = None,
    alpha_range: tuple[float, float] = (-30.0, 30.0),
    step: float = 1.0,
    half_width: float | None = None,
    ub: np.ndarray | None = None,
    seed: int = 0,
    rotation_axis_position: float = 0.0,
) -> PetsData:
    """A continuous-rotation frame geometry without reflections.

    Frames at α = A, A + step, … ≤ B [deg] (``alpha_range`` = (A, B)), β = 0, ω = the rotation
    axis position p, so consecutive frames differ by a rotation about the goniometer axis
    (cos p, sin p, 0). Zone axes follow from the orientations; scales are 1.

    Args:
        cell: a, b, c [Å], α, β, γ [deg] (or a :class:`Cell`), written as the file's cell.
        energy_kev / wavelength: beam energy [keV], or λ [Å] (takes precedence).
        step: α step [deg] (> 0); half_width: frame half-width [deg], default step / 2.
        ub: UB [Å⁻¹] (g = UB hkl); default a random orientation (``seed``) with the cell's metric.
        rotation_axis_position: in-plane angle of the goniometer axis from lab x [deg].
    """
    params = _cell_parameters(cell)
    lam = float(wavelength) if wavelength is not None else electron_wavelength(float(energy_kev))
    start, stop = (float(a) for a in alpha_range)
    if not (step > 0 and stop >= start and lam > 0):
        raise InputError(f"need step > 0, alpha_range A ≤ B and λ > 0 (step {step}, range {alpha_range})",
                         source="alpha_range")
    width = step / 2.0 if half_width is None else float(half_width)
    if not width > 0:
        raise InputError(f"half-width must be positive, got {width}", source="half_width")
    alpha = start + step * np.arange(int(np.floor((stop - start) / step + 1e-9)) + 1)
    n = alpha.size
    ub = ub_with_cell(random_rotation(seed), params) if ub is None else np.asarray(ub, dtype=np.float64)
    beta, omega = np.zeros(n), np.full(n, float(rotation_axis_position))
    m = orientation_matrices(jnp.asarray(ub), *(jnp.deg2rad(jnp.asarray(a)) for a in (alpha, beta, omega)))
    zone = np.stack([np.asarray(zone_axis_from_orientation(mi)) for mi in m])
    frames = Frames(id=np.arange(1, n + 1), zone_axis=zone, half_width=np.full(n, width), alpha=alpha,
                    beta=beta, omega=omega, scale=np.ones(n))
    text = f"data collection geometry: continuous rotation\nrotation axis position: {rotation_axis_position:.4f}"
    empty = Reflections(np.zeros((0, 3), dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
    return PetsData(cell=params, wavelength=lam, ub=ub, measurement=Measurement(text), frames=frames,
                    reflections=empty)


def truth_sites(crystal: Crystal) -> TruthSites:
    """The crystal's sites as an embedded ``_atom_site`` loop (fractional x y z, occupancy, U_iso [Å²])."""
    return TruthSites(label=tuple(crystal.labels), type_symbol=tuple(crystal.elements),
                      xyz=np.asarray(crystal.positions(), dtype=np.float64),
                      occupancy=np.asarray(crystal.params.occupancy, dtype=np.float64),
                      u_iso=np.asarray(crystal.u_iso(), dtype=np.float64))


def model_intensities(
    crystal: Crystal,
    template: PetsData,
    thickness_nodes: np.ndarray,
    thickness_weights: np.ndarray,
    *,
    g_max: float,
    sg_max: float,
    tilts: int,
    tilt_rule: str,
    rsg: float,
    dsg: float,
    sweep: str,
    form_factors: str,
    absorption: float | None,
    strong_beams: int | None = 0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per frame: the selected hkl [refl, 3] and their thickness-averaged intensities (fraction of the beam)."""
    factors = form_factors_for(crystal, form_factors)
    element_index = jnp.asarray(site_element_index(crystal, factors))
    gamma = lorentz_factor(energy_from_wavelength(template.wavelength))
    u0 = crystal_potential(crystal, factors, element_index, jnp.zeros((1, 3), dtype=jnp.int32), gamma)[0]
    k_crystal = float(crystal_wavenumber(template.wavelength, jnp.real(u0)))

    orientations = np.asarray(frame_orientations(template))
    axis = np.asarray(rotation_axis(template))
    half_widths = np.deg2rad(np.asarray(template.frames.half_width, dtype=np.float64))
    nodes, weights = (np.stack(q) for q in zip(*(measurement.tilt_rule(tilts, hw, tilt_rule) for hw in half_widths)))
    candidates = lattice_points(np.asarray(template.ub), g_max, centring_vectors(crystal.symops))
    chosen = []
    for m, hw in zip(orientations, half_widths):
        keep, _ = selection.select_frame_reflections(candidates, m, axis, hw, k_crystal, rsg=rsg, dsg=dsg,
                                                     g_max=g_max, sweep=sweep)
        chosen.append(candidates[keep])
    beam_sets = measurement.frame_beam_sets(candidates, orientations, axis, list(nodes), k_crystal, sg_max,
                                            required=chosen)
    u_table = crystal_potential(crystal, factors, element_index, jnp.asarray(beam_sets.coupling_hkl), gamma)
    intensity = measurement.integrate_frames(u_table, beam_sets, orientations, axis, nodes, weights,
                                             template.wavelength, thickness_nodes, absorption,
                                             strong_beams=strong_beams)
    averaged = measurement.thickness_average(intensity, thickness_weights)
    values = [averaged[f, measurement.lookup_beams(beam_sets.hkl[f, : beam_sets.counts[f]], hkl)]
              for f, hkl in enumerate(chosen)]
    return chosen, values


def simulate_dataset(
    crystal: Crystal,
    template: PetsData,
    thickness_model: ThicknessModel,
    *,
    counts: float = 1e6,
    seed: int = 0,
    noise: bool = True,
    g_max: float = 2.0,
    sg_max: float = 0.01,
    tilts: int = 42,
    tilt_rule: str = "midpoint",
    rsg: float = 0.9,
    dsg: float = 0.0015,
    sweep: str = "half",
    form_factors: str = "lobato",
    absorption: float | None = None,
    strong_beams: int | None = 0,
) -> PetsData:
    """A simulated dataset on ``template``'s geometry with Poisson counts (see the module docstring).

    Args:
        crystal: the true structure (its cell gives the structure factors, the template's UB
            the geometry).
        template: frame geometry (UB, frames, λ, measurement details); its reflections are ignored.
        thickness_model: :mod:`edrefine.thickness` model, evaluated at the frames' α.
        counts: expected counts of the strongest reflection (> 0).
        seed: seed of ``numpy.random.default_rng``; noise: False gives the expected counts.
        g_max, sg_max, tilts, tilt_rule, rsg, dsg, sweep, form_factors, absorption, strong_beams: as in
            :func:`edrefine.score.score_dataset`.

    Returns:
        ``template`` with new reflections (I, σ = √I, I ≥ 1), frame scales 1, ``truth_sites``,
        the thickness distribution, and ``#`` comments recording the settings.
    """
    if not (np.isfinite(counts) and counts > 0):
        raise InputError(f"counts must be positive, got {counts}", source="counts")
    t_nodes, t_weights = thickness_model.distribution(template.frames.alpha)
    settings = dict(g_max=g_max, sg_max=sg_max, tilts=tilts, tilt_rule=tilt_rule, rsg=rsg, dsg=dsg, sweep=sweep,
                    form_factors=form_factors, absorption=absorption, strong_beams=strong_beams)
    hkl, values = model_intensities(crystal, template, t_nodes, t_weights, **settings)
    frame_id = np.concatenate([np.full(len(h), i) for h, i in zip(hkl, template.frames.id)]).astype(np.int64)
    hkl = np.concatenate(hkl).astype(np.int64)
    expected = np.concatenate(values)
    if expected.size == 0 or np.max(expected) <= 0:
        raise InputError("no reflection passes the selection rule; raise g_max or rsg", source="simulation")
    expected = expected * (counts / np.max(expected))
    observed = np.random.default_rng(seed).poisson(expected).astype(np.float64) if noise else expected
    keep = observed >= 1.0
    reflections = Reflections(hkl[keep], observed[keep], np.sqrt(observed[keep]), frame_id[keep])
    frames = eqx.tree_at(lambda f: f.scale, template.frames, np.ones(len(template.frames.id)))
    comment = ("# simulated by edrefine: thickness " + repr(thickness_model) + f"; counts {counts:g}; seed {seed}; "
               + ("Poisson noise" if noise else "no noise") + "; " + "; ".join(f"{k} {v}" for k, v in settings.items()))
    return dataclasses.replace(template, frames=frames, reflections=reflections, truth_sites=truth_sites(crystal),
                               thickness_nodes=t_nodes, thickness_weights=t_weights,
                               comments=template.comments + (comment,))
