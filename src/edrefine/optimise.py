"""Joint gradient refinement of structure, orientations and a learned thickness distribution.

:func:`refine` runs the default recipe:

1. Per frame, a thickness search on a grid (one eigendecomposition per tilt gives every grid
   node) with the starting model; the thickness model is initialised to those values
   (:func:`edrefine.learned_thickness.make_thickness_model`).
2. First-order optimisation of every refined group jointly (:data:`~edrefine.parameters.GROUPS`):
   Adam with per-group step sizes and a schedule, optional mini-batches of frames, a
   validation split by frames, early stopping and keep-best; or L-BFGS (optax, zoom line
   search). Steps that give a non-finite loss or parameters are rolled back and the step
   size halved. Every parameter update is followed by :func:`~edrefine.parameters.project`.
3. Optional Levenberg–Marquardt polish of the structural parameters with the rest fixed
   (:func:`edrefine.least_squares.polish`: normal equations chunk by chunk, Jacobians in
   forward mode through the custom JVP of the propagator, tangents in memory-bounded blocks);
   ``optimiser=lm`` runs Levenberg–Marquardt on every refined group instead (the second-order
   baseline of traditional programs).
4. Standard uncertainties from the curvature at convergence (:mod:`edrefine.uncertainty`).

Everything is deterministic for a given seed; :class:`Checkpointer` hooks save the state every
few epochs and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .learned_thickness import Bounds, make_thickness_model
from .loss import Problem, total_loss
from .objective import chunk_evaluation, chunk_value_and_grad, grid_chi2_jit
from .orientation_solve import orientation_step
from .parameters import GROUPS, RefinementParameters, group_labels, initial_parameters, project
from .refine_settings import RefinementSettings

SEARCH_GRID_POINTS = 60


@dataclasses.dataclass
class TrainingState:
    """Mutable host-side state of the first-order stage (checkpointed)."""

    params: RefinementParameters
    opt_state: object
    epoch: int = 0
    best_params: RefinementParameters | None = None
    best_loss: float = math.inf
    best_epoch: int = 0
    step_factor: float = 1.0
    history: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list)
    stopped: str = ""
    planned_epochs: int | None = None


@dataclasses.dataclass(frozen=True)
class TimeBudget:
    """A deadline for the epochs (``time.perf_counter`` seconds) and what must fit after them.

    ``reserve``: seconds kept for the stages after the epochs (final R, s.u.s); ``forward``:
    seconds of one forward pass over every frame (a report epoch adds one)."""

    deadline: float
    reserve: float
    forward: float

    def left(self) -> float:
        return self.deadline - self.reserve - time.perf_counter()


PLAN_AFTER = 2
"""Epochs timed before a time-limited run plans its epoch count (the first includes compiling)."""

ORIENTATION_COST = 2.0
"""Assumed cost of a Gauss–Newton orientation call in epochs, until one has been timed (CsPbBr₃:
2.1)."""


def planned_epochs(state: TrainingState, settings: RefinementSettings, budget: TimeBudget, epoch_seconds: float,
                   orientation_seconds: float | None = None) -> int:
    """The most epochs (≤ ``settings.epochs``) whose estimated cost from now fits ``budget``:
    each epoch ``epoch_seconds``, plus a forward pass on report epochs and the Gauss–Newton
    orientation calls of the schedule planned for that count."""
    left = budget.left()
    orientation = ORIENTATION_COST * epoch_seconds if orientation_seconds is None else orientation_seconds
    best = state.epoch
    for total in range(state.epoch + 1, settings.epochs + 1):
        plan = dataclasses.replace(settings, epochs=total)
        cost = sum(epoch_seconds + (orientation if orientation_due(k, plan) else 0.0)
                   + (budget.forward if k % settings.report_every == 0 or k == total else 0.0)
                   for k in range(state.epoch + 1, total + 1))
        if cost <= left:
            best = total
    return best


def _split_frames(count: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) row indices: every k-th frame held out, k = round(1/fraction)."""
    rows = np.arange(count)
    if fraction <= 0 or count < 4:
        return rows, rows[:0]
    k = max(int(round(1.0 / fraction)), 2)
    held = (rows % k) == (k // 2)
    return rows[~held], rows[held]


SEARCH_WINDOW = 2.0
"""Per-frame thickness search within [t*/w, w·t*] of the dataset-wide optimum t*."""


PER_FRAME_MINIMUM = 20
"""``thickness_start="auto"`` searches per frame when the median frame has at least this many reflections."""


def initial_thickness(problem: Problem, params: RefinementParameters, bounds: Bounds, chunk: int,
                      start: str = "auto") -> list[np.ndarray]:
    """Per dataset and frame of the file, a starting thickness [Å] from a grid search.

    χ² of every frame at every node of a geometric grid (each frame its own scale, one
    eigendecomposition per tilt for the whole grid). First the dataset-wide optimum t* (χ²
    summed over frames), then per frame the best node within [t*/2, 2t*]: an unrestricted
    per-frame search with a perturbed start and a handful of reflections often picks a wrong
    Pendellösung branch (seen on the demo data: frames at the 2500 Å bound), while a single
    value ignores real frame-to-frame variation (real quartz: R_obs 10 % after 10 epochs).
    ``start``: "dataset" (t* everywhere), "frame" (the windowed per-frame search) or "auto"
    (per frame when the median frame has ≥ :data:`PER_FRAME_MINIMUM` reflections; the demo's
    frames have 9, where the per-frame start left a 23 % thickness error against 1.8 %).
    Frames without reflections get t*."""
    grid = jnp.asarray(np.geomspace(bounds.t_min, bounds.t_max, SEARCH_GRID_POINTS))
    nodes = np.asarray(grid)
    out = []
    for d, dataset in enumerate(problem.datasets):
        chi2 = np.zeros((dataset.frames.count, nodes.size))
        for rows, frames in dataset.frames.chunks(np.arange(dataset.frames.count), chunk):
            value = grid_chi2_jit(params.sites, params.absorption, params.datasets[d].orientation, frames, grid,
                                  problem.crystal, problem.context, dataset.constants)
            chi2[rows] = np.asarray(value)[: len(rows)]
        best = float(nodes[np.argmin(np.sum(chi2, axis=0))])
        per_file = np.full(dataset.frame_count, best)
        counts = np.sum(np.asarray(dataset.frames.refl_mask), axis=1)
        if start == "frame" or (start == "auto" and np.median(counts) >= PER_FRAME_MINIMUM):
            window = (nodes >= best / SEARCH_WINDOW) & (nodes <= best * SEARCH_WINDOW)
            per_file[np.asarray(dataset.frames.index)] = nodes[window][np.argmin(chi2[:, window], axis=1)]
        out.append(per_file)
    return out


def build_parameters(problem: Problem, settings: RefinementSettings, absorption: float | None) -> RefinementParameters:
    """Starting parameters: the crystal's, zero corrections, and thickness models from a search."""
    bounds = Bounds(settings.thickness_min, settings.thickness_max)
    counts = [d.frame_count for d in problem.datasets]
    placeholder = [make_thickness_model("constant", np.zeros(1), np.full(1, 300.0), bounds, key=jax.random.key(0))
                   for _ in counts]
    start = initial_parameters(problem.crystal, placeholder, counts, absorption)
    search = initial_thickness(problem, start, bounds, settings.chunk_frames, settings.thickness_start)
    keys = jax.random.split(jax.random.key(settings.seed), len(counts))
    models = [make_thickness_model(settings.thickness_model, np.asarray(d.data.frames.alpha, dtype=np.float64), t,
                                   bounds, key=k, width=settings.nn_width, depth=settings.nn_depth,
                                   frequencies=settings.nn_frequencies,
                                   grid_nodes=settings.grid_nodes, grid_span=settings.grid_span,
                                   start_width=settings.start_width)
              for d, t, k in zip(problem.datasets, search, keys)]
    return initial_parameters(problem.crystal, models, counts, absorption)


def make_optimiser(params: RefinementParameters, settings: RefinementSettings, steps: int):
    """Per-group Adam (frozen groups: zero updates), times an injectable global step factor."""
    def schedule(rate: float, delay: int = 0):
        active = max(steps - delay, 1)
        warmup = min(settings.warmup, max(active - 1, 0))
        decay_steps = max(active - warmup, 1)
        if settings.schedule == "constant":
            main = optax.constant_schedule(rate)
        elif settings.schedule == "cosine":
            main = optax.cosine_decay_schedule(rate, decay_steps, alpha=0.01)
        else:
            main = optax.exponential_decay(rate, decay_steps, 0.01)
        parts, boundaries = [main], []
        if warmup > 0:
            parts, boundaries = [optax.linear_schedule(0.1 * rate, rate, warmup), main], [warmup]
        if delay > 0:
            parts, boundaries = [optax.constant_schedule(0.0), *parts], [delay, *(delay + b for b in boundaries)]
        return parts[0] if len(parts) == 1 else optax.join_schedules(parts, boundaries)

    delays = {g: 0 for g in GROUPS} | {"orientation": int(round(settings.orientation_delay * steps))}
    moved = set(settings.refine) - ({"orientation"} if settings.orientation_solver == "gauss-newton" else set())
    transforms = {g: (optax.adam(schedule(settings.rate(g), delays[g])) if g in moved and settings.rate(g) > 0
                      else optax.set_to_zero()) for g in GROUPS}
    if "orientation" in moved and settings.omega_step != 1.0:
        transforms["orientation"] = optax.chain(transforms["orientation"], scale_omega(settings.omega_step))
    labels = group_labels(params)
    chain = optax.chain(optax.multi_transform(transforms, labels), optax.inject_hyperparams(optax.scale)(step_size=1.0))
    return FirstOrder(chain, settings.u_min)


def scale_omega(factor: float) -> optax.GradientTransformation:
    """Multiply the Δω column of the ``[frame 3]`` orientation updates by ``factor``."""
    def scale(updates, state, params=None):
        del params
        columns = jnp.asarray([[1.0, 1.0, factor]])
        return jax.tree_util.tree_map(lambda u: u * columns.astype(u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), scale)


class FirstOrder(eqx.Module):
    """An optax optimiser with a jitted step: update, apply, then :func:`project`."""

    optimiser: optax.GradientTransformation = eqx.field(static=True)
    u_min: float = eqx.field(static=True)

    def init(self, arrays):
        return self.optimiser.init(arrays)

    @eqx.filter_jit
    def step(self, grad, opt_state, params, crystal):
        arrays, static = eqx.partition(params, eqx.is_inexact_array)
        updates, opt_state = self.optimiser.update(grad, opt_state, arrays)
        return project(eqx.combine(optax.apply_updates(arrays, updates), static), crystal, self.u_min), opt_state


def _set_step_factor(opt_state, factor: float):
    hyperparams = opt_state[1].hyperparams
    hyperparams["step_size"] = jnp.asarray(factor, dtype=hyperparams["step_size"].dtype)
    return opt_state


def batch_gradient(params: RefinementParameters, problem: Problem, batches: list[np.ndarray], chunk: int):
    """(Σ χ², gradient) over the given frame rows of each dataset, accumulated over chunks."""
    arrays, static = eqx.partition(params, eqx.is_inexact_array)
    total, grad = 0.0, jax.tree_util.tree_map(jnp.zeros_like, arrays)
    for d, (dataset, rows) in enumerate(zip(problem.datasets, batches)):
        for _, frames in dataset.frames.chunks(rows, problem.chunk_size(chunk), problem.devices):
            value, g = chunk_value_and_grad(params, d, frames, problem.crystal, problem.context, dataset.constants,
                                            problem.remat, problem.mesh)
            total += float(value)  # waits for the chunk: two in-flight sharded programs can deadlock on CPU
            grad = jax.tree_util.tree_map(jnp.add, grad, eqx.filter(g, eqx.is_inexact_array))
    return total, grad


def batch_denominator(problem: Problem, batches: list[np.ndarray]) -> float:
    total = 0.0
    for dataset, rows in zip(problem.datasets, batches):
        f = dataset.frames
        total += float(np.sum(np.asarray(f.weight)[rows] * np.asarray(f.fo)[rows] ** 2))
    return total


def evaluate_loss(params: RefinementParameters, problem: Problem, batches: list[np.ndarray], chunk: int) -> float:
    """Σ χ² / Σ w|Fo|² over frame rows ``batches`` (forward only)."""
    total = 0.0
    for d, (dataset, rows) in enumerate(zip(problem.datasets, batches)):
        for part, frames in dataset.frames.chunks(rows, problem.chunk_size(chunk), problem.devices):
            e = chunk_evaluation(params, d, frames, problem.crystal, problem.context, dataset.constants, problem.mesh)
            total += float(np.sum(np.asarray(e.chi2)[: len(part)]))
    denominator = batch_denominator(problem, batches)
    return total / denominator if denominator > 0 else float("nan")


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array)))


def _restraint_gradient(params, problem: Problem):
    from .restraints import restraint_residuals

    def value(sites):
        return jnp.sum(restraint_residuals(problem.crystal.with_params(sites), problem.restraints) ** 2)

    return jax.value_and_grad(value)(params.sites)


def _batches(problem: Problem, training: list[np.ndarray], settings: RefinementSettings, epoch: int):
    """Mini-batches of each dataset's training rows for one epoch (deterministic in seed, epoch):
    the fewest batches of at most ``batch_frames`` frames, each dataset's rows shuffled and
    split into that many near-equal parts (a dataset with fewer rows than batches repeats its rows
    so that every batch holds some of them)."""
    if settings.batch_frames <= 0:
        return [training]
    rng = np.random.default_rng([settings.seed, epoch])
    shuffled = [rng.permutation(rows) for rows in training]
    count = max(math.ceil(len(rows) / settings.batch_frames) for rows in training)
    parts = [np.array_split(rows if len(rows) >= count or not len(rows) else np.resize(rows, count), count)
             for rows in shuffled]
    return [[np.sort(part[b]) for part in parts] for b in range(count)]


def _epoch_loss(losses: list[float], denominators: list[float]) -> float:
    """The epoch's loss: its batches' losses (each taken before that batch's step) weighted by
    their Σ w|Fo|²; NaN if no batch was finite."""
    finite = [(value, weight) for value, weight in zip(losses, denominators) if math.isfinite(value)]
    total = sum(weight for _, weight in finite)
    return sum(value * weight for value, weight in finite) / total if finite and total > 0 else math.nan


def adam_step(state: TrainingState, optimiser, problem: Problem, batches, settings: RefinementSettings) -> float:
    """One optimiser step on ``batches``; rolls back and halves the step on a non-finite result."""
    value, grad = batch_gradient(state.params, problem, batches, settings.chunk_frames)
    denominator = batch_denominator(problem, batches)
    if problem.restraints is not None:
        r_value, r_grad = _restraint_gradient(state.params, problem)
        value += float(r_value)
        grad = eqx.tree_at(lambda p: p.sites, grad, jax.tree_util.tree_map(jnp.add, grad.sites, r_grad))
    grad = jax.tree_util.tree_map(lambda g: g / denominator, grad)
    loss = value / denominator
    if not (math.isfinite(loss) and _finite(grad)):
        if state.best_params is not None:
            state.params = state.best_params
            _reject(state, f"epoch {state.epoch}: non-finite loss or gradient; rolled back to the best state "
                           f"(epoch {state.best_epoch}), step size halved")
        else:
            _reject(state, f"epoch {state.epoch}: non-finite loss or gradient; step size halved")
        return math.nan
    new, opt_state = optimiser.step(grad, state.opt_state, state.params, problem.crystal)
    if not _finite(new):
        _reject(state, f"epoch {state.epoch}: step gave non-finite parameters; rolled back, step size halved")
        return math.nan
    state.params, state.opt_state = new, opt_state
    return loss


def _reject(state: TrainingState, message: str) -> None:
    state.step_factor *= 0.5
    state.opt_state = _set_step_factor(state.opt_state, state.step_factor)
    state.events.append(message)
    if state.step_factor < 1e-3:
        raise FloatingPointError("refinement keeps producing non-finite values: " + "; ".join(state.events[-3:]))


def first_order_optimiser(problem: Problem, params: RefinementParameters, settings: RefinementSettings):
    """The Adam optimiser of :func:`run_first_order` (its schedule spans every step of the run)."""
    training = [_split_frames(d.frames.count, settings.validation_fraction)[0] for d in problem.datasets]
    steps_per_epoch = len(_batches(problem, training, settings, 0))
    return make_optimiser(params, settings, settings.epochs * steps_per_epoch)


def run_first_order(
    problem: Problem,
    state: TrainingState,
    settings: RefinementSettings,
    on_epoch: Callable[[TrainingState, dict], None] | None = None,
    budget: TimeBudget | None = None,
) -> TrainingState:
    """Adam epochs from ``state.epoch`` to ``settings.epochs`` (or early stop).

    With a ``budget`` the run times its first :data:`PLAN_AFTER` epochs, then plans the epoch
    count that fits (:func:`planned_epochs`; the schedule is laid out again over that count and
    the count is kept in the state, so a resumed run continues the same plan), and stops early
    if an epoch would still overrun the deadline."""
    splits = [_split_frames(d.frames.count, settings.validation_fraction) for d in problem.datasets]
    training = [s[0] for s in splits]
    validation = [s[1] for s in splits]
    plan = settings if state.planned_epochs is None else dataclasses.replace(settings, epochs=state.planned_epochs)
    optimiser = first_order_optimiser(problem, state.params, plan)
    if state.opt_state is None:
        state.opt_state = optimiser.init(eqx.filter(state.params, eqx.is_inexact_array))
    has_validation = any(len(v) for v in validation)
    orientation_seconds = None
    while state.epoch < plan.epochs and not state.stopped:
        if budget is not None and state.planned_epochs is not None and state.history:
            due = orientation_due(state.epoch + 1, plan)
            need = state.history[-1].get("adam_seconds", state.history[-1]["seconds"])
            need += (orientation_seconds or ORIENTATION_COST * need) if due else 0.0
            if need > budget.left():
                state.stopped = (f"time limit: stopped after epoch {state.epoch} of {plan.epochs} (the next epoch "
                                 f"would take about {need:.0f} s, {max(budget.left(), 0):.0f} s left)")
                break
        start = time.perf_counter()
        snapshot = (state.params, state.opt_state, state.step_factor, len(state.events))
        try:
            batches = _batches(problem, training, settings, state.epoch)
            losses = [adam_step(state, optimiser, problem, b, settings) for b in batches]
            adam_seconds = time.perf_counter() - start
            orientation = None
            if orientation_due(state.epoch + 1, plan):
                state.params, orientation = orientation_step(state.params, problem, training, settings.chunk_frames,
                                                             settings.orientation_sigma)
                orientation_seconds = time.perf_counter() - start - adam_seconds
        except KeyboardInterrupt:
            state.params, state.opt_state, state.step_factor = snapshot[:3]
            del state.events[snapshot[3]:]
            raise
        state.epoch += 1
        record = {"epoch": state.epoch, "loss": _epoch_loss(losses, [batch_denominator(problem, b) for b in batches]),
                  "seconds": time.perf_counter() - start, "adam_seconds": adam_seconds}
        if orientation is not None:
            record["orientation"] = orientation
        monitor = evaluate_loss(state.params, problem, validation, settings.chunk_frames) if has_validation \
            else record["loss"]
        if has_validation:
            record["validation_loss"] = monitor
        if budget is not None and state.planned_epochs is None and (state.epoch >= PLAN_AFTER or
                                                                     state.epoch >= settings.epochs):
            count = max(planned_epochs(state, settings, budget, adam_seconds, orientation_seconds), state.epoch)
            state.planned_epochs = count
            if count < settings.epochs:
                plan = dataclasses.replace(settings, epochs=count)
                optimiser = first_order_optimiser(problem, state.params, plan)
                state.events.append(f"time limit: {count} of {settings.epochs} epochs planned (an epoch takes "
                                    f"about {adam_seconds:.0f} s; the schedule spans the planned epochs)")
        _close_epoch(state, record, monitor, state.params, state.epoch, plan, on_epoch)
    if state.best_params is not None:
        state.params = state.best_params
    return state


def orientation_due(epoch: int, settings: RefinementSettings) -> bool:
    """Whether the per-frame Gauss–Newton orientation step follows Adam epoch ``epoch`` (1-based)."""
    if settings.orientation_solver != "gauss-newton" or "orientation" not in settings.refine:
        return False
    first = int(round(settings.orientation_delay * settings.epochs))
    return epoch > first and ((epoch - first) % settings.orientation_every == 0 or epoch == settings.epochs)


def _close_epoch(state: TrainingState, record: dict, monitor: float, monitored, epoch: int,
                 settings: RefinementSettings, on_epoch) -> None:
    """Keep-best (``monitored`` are the parameters whose loss is ``monitor``), early stop, history."""
    if math.isfinite(monitor) and monitor < state.best_loss * (1 - 1e-6):
        state.best_loss, state.best_epoch, state.best_params = monitor, epoch, monitored
    if settings.patience and state.epoch - state.best_epoch >= settings.patience:
        state.stopped = f"early stop at epoch {state.epoch}: no improvement for {settings.patience} epochs"
    state.history.append(record)
    if on_epoch is not None:
        on_epoch(state, record)


def run_lbfgs(problem: Problem, state: TrainingState, settings: RefinementSettings,
              on_epoch: Callable[[TrainingState, dict], None] | None = None) -> TrainingState:
    """L-BFGS (optax, zoom line search) on every refined group, full batch, one jitted loss."""
    arrays, static = eqx.partition(state.params, eqx.is_inexact_array)
    labels = group_labels(state.params)
    keep = jax.tree_util.tree_map(lambda label: label in settings.refine, labels)
    train, frozen = eqx.partition(arrays, keep)

    def loss(t):
        return total_loss(eqx.combine(t, frozen, static), problem)

    value_and_grad = optax.value_and_grad_from_state(loss)
    optimiser = optax.lbfgs()

    @jax.jit
    def step(t, opt_state):
        value, grad = value_and_grad(t, state=opt_state)
        updates, opt_state = optimiser.update(grad, opt_state, t, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(t, updates), opt_state, value

    opt_state = optimiser.init(train) if state.opt_state is None else state.opt_state
    while state.epoch < settings.epochs and not state.stopped:
        begin = time.perf_counter()
        new, new_state, value = step(train, opt_state)
        candidate = project(eqx.combine(new, frozen, static), problem.crystal, settings.u_min)
        if not (_finite(candidate) and math.isfinite(float(value))):
            state.stopped = f"L-BFGS stopped at iteration {state.epoch}: non-finite step (rolled back)"
            break
        previous, previous_epoch = state.params, state.epoch
        train = eqx.partition(eqx.filter(candidate, eqx.is_inexact_array), keep)[0]
        opt_state = new_state
        state.params, state.opt_state, state.epoch = candidate, opt_state, state.epoch + 1
        record = {"epoch": state.epoch, "loss": float(value), "seconds": time.perf_counter() - begin}
        # the line search returns the loss of the parameters it started from
        _close_epoch(state, record, float(value), previous, previous_epoch, settings, on_epoch)
    if state.best_params is not None:
        state.params = state.best_params
    return state


def training_state(params: RefinementParameters) -> TrainingState:
    return TrainingState(params=params, opt_state=None)
