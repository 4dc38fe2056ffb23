"""Levenberg–Marquardt refinement of every refined group: the second-order baseline.

Traditional dynamical refinement (Jana2020 and others) minimises χ² = Σ r² with
r = √w (|Fo| − k|Fc|) by Gauss–Newton steps on the normal equations. This module does the same
for any subset of :data:`edrefine.parameters.GROUPS`, so that it can be compared with the
first-order optimisers on the same problem:

- the parameter vector is the free structural entries (:class:`~edrefine.loss.StructuralIndex`:
  free coordinates θ, U coefficients φ, occupancies) followed by every other refined array
  (κ, orientation corrections, thickness-model values), flattened;
- the Jacobian J = ∂r/∂p is dense and taken in forward mode, one tangent per parameter
  (``jax.jvp``, tangents pushed in equal blocks of at most ``block`` so memory stays bounded),
  chunk by chunk of frames; only the normal matrix JᵀJ [p p], the gradient Jᵀr and rᵀr leave each chunk.
  One iteration therefore costs about p forward passes plus O(p³) for the solve, which is what
  the scaling study (``benchmarks/scaling.py``) measures against Adam's one gradient per step;
- each step solves (JᵀJ + λ D) δ = −Jᵀr with D = diag(JᵀJ) (Marquardt's scaling, floored so
  that parameters without influence stay put) and is accepted if χ² falls; λ follows Nielsen's
  gain-ratio rule (H. B. Nielsen, "Damping parameter in Marquardt's method", IMM-REP-1999-05).
  After every accepted step the parameters are projected onto their constraints
  (:func:`edrefine.parameters.project`).

Frame scales are profiled out inside the residuals, as in every other part of the objective.
The structural-only L–M polish after Adam (:func:`polish`) and the standard uncertainties
(:mod:`edrefine.uncertainty`) use the same chunked normal equations, with a tangent block that
fits the memory limit (:func:`tangent_plan`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .loss import Problem, StructuralIndex, weighted_residuals
from .objective import evaluate_frames
from .optimise import _close_epoch, batch_denominator, evaluate_loss
from .parameters import RefinementParameters, group_labels, project
from .problem import RUNTIME_MEMORY, frame_memory, memory_limit, resident_memory, tilt_chunks
from .restraints import restraint_residuals

STRUCTURAL = ("positions", "adp", "occupancy")


class Layout(eqx.Module):
    """Which entries of :class:`RefinementParameters` form the flat least-squares vector.

    ``index``: the free structural entries; ``others``: a boolean pytree over
    ``(absorption, datasets)`` (True: refined, flattened after the structural entries).
    """

    index: StructuralIndex
    others: object = eqx.field(static=True)

    @classmethod
    def of(cls, params: RefinementParameters, crystal, refine: tuple[str, ...]) -> Layout:
        labels = group_labels(params)
        others = jax.tree_util.tree_map(lambda label: label in refine and label not in STRUCTURAL,
                                        (labels.absorption, labels.datasets))
        return cls(StructuralIndex.of(crystal, tuple(g for g in STRUCTURAL if g in refine)), others)

    def _split(self, params: RefinementParameters):
        arrays, static = eqx.partition((params.absorption, params.datasets), eqx.is_inexact_array)
        refined, frozen = eqx.partition(arrays, self.others)
        return refined, frozen, static

    def size(self, params: RefinementParameters) -> int:
        return self.index.size + int(ravel_pytree(self._split(params)[0])[0].size)

    def to_vector(self, params: RefinementParameters) -> jax.Array:
        flat, _ = ravel_pytree(self._split(params)[0])
        return jnp.concatenate([self.index.to_vector(params.sites), flat.astype(params.sites.position_free.dtype)])

    def from_vector(self, vector: jax.Array, params: RefinementParameters) -> RefinementParameters:
        refined, frozen, static = self._split(params)
        _, unravel = ravel_pytree(refined)
        n = self.index.size
        absorption, datasets = eqx.combine(unravel(vector[n:]), frozen, static)
        return RefinementParameters(self.index.from_vector(vector[:n], params.sites), absorption, datasets)


@eqx.filter_jit
def chunk_normal_equations(vector, params, layout: Layout, d: int, frames, crystal, context, constants, block: int,
                           directions: tuple = ()):
    """(JᵀJ, Jᵀr, rᵀr) of one chunk of frames of dataset ``d`` at ``vector`` (forward mode).

    The tangents go ``block`` at a time, each block with its own primal pass (``jax.jvp`` mapped
    over the block), so the memory is that of one frame's tilts in flight times the block, not
    the linearisation of the whole chunk.

    ``directions``: rows over each frame's own offsets (Δα, Δβ, Δω, ln-thickness scale) of
    :func:`~edrefine.objective.evaluate_frames`, eliminated frame by frame. Frame f's residuals
    depend on its offsets alone, so one tangent per row, applied to every frame at once, gives
    every frame's block E_f, and JᵀJ becomes the Schur complement A − Σ_f B_f D_f⁺ B_fᵀ
    (A = JᵀJ, B_f = JᵀE_f, D_f = E_fᵀE_f): the normal matrix of ``vector`` with every frame's
    offsets free (:mod:`edrefine.uncertainty`). Jᵀr is not projected."""
    n = vector.shape[0]
    count = frames.frame_mask.shape[0]
    rows = jnp.asarray(directions, dtype=vector.dtype).reshape(len(directions), 4)

    def residuals(w):
        p = layout.from_vector(w[:n], params)
        offsets = jnp.broadcast_to(w[n:] @ rows, (count, 4)) if directions else None
        e = evaluate_frames(p.sites, p.absorption, p.datasets[d], frames, crystal, context, constants, remat=False,
                            frame_offsets=offsets)
        return weighted_residuals(e.fc, frames)

    r, jt = transposed_jacobian(residuals, jnp.concatenate([vector, jnp.zeros(len(directions), vector.dtype)]), block)
    js = jt[:n]
    normal = js @ js.T
    if directions:
        own = jt[n:].reshape(len(directions), count, -1)
        coupling = jnp.einsum("pfr,kfr->fpk", js.reshape(n, count, -1), own)
        values, vectors = jnp.linalg.eigh(jnp.einsum("kfr,lfr->fkl", own, own))
        kept = values > 1e-10 * jnp.max(values, axis=1, keepdims=True)
        inverse = jnp.where(kept, 1.0 / jnp.where(kept, values, 1.0), 0.0)
        projected = jnp.einsum("fpk,fkj->fpj", coupling, vectors)
        normal = normal - jnp.einsum("fpj,fj,fqj->pq", projected, inverse, projected)
    return normal, js @ r, r @ r


def tangent_blocks(tangents: int, block: int) -> tuple[int, int]:
    """(count, size) of the blocks that push ``tangents`` tangents at most ``block`` at a time:
    as few blocks as ``block`` allows, all of one size, so that the last one is not mostly
    padding (33 tangents at 32: two of 17, not two of 32)."""
    count = -(-tangents // max(block, 1))
    return count, -(-tangents // count)


def transposed_jacobian(residuals: Callable, vector, block: int):
    """(r, Jᵀ ``[p m]``) of ``residuals`` at ``vector`` by forward mode, at most ``block``
    tangents at a time (:func:`tangent_blocks`), each block with its own primal pass (traceable)."""
    n = vector.shape[0]
    blocks, size = tangent_blocks(n, block)
    basis = jnp.eye(blocks * size, n, dtype=vector.dtype).reshape(blocks, size, n)

    def pushed(tangents):
        return jax.vmap(lambda t: jax.jvp(residuals, (vector,), (t,)), out_axes=(None, 0))(tangents)

    if blocks == 1:
        r, jt = pushed(basis[0])
    else:
        primal, jt = jax.lax.map(pushed, basis)
        r = primal[0]
    return r, jt.reshape(blocks * size, -1)[:n]


def tangent_plan(problem: Problem, thickness_nodes: int, limit_gb: float | None, parameters: int,
                 largest: int = 32) -> tuple[Problem, int]:
    """(problem, block) for :func:`chunk_normal_equations` under the memory limit.

    All tangents in one block (up to ``largest``) need one primal pass per chunk of frames; a
    block costs about one forward+gradient working set per tangent for the tilts in flight
    (:func:`edrefine.problem.frame_memory`), so each dataset gets the largest tilt chunk at which
    the whole block fits, and only when even one tilt at a time does not is the block made
    smaller. The tilt chunk does not change the result."""
    limit = memory_limit(limit_gb)
    resident = RUNTIME_MEMORY + sum(resident_memory(d) for d in problem.datasets)
    block = max(1, min(largest, parameters))
    if limit <= 0:
        return problem, block

    def fits(d, b, c):
        return resident + b * frame_memory(d, thickness_nodes, tilt_chunk=c) <= limit

    while block > 1 and not all(fits(d, block, 1) for d in problem.datasets):
        block -= 1
    planned = []
    for d in problem.datasets:
        t = d.frames.tilts_per_segment
        chunk = next((c for c in tilt_chunks(t) if fits(d, block, c)), 1)
        planned.append(dataclasses.replace(d, constants=dataclasses.replace(d.constants,
                                                                            tilt_chunk=0 if chunk >= t else chunk)))
    return dataclasses.replace(problem, datasets=tuple(planned)), block


@eqx.filter_jit
def restraint_normal_equations(vector, params, layout: Layout, crystal, restraints):
    def residuals(v):
        return restraint_residuals(crystal.with_params(layout.from_vector(v, params).sites), restraints)

    r = residuals(vector)
    j = jax.jacfwd(residuals)(vector)
    return j.T @ j, j.T @ r, r @ r


def normal_equations(params: RefinementParameters, problem: Problem, layout: Layout, chunk: int, block: int,
                     directions: tuple | None = None):
    """(JᵀJ, Jᵀr, χ²) over every frame of every dataset and the restraints (host numpy);
    ``directions``: per dataset, each frame's offsets eliminated (:func:`chunk_normal_equations`)."""
    vector = layout.to_vector(params)
    n = int(vector.shape[0])
    normal, gradient, chi2 = np.zeros((n, n)), np.zeros(n), 0.0
    for d, dataset in enumerate(problem.datasets):
        for _, frames in dataset.frames.chunks(np.arange(dataset.frames.count), chunk):
            a, g, c = chunk_normal_equations(vector, params, layout, d, frames, problem.crystal, problem.context,
                                             dataset.constants, block, () if directions is None else directions[d])
            normal += np.asarray(a)
            gradient += np.asarray(g)
            chi2 += float(c)
    if problem.restraints is not None:
        a, g, c = restraint_normal_equations(vector, params, layout, problem.crystal, problem.restraints)
        normal += np.asarray(a)
        gradient += np.asarray(g)
        chi2 += float(c)
    return normal, gradient, chi2


def total_chi2(params: RefinementParameters, problem: Problem, chunk: int) -> float:
    """χ² over every frame and the restraints (forward only)."""
    rows = [np.arange(dataset.frames.count) for dataset in problem.datasets]
    chi2 = evaluate_loss(params, problem, rows, chunk) * batch_denominator(problem, rows)
    if problem.restraints is not None:
        r = restraint_residuals(problem.crystal.with_params(params.sites), problem.restraints)
        chi2 += float(jnp.sum(r**2))
    return chi2


def marquardt_scaling(normal: np.ndarray) -> np.ndarray:
    """D = diag(JᵀJ), floored at 1e-12 of its largest entry."""
    diagonal = np.diag(normal).copy()
    return np.maximum(diagonal, 1e-12 * max(float(np.max(diagonal, initial=0.0)), 1e-300))


def damped_step(normal: np.ndarray, gradient: np.ndarray, damping: float, scaling: np.ndarray) -> np.ndarray:
    """δ solving (JᵀJ + λ D) δ = −Jᵀr."""
    matrix = normal + damping * np.diag(scaling)
    try:
        return np.linalg.solve(matrix, -gradient)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(matrix, -gradient, rcond=None)[0]


def initial_state() -> tuple[jax.Array, jax.Array]:
    """(λ, ν) of Nielsen's rule at the start: λ = 1e-3 (relative to diag JᵀJ), ν = 2."""
    return jnp.asarray(1e-3), jnp.asarray(2.0)


def marquardt_trials(params, problem: Problem, layout: Layout, normal, gradient, chi2: float, damping: float,
                     nu: float, chunk: int, u_min: float, max_trials: int = 12):
    """Damped steps from ``params`` until one lowers χ² (Nielsen's rule for λ and ν).

    Returns ((params, χ²) of the accepted step or None, λ, ν, trial count); each trial costs one
    forward pass. The step is projected onto the constraints before its χ² is taken."""
    vector = np.asarray(layout.to_vector(params))
    scaling = marquardt_scaling(normal)
    trials = 0
    while trials < max_trials:
        trials += 1
        delta = damped_step(normal, gradient, damping, scaling)
        # χ²(δ) ≈ χ² + 2gᵀδ + δᵀAδ, so the predicted decrease is δᵀ(λDδ − g)
        predicted = float(delta @ (damping * scaling * delta - gradient))
        candidate = project(layout.from_vector(jnp.asarray(vector + delta), params), problem.crystal, u_min)
        new = total_chi2(candidate, problem, chunk)
        gain = (chi2 - new) / predicted if predicted > 0 else -1.0
        if math.isfinite(new) and new < chi2 and gain > 0:
            damping *= max(1 / 3, 1 - (2 * gain - 1) ** 3)
            return (candidate, new), damping, 2.0, trials
        damping *= nu
        nu *= 2.0
    return None, damping, nu, trials


TANGENT_COST = 0.93
"""Forward passes per tangent of :func:`chunk_normal_equations` (CsPbBr₃, N_s = 256, all 42
tilts side by side: 27 tangents in blocks of 2 cost 39 forward passes, 14 of them the blocks'
primal passes)."""


def normal_equations_seconds(forward: float, parameters: int, block: int) -> float:
    """Estimated seconds of :func:`normal_equations` from the seconds of one forward pass: a
    primal pass per block and :data:`TANGENT_COST` per tangent pushed, padding included."""
    blocks, size = tangent_blocks(parameters, block)
    return forward * blocks * (1 + TANGENT_COST * size)


def end_reserve(forward: float, parameters: int, block: int = 32, jacobian_forward: float | None = None) -> float:
    """Seconds to keep for the stages after the epochs: the final R (one forward pass) and the
    s.u.s (one :func:`normal_equations` over the structural parameters, whose calculation takes
    ``jacobian_forward`` seconds per forward pass; None: ``forward``)."""
    su_forward = forward if jacobian_forward is None else jacobian_forward
    return forward + (normal_equations_seconds(su_forward, parameters, block) if parameters else 0.0)


def polish(problem: Problem, params: RefinementParameters, settings, steps: int, block: int = 32,
           deadline: float | None = None, forward: float = 0.0):
    """Levenberg–Marquardt on the refined structural groups, the rest fixed; returns (params, info).

    The normal equations come chunk by chunk with ``block`` tangents at a time
    (:func:`normal_equations`), so the polish needs no more memory than the refinement steps.
    With a ``deadline`` (``time.perf_counter`` seconds) a step starts only if its estimate
    (``forward``: seconds of one forward pass; then the time of the last step) ends before it."""
    layout = Layout.of(params, problem.crystal, tuple(g for g in STRUCTURAL if g in settings.refine))
    if layout.size(params) == 0 or steps == 0:
        return params, {"steps": 0}
    chunk = problem.chunk_size(settings.chunk_frames)
    damping, nu = (float(x) for x in initial_state())
    before = None
    current = params
    done = 0
    estimate = normal_equations_seconds(forward, layout.size(params), block) + forward
    info = {}
    for _ in range(steps):
        if deadline is not None and time.perf_counter() + estimate > deadline:
            info["time_limit"] = True
            break
        begin = time.perf_counter()
        normal, gradient, chi2 = normal_equations(current, problem, layout, chunk, block)
        if before is None:
            before = chi2
        if not (math.isfinite(chi2) and np.all(np.isfinite(normal)) and np.all(np.isfinite(gradient))):
            break
        if done:
            chi2 = after  # as in run_least_squares: the trials compare with their own forward pass
        accepted, damping, nu, _ = marquardt_trials(current, problem, layout, normal, gradient, chi2, damping, nu,
                                                    chunk, settings.u_min)
        estimate = time.perf_counter() - begin
        if accepted is None:
            break
        done += 1
        current, after = accepted
        if (chi2 - after) <= 1e-10 * chi2:
            break
    if done == 0:
        if before is None:
            return params, info | {"steps": 0}
        return params, info | {"steps": 0, "chi2_before": before, "chi2_after": before, "rejected": True}
    return current, info | {"steps": done, "chi2_before": before, "chi2_after": after}


def run_least_squares(problem: Problem, state, settings, on_epoch: Callable | None = None, block: int = 32):
    """Levenberg–Marquardt iterations from ``state.epoch`` to ``settings.epochs`` (or convergence).

    Each iteration is one record in the history (loss after the step, λ, trial solves); the
    state's ``opt_state`` holds (λ, ν) so that a checkpointed run resumes where it stopped.
    """
    layout = Layout.of(state.params, problem.crystal, settings.refine)
    if layout.size(state.params) == 0:
        state.stopped = "Levenberg–Marquardt: nothing to refine"
        return state
    denominator = problem.denominator
    chunk = problem.chunk_size(settings.chunk_frames)
    damping, nu = (float(x) for x in (state.opt_state if state.opt_state is not None else initial_state()))
    accepted_chi2 = None
    while state.epoch < settings.epochs and not state.stopped:
        begin = time.perf_counter()
        normal, gradient, chi2 = normal_equations(state.params, problem, layout, chunk, block)
        if not (math.isfinite(chi2) and np.all(np.isfinite(normal)) and np.all(np.isfinite(gradient))):
            raise FloatingPointError(f"non-finite χ² or Jacobian at iteration {state.epoch}")
        if accepted_chi2 is not None:
            chi2 = accepted_chi2  # the trials' own forward pass: at the floor the Jacobian's primal rounds apart
        accepted, damping, nu, trials = marquardt_trials(state.params, problem, layout, normal, gradient, chi2,
                                                         damping, nu, chunk, settings.u_min)
        state.epoch += 1
        if accepted is None:
            state.stopped = (f"Levenberg–Marquardt converged at iteration {state.epoch}: no step lowers χ² "
                             f"(λ = {damping:.3g})")
            loss = chi2 / denominator
            params = state.params
        else:
            params, new = accepted
            accepted_chi2 = new
            loss = new / denominator
            if (chi2 - new) <= 1e-10 * chi2:
                state.stopped = f"Levenberg–Marquardt converged at iteration {state.epoch}: Δχ²/χ² < 1e-10"
        state.params, state.opt_state = params, (jnp.asarray(damping), jnp.asarray(nu))
        record = {"epoch": state.epoch, "loss": loss, "seconds": time.perf_counter() - begin, "lambda": damping,
                  "trials": trials}
        _close_epoch(state, record, loss, params, state.epoch, settings, on_epoch)
    if state.best_params is not None:
        state.params = state.best_params
    return state
