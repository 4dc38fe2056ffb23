"""Per-frame Gauss–Newton for the orientation corrections, with everything else held.

A frame's residuals r = √w (|Fo| − k|Fc|) depend on its own corrections (Δα, Δβ, Δω) and on
no other frame's, so the orientation block of JᵀJ is block-diagonal: one 3 × 3 matrix per
frame. Three forward-mode tangents (one per component, set in every frame at once) give all
of them for about three forward passes, and every frame's step follows from its own 3 × 3
solve. This is the frame-orientation optimisation of traditional dynamical refinement, run
between the joint first-order steps of the other groups (``orientation_solver =
"gauss-newton"``): it moves well-determined corrections to their conditional optimum in a few
calls, and does not dither around it as a per-parameter Adam step does.

Each call is one trust-region Gauss–Newton iteration per frame: the step minimises the
quadratic model of the frame's χ² (A = JᵀJ, b = Jᵀr) within a radius of :data:`TRUST_RADIUS`
[rad] (:func:`trust_region_steps`) and is kept only where the frame's χ² falls; frames whose χ²
rose try again with a radius four times smaller, and frames whose kept step reached the radius
try the same model's step at twice the radius (up to :data:`LARGEST_RADIUS`), kept if χ² falls
further; up to :data:`TRIALS` forward passes, each over the frames still trying only. Frame scales stay profiled
out inside the residuals. No state is carried between calls, so a resumed run repeats them
exactly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .loss import Problem
from .objective import chunk_evaluation, evaluate_frames
from .parameters import RefinementParameters

TRUST_RADIUS = np.deg2rad(0.1)
"""Largest orientation step of one call [rad] (0.1°, about a rocking-curve width at 200 kV)."""

LARGEST_RADIUS = np.deg2rad(0.4)
"""Largest step one call may reach by doubling the radius [rad]."""

TRIALS = 4
"""Forward passes (χ² of the frames still trying) per call at most."""


@eqx.filter_jit
def chunk_orientation_equations(params: RefinementParameters, d: int, frames, crystal, context, constants):
    """Per slot of a chunk of frames: (JᵀJ [slot 3 3], Jᵀr [slot 3], χ² [slot]) in the corrections."""
    dataset = params.datasets[d]
    start = dataset.orientation[frames.index]

    def residuals(deltas):
        # padded slots repeat a real frame with the same value and tangent, so the duplicate set is exact
        moved = eqx.tree_at(lambda x: x.orientation, dataset, dataset.orientation.at[frames.index].set(deltas))
        e = evaluate_frames(params.sites, params.absorption, moved, frames, crystal, context, constants, remat=False)
        mask = frames.refl_mask & frames.frame_mask[:, None]
        return jnp.where(mask, jnp.sqrt(frames.weight) * (frames.fo - e.fc), 0.0)

    basis = jnp.broadcast_to(jnp.eye(3, dtype=start.dtype)[:, None, :], (3, *start.shape))
    r, jacobian = jax.vmap(lambda t: jax.jvp(residuals, (start,), (t,)), out_axes=(None, 0))(basis)
    normal = jnp.einsum("kfr,lfr->fkl", jacobian, jacobian)
    gradient = jnp.einsum("kfr,fr->fk", jacobian, r)
    return normal, gradient, jnp.sum(r**2, axis=1)


def _row_chunks(problem: Problem, d: int, rows: np.ndarray, chunk: int):
    """(positions in ``rows``, frame arrays) of each chunk of dataset ``d``'s rows ``rows``."""
    position = {int(r): i for i, r in enumerate(rows)}
    for part, frames in problem.datasets[d].frames.chunks(rows, problem.chunk_size(chunk), problem.devices):
        yield np.array([position[int(r)] for r in part], dtype=np.int64), frames


def frame_chi2(params: RefinementParameters, problem: Problem, d: int, rows: np.ndarray, chunk: int) -> np.ndarray:
    """χ² of each frame row in ``rows`` of dataset ``d`` (forward only), in the order of ``rows``."""
    constants, out = problem.datasets[d].constants, np.zeros(len(rows))
    for at, frames in _row_chunks(problem, d, rows, chunk):
        e = chunk_evaluation(params, d, frames, problem.crystal, problem.context, constants, problem.mesh)
        out[at] = np.asarray(e.chi2)[: len(at)]
    return out


def orientation_normal_equations(params: RefinementParameters, problem: Problem, d: int, rows: np.ndarray,
                                 chunk: int):
    """(A [row 3 3], b [row 3], χ² [row]) of dataset ``d``'s frame rows ``rows`` (host numpy)."""
    constants = problem.datasets[d].constants
    normal, gradient, chi2 = np.zeros((len(rows), 3, 3)), np.zeros((len(rows), 3)), np.zeros(len(rows))
    for at, frames in _row_chunks(problem, d, rows, chunk):
        a, b, c = chunk_orientation_equations(params, d, frames, problem.crystal, problem.context, constants)
        normal[at], gradient[at], chi2[at] = (np.asarray(x)[: len(at)] for x in (a, b, c))
    return normal, gradient, chi2


def trust_region_steps(normal: np.ndarray, gradient: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """δ [row 3] minimising the model χ² + 2bᵀδ + δᵀAδ of each row within |δ| ≤ ``radius`` [rad].

    Inside the radius this is the Gauss–Newton step; otherwise δ = −(A + λI)⁻¹ b with the λ ≥ 0 that
    puts it on the boundary (found by bisection in log λ), which turns towards the gradient and away
    from weakly determined directions (a rotation about the beam is one) as the radius shrinks.
    """
    values, vectors = np.linalg.eigh(normal)
    values = np.maximum(values, 1e-12 * np.maximum(values[:, -1:], 1e-300))
    projected = np.einsum("fkl,fk->fl", vectors, gradient)

    def length(damping):
        return np.linalg.norm(projected / (values + damping[:, None]), axis=1)

    blind = normal.reshape(len(normal), -1).max(axis=1, initial=0.0) <= 0  # no reflections: no step
    low = np.zeros(len(normal))
    outside = length(low) > radius
    high = np.where(outside, np.linalg.norm(gradient, axis=1) / np.maximum(radius, 1e-300), 0.0)
    low = np.where(outside, high * 1e-12, 0.0)
    for _ in range(100):
        middle = np.sqrt(np.maximum(low, 1e-300) * np.maximum(high, 1e-300))
        longer = length(middle) > radius
        low, high = np.where(outside & longer, middle, low), np.where(outside & ~longer, middle, high)
    damping = np.where(outside, high, 0.0)
    delta = -np.einsum("fkl,fl->fk", vectors, projected / (values + damping[:, None]))
    return np.where(blind[:, None], 0.0, delta)


def orientation_step(params: RefinementParameters, problem: Problem, rows: list[np.ndarray], chunk: int,
                     sigma: float | None = None) -> tuple[RefinementParameters, dict]:
    """One trust-region Gauss–Newton iteration on every frame's corrections in ``rows`` (per dataset).

    ``sigma`` [deg]: each correction is restrained to zero with this standard deviation (a term
    Σ (Δ/σ)² added to each frame's χ²; None: no restraint). It holds the corrections the data do
    not determine, above all the rotation about the beam, and barely biases the others.

    Returns the new parameters and a record: the objective (χ² plus restraint) of those frames
    before and after, how many frames moved, and the largest step [deg].
    """
    weight = 0.0 if sigma is None else 1.0 / np.deg2rad(sigma) ** 2
    before_total, after_total, moved, largest = 0.0, 0.0, 0, 0.0
    for d, dataset_rows in enumerate(rows):
        if len(dataset_rows) == 0:
            continue
        normal, gradient, chi2 = orientation_normal_equations(params, problem, d, dataset_rows, chunk)
        if not (np.all(np.isfinite(normal)) and np.all(np.isfinite(gradient)) and np.all(np.isfinite(chi2))):
            raise FloatingPointError(f"non-finite orientation normal equations in dataset {d}")
        # corrections are stored per frame of the file; rows skip the frames without reflections
        slots = np.asarray(problem.datasets[d].frames.index)[dataset_rows]
        start = np.asarray(params.datasets[d].orientation)
        current = start.copy()
        normal = normal + weight * np.eye(3)
        gradient = gradient + weight * start[slots]
        chi2 = chi2 + weight * np.sum(start[slots] ** 2, axis=1)
        best = chi2.copy()
        radius = np.full(len(dataset_rows), TRUST_RADIUS)
        pending = np.ones(len(dataset_rows), dtype=bool)  # no step kept yet
        growing = np.zeros(len(dataset_rows), dtype=bool)  # kept a step on the radius: try a longer one
        for _ in range(TRIALS):
            trying = pending | growing
            delta = trust_region_steps(normal, gradient, radius)
            trial = current.copy()
            trial[slots[trying]] = start[slots[trying]] + delta[trying]
            candidate = _with_orientation(params, d, trial)
            new = np.full(len(dataset_rows), np.inf)
            new[trying] = (frame_chi2(candidate, problem, d, dataset_rows[trying], chunk)
                           + weight * np.sum(trial[slots[trying]] ** 2, axis=1))
            better = trying & np.isfinite(new) & (new < best)
            current[slots[better]] = trial[slots[better]]
            best = np.where(better, new, best)
            on_radius = np.linalg.norm(delta, axis=1) >= (1 - 1e-6) * radius
            growing = better & on_radius & (radius < LARGEST_RADIUS)
            pending &= ~better
            radius = np.where(pending, radius / 4.0, np.where(growing, np.minimum(2 * radius, LARGEST_RADIUS), radius))
            if not (pending | growing).any():
                break
        params = _with_orientation(params, d, current)
        before_total += float(chi2.sum())
        after_total += float(best.sum())
        moved += int((~pending).sum())
        step = np.linalg.norm(current[slots] - start[slots], axis=1)
        largest = max(largest, float(np.rad2deg(step.max(initial=0.0))))
    record = {"chi2_before": before_total, "chi2_after": after_total, "frames_moved": moved,
              "largest_step_deg": largest}
    return params, record


def _with_orientation(params: RefinementParameters, d: int, orientation: np.ndarray) -> RefinementParameters:
    old = params.datasets[d].orientation
    return eqx.tree_at(lambda p: p.datasets[d].orientation, params, jnp.asarray(orientation, dtype=old.dtype))
