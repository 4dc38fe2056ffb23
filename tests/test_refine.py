"""Refinement end to end on tiny synthetic data: recovery, resume equals uninterrupted, optimisers, s.u.s."""

import dataclasses
import pathlib

import jax
import numpy as np
import pytest

from edrefine.cif import read_crystal
from edrefine.crystal import coordinate_rmsd, perturb
from edrefine.errors import InputError
from edrefine.loss import StructuralIndex
from edrefine.refine import refine
from edrefine.refine_settings import RefinementSettings, refinement_settings
from edrefine.settings import CalculationSettings
from edrefine.simulation import simulate_dataset, synthetic_template
from edrefine.thickness import Constant

QUARTZ = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quartz.cif"
CALC = CalculationSettings(gmax=1.3, sgmax=0.01, tilts=3, tilt_rule="gauss")


@pytest.fixture(scope="module")
def truth():
    return read_crystal(QUARTZ)


@pytest.fixture(scope="module")
def data(truth):
    template = synthetic_template(truth.cell, alpha_range=(-30.0, 30.0), step=5.0, half_width=0.5, seed=4,
                                  rotation_axis_position=10.0)
    return simulate_dataset(truth, template, Constant(280.0), counts=1e5, noise=False, g_max=1.3, sg_max=0.01,
                            tilts=3, tilt_rule="gauss")


def test_recovers_a_perturbed_structure_from_noiseless_data(truth, data):
    start = perturb(truth, jax.random.key(0), 0.05)
    settings = RefinementSettings(thickness_model="constant", epochs=80, polish_steps=15, report_every=40,
                                  refine=("positions", "adp", "thickness"))
    result = refine(start, [data], CALC, settings)
    assert float(coordinate_rmsd(result.crystal, truth)) < 0.003
    np.testing.assert_allclose(np.asarray(result.crystal.u_iso()), np.asarray(truth.u_iso()), rtol=0.1)
    assert result.metrics["wR_all"] < 0.2 * result.metrics["start"]["wR_all"]
    thickness = np.array([f["thickness_mean"] for f in result.frames])
    np.testing.assert_allclose(thickness, 280.0, rtol=0.03)
    su = np.asarray(result.uncertainties.positions)
    assert np.all(np.isfinite(su[1])) and np.all(su[1] > 0)


RESUMABLE = {
    "adam": RefinementSettings(thickness_model="neural", epochs=6, polish_steps=0, checkpoint_every=1,
                               batch_frames=5, nn_width=8, nn_depth=1, report_every=100, orientation_solver="adam"),
    "gauss-newton": RefinementSettings(thickness_model="perframe", epochs=4, polish_steps=0, checkpoint_every=1,
                                       orientation_solver="gauss-newton", orientation_every=2, report_every=100),
    "lm": RefinementSettings(thickness_model="constant", optimiser="lm", epochs=5, checkpoint_every=1,
                             refine=("positions", "adp"), report_every=100),
}


@pytest.mark.parametrize("optimiser", sorted(RESUMABLE))
def test_a_resumed_run_ends_where_an_uninterrupted_one_ends(truth, data, tmp_path, optimiser):
    start = perturb(truth, jax.random.key(1), 0.05)
    settings = RESUMABLE[optimiser]
    whole = refine(start, [data], CALC, settings)

    class Killed(Exception):
        pass

    def kill_at_three(state, record):
        if state.epoch == 3:
            raise Killed

    with pytest.raises(Killed):
        refine(start, [data], CALC, settings, folder=tmp_path, fingerprint="x", on_epoch=kill_at_three)
    resumed = refine(start, [data], CALC, settings, folder=tmp_path, fingerprint="x", resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    with pytest.raises(InputError, match="other inputs"):
        refine(start, [data], CALC, settings, folder=tmp_path, fingerprint="y", resume=True)


@pytest.mark.parametrize("optimiser", ["lbfgs", "lm"])
def test_second_order_and_quasi_newton_optimisers_reduce_the_loss(truth, data, optimiser):
    start = perturb(truth, jax.random.key(2), 0.03)
    settings = RefinementSettings(thickness_model="constant", optimiser=optimiser, epochs=8, polish_steps=0,
                                  refine=("positions", "adp"), report_every=100)
    result = refine(start, [data], CALC, settings)
    assert result.metrics["wR_all"] < 0.5 * result.metrics["start"]["wR_all"]


def test_settings_reject_impossible_values():
    with pytest.raises(InputError, match="thickness_model"):
        RefinementSettings(thickness_model="banana")
    with pytest.raises(InputError, match="refine"):
        refinement_settings({}, {"refine": "positions,spin"})
    with pytest.raises(InputError, match="unknown refinement setting"):
        refinement_settings({"epoch": 3}, {})
    with pytest.raises(InputError, match="learning_rates"):
        refinement_settings({}, {"learning_rates": {"positions": -1.0}})
    with pytest.raises(InputError, match="grid_span"):
        refinement_settings({"grid_span": 1.0}, {})
    with pytest.raises(InputError, match="start_width"):
        refinement_settings({"start_width": 0.0}, {})
    with pytest.raises(InputError, match="uncertainty_marginal.*true or false"):
        refinement_settings({"uncertainty_marginal": "yes"}, {})
    assert refinement_settings({"uncertainty_marginal": False}, {}).uncertainty_marginal is False


def test_a_step_with_non_finite_values_is_rolled_back_and_the_step_size_halved(truth, data):
    import equinox as eqx
    import jax.numpy as jnp

    from edrefine.optimise import adam_step, build_parameters, first_order_optimiser, training_state
    from edrefine.refine import build_problem

    settings = RefinementSettings(thickness_model="constant", epochs=2)
    problem = build_problem(truth, [data], CALC)
    params = build_parameters(problem, settings, None)
    poisoned = eqx.tree_at(lambda p: p.datasets[0].orientation, params,
                           params.datasets[0].orientation.at[0, 0].set(jnp.nan))
    optimiser = first_order_optimiser(problem, poisoned, settings)
    state = training_state(poisoned)
    state.opt_state = optimiser.init(eqx.filter(poisoned, eqx.is_inexact_array))
    loss = adam_step(state, optimiser, problem, [np.arange(problem.datasets[0].frames.count)], settings)
    assert np.isnan(loss) and state.step_factor == 0.5 and "non-finite" in state.events[-1]
    assert state.params is poisoned
    state.params = params
    assert np.isfinite(adam_step(state, optimiser, problem, [np.arange(problem.datasets[0].frames.count)], settings))


def test_orientation_delay_holds_the_orientations_for_its_share_of_the_steps(truth, data):
    import equinox as eqx

    from edrefine.optimise import build_parameters, make_optimiser
    from edrefine.refine import build_problem

    settings = RefinementSettings(thickness_model="constant", epochs=10, warmup=2, orientation_delay=0.4,
                                  orientation_solver="adam")
    problem = build_problem(truth, [data], CALC)
    params = build_parameters(problem, settings, None)
    optimiser = make_optimiser(params, settings, steps=10)
    arrays = eqx.filter(params, eqx.is_inexact_array)
    gradient = jax.tree_util.tree_map(lambda a: np.ones_like(a), arrays)
    opt_state = optimiser.init(arrays)
    moved = []
    for _ in range(10):
        before = params
        params, opt_state = optimiser.step(gradient, opt_state, params, problem.crystal)
        moved.append((float(np.max(np.abs(params.datasets[0].orientation - before.datasets[0].orientation))),
                      float(np.max(np.abs(params.sites.position_free - before.sites.position_free)))))
    orientation, positions = np.array(moved).T
    assert np.all(orientation[:4] == 0) and np.all(orientation[4:] > 0)
    assert np.all(positions > 0)
    # after the delay the orientation warms up from a tenth of its step like every group at the start
    np.testing.assert_allclose(orientation[4] / orientation[5], positions[0] / positions[1], rtol=0.2)
    with pytest.raises(InputError, match="orientation_delay"):
        RefinementSettings(orientation_delay=1.0)


@pytest.mark.parametrize("model", ["constant", "perframe", "plate", "neural", "neural-grid"])
def test_an_optimiser_step_keeps_every_leaf_type_so_the_compiled_epoch_is_reused(truth, data, model):
    """A weakly typed leaf (κ or the step factor from a Python float) becomes strongly typed after the first
    update, which retraces the jitted kernels in the second epoch and doubles the epoch time a time-limited run
    plans with."""
    import equinox as eqx

    from edrefine.optimise import _set_step_factor, build_parameters, make_optimiser
    from edrefine.refine import build_problem

    settings = RefinementSettings(thickness_model=model, epochs=2, nn_width=8, nn_depth=1, grid_nodes=6,
                                  refine=RefinementSettings().refine + ("absorption",))
    problem = build_problem(truth, [data], dataclasses.replace(CALC, absorption=0.05))
    params = build_parameters(problem, settings, 0.05)
    optimiser = make_optimiser(params, settings, steps=2)
    arrays = eqx.filter(params, eqx.is_inexact_array)
    opt_state = optimiser.init(arrays)
    gradient = jax.tree_util.tree_map(lambda a: np.ones_like(a), arrays)
    stepped, stepped_state = optimiser.step(gradient, opt_state, params, problem.crystal)

    def signature(tree):
        return jax.tree_util.tree_structure(tree), [(np.shape(leaf), leaf.dtype, getattr(leaf, "weak_type", False))
                                                    for leaf in jax.tree_util.tree_leaves(tree)]

    assert signature(eqx.filter(stepped, eqx.is_inexact_array)) == signature(arrays)
    assert signature(stepped_state) == signature(opt_state)
    before = signature(stepped_state)
    assert signature(_set_step_factor(stepped_state, 0.5)) == before  # the halved step after a rejected one


def test_omega_step_scales_the_rotation_about_the_beam_alone(truth, data):
    import equinox as eqx

    from edrefine.optimise import build_parameters, make_optimiser
    from edrefine.refine import build_problem

    problem = build_problem(truth, [data], CALC)
    steps = {}
    for factor in (1.0, 0.25, 0.0):
        settings = RefinementSettings(thickness_model="constant", epochs=4, warmup=0, omega_step=factor,
                                      orientation_solver="adam")
        params = build_parameters(problem, settings, None)
        optimiser = make_optimiser(params, settings, steps=4)
        arrays = eqx.filter(params, eqx.is_inexact_array)
        gradient = jax.tree_util.tree_map(lambda a: np.ones_like(a), arrays)
        new, _ = optimiser.step(gradient, optimiser.init(arrays), params, problem.crystal)
        steps[factor] = (np.asarray(new.datasets[0].orientation - params.datasets[0].orientation),
                         np.asarray(new.sites.position_free - params.sites.position_free))
    full, quarter, held = steps[1.0][0], steps[0.25][0], steps[0.0][0]
    assert np.all(full != 0)
    np.testing.assert_array_equal(quarter[:, :2], full[:, :2])
    np.testing.assert_allclose(quarter[:, 2], 0.25 * full[:, 2], rtol=1e-12)
    assert np.all(held[:, 2] == 0) and np.all(held[:, :2] == full[:, :2])
    np.testing.assert_array_equal(steps[0.0][1], steps[1.0][1])
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="omega_step"):
            RefinementSettings(omega_step=bad)


def test_two_datasets_refine_together_each_with_its_own_frames(truth, data):
    start = perturb(truth, jax.random.key(3), 0.03)
    settings = RefinementSettings(thickness_model="perframe", epochs=3, polish_steps=0, report_every=100)
    result = refine(start, [data, data], CALC, settings, names=["a", "b"])
    assert {f["dataset"] for f in result.frames} == {"a", "b"}
    assert len(result.params.datasets) == 2
    single = sum(1 for f in result.frames if f["dataset"] == "a")
    assert single == len(result.frames) // 2
    assert result.metrics["wR_all"] < result.metrics["start"]["wR_all"]
    structural = StructuralIndex.of(start, ("positions", "adp")).size
    per_frame = 3 + 1 + 1  # orientation correction, thickness, scale
    assert result.metrics["n_parameters"] == structural + per_frame * len(result.frames)


def test_a_run_that_keeps_failing_stops_at_its_best_state_and_says_why(truth, data):
    """Blow-ups in the middle of a run (the parameters turn NaN after every epoch from the 3rd on)
    are rolled back to the best state with halved step sizes; when that keeps happening the run
    stops and returns the best finite state, with the reason in its events, instead of raising
    or writing NaN."""
    import equinox as eqx
    import jax.numpy as jnp

    start = perturb(truth, jax.random.key(5), 0.02)
    settings = RefinementSettings(thickness_model="constant", epochs=16, polish_steps=0, report_every=100,
                                  patience=0)

    def blow_up(state, record):
        if state.epoch >= 3:
            state.params = eqx.tree_at(lambda p: p.datasets[0].orientation, state.params,
                                       jnp.full_like(state.params.datasets[0].orientation, jnp.nan))

    result = refine(start, [data], CALC, settings, on_epoch=blow_up)
    assert any("non-finite" in e and "rolled back to the best state" in e for e in result.events)
    assert any(e.startswith("stopped after epoch") for e in result.events)
    leaves = jax.tree_util.tree_leaves(eqx.filter(result.params, eqx.is_inexact_array))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert np.isfinite(result.metrics["wR_all"]) and result.metrics["wR_all"] < result.metrics["start"]["wR_all"]


def test_the_planned_epoch_count_is_the_most_whose_cost_fits_the_time_left():
    import time

    from edrefine.optimise import TimeBudget, TrainingState, planned_epochs

    state = TrainingState(params=None, opt_state=None, epoch=2)
    quiet = RefinementSettings(epochs=150, orientation_solver="adam", report_every=1000)
    budget = TimeBudget(deadline=time.perf_counter() + 1000.0, reserve=0.0, forward=0.0)
    assert planned_epochs(state, quiet, budget, epoch_seconds=99.9) == 12  # 10 more epochs fit in 1000 s
    assert planned_epochs(state, quiet, budget, epoch_seconds=0.01) == 150  # never more than asked for
    assert planned_epochs(state, quiet, dataclasses.replace(budget, reserve=2000.0), epoch_seconds=1.0) == 2
    # a Gauss–Newton call every 10 epochs and at the last, each three epochs' worth: 10 + 3 + 3 = 16 epochs' time
    gauss = RefinementSettings(epochs=150, orientation_every=10, report_every=1000)
    assert planned_epochs(state, gauss, budget, epoch_seconds=1000 / 16.5, orientation_seconds=3 * 1000 / 16.5) == 12


def test_a_time_limited_run_plans_fewer_epochs_and_still_writes_a_complete_result(truth, data):
    start = perturb(truth, jax.random.key(3), 0.03)
    settings = RefinementSettings(thickness_model="perframe", epochs=40, polish_steps=2, report_every=100,
                                  time_limit=1e-4)
    result = refine(start, [data], CALC, settings)
    assert len(result.history) == 2  # timed, then nothing more fits in 6 ms
    assert any(e.startswith("time limit: 2 of 40 epochs planned") for e in result.events), result.events
    assert any("polish stopped after 0 of 2 steps" in e for e in result.events), result.events
    assert np.all(np.isfinite(np.asarray(result.uncertainties.positions)[~np.isnan(result.uncertainties.positions)]))
    assert result.metrics["wR_all"] <= result.metrics["start"]["wR_all"]
    with pytest.raises(InputError, match="time_limit"):
        RefinementSettings(time_limit=-1.0)
    assert not RefinementSettings(time_limit=0.0).time_limit  # 0: no limit


def test_gof_and_sus_are_undefined_when_the_parameters_outnumber_the_reflections(truth, data):
    start = perturb(truth, jax.random.key(5), 0.02)
    settings = RefinementSettings(thickness_model="neural-grid", nn_width=48, epochs=1, polish_steps=0,
                                  report_every=100)
    result = refine(start, [data], CALC, settings)
    assert result.metrics["n_parameters"] >= result.metrics["n_all"]
    assert np.isnan(result.metrics["GoF"])
    assert np.all(np.isnan(np.asarray(result.uncertainties.positions)))
    assert any("GoF and the s.u.s are undefined" in event for event in result.events)
