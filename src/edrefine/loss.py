"""Whole-dataset losses and residual vectors built from :mod:`edrefine.objective`.

- :func:`total_loss`: the loss of every dataset as one traceable function (L-BFGS line search).
- :func:`residual_vector`: r = √w (|Fo| − k|Fc|) over every real reflection, for
  Levenberg–Marquardt and the curvature at convergence (Jᵀ W J), as a function of a flat
  vector of structural parameters (:class:`StructuralIndex`).
- :class:`Problem`: the datasets of one refinement with their shared crystal and context.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .crystal import Crystal, SiteParameters
from .objective import evaluate_frames, weighted_total
from .parameters import RefinementParameters
from .problem import DatasetProblem, StructureContext
from .restraints import DistanceRestraints, restraint_residuals


@dataclasses.dataclass(frozen=True)
class Problem:
    """A refinement problem: one crystal, its context, one or more datasets, restraints.

    ``mesh``: devices over which each chunk's frames are split in the first-order stage and the
    forward evaluations (:func:`edrefine.objective.frame_mesh`; None: one device).
    """

    crystal: Crystal
    context: StructureContext
    datasets: tuple[DatasetProblem, ...]
    restraints: DistanceRestraints | None = None
    remat: bool = True
    mesh: Mesh | None = None

    def chunk_size(self, chunk: int) -> int:
        """``chunk`` frames rounded up to a multiple of the mesh's devices."""
        devices = 1 if self.mesh is None else self.mesh.size
        return -(-chunk // devices) * devices

    @property
    def devices(self) -> int:
        """Devices a chunk of frames is split over (1 without a mesh)."""
        return 1 if self.mesh is None else self.mesh.size

    def with_constants(self, **changes) -> "Problem":
        """The problem with ``changes`` to every dataset's :class:`DatasetConstants` (how each
        orientation is solved: ``strong_beams``, ``single_precision``, ``tilt_chunk``)."""
        datasets = tuple(dataclasses.replace(d, constants=dataclasses.replace(d.constants, **changes))
                         for d in self.datasets)
        return dataclasses.replace(self, datasets=datasets)

    @property
    def denominator(self) -> float:
        """Σ w |Fo|² over every dataset."""
        return sum(weighted_total(d.frames) for d in self.datasets)


def total_loss(params: RefinementParameters, problem: Problem) -> jax.Array:
    """(Σ χ² + Σ ρ²) / Σ w|Fo|² over every frame of every dataset (traceable)."""
    total = 0.0
    for d, dataset in enumerate(problem.datasets):
        frames = jax.tree_util.tree_map(jnp.asarray, dataset.frames)
        evaluation = evaluate_frames(params.sites, params.absorption, params.datasets[d], frames, problem.crystal,
                                     problem.context, dataset.constants, problem.remat)
        total = total + jnp.sum(evaluation.chi2)
    if problem.restraints is not None:
        total = total + jnp.sum(restraint_residuals(problem.crystal.with_params(params.sites), problem.restraints) ** 2)
    return total / problem.denominator


class StructuralIndex(eqx.Module):
    """Which entries of :class:`SiteParameters` form the flat structural vector (host, static).

    ``positions``/``adp``: (site, column) pairs of the free θ and φ entries (for isotropic
    sites only U_iso); ``occupancy``: sites whose occupancy is refined.
    """

    positions: tuple[tuple[int, int], ...] = eqx.field(static=True)
    adp: tuple[tuple[int, int], ...] = eqx.field(static=True)
    occupancy: tuple[int, ...] = eqx.field(static=True)

    @classmethod
    def of(cls, crystal: Crystal, groups=("positions", "adp")) -> StructuralIndex:
        mask = crystal.parameter_mask()
        pos = tuple(map(tuple, np.argwhere(np.asarray(mask.position_free)).tolist())) if "positions" in groups else ()
        adp = tuple(map(tuple, np.argwhere(np.asarray(mask.u_free)).tolist())) if "adp" in groups else ()
        occ = tuple(range(len(crystal.labels))) if "occupancy" in groups else ()
        return cls(pos, adp, occ)

    @property
    def size(self) -> int:
        return len(self.positions) + len(self.adp) + len(self.occupancy)

    def names(self, crystal: Crystal) -> list[str]:
        return ([f"{crystal.labels[s]}.θ{k}" for s, k in self.positions]
                + [f"{crystal.labels[s]}.U{k}" for s, k in self.adp]
                + [f"{crystal.labels[s]}.occ" for s in self.occupancy])

    def to_vector(self, sites: SiteParameters) -> jax.Array:
        parts = [sites.position_free[tuple(np.array(self.positions).T)] if self.positions else jnp.zeros(0),
                 sites.u_free[tuple(np.array(self.adp).T)] if self.adp else jnp.zeros(0),
                 sites.occupancy[np.array(self.occupancy, dtype=int)] if self.occupancy else jnp.zeros(0)]
        return jnp.concatenate(parts)

    def from_vector(self, vector: jax.Array, sites: SiteParameters) -> SiteParameters:
        a, b = len(self.positions), len(self.positions) + len(self.adp)
        position, u, occupancy = sites.position_free, sites.u_free, sites.occupancy
        if self.positions:
            position = position.at[tuple(np.array(self.positions).T)].set(vector[:a])
        if self.adp:
            u = u.at[tuple(np.array(self.adp).T)].set(vector[a:b])
        if self.occupancy:
            occupancy = occupancy.at[np.array(self.occupancy, dtype=int)].set(vector[b:])
        return SiteParameters(position, u, occupancy)


def weighted_residuals(fc: jax.Array, frames) -> jax.Array:
    """√w (|Fo| − k|Fc|) of every reflection slot of a chunk, flattened (0 on padding)."""
    mask = frames.refl_mask & frames.frame_mask[:, None]
    return jnp.where(mask, jnp.sqrt(frames.weight) * (frames.fo - fc), 0.0).reshape(-1)


def residual_vector(vector, params: RefinementParameters, index: StructuralIndex, problem: Problem) -> jax.Array:
    """r = √w (|Fo| − k|Fc|) over every reflection slot (0 on padding), then the restraints."""
    sites = index.from_vector(vector, params.sites)
    parts = []
    for d, dataset in enumerate(problem.datasets):
        frames = jax.tree_util.tree_map(jnp.asarray, dataset.frames)
        evaluation = evaluate_frames(sites, params.absorption, params.datasets[d], frames, problem.crystal,
                                     problem.context, dataset.constants, problem.remat)
        parts.append(weighted_residuals(evaluation.fc, frames))
    if problem.restraints is not None:
        parts.append(restraint_residuals(problem.crystal.with_params(sites), problem.restraints))
    return jnp.concatenate(parts)
