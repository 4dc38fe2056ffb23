"""Per-frame Gauss–Newton orientation step: its normal equations, recovery of known errors, scheduling."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edrefine.cif import read_crystal
from edrefine.errors import InputError
from edrefine.learned_thickness import Bounds, make_thickness_model
from edrefine.optimise import build_parameters, make_optimiser, orientation_due
from edrefine.orientation_solve import LARGEST_RADIUS, TRUST_RADIUS, frame_chi2, orientation_normal_equations, orientation_step
from edrefine.refine import build_problem
from edrefine.refine_settings import RefinementSettings
from edrefine.settings import CalculationSettings
from edrefine.simulation import simulate_dataset, synthetic_template
from edrefine.thickness import Constant

QUARTZ = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quartz.cif"
CALC = CalculationSettings(gmax=1.2, sgmax=0.01, tilts=3, tilt_rule="gauss")


@pytest.fixture(scope="module")
def problem_and_start():
    truth = read_crystal(QUARTZ)
    template = synthetic_template(truth.cell, alpha_range=(-30.0, 30.0), step=10.0, half_width=0.5, seed=4,
                                  rotation_axis_position=10.0)
    data = simulate_dataset(truth, template, Constant(250.0), counts=1e5, noise=False, g_max=1.2, sg_max=0.01,
                            tilts=3, tilt_rule="gauss")
    problem = build_problem(truth, [data], CALC)
    params = build_parameters(problem, RefinementSettings(thickness_model="perframe"), None)
    alpha = np.asarray(data.frames.alpha, dtype=np.float64)
    exact = make_thickness_model("perframe", alpha, np.full(len(alpha), 250.0), Bounds(50.0, 2500.0),
                                 key=jax.random.key(0))
    return problem, eqx.tree_at(lambda p: p.datasets[0].thickness, params, exact)


def with_orientation(params, orientation):
    return eqx.tree_at(lambda p: p.datasets[0].orientation, params, jnp.asarray(orientation))


def test_normal_equations_match_finite_differences_of_each_frames_chi2(problem_and_start):
    problem, params = problem_and_start
    rows = np.arange(problem.datasets[0].frames.count)
    offset = np.deg2rad(0.03) * np.random.default_rng(1).standard_normal((len(rows), 3))
    params = with_orientation(params, offset)
    normal, gradient, chi2 = orientation_normal_equations(params, problem, 0, rows, chunk=3)
    np.testing.assert_allclose(chi2, frame_chi2(params, problem, 0, rows, chunk=4), rtol=1e-10)
    h = 1e-6
    for k in range(3):
        step = np.zeros_like(offset)
        step[:, k] = h
        up = frame_chi2(with_orientation(params, offset + step), problem, 0, rows, chunk=16)
        down = frame_chi2(with_orientation(params, offset - step), problem, 0, rows, chunk=16)
        # ∂χ²/∂Δ_k of each frame = 2 (Jᵀr)_k, and only its own Δ enters (the block-diagonal form)
        np.testing.assert_allclose(2 * gradient[:, k], (up - down) / (2 * h), rtol=1e-5, atol=1e-6 * chi2.max())
    assert np.all(np.linalg.eigvalsh(normal) >= -1e-9 * np.abs(normal).max())


def test_steps_bring_known_orientation_errors_back(problem_and_start):
    problem, params = problem_and_start
    rows = np.arange(problem.datasets[0].frames.count)
    error = np.zeros((len(rows), 3))
    error[:, :2] = np.deg2rad(0.06) * np.random.default_rng(2).choice([-1.0, 1.0], size=(len(rows), 2))
    params = with_orientation(params, error)
    history = []
    for _ in range(6):
        params, record = orientation_step(params, problem, [rows], chunk=16, sigma=0.1)
        history.append(record)
        assert record["chi2_after"] <= record["chi2_before"]
        assert record["largest_step_deg"] <= np.rad2deg(LARGEST_RADIUS) * (1 + 1e-9)
    remaining = np.rad2deg(np.abs(np.asarray(params.datasets[0].orientation)))
    assert remaining.max() < 0.003, remaining
    assert history[-1]["chi2_after"] < 1e-3 * history[0]["chi2_before"]


def test_a_call_goes_beyond_the_first_radius_when_the_steps_keep_lowering_chi2(problem_and_start, monkeypatch):
    """Errors of 0.25° in Δα and Δβ: one call moves frames further than the 0.1° first radius
    (the doubled radius was kept because χ² fell again), and ends lower than the same call
    held to the first radius."""
    import edrefine.orientation_solve as solve

    problem, params = problem_and_start
    rows = np.arange(problem.datasets[0].frames.count)
    error = np.zeros((len(rows), 3))
    error[:, :2] = np.deg2rad(0.25) * np.random.default_rng(3).choice([-1.0, 1.0], size=(len(rows), 2))
    params = with_orientation(params, error)
    _, record = orientation_step(params, problem, [rows], chunk=16, sigma=1.0)
    assert np.rad2deg(TRUST_RADIUS) * 1.5 < record["largest_step_deg"] <= np.rad2deg(LARGEST_RADIUS) * (1 + 1e-9)
    monkeypatch.setattr(solve, "LARGEST_RADIUS", TRUST_RADIUS)
    _, held = orientation_step(params, problem, [rows], chunk=16, sigma=1.0)
    assert held["largest_step_deg"] <= np.rad2deg(TRUST_RADIUS) * (1 + 1e-9)
    assert held["chi2_before"] == pytest.approx(record["chi2_before"])
    assert record["chi2_after"] < 0.7 * held["chi2_after"]


def test_without_the_restraint_the_rotation_about_the_beam_is_barely_determined(problem_and_start):
    problem, params = problem_and_start
    rows = np.arange(problem.datasets[0].frames.count)
    normal, _, _ = orientation_normal_equations(params, problem, 0, rows, chunk=16)
    diagonal = np.einsum("fkk->fk", normal)
    # excitation errors are invariant under a rotation about the beam; only the tilt direction sees Δω
    assert np.all(diagonal[:, 2] < 1e-2 * diagonal[:, :2].min(axis=1))


def test_gauss_newton_solver_holds_orientations_in_adam_and_runs_on_schedule(problem_and_start):
    problem, params = problem_and_start
    settings = RefinementSettings(thickness_model="perframe", epochs=12, orientation_solver="gauss-newton",
                                  orientation_every=4, orientation_delay=0.25)
    optimiser = make_optimiser(params, settings, steps=12)
    arrays = eqx.filter(params, eqx.is_inexact_array)
    gradient = jax.tree_util.tree_map(np.ones_like, arrays)
    new, _ = optimiser.step(gradient, optimiser.init(arrays), params, problem.crystal)
    assert np.all(np.asarray(new.datasets[0].orientation) == np.asarray(params.datasets[0].orientation))
    assert np.any(np.asarray(new.sites.position_free) != np.asarray(params.sites.position_free))
    assert [e for e in range(1, 13) if orientation_due(e, settings)] == [7, 11, 12]
    assert [e for e in range(1, 25) if orientation_due(e, RefinementSettings(epochs=24))] == [10, 20, 24]
    assert not any(orientation_due(e, RefinementSettings(epochs=12, orientation_solver="adam")) for e in range(1, 13))
    with pytest.raises(InputError, match="orientation_solver"):
        RefinementSettings(orientation_solver="newton")
    with pytest.raises(InputError, match="orientation_every"):
        RefinementSettings(orientation_every=0)


def test_the_step_moves_each_frames_own_correction_when_frames_are_left_out(problem_and_start):
    """Frames without reflections are not rows of the problem, but their corrections keep their
    place in the file's frame order: a step found for row r belongs to frame index[r]."""
    import dataclasses

    from edrefine.problem import prepare_dataset

    problem, params = problem_and_start
    kept = np.array([0, 2, 3, 5])
    subset = prepare_dataset(problem.crystal, problem.datasets[0].data, CALC, frames=kept)
    problem = dataclasses.replace(problem, datasets=(subset,))
    np.testing.assert_array_equal(np.asarray(subset.frames.index), kept)
    error = np.zeros(np.shape(params.datasets[0].orientation))
    error[kept] = np.deg2rad(0.05) * np.random.default_rng(3).standard_normal((len(kept), 3))
    params = with_orientation(params, error)
    rows = np.arange(len(kept))
    before = frame_chi2(params, problem, 0, rows, chunk=16)
    moved, record = orientation_step(params, problem, [rows], chunk=16, sigma=None)
    after = frame_chi2(moved, problem, 0, rows, chunk=16)
    np.testing.assert_allclose(after.sum(), record["chi2_after"], rtol=1e-9)
    assert np.all(after <= before) and after.sum() < 0.5 * before.sum()
    left_out = np.setdiff1d(np.arange(len(error)), kept)
    np.testing.assert_array_equal(np.asarray(moved.datasets[0].orientation)[left_out], 0.0)
