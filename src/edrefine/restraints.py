"""Geometric restraints added to the refinement target.

A distance restraint between sites i and j pulls the shortest distance from site i to any
symmetry image of site j (any lattice translation) towards a target d₀ [Å] with standard
uncertainty σ [Å]; its residual ρ = (d − d₀)/σ enters the loss as ρ² next to the weighted
|F| residuals (the usual least-squares restraint). A riding hydrogen is restrained the same
way to its parent atom with a small σ (e.g. 0.01 Å at the X–H distance of the
electron-diffraction geometry, ~1.09 Å for C–H).

Restraints are read from the TOML configuration as ``[[restraint]]`` tables with
``atoms = ["C1", "H1"]``, ``distance = 1.09`` and ``sigma = 0.01``.
"""

from __future__ import annotations

import itertools
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .crystal import Crystal
from .errors import InputError


class DistanceRestraints(eqx.Module):
    """Pairs of site indices ``[r 2]``, target distances d₀ [Å] ``[r]`` and σ [Å] ``[r]``."""

    pairs: Int[Array, "r 2"]
    target: Float[Array, " r"]
    sigma: Float[Array, " r"]


def distance_restraints(crystal: Crystal, entries: list[dict], source: str = "restraint") -> DistanceRestraints:
    """Restraints from ``{"atoms": [a, b], "distance": d0, "sigma": s}`` entries (labels of ``crystal``)."""
    pairs, target, sigma = [], [], []
    for number, entry in enumerate(entries, start=1):
        atoms = entry.get("atoms") if isinstance(entry, dict) else None
        if not (isinstance(atoms, (list, tuple)) and len(atoms) == 2 and all(isinstance(a, str) for a in atoms)):
            raise InputError(f"restraint {number}: 'atoms' must name two sites", source=source)
        for label in atoms:
            if label not in crystal.labels:
                raise InputError(f"restraint {number}: no site '{label}' in the structure", source=source)
        d0, s = entry.get("distance"), entry.get("sigma", 0.02)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (d0, s))
        if not (numbers and d0 > 0 and s > 0):
            raise InputError(f"restraint {number}: need distance > 0 and sigma > 0 [Å]", source=source)
        pairs.append([crystal.labels.index(atoms[0]), crystal.labels.index(atoms[1])])
        target.append(float(d0))
        sigma.append(float(s))
    return DistanceRestraints(jnp.asarray(np.array(pairs, dtype=np.int32).reshape(-1, 2)), jnp.asarray(target),
                              jnp.asarray(sigma))


_SAME_POSITION = 1e-3
"""Images closer than this [Å] are the restrained site itself."""


def restraint_residuals(crystal: Crystal, restraints: DistanceRestraints) -> Float[Array, " r"]:
    """ρ = (d − d₀)/σ for every restraint, d [Å] the shortest distance from the first site to an
    image of the second (any symmetry operation and lattice translation; for a site restrained to
    itself, the nearest of its other images)."""
    atoms = crystal.expand()
    x = crystal.positions()
    i, j = restraints.pairs[:, 0], restraints.pairs[:, 1]
    diff = x[i][:, None, :] - atoms.positions[j]
    diff = diff - jnp.round(diff)
    shifts = jnp.asarray(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)), dtype=diff.dtype)
    cart = jnp.einsum("ij,rmkj->rmki", crystal.cell.orthogonalisation(), diff[:, :, None, :] + shifts[None, None])
    squared = jnp.sum(cart**2, axis=-1)
    # a site restrained to its own images: the site itself (distance 0) is not one of them
    squared = jnp.where(atoms.mask[j][:, :, None] & (squared > _SAME_POSITION**2), squared, jnp.inf)
    distance = jnp.sqrt(jnp.min(squared, axis=(1, 2)))
    return (distance - restraints.target) / restraints.sigma
