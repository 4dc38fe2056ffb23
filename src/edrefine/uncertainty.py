"""Standard uncertainties of structural parameters from the curvature at convergence.

With residuals r = √w (|Fo| − k|Fc|) (scales profiled out) and J = ∂r/∂p over the refined
structural parameters p (free coordinates θ, U coefficients φ, occupancies), the covariance is

    Σ_p = GoF² (Jᵀ J)⁻¹,    GoF² = Σ r² / (N_refl − N_par),

the usual least-squares estimate (Jᵀ W J with W folded into r). J is taken in forward mode
(one tangent per parameter through the propagator's custom JVP), chunk by chunk of frames, and
only JᵀJ and χ² are kept (:func:`edrefine.least_squares.normal_equations`). Coordinates
follow x = x₀ + Pθ, so Σ_x = P Σ_θ Pᵀ per site; U_cif = Bφ for anisotropic sites.

One tangent costs about one forward pass, so for a large Bethe calculation J may come from a
cheaper one (:func:`jacobian_problem`: fewer strong beams per orientation) while GoF² keeps the
χ² of the refined calculation; the change this makes to the s.u.s is measured in
docs/refinement.md ("Standard uncertainties").

Marginal s.u.s (the default of a refinement): the other refined quantities move with the
structure, so the structural covariance is the structural block of the inverse of the whole
normal matrix, not the inverse of its structural block (which is smaller, the s.u.s
conditional on everything else held fixed). Global parameters (κ; a constant or plate thickness
model) join the dense vector. Per-frame ones are eliminated frame by frame: frame f's residuals
depend only on its own orientation corrections (Δα, Δβ, Δω) and thickness, so one tangent per
direction, applied to every frame at once, gives every frame's block E_f, and

    Jᵀ J → A − Σ_f B_f D_f⁺ B_fᵀ,    A = JₛᵀJₛ, B_f = JₛᵀE_f, D_f = E_fᵀE_f,

the Schur complement (:func:`edrefine.least_squares.chunk_normal_equations`; exact for the
orientation corrections and a per-frame thickness; a neural
thickness model enters as one scale of each frame's thickness distribution, the direction in
which its frames' thicknesses are least constrained by its shared weights).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .cif import Uncertainties
from .learned_thickness import ConstantThickness, PlateThickness
from .least_squares import Layout, normal_equations
from .loss import Problem, StructuralIndex
from .parameters import RefinementParameters, group_labels
from .restraints import restraint_residuals


def observation_count(problem: Problem) -> int:
    """Residuals of the refinement: the real reflections of every dataset plus the restraints."""
    count = 0
    for dataset in problem.datasets:
        frames = dataset.frames
        count += int(np.sum(np.asarray(frames.refl_mask) & np.asarray(frames.frame_mask)[:, None]))
    if problem.restraints is not None:
        count += int(np.size(restraint_residuals(problem.crystal, problem.restraints)))
    return count


def jacobian_problem(problem: Problem, strong_beams: int) -> Problem:
    """``problem`` with every dataset's orientations solved with at most ``strong_beams`` strong
    beams (the rest by Bethe perturbation); datasets that already solve fewer (kinematical,
    smaller beam sets, a smaller reduction) and ``strong_beams = 0`` leave it unchanged."""
    def solved(dataset) -> int:
        capacity = dataset.frames.capacity
        return dataset.constants.strong_beams if 0 < dataset.constants.strong_beams < capacity else capacity

    if strong_beams <= 0 or all(solved(d) <= strong_beams for d in problem.datasets):
        return problem
    datasets = tuple(d if solved(d) <= strong_beams else
                     dataclasses.replace(d, constants=dataclasses.replace(d.constants, strong_beams=strong_beams))
                     for d in problem.datasets)
    return dataclasses.replace(problem, datasets=datasets)


def table_chi2(table: list[dict], params: RefinementParameters, problem: Problem) -> float:
    """χ² = Σ w (|Fo| − k|Fc|)² of :func:`edrefine.summary.frame_table` rows plus the restraints."""
    chi2 = sum(float(np.sum(row["weight"] * (row["fo"] - row["fc"]) ** 2)) for row in table)
    if problem.restraints is not None:
        r = restraint_residuals(problem.crystal.with_params(params.sites), problem.restraints)
        chi2 += float(jnp.sum(r**2))
    return chi2


ORIENTATION_DIRECTIONS = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0))
THICKNESS_DIRECTION = ((0.0, 0.0, 0.0, 1.0),)
"""Rows over a frame's offsets (Δα, Δβ, Δω, ln-thickness scale) of
:func:`edrefine.objective.evaluate_frames`."""


class Nuisances(eqx.Module):
    """What the structural s.u.s are marginal over: ``layout``, the structural entries followed
    by the refined global parameters (dense); ``directions``, per dataset, the rows of each
    frame's own offsets (empty: none)."""

    layout: Layout
    directions: tuple[tuple[tuple[float, ...], ...], ...] = eqx.field(static=True)

    def tangents(self, params: RefinementParameters) -> int:
        """Tangents of one chunk's Jacobian: the dense vector and the widest set of frame directions."""
        return self.layout.size(params) + max((len(d) for d in self.directions), default=0)


def nuisances_of(params: RefinementParameters, crystal, index: StructuralIndex, refine: tuple[str, ...]) -> Nuisances:
    """The refined non-structural groups of ``refine`` as :class:`Nuisances`: κ and a constant or
    plate thickness model densely, orientation corrections and any other thickness model per frame."""
    labels = group_labels(params)

    def global_thickness(d) -> bool:
        return "thickness" in refine and isinstance(d.thickness, (ConstantThickness, PlateThickness))

    absorption = labels.absorption is not None and "absorption" in refine
    datasets = tuple(jax.tree_util.tree_map(lambda label, g=global_thickness(d): label == "thickness" and g, labels_d)
                     for d, labels_d in zip(params.datasets, labels.datasets))
    directions = tuple((ORIENTATION_DIRECTIONS if "orientation" in refine else ())
                       + (THICKNESS_DIRECTION if "thickness" in refine and not global_thickness(d) else ())
                       for d in params.datasets)
    return Nuisances(Layout(index, (absorption if labels.absorption is not None else None, datasets)), directions)


def structural_covariance(params: RefinementParameters, problem: Problem, index: StructuralIndex,
                          n_parameters: int | None = None, chunk: int = 16, block: int = 32,
                          chi2: float | None = None, nuisances: Nuisances | None = None) -> tuple[np.ndarray, float]:
    """(Σ_p ``[p p]``, GoF) at ``params``; GoF counts ``n_parameters`` (default: the vector size).

    JᵀJ and χ² are summed chunk by chunk of ``chunk`` frames with ``block`` tangents at a time
    (:func:`edrefine.least_squares.normal_equations`), so memory stays that of a refinement step.
    ``chi2``: the χ² of the refined calculation when ``problem`` is a cheaper one for J
    (:func:`jacobian_problem`); None: the χ² of ``problem``. ``nuisances``: the s.u.s are
    marginal over these (:func:`nuisances_of`; None: conditional on everything but ``index``)."""
    if nuisances is None:
        layout, directions = Layout(index, Layout.of(params, problem.crystal, ()).others), None
    else:
        layout, directions = nuisances.layout, nuisances.directions
    normal, _, own_chi2 = normal_equations(params, problem, layout, problem.chunk_size(chunk), block, directions)
    chi2 = own_chi2 if chi2 is None else chi2
    p = (index.size if nuisances is None else nuisances.layout.size(params)) if n_parameters is None else n_parameters
    gof = restrained_gof(chi2, problem, p)
    covariance = np.linalg.pinv(normal, rcond=1e-12, hermitian=True)[:index.size, :index.size] * gof**2
    return covariance, gof


def restrained_gof(chi2: float, problem: Problem, n_parameters: int) -> float:
    """√(χ² / (N_refl + N_restr − N_par)) with χ² over the reflections and the restraints (NaN when
    the parameters are not outnumbered): the GoF that scales the s.u.s. Without restraints it is
    the GoF of :func:`edrefine.merit.summarise`."""
    n = observation_count(problem)
    return float(np.sqrt(chi2 / (n - n_parameters))) if n > n_parameters else math.nan


def crystal_uncertainties(params: RefinementParameters, problem: Problem, index: StructuralIndex,
                          n_parameters: int | None = None, chunk: int = 16, block: int = 32,
                          chi2: float | None = None, nuisances: Nuisances | None = None
                          ) -> tuple[Uncertainties, np.ndarray, float]:
    """s.u.s of coordinates (fractional), U_cif [Å²] and occupancies for the CIF, with Σ_p and GoF
    (arguments as :func:`structural_covariance`)."""
    covariance, gof = structural_covariance(params, problem, index, n_parameters, chunk, block, chi2, nuisances)
    crystal = problem.crystal
    sites = len(crystal.labels)
    position_basis = np.asarray(crystal.position_basis)
    u_basis = np.asarray(crystal.u_basis)
    position_su = np.full((sites, 3), np.nan)
    u_su = np.full((sites, 6), np.nan)
    occupancy_su = np.full(sites, np.nan)
    offsets = {"pos": 0, "adp": len(index.positions), "occ": len(index.positions) + len(index.adp)}
    for s in range(sites):
        columns = [i for i, (site, _) in enumerate(index.positions) if site == s]
        if columns:
            p = position_basis[s][:, [index.positions[i][1] for i in columns]]
            cov = covariance[np.ix_(columns, columns)]
            position_su[s] = np.sqrt(np.maximum(np.diag(p @ cov @ p.T), 0.0))
        columns = [offsets["adp"] + i for i, (site, _) in enumerate(index.adp) if site == s]
        if columns:
            cov = covariance[np.ix_(columns, columns)]
            if crystal.anisotropic[s]:
                b = u_basis[s][:, [index.adp[i - offsets["adp"]][1] for i in columns]]
                u_su[s] = np.sqrt(np.maximum(np.diag(b @ cov @ b.T), 0.0))
            else:
                u_su[s, 0] = float(np.sqrt(max(cov[0, 0], 0.0)))
        for i, site in enumerate(index.occupancy):
            if site == s:
                j = offsets["occ"] + i
                occupancy_su[s] = float(np.sqrt(max(covariance[j, j], 0.0)))
    position_su[position_su == 0] = np.nan
    u_su[u_su == 0] = np.nan
    return Uncertainties(jnp.full(6, np.nan), position_su, u_su, occupancy_su), covariance, gof
