"""Score a crystal model against a continuous-rotation PETS2 dataset (host-side orchestration).

Steps: frame orientations M_i (UB geometry) and the goniometer axis; per frame, the measured
reflections kept by the Jana2020 rule (:mod:`edrefine.selection`); beam sets = union over the
frame's tilts plus the kept reflections (:mod:`edrefine.measurement`); U(g) once on the shared
coupling table (crystal cell); integrated intensities on the whole thickness grid from one
eigendecomposition per tilt; per frame the thickness with the lowest weighted residual (its
own closed-form scale); figures of merit (:mod:`edrefine.merit`).
"""

from __future__ import annotations

from collections.abc import Callable

import time

import jax.numpy as jnp
import numpy as np

from . import measurement, merit, selection
from .beams import centring_vectors, lattice_points
from .crystal import Crystal
from .diffraction import crystal_potential
from .electron import crystal_wavenumber, energy_from_wavelength, lorentz_factor
from .errors import InputError
from .frames import frame_orientations, rotation_axis
from .pets import PetsData
from .structure_factor import form_factors_for, site_element_index


THICKNESS_GRID = np.arange(50.0, 2001.0, 25.0)
"""Default thickness grid [Å] of the per-frame thickness search."""


def _settings(**kwargs) -> dict:
    grid = kwargs["thickness_grid"]
    kwargs["thickness_grid"] = [float(t) for t in np.atleast_1d(grid)]
    return kwargs


def score_dataset(
    crystal: Crystal,
    data: PetsData,
    *,
    g_max: float = 2.0,
    sg_max: float = 0.01,
    tilts: int = 42,
    tilt_rule: str = "midpoint",
    rsg: float = 0.9,
    dsg: float = 0.0015,
    sweep: str = "half",
    thickness_search: bool = True,
    thickness_grid: np.ndarray | float = THICKNESS_GRID,
    form_factors: str = "lobato",
    absorption: float | None = None,
    frames: np.ndarray | None = None,
    details: bool = False,
    integration_half_width: float | None = None,
    geometry: str = "rotation",
    precession_steps: int = 24,
    mosaicity: float | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    strong_beams: int | None = 0,
    tilt_segments: int = 1,
) -> dict:
    """R(obs), wR(all), GoF (global, Jana form) and per-frame means (published form).

    Args:
        crystal: the model (its cell is used for structure factors only).
        data: the PETS2 dataset; geometry from its UB and frame angles.
        g_max: beam and reflection resolution limit [Å⁻¹]; sg_max: beam selection [Å⁻¹].
        tilts, tilt_rule: quadrature over ±half-width (:func:`measurement.tilt_rule`).
        rsg, dsg, sweep: the reflection-selection rule (:mod:`edrefine.selection`).
        thickness_search: pick per frame the grid thickness with the lowest weighted residual;
            otherwise ``thickness_grid`` must hold one value used by all frames.
        thickness_grid: thicknesses [Å].
        form_factors: "lobato", "kirkland" or "peng".
        absorption: κ of a proportional absorptive potential (None: elastic).
        frames: indices (file order) of a subset of frames; default all.
        integration_half_width: tilt range ± this [deg] instead of the file's half-width
            (the selection rule keeps the file's).
        geometry: "rotation" (continuous rotation, the default) or "precession": every frame is
            a precession cone of half-angle = the file's ``precession_angle`` column (for a
            precession file; :func:`measurement.precession_orientations`) sampled at
            ``precession_steps`` azimuths; "file" takes it from the measurement details.
        mosaicity: Gaussian mosaic spread σ [deg] about the goniometer axis
            (:func:`measurement.mosaic_rule`), "file" for the file's ``mosaicity``; None: off.
            With rotation it needs ``tilt_rule="midpoint"`` and adds ⌈3σ/Δ⌉ tilts per side.
        details: add per frame ``rows`` (reflection indices into ``data.reflections``),
            ``fo``, ``fc`` (scaled), ``weight`` and ``observed`` arrays.
        progress: called as ``progress(done, total)`` after each frame is integrated.
        strong_beams: beams per orientation solved exactly, the rest by Bethe perturbation
            (:mod:`edrefine.bethe`); 0 for the full matrix; None: automatic
            (:func:`edrefine.bethe.solved_strong_beams`).
        tilt_segments: consecutive parts of each frame's tilts with a beam set of their own
            (:func:`measurement.segment_beam_sets`; continuous rotation without mosaic spread).

    Returns:
        dict with R_obs, wR_all, GoF, R_obs_frame_mean, wR_frame_mean, n_obs, n_all, seconds,
        frames (per-frame dicts: id, thickness, scale, R_obs, wR, n_obs, n_all), settings.
    """
    start = time.perf_counter()
    settings = _settings(g_max=g_max, sg_max=sg_max, tilts=tilts, tilt_rule=tilt_rule, rsg=rsg, dsg=dsg,
                         sweep=sweep, thickness_search=thickness_search, thickness_grid=thickness_grid,
                         form_factors=form_factors, absorption=absorption,
                         integration_half_width=integration_half_width, geometry=geometry,
                         precession_steps=precession_steps, mosaicity=mosaicity)
    grid = np.atleast_1d(np.asarray(thickness_grid, dtype=np.float64))
    if not thickness_search and grid.size != 1:
        raise InputError("without thickness search give exactly one thickness", source="thickness_grid")
    index = np.arange(len(data.frames.id)) if frames is None else np.asarray(frames)
    factors = form_factors_for(crystal, form_factors)
    element_index = jnp.asarray(site_element_index(crystal, factors))
    gamma = lorentz_factor(energy_from_wavelength(data.wavelength))
    u0 = crystal_potential(crystal, factors, element_index, jnp.zeros((1, 3), dtype=jnp.int32), gamma)[0]
    k_crystal = float(crystal_wavenumber(data.wavelength, jnp.real(u0)))

    orientations = np.asarray(frame_orientations(data))[index]
    axis = np.asarray(rotation_axis(data))
    half_widths = np.deg2rad(np.asarray(data.frames.half_width, dtype=np.float64))[index]
    integration = half_widths if integration_half_width is None else np.full_like(
        half_widths, np.deg2rad(integration_half_width))
    precession, sigma = _measurement_mode(data, geometry, mosaicity)
    if precession:
        nodes, weights = _precession_stacks(orientations, axis, half_widths, precession_steps, sigma)
        chosen = _select(data, index, orientations, np.array([0.0, 0.0, 1.0]), half_widths, k_crystal, rsg=rsg,
                         dsg=dsg, g_max=g_max, sweep=sweep)
    else:
        nodes, weights = _rotation_quadrature(tilts, tilt_rule, integration, sigma)
        chosen = _select(data, index, orientations, axis, half_widths, k_crystal, rsg=rsg, dsg=dsg, g_max=g_max,
                         sweep=sweep)

    candidates = lattice_points(np.asarray(data.ub), g_max, centring_vectors(crystal.symops))
    report = None if progress is None else lambda done: progress(done, len(index))
    required = [data.reflections.hkl[rows] for rows in chosen]
    if precession:
        if tilt_segments > 1:
            raise InputError("tilt segments need the rotation geometry", source="tilt_segments")
        beam_sets = measurement.orientation_beam_sets(candidates, nodes, k_crystal, sg_max, required=required)
        u_table = crystal_potential(crystal, factors, element_index, jnp.asarray(beam_sets.coupling_hkl), gamma)
        intensity = measurement.integrate_orientations(u_table, beam_sets, nodes, weights, data.wavelength, grid,
                                                       absorption, report, strong_beams)
        table = [
            _frame_row(data, int(data.frames.id[f]), rows, beam_sets.hkl[i, : beam_sets.counts[i]], intensity[i],
                       grid, details)
            for i, (f, rows) in enumerate(zip(index, chosen))
        ]
        beam_counts = [int(c) for c in beam_sets.counts]
    else:
        if tilt_segments > 1 and sigma > 0:
            raise InputError("tilt segments need the rotation geometry without mosaic spread", source="tilt_segments")
        table, beam_counts = _rotation_rows(data, index, chosen, required, candidates, orientations, axis, nodes,
                                            weights, k_crystal, sg_max, tilt_segments, crystal, factors, element_index,
                                            gamma, grid, absorption, report, strong_beams, details)
    result = merit.summarise(table, len(table) * (2 if thickness_search else 1))
    for row in table:
        row.pop("sums")
    result.update(seconds=time.perf_counter() - start, frames=table, settings=settings,
                  beams_per_frame=beam_counts)
    return result


def _rotation_rows(data, index, chosen, required, candidates, orientations, axis, nodes, weights, k_crystal, sg_max,
                   segments, crystal, factors, element_index, gamma, grid, absorption, report, strong_beams,
                   details) -> tuple[list[dict], list[int]]:
    """Per-frame rows (:func:`_frame_row`) of continuous rotation, every frame segment solved with
    its own beam set (one segment: the whole frame), and the beam count of every frame's largest
    segment."""
    tilts, tilt_weights = measurement.split_tilts(nodes, weights, segments)
    beam_sets = measurement.segment_beam_sets(candidates, orientations, axis, tilts, k_crystal, sg_max, required)
    u_table = crystal_potential(crystal, factors, element_index, jnp.asarray(beam_sets.coupling_hkl), gamma)
    n = len(index)
    segment_report = None if report is None else lambda done: report(done // segments)
    intensity = measurement.integrate_frames(
        u_table, beam_sets, np.repeat(orientations, segments, axis=0), axis, tilts.reshape(n * segments, -1),
        tilt_weights.reshape(n * segments, -1), data.wavelength, grid, absorption, segment_report, strong_beams)
    table = []
    for i, (f, rows) in enumerate(zip(index, chosen)):
        hkl = data.reflections.hkl[rows]
        per_reflection = np.zeros((len(grid), len(rows)))
        for r in range(i * segments, (i + 1) * segments):
            where = measurement.lookup_beams(beam_sets.hkl[r, : beam_sets.counts[r]], hkl)
            per_reflection += np.where(where >= 0, intensity[r][:, np.maximum(where, 0)], 0.0)
        table.append(_frame_row(data, int(data.frames.id[f]), rows, hkl, per_reflection, grid, details))
    return table, [int(c) for c in beam_sets.counts.reshape(n, segments).max(axis=1)]


def _measurement_mode(data: PetsData, geometry: str, mosaicity: float | str | None) -> tuple[bool, float]:
    """(precession?, mosaic σ [rad]) from the options, "file" reading the measurement details."""
    if geometry == "file":
        geometry = "precession" if "precession" in (data.measurement.geometry or "").lower() else "rotation"
    if geometry not in ("rotation", "precession"):
        raise InputError(f"geometry must be 'rotation', 'precession' or 'file', got {geometry!r}", source="geometry")
    if isinstance(mosaicity, str):
        if mosaicity != "file" or data.measurement.mosaicity is None:
            raise InputError(f"mosaicity {mosaicity!r}: give degrees, or 'file' with a mosaicity in the file",
                             source="mosaicity")
        mosaicity = data.measurement.mosaicity
    return geometry == "precession", float(np.deg2rad(mosaicity or 0.0))


def _rotation_quadrature(count: int, rule: str, half_widths: np.ndarray, sigma: float):
    """Per-frame tilt nodes and weights [frame, tilt], zero-weight padded to one length."""
    if sigma > 0 and rule != "midpoint":
        raise InputError("a mosaic spread needs tilt_rule='midpoint'", source="tilt_rule")
    rules = [measurement.mosaic_rule(count, hw, sigma) if sigma > 0 else measurement.tilt_rule(count, hw, rule)
             for hw in half_widths]
    n = max(len(r[0]) for r in rules)
    return (np.stack([np.pad(r[i], (0, n - len(r[i]))) for r in rules]) for i in (0, 1))


def _precession_stacks(orientations, axis, angles, steps: int, sigma: float):
    """Per-frame cone orientations [frame, k, 3, 3] and weights (× mosaic tilts when σ > 0)."""
    stacks, weights = [], []
    for m, phi in zip(orientations, angles):
        stack, w = measurement.precession_orientations(jnp.asarray(m), phi, steps)
        if sigma > 0:
            tilt, v = measurement.mosaic_rule(1, 0.0, sigma)
            stack, w = measurement.mosaic_orientations(stack, w, jnp.asarray(axis), jnp.asarray(tilt), jnp.asarray(v))
        stacks.append(np.asarray(stack))
        weights.append(np.asarray(w))
    return np.stack(stacks), np.stack(weights)


def _select(data, index, orientations, axis, half_widths, k_crystal, **rule) -> list[np.ndarray]:
    """Per frame, the rows of ``data.reflections`` kept by the selection rule."""
    refl = data.reflections
    chosen = []
    for i, frame_id in enumerate(data.frames.id[index]):
        rows = np.flatnonzero(refl.frame_id == frame_id)
        keep, _ = selection.select_frame_reflections(
            refl.hkl[rows], orientations[i], axis, half_widths[i], k_crystal, **rule)
        chosen.append(rows[keep])
    return chosen


def _frame_row(data, frame_id, rows, beam_hkl, intensity, grid, details) -> dict:
    """Best thickness (lowest χ² with its own closed-form scale) and figures of one frame.

    ``intensity`` is [thickness, beam] over the frame's (unpadded) ``beam_hkl``.
    """
    refl = data.reflections
    where = measurement.lookup_beams(beam_hkl, refl.hkl[rows])
    if np.any(where < 0):
        raise ValueError(f"frame {frame_id}: a selected reflection is missing from its beam set")
    fo, w = merit.amplitudes_and_weights(refl.intensity[rows], refl.sigma[rows])
    fc = np.sqrt(np.maximum(intensity[:, where], 0.0))
    chi2, scales = merit.weighted_residual(fo[None, :], fc, w[None, :], axis=-1)
    best = int(np.argmin(chi2)) if len(rows) else 0
    obs = selection.observed(refl.intensity[rows], refl.sigma[rows])
    row = {"id": frame_id, "thickness": float(grid[best]), "scale": float(scales[best]),
           **merit.frame_figures(fo, scales[best] * fc[best], w, obs)}
    if details:
        row.update(rows=rows, fo=fo, fc=scales[best] * fc[best], weight=w, observed=obs)
    return row
