"""Standard uncertainties of structural parameters from the curvature at convergence.

With residuals r = √w (|Fo| − k|Fc|) (scales profiled out) and J = ∂r/∂p over the refined
structural parameters p (free coordinates θ, U coefficients φ, occupancies), the covariance is

    Σ_p = GoF² (Jᵀ J)⁻¹,    GoF² = Σ r² / (N_refl − N_par),

the usual least-squares estimate (Jᵀ W J with W folded into r). J is taken in forward mode
(``jax.jacfwd``, one tangent per parameter through the propagator's custom JVP). Coordinates
follow x = x₀ + Pθ, so Σ_x = P Σ_θ Pᵀ per site; U_cif = Bφ for anisotropic sites.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .cif import Uncertainties
from .loss import Problem, StructuralIndex, residual_vector
from .parameters import RefinementParameters


def structural_covariance(params: RefinementParameters, problem: Problem, index: StructuralIndex,
                          n_parameters: int | None = None) -> tuple[np.ndarray, float]:
    """(Σ_p ``[p p]``, GoF) at ``params``; GoF counts ``n_parameters`` (default: the vector size)."""
    y = index.to_vector(params.sites)

    @jax.jit
    def linearise(v):
        return residual_vector(v, params, index, problem), jax.jacfwd(lambda u: residual_vector(u, params, index, problem))(v)

    residual, jacobian = (np.asarray(a) for a in linearise(y))
    used = np.any(jacobian != 0, axis=1) | (residual != 0)
    n = int(np.sum(used))
    p = index.size if n_parameters is None else n_parameters
    gof2 = float(np.sum(residual**2) / max(n - p, 1))
    normal = jacobian.T @ jacobian
    covariance = np.linalg.pinv(normal, rcond=1e-12, hermitian=True) * gof2
    return covariance, float(np.sqrt(gof2))


def crystal_uncertainties(params: RefinementParameters, problem: Problem, index: StructuralIndex,
                          n_parameters: int | None = None) -> tuple[Uncertainties, np.ndarray, float]:
    """s.u.s of coordinates (fractional), U_cif [Å²] and occupancies for the CIF, with Σ_p and GoF."""
    covariance, gof = structural_covariance(params, problem, index, n_parameters)
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
