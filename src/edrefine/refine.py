"""``refine``: from a starting model and datasets to a refined structure with its figures of merit.

Host orchestration of :mod:`edrefine.optimise` (see its docstring for the recipe): prepares the
problem (:mod:`edrefine.problem`), builds the starting parameters, runs the chosen optimiser
with checkpoints, polishes, computes s.u.s, and returns a :class:`RefinementResult` that
:mod:`edrefine.outputs` writes to disk.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import numpy as np

from . import checkpoint
from .cif import Uncertainties
from .crystal import Crystal
from .errors import InputError
from .loss import Problem, StructuralIndex
from .least_squares import initial_state as least_squares_start
from .least_squares import STRUCTURAL, Layout, end_reserve, polish, run_least_squares, tangent_plan, total_chi2
from .optimise import TimeBudget, TrainingState, build_parameters, first_order_optimiser, run_first_order, run_lbfgs, training_state
from .summary import count_parameters, figures_of_merit, frame_table
from .parameters import RefinementParameters, reset_u
from .pets import PetsData
from .learned_thickness import node_count
from .objective import frame_mesh
from .problem import bound_memory, prepare_dataset, structure_context
from .refine_settings import RefinementSettings
from .restraints import distance_restraints
from .settings import CalculationSettings
from .uncertainty import (Nuisances, crystal_uncertainties, jacobian_problem, nuisances_of, restrained_gof,
                          table_chi2)


@dataclasses.dataclass
class RefinementResult:
    """What a refinement produced.

    Attributes:
        crystal: the refined structure; start: the starting structure (after any U reset).
        params: the refined :class:`~edrefine.parameters.RefinementParameters`.
        uncertainties: s.u.s for the CIF (NaN where not refined).
        metrics: figures of merit of the final model (keys of ``edrefine score``), and
            ``start`` with those of the starting model.
        frames: per-frame rows (:func:`edrefine.optimise.frame_table`).
        history: per-epoch records (loss, validation loss, R where evaluated, seconds).
        events: rolled-back steps, early stop, polish result.
        settings: calculation and refinement settings; seconds: wall time.
        datasets: dataset names; interrupted: True when Ctrl-C ended the first-order stage.
    """

    crystal: Crystal
    start: Crystal
    params: RefinementParameters
    uncertainties: Uncertainties
    metrics: dict
    frames: list
    history: list
    events: list
    settings: dict
    seconds: float
    datasets: tuple = ()
    interrupted: bool = False


def build_problem(crystal: Crystal, datasets: Sequence[PetsData], calculation: CalculationSettings,
                  restraints: list[dict] | None = None, names: Sequence[str] | None = None) -> Problem:
    names = list(names) if names is not None else [f"data{i + 1}" if len(datasets) > 1 else "data"
                                                   for i in range(len(datasets))]
    prepared = tuple(prepare_dataset(crystal, d, calculation, name=n) for d, n in zip(datasets, names))
    rules = distance_restraints(crystal, restraints) if restraints else None
    return Problem(crystal, structure_context(crystal, calculation), prepared, rules)


def _summary(params, problem, settings) -> tuple[dict, list]:
    table = frame_table(params, problem, settings.chunk_frames)
    return figures_of_merit(table, count_parameters(params, problem.crystal, settings)), table


def _time_budget(deadline: float, params, problem: Problem, su_problem: Problem, reduced_jacobian: bool,
                 parameters: int, su_block: int, settings: RefinementSettings,
                 first_forward: float) -> tuple[TimeBudget, float]:
    """The epochs' :class:`TimeBudget` and the seconds of one compiled forward pass.

    ``first_forward`` (the starting R) included compiling, which the final R does not repeat. When
    the s.u. Jacobian comes from a reduced calculation (``reduced_jacobian``), that calculation is
    compiled and timed, and the first forward stands (a second full pass would cost more than the
    compile time it removes); otherwise the starting R is timed once more, compiled."""
    if reduced_jacobian and parameters:
        total_chi2(params, su_problem, settings.chunk_frames)  # the first call compiles; time the second
        begin = time.perf_counter()
        total_chi2(params, su_problem, settings.chunk_frames)
        su_forward = time.perf_counter() - begin
        forward = first_forward
    else:
        begin = time.perf_counter()
        _summary(params, problem, settings)
        forward = su_forward = time.perf_counter() - begin
    return TimeBudget(deadline, end_reserve(forward, parameters, su_block, su_forward), forward), forward


def _prepared_problem(crystal: Crystal, datasets, calculation: CalculationSettings, settings: RefinementSettings,
                      restraints, names) -> tuple[Crystal, Problem]:
    """The starting structure (after any U reset) and the problem, its tilt chunks bounded by the
    memory limit and its frames spread over the devices."""
    start = reset_u(crystal, settings.u_reset) if settings.u_reset is not None else crystal
    problem = build_problem(start, datasets, calculation, restraints, names)
    bounded, _ = bound_memory(problem.datasets, node_count(settings.thickness_model, settings.grid_nodes),
                              settings.memory_limit, settings.tilt_chunk)
    return start, dataclasses.replace(problem, datasets=bounded, mesh=frame_mesh(settings.devices))


def _starting_state(params, problem: Problem, settings: RefinementSettings, folder: Path | None, resume: bool,
                    fingerprint: str) -> tuple[TrainingState, str]:
    """A fresh optimiser state for ``params``, or the checkpoint in ``folder`` with ``resume``;
    and the stage to continue from."""
    state = training_state(params)
    if settings.optimiser == "adam":
        state.opt_state = first_order_optimiser(problem, params, settings).init(eqx.filter(params, eqx.is_inexact_array))
    elif settings.optimiser == "lm":
        state.opt_state = least_squares_start()
    if resume and folder is not None and checkpoint.exists(folder):
        if settings.optimiser == "lbfgs":
            state.opt_state = None
        return checkpoint.load(folder, state, fingerprint)
    return state, "first-order"


def _note_automatic_reduction(problem: Problem, calculation: CalculationSettings, state: TrainingState) -> None:
    """An event for each dataset whose beams are reduced by the automatic ``strong_beams``."""
    if calculation.strong_beams is not None:
        return
    for dataset in problem.datasets:
        if dataset.constants.strong_beams:
            message = (f"{dataset.name}: {dataset.frames.capacity} beams per orientation, so "
                       f"{dataset.constants.strong_beams} strong beams and the rest by Bethe perturbation "
                       "(automatic; strong_beams = 0 for the full matrix)")
            if message not in state.events:
                state.events.append(message)


def _optimise(problem: Problem, state: TrainingState, stage: str, settings: RefinementSettings, nodes: int,
              epoch_hook, budget: TimeBudget | None, folder: Path | None, fingerprint: str) -> tuple[TrainingState, bool]:
    """The chosen optimiser's epochs (float32 solves if ``epoch_precision`` says so); a Ctrl-C writes
    a checkpoint and keeps the best state, a run that keeps producing non-finite values stops at
    the best state. Returns the state and whether it was interrupted."""
    epoch_problem = problem.with_constants(single_precision=True) if settings.epoch_precision == "float32" else problem
    try:
        if stage == "first-order" and settings.optimiser == "adam":
            state = run_first_order(epoch_problem, state, settings, epoch_hook, budget)
        elif stage == "first-order" and settings.optimiser == "lbfgs":
            state = run_lbfgs(epoch_problem, state, settings, epoch_hook)
        elif stage == "first-order" and settings.optimiser == "lm":
            layout_size = Layout.of(state.params, problem.crystal, settings.refine).size(state.params)
            lm_problem, lm_block = tangent_plan(epoch_problem, nodes, settings.memory_limit, layout_size)
            state = run_least_squares(lm_problem, state, settings, epoch_hook, lm_block)
    except KeyboardInterrupt:
        if folder is not None:
            checkpoint.save(folder, state, "first-order", fingerprint)
        state.events.append(f"interrupted after epoch {state.epoch}: checkpoint written (--resume continues); "
                            "outputs are of the best state so far")
        state.params = state.best_params if state.best_params is not None else state.params
        return state, True
    except FloatingPointError as error:
        if state.best_params is None:
            raise InputError(f"{error}; no finite state to fall back to: check the starting model and settings",
                             source="refinement") from None
        state.stopped = f"stopped after epoch {state.epoch}: {error}; outputs are of the best state (epoch " \
                        f"{state.best_epoch})"
        state.params = state.best_params
    return state, False


def _polish_events(state: TrainingState, info: dict, steps: int) -> None:
    """What the polish did, as events."""
    if info.get("time_limit"):
        state.events.append(f"time limit: Levenberg–Marquardt polish stopped after {info['steps']} of {steps} steps")
    if info.get("rejected"):
        state.events.append(f"Levenberg–Marquardt polish: no step lowered χ² ({info['chi2_before']:.6g}); kept the "
                            "refined structure")
    elif info.get("steps"):
        state.events.append(f"Levenberg–Marquardt polish: {info['steps']} steps, χ² {info['chi2_before']:.6g} → "
                            f"{info['chi2_after']:.6g}")


def _uncertainties(params, start: Crystal, problem: Problem, su_problem: Problem, su_block: int,
                   index: StructuralIndex, table: list, settings: RefinementSettings,
                   nuisances: Nuisances | None) -> Uncertainties:
    """s.u.s of the refined structural parameters (NaN everywhere when none is refined), marginal
    over ``nuisances`` (None: conditional); GoF from the refined calculation's final ``table``,
    the curvature from ``su_problem``."""
    if not index.size:
        n = len(start.labels)
        return Uncertainties(np.full(6, np.nan), np.full((n, 3), np.nan), np.full((n, 6), np.nan), np.full(n, np.nan))
    uncertainties, _, _ = crystal_uncertainties(params, su_problem, index, count_parameters(params, start, settings),
                                                settings.chunk_frames, su_block, table_chi2(table, params, problem),
                                                nuisances)
    return uncertainties


@dataclasses.dataclass(frozen=True)
class _TangentPlan:
    """The problems and tangent blocks of the polish (``problem``, ``block``) and of the s.u.s
    (``su_problem`` with ``su_tangents`` tangents in blocks of ``su_block``), and what the s.u.s
    are marginal over (``nuisances``, None: conditional)."""

    index: StructuralIndex
    problem: Problem
    block: int
    nuisances: Nuisances | None
    su_problem: Problem
    su_tangents: int
    su_block: int

    @classmethod
    def of(cls, params, start: Crystal, problem: Problem, settings: RefinementSettings, nodes: int) -> "_TangentPlan":
        index = StructuralIndex.of(start, tuple(g for g in STRUCTURAL if g in settings.refine))
        tangent_problem, block = tangent_plan(problem, nodes, settings.memory_limit, index.size)
        nuisances = nuisances_of(params, start, index, settings.refine) if settings.uncertainty_marginal else None
        su_tangents = index.size if nuisances is None or not index.size else nuisances.tangents(params)
        su_problem, su_block = tangent_plan(jacobian_problem(problem, settings.uncertainty_beams), nodes,
                                            settings.memory_limit, su_tangents)
        return cls(index, tangent_problem, block, nuisances, su_problem, su_tangents, su_block)


def _finish(state: TrainingState, interrupted: bool, plan: _TangentPlan, start: Crystal, problem: Problem,
            settings: RefinementSettings, budget, forward_seconds: float, stage_hook):
    """After the epochs: the polish, the final R and the s.u.s → (params, metrics, frame table,
    uncertainties); what happened is added to ``state.events``."""
    steps = 0 if interrupted or settings.optimiser == "lm" else settings.polish_steps
    if steps:
        stage_hook(f"Levenberg–Marquardt polish (up to {steps} steps)")
    params, info = polish(plan.problem, state.params, settings, steps, plan.block,
                          None if budget is None else budget.deadline - budget.reserve, forward_seconds)
    _polish_events(state, info, steps)
    stage_hook("final R")
    metrics, table = _summary(params, problem, settings)
    if problem.restraints is not None:
        metrics["n_restraints"] = int(problem.restraints.target.size)
        metrics["GoF_restrained"] = restrained_gof(table_chi2(table, params, problem), problem, metrics["n_parameters"])
    if metrics["n_parameters"] >= metrics["n_all"]:
        state.events.append(f"{metrics['n_parameters']} refined parameters (every weight of the thickness network "
                            f"counts) for {metrics['n_all']} reflections: GoF and the s.u.s are undefined (NaN); "
                            "a smaller network (nn_width) or fewer grid nodes makes them defined")
    if plan.index.size:
        stage_hook("standard uncertainties")
    uncertainties = _uncertainties(params, start, problem, plan.su_problem, plan.su_block, plan.index, table, settings,
                                   plan.nuisances)
    return params, metrics, table, uncertainties


def refine(
    crystal: Crystal,
    datasets: Sequence[PetsData],
    calculation: CalculationSettings,
    settings: RefinementSettings,
    *,
    restraints: list[dict] | None = None,
    folder: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    on_epoch: Callable[[TrainingState, dict], None] | None = None,
    names: Sequence[str] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> RefinementResult:
    """Refine ``crystal`` against ``datasets`` (see :mod:`edrefine.optimise` for the recipe).

    Args:
        crystal: starting model; with ``settings.u_reset`` every site starts isotropic there.
        datasets: one or more datasets of this structure (own frames, scales, thickness models).
        calculation: the dynamical calculation and selection settings.
        settings: the refinement settings.
        restraints: ``[[restraint]]`` entries (:mod:`edrefine.restraints`).
        folder: where checkpoints go (None: no checkpoints); resume: continue from its checkpoint.
        fingerprint: identifies inputs and settings; a checkpoint with another one is refused.
        on_epoch: called after every epoch with the state and the epoch's record.
        on_stage: called with a short description when a stage starts (beam sets, thickness
            search, epochs, polish, uncertainties), for progress displays.
    """
    begin = time.perf_counter()
    stage_hook = on_stage if on_stage is not None else (lambda text: None)

    stage_hook("beam sets and reflections")
    start, problem = _prepared_problem(crystal, datasets, calculation, settings, restraints, names)
    stage_hook("starting thickness search")
    params = build_parameters(problem, settings, calculation.absorption)
    stage_hook("starting R")
    forward_begin = time.perf_counter()
    start_metrics, start_table = _summary(params, problem, settings)
    forward_seconds = time.perf_counter() - forward_begin
    start_metrics["thickness_mean"] = [row["thickness_mean"] for row in start_table]
    state, stage = _starting_state(params, problem, settings, folder, resume, fingerprint)
    _note_automatic_reduction(problem, calculation, state)

    nodes = node_count(settings.thickness_model, settings.grid_nodes)
    plan = _TangentPlan.of(params, start, problem, settings, nodes)
    budget = None
    if settings.time_limit:
        budget, forward_seconds = _time_budget(begin + 60.0 * settings.time_limit, params, problem, plan.su_problem,
                                               plan.su_problem is not plan.problem, plan.su_tangents, plan.su_block,
                                               settings, forward_seconds)

    def epoch_hook(s: TrainingState, record: dict) -> None:
        if s.epoch % settings.report_every == 0 or s.epoch == (s.planned_epochs or settings.epochs):
            metrics, _ = _summary(s.params, problem, settings)
            record.update(R_obs=metrics["R_obs"], wR_all=metrics["wR_all"], R_obs_frame_mean=metrics["R_obs_frame_mean"])
        if folder is not None and (s.epoch % settings.checkpoint_every == 0 or s.stopped):
            checkpoint.save(folder, s, "first-order", fingerprint)
        if on_epoch is not None:
            on_epoch(s, record)

    stage_hook("epochs")
    state, interrupted = _optimise(problem, state, stage, settings, nodes, epoch_hook, budget, folder, fingerprint)
    if state.stopped:
        state.events.append(state.stopped)
    if folder is not None and not interrupted:
        checkpoint.save(folder, state, "polish", fingerprint)
    params, metrics, table, uncertainties = _finish(state, interrupted, plan, start, problem, settings, budget,
                                                    forward_seconds, stage_hook)
    metrics["start"] = start_metrics
    return RefinementResult(start.with_params(params.sites), start, params, uncertainties, metrics, table,
                            state.history, state.events,
                            {"calculation": dataclasses.asdict(calculation), "refinement": settings.as_dict()},
                            time.perf_counter() - begin, tuple(d.name for d in problem.datasets), interrupted)
