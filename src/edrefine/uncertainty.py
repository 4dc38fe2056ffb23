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
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from .cif import Uncertainties
from .least_squares import Layout, normal_equations
from .loss import Problem, StructuralIndex
from .parameters import RefinementParameters
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


def structural_covariance(params: RefinementParameters, problem: Problem, index: StructuralIndex,
                          n_parameters: int | None = None, chunk: int = 16, block: int = 32,
                          chi2: float | None = None) -> tuple[np.ndarray, float]:
    """(Σ_p ``[p p]``, GoF) at ``params``; GoF counts ``n_parameters`` (default: the vector size).

    JᵀJ and χ² are summed chunk by chunk of ``chunk`` frames with ``block`` tangents at a time
    (:func:`edrefine.least_squares.normal_equations`), so memory stays that of a refinement step.
    ``chi2``: the χ² of the refined calculation when ``problem`` is a cheaper one for J
    (:func:`jacobian_problem`); None: the χ² of ``problem``."""
    layout = Layout(index, Layout.of(params, problem.crystal, ()).others)
    normal, _, own_chi2 = normal_equations(params, problem, layout, problem.chunk_size(chunk), block)
    chi2 = own_chi2 if chi2 is None else chi2
    n = observation_count(problem)
    p = index.size if n_parameters is None else n_parameters
    gof2 = float(chi2 / (n - p)) if n > p else math.nan
    covariance = np.linalg.pinv(normal, rcond=1e-12, hermitian=True) * gof2
    return covariance, float(np.sqrt(gof2))


def crystal_uncertainties(params: RefinementParameters, problem: Problem, index: StructuralIndex,
                          n_parameters: int | None = None, chunk: int = 16, block: int = 32,
                          chi2: float | None = None) -> tuple[Uncertainties, np.ndarray, float]:
    """s.u.s of coordinates (fractional), U_cif [Å²] and occupancies for the CIF, with Σ_p and GoF
    (arguments as :func:`structural_covariance`)."""
    covariance, gof = structural_covariance(params, problem, index, n_parameters, chunk, block, chi2)
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
