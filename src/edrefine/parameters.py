"""Refinable parameters as one pytree, their groups, and the projection onto their constraints.

:class:`RefinementParameters` holds everything a refinement may change:

- ``sites``: the crystal's :class:`~edrefine.crystal.SiteParameters` (free coordinates θ of
  x = x₀ + Pθ, U coefficients φ in the site-invariant basis, occupancies), so special-position
  constraints hold for every value;
- ``absorption``: κ of U′ = κU (None: elastic);
- ``datasets``: per dataset, orientation corrections (Δα, Δβ, Δω) [rad] of every frame of the
  file (Δα about the goniometer axis â, Δβ about ẑ × â, Δω about the beam axis ẑ) and a
  thickness model (:mod:`edrefine.learned_thickness`); frame scales are profiled out in the
  objective, so they are not parameters.

Raw → physical: thickness models map their raw values through bounded logistic functions
(they can never leave their bounds); the physical structure is the raw one after
:func:`project`, applied after every optimiser step: U_iso ≥ ``u_min``, anisotropic U made
positive definite (eigenvalues of U_cart raised to ``u_min``, which keeps the site symmetry
since that commutes with the eigendecomposition), occupancy in [0, 1], κ ≥ 0.

Groups (:data:`GROUPS`) label every array leaf for per-group step sizes and freezing.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .crystal import Crystal, SiteParameters
from .learned_thickness import ThicknessModel

GROUPS = ("positions", "adp", "occupancy", "absorption", "orientation", "thickness")
"""Parameter groups, each with its own step size; any subset can be frozen."""


class DatasetParameters(eqx.Module):
    """Per-dataset parameters: orientation corrections [rad] ``[frame 3]`` and a thickness model."""

    orientation: Float[Array, "frame 3"]
    thickness: ThicknessModel


class RefinementParameters(eqx.Module):
    """The whole refinable state (see the module docstring)."""

    sites: SiteParameters
    absorption: Float[Array, ""] | None
    datasets: tuple[DatasetParameters, ...]


def initial_parameters(crystal: Crystal, thickness_models, frame_counts, absorption: float | None) -> RefinementParameters:
    """Start from the crystal's values, zero orientation corrections and the given thickness models."""
    datasets = tuple(DatasetParameters(jnp.zeros((n, 3)), model) for model, n in zip(thickness_models, frame_counts))
    kappa = None if absorption is None else jnp.asarray(float(absorption), dtype=jnp.result_type(float))
    return RefinementParameters(crystal.params, kappa, datasets)


def group_labels(params: RefinementParameters):
    """A pytree like ``eqx.filter(params, eqx.is_inexact_array)`` with each leaf's group name."""
    arrays = eqx.filter(params, eqx.is_inexact_array)
    sites = SiteParameters("positions", "adp", "occupancy")
    datasets = tuple(
        DatasetParameters("orientation", jax.tree_util.tree_map(lambda _: "thickness", d.thickness))
        for d in arrays.datasets
    )
    return RefinementParameters(sites, None if params.absorption is None else "absorption", datasets)


def project(params: RefinementParameters, crystal: Crystal, u_min: float = 1e-4) -> RefinementParameters:
    """Enforce U ≥ u_min (positive definite), 0 ≤ occupancy ≤ 1 and κ ≥ 0 (pure JAX)."""
    sites = params.sites
    u_free = _project_u(crystal, sites.u_free, u_min)
    occupancy = jnp.clip(sites.occupancy, 0.0, 1.0)
    kappa = None if params.absorption is None else jnp.maximum(params.absorption, 0.0)
    return RefinementParameters(SiteParameters(sites.position_free, u_free, occupancy), kappa, params.datasets)


def _project_u(crystal: Crystal, u_free: Array, u_min: float) -> Array:
    aniso = jnp.asarray(crystal.anisotropic, dtype=bool).reshape(-1)
    iso = u_free.at[:, 0].set(jnp.maximum(u_free[:, 0], u_min))
    if not any(crystal.anisotropic):
        return jnp.where(aniso[:, None], u_free, iso)
    trial = crystal.with_params(eqx.tree_at(lambda p: p.u_free, crystal.params, u_free))
    o = crystal.cell.orthogonalisation()
    n = crystal.cell.reciprocal_lengths()
    values, vectors = jnp.linalg.eigh(trial.u_cart())
    clamped = jnp.einsum("sij,sj,skj->sik", vectors, jnp.maximum(values, u_min), vectors)
    o_inv = jnp.linalg.inv(o)
    u_frac = jnp.einsum("ij,sjk,lk->sil", o_inv, clamped, o_inv) / (n[:, None] * n[None, :])[None]
    u6 = jnp.stack([u_frac[:, i, j] for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))], axis=1)
    aniso_free = jnp.einsum("sji,sj->si", crystal.u_basis, u6)
    return jnp.where(aniso[:, None], aniso_free, iso)


def reset_u(crystal: Crystal, u_iso: float) -> Crystal:
    """The crystal with every site isotropic at U_iso [Å²] (the recovery protocol's start)."""
    from .crystal import build_crystal

    return build_crystal(crystal.cell, crystal.symops, crystal.labels, crystal.elements,
                         np.asarray(crystal.positions()), u_iso=np.full(len(crystal.labels), u_iso),
                         occupancy=np.asarray(crystal.params.occupancy))
