"""Levenberg–Marquardt over every refined group: layout, normal equations, convergence
(resume equals uninterrupted: tests/test_refine.py)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import equinox as eqx

from edrefine.cif import read_crystal
from edrefine.crystal import coordinate_rmsd, perturb
from edrefine.least_squares import Layout, damped_step, marquardt_scaling, normal_equations
from edrefine.objective import chunk_chi2
from edrefine.optimise import build_parameters
from edrefine.refine import build_problem, refine
from edrefine.refine_settings import RefinementSettings
from edrefine.settings import CalculationSettings
from edrefine.simulation import simulate_dataset, synthetic_template
from edrefine.thickness import Constant

QUARTZ = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quartz.cif"
CALC = CalculationSettings(gmax=1.6, sgmax=0.01, tilts=3, tilt_rule="gauss")
ALL = ("positions", "adp", "orientation", "thickness")


@pytest.fixture(scope="module")
def truth():
    return read_crystal(QUARTZ)


@pytest.fixture(scope="module")
def data(truth):
    # 14-25 reflections per frame: enough to fix three orientation corrections and a thickness per frame
    template = synthetic_template(truth.cell, alpha_range=(-24.0, 24.0), step=6.0, half_width=1.0, seed=3,
                                  rotation_axis_position=10.0)
    return simulate_dataset(truth, template, Constant(300.0), counts=1e5, noise=False, g_max=1.6, sg_max=0.01,
                            tilts=3, tilt_rule="gauss")


@pytest.fixture(scope="module")
def problem_and_params(truth, data):
    start = perturb(truth, jax.random.key(5), 0.03)
    problem = build_problem(start, [data], CALC)
    settings = RefinementSettings(thickness_model="perframe", refine=ALL)
    params = build_parameters(problem, settings, None)
    orientation = params.datasets[0].orientation + 1e-4 * jnp.arange(params.datasets[0].orientation.size).reshape(-1, 3)
    params = eqx.tree_at(lambda p: p.datasets[0].orientation, params, orientation)
    return problem, params


def test_the_vector_holds_exactly_the_free_entries_of_the_refined_groups(problem_and_params, data):
    problem, params = problem_and_params
    layout = Layout.of(params, problem.crystal, ALL)
    frames = problem.datasets[0].frames.count
    # quartz: Si x, O xyz free; U_iso of both sites; 3 orientation corrections and one thickness per frame
    assert layout.size(params) == 4 + 2 + 3 * frames + frames
    vector = layout.to_vector(params)
    back = layout.from_vector(vector, params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert Layout.of(params, problem.crystal, ("positions",)).size(params) == 4


def _chi2(vector, params, layout, problem):
    p = layout.from_vector(vector, params)
    total = 0.0
    for _, frames in problem.datasets[0].frames.chunks(np.arange(problem.datasets[0].frames.count), 64):
        total = total + chunk_chi2(p, 0, frames, problem.crystal, problem.context, problem.datasets[0].constants, False)
    return total


def test_normal_equations_agree_with_reverse_mode_and_finite_differences(problem_and_params):
    problem, params = problem_and_params
    layout = Layout.of(params, problem.crystal, ALL)
    normal, gradient, chi2 = normal_equations(params, problem, layout, chunk=4, block=7)
    vector = layout.to_vector(params)
    value, reverse = jax.value_and_grad(_chi2)(vector, params, layout, problem)
    np.testing.assert_allclose(chi2, float(value), rtol=1e-12)
    np.testing.assert_allclose(2 * gradient, np.asarray(reverse), rtol=1e-7, atol=1e-9 * np.max(np.abs(reverse)))
    # χ² is quadratic to first order in J: χ²(v ± h e_i) − 2χ²(v) + … ≈ 2 h² (JᵀJ)_ii for small residuals
    assert np.all(np.linalg.eigvalsh(normal) > -1e-9 * np.max(np.diag(normal)))
    for i in (0, 4, 6, layout.size(params) - 1):
        h = 1e-6 * max(1.0, abs(float(vector[i])))
        e = jnp.zeros_like(vector).at[i].set(h)
        fd = (float(_chi2(vector + e, params, layout, problem)) - float(_chi2(vector - e, params, layout, problem))) / (2 * h)
        np.testing.assert_allclose(2 * gradient[i], fd, rtol=2e-5, atol=1e-8 * np.max(np.abs(gradient)))


@pytest.mark.parametrize("block", [1, 3, 4, 6, 7, 32])
def test_the_jacobian_in_equal_tangent_blocks_is_the_dense_one(block):
    """Seven tangents: blocks of 3 go as three of 3, blocks of 4 or 6 as two of 4, so the padding
    is never more than one tangent per block; each block's primal pass gives the residuals."""
    from edrefine.least_squares import tangent_blocks, transposed_jacobian

    matrix = jnp.asarray(np.random.default_rng(1).normal(size=(5, 7)))

    def residuals(v):
        return jnp.sin(matrix @ v) + v[:5] ** 2

    vector = jnp.linspace(-0.4, 0.5, 7)
    r, jt = transposed_jacobian(residuals, vector, block)
    np.testing.assert_allclose(r, residuals(vector), rtol=1e-14)
    np.testing.assert_allclose(jt, jax.jacfwd(residuals)(vector).T, rtol=1e-13, atol=1e-15)
    count, size = tangent_blocks(7, block)
    assert size <= block and count == -(-7 // block) and 0 <= count * size - 7 < count


def test_the_estimated_cost_of_the_normal_equations_counts_the_padded_tangents():
    from edrefine.least_squares import TANGENT_COST, normal_equations_seconds, tangent_blocks

    assert tangent_blocks(33, 32) == (2, 17)
    assert tangent_blocks(31, 32) == (1, 31)
    assert normal_equations_seconds(10.0, 31, 32) == pytest.approx(10.0 * (1 + TANGENT_COST * 31))
    assert normal_equations_seconds(10.0, 33, 32) == pytest.approx(10.0 * 2 * (1 + TANGENT_COST * 17))


def test_a_damped_step_goes_from_gauss_newton_to_steepest_descent():
    rng = np.random.default_rng(0)
    jacobian = rng.normal(size=(30, 4))
    normal, gradient = jacobian.T @ jacobian, jacobian.T @ rng.normal(size=30)
    scaling = marquardt_scaling(normal)
    np.testing.assert_allclose(damped_step(normal, gradient, 0.0, scaling), -np.linalg.solve(normal, gradient))
    large = damped_step(normal, gradient, 1e8, scaling)
    np.testing.assert_allclose(large * 1e8, -gradient / scaling, rtol=1e-6)


def test_levenberg_marquardt_refines_structure_orientations_and_thickness_together(truth, data):
    start = perturb(truth, jax.random.key(6), 0.04)
    settings = RefinementSettings(thickness_model="perframe", optimiser="lm", epochs=12, refine=ALL,
                                  report_every=100, thickness_start="dataset")
    result = refine(start, [data], CALC, settings)
    assert float(coordinate_rmsd(result.crystal, truth)) < 1e-4
    assert result.metrics["wR_all"] < 1e-3 * result.metrics["start"]["wR_all"]
    np.testing.assert_allclose([f["thickness_mean"] for f in result.frames], 300.0, rtol=0.01)
    losses = [h["loss"] for h in result.history]
    assert all(b <= a * (1 + 1e-9) + 1e-24 for a, b in zip(losses, losses[1:]))  # rounding once χ² ≈ 0
    assert all("lambda" in h for h in result.history)


def test_uncertainties_from_chunked_normal_equations_equal_the_dense_jacobian(problem_and_params):
    """Σ = GoF² (JᵀJ)⁻¹ summed chunk by chunk with tangent blocks equals the one-piece ``jacfwd``."""
    from edrefine.loss import StructuralIndex, residual_vector
    from edrefine.uncertainty import observation_count, structural_covariance

    problem, params = problem_and_params
    index = StructuralIndex.of(problem.crystal, ("positions", "adp"))
    y = index.to_vector(params.sites)
    r = np.asarray(residual_vector(y, params, index, problem))
    j = np.asarray(jax.jacfwd(lambda v: residual_vector(v, params, index, problem))(y))
    n = observation_count(problem)
    assert n == int(np.sum(np.any(j != 0, axis=1) | (r != 0)))
    dense = np.linalg.inv(j.T @ j) * float(r @ r) / (n - index.size)
    for chunk, block in ((3, 4), (64, 32)):
        covariance, gof = structural_covariance(params, problem, index, chunk=chunk, block=block)
        np.testing.assert_allclose(covariance, dense, rtol=1e-8)
        np.testing.assert_allclose(gof, np.sqrt(float(r @ r) / (n - index.size)), rtol=1e-10)


def test_the_tangent_plan_fits_the_memory_limit_with_fewer_tilts_before_fewer_tangents(problem_and_params):
    from edrefine.least_squares import tangent_plan
    from edrefine.problem import RUNTIME_MEMORY, frame_memory, resident_memory

    problem, _ = problem_and_params
    dataset = problem.datasets[0]
    assert dataset.frames.tilts_per_segment == 3
    resident = RUNTIME_MEMORY + resident_memory(dataset)
    per_tilt = frame_memory(dataset, 1, tilt_chunk=1)

    def plan(limit_bytes, parameters):
        planned, block = tangent_plan(problem, 1, limit_bytes / 1e9, parameters)
        return block, planned.datasets[0].constants.tilt_chunk

    assert plan(resident + 40 * frame_memory(dataset, 1, tilt_chunk=3), 40) == (32, 0)  # all tilts side by side
    assert plan(resident + 32.5 * per_tilt, 40) == (32, 1)  # one tilt at a time keeps all 32 tangents together
    assert plan(resident + 5.5 * per_tilt, 40) == (5, 1)
    assert plan(resident + 5.5 * per_tilt, 3) == (3, 1)
    assert plan(resident, 40) == (1, 1)


def test_uncertainties_from_a_cheaper_jacobian_keep_the_refined_chi2_and_approach_the_full_one(problem_and_params):
    """``uncertainty_beams``: J from fewer strong beams (the rest folded in by Bethe perturbation),
    GoF from the χ² of the calculation itself; with every beam strong it is the full result."""
    import dataclasses

    from edrefine.least_squares import total_chi2
    from edrefine.loss import StructuralIndex
    from edrefine.summary import frame_table
    from edrefine.uncertainty import jacobian_problem, structural_covariance, table_chi2

    problem, params = problem_and_params
    capacity = problem.datasets[0].frames.capacity
    assert jacobian_problem(problem, 0) is problem
    assert jacobian_problem(problem, capacity) is problem
    reduced = jacobian_problem(problem, capacity // 2)
    assert reduced.datasets[0].constants.strong_beams == capacity // 2
    small = dataclasses.replace(problem, datasets=(dataclasses.replace(
        problem.datasets[0], constants=dataclasses.replace(problem.datasets[0].constants, strong_beams=4)),))
    assert jacobian_problem(small, 8) is small
    assert jacobian_problem(small, 2).datasets[0].constants.strong_beams == 2

    chi2 = total_chi2(params, problem, 64)
    np.testing.assert_allclose(table_chi2(frame_table(params, problem, 64), params, problem), chi2, rtol=1e-10)
    index = StructuralIndex.of(problem.crystal, ("positions", "adp"))
    full, gof = structural_covariance(params, problem, index)
    cheaper, cheaper_gof = structural_covariance(params, reduced, index, chi2=chi2)
    assert cheaper_gof == pytest.approx(gof, rel=1e-10)
    _, own_gof = structural_covariance(params, reduced, index)
    assert own_gof != pytest.approx(gof, rel=1e-9)  # the reduced calculation's own χ² differs
    ratio = np.sqrt(np.diag(cheaper) / np.diag(full))
    assert np.all(np.abs(ratio - 1) < 0.02), ratio  # 0.2 % at half the beams (quartz, 1.6 Å⁻¹)
    assert np.any(np.abs(ratio - 1) > 1e-6)


def test_marginal_uncertainties_equal_the_structural_block_of_the_whole_inverse(problem_and_params):
    """With orientation corrections and a per-frame thickness refined, the frame-by-frame Schur
    complement gives exactly the structural block of (JᵀJ)⁻¹ over every refined parameter, and the
    marginal s.u.s are at least the conditional ones."""
    from edrefine.loss import StructuralIndex
    from edrefine.uncertainty import nuisances_of, structural_covariance

    problem, params = problem_and_params
    index = StructuralIndex.of(problem.crystal, ("positions", "adp"))
    whole, _, _ = normal_equations(params, problem, Layout.of(params, problem.crystal, ALL), chunk=64, block=32)
    nuisances = nuisances_of(params, problem.crystal, index, ALL)
    assert nuisances.directions == (((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)),)
    assert nuisances.layout.size(params) == index.size
    n_parameters = Layout.of(params, problem.crystal, ALL).size(params)
    for chunk, block in ((3, 4), (64, 32)):
        marginal, gof = structural_covariance(params, problem, index, n_parameters, chunk, block, nuisances=nuisances)
        expected = np.linalg.inv(whole)[:index.size, :index.size] * gof**2
        np.testing.assert_allclose(marginal, expected, rtol=1e-6)
    conditional, _ = structural_covariance(params, problem, index, n_parameters)
    assert np.all(np.diag(marginal) >= np.diag(conditional) * (1 - 1e-9))
    assert np.max(np.diag(marginal) / np.diag(conditional)) > 1.01


def test_marginal_uncertainties_take_global_thickness_and_absorption_into_the_dense_vector(truth, data):
    from edrefine.loss import StructuralIndex
    from edrefine.uncertainty import nuisances_of, structural_covariance

    start = perturb(truth, jax.random.key(5), 0.03)
    problem = build_problem(start, [data], CALC)
    refined = ("positions", "adp", "thickness", "absorption")
    params = build_parameters(problem, RefinementSettings(thickness_model="plate", refine=refined), 0.05)
    params = eqx.tree_at(lambda p: p.datasets[0].thickness.normal, params, jnp.array([0.3, 0.5]))  # φ matters
    index = StructuralIndex.of(problem.crystal, ("positions", "adp"))
    nuisances = nuisances_of(params, problem.crystal, index, refined)
    assert nuisances.directions == ((),)
    assert nuisances.layout.size(params) == index.size + 1 + 3  # κ; plate t₀ and its normal (θ, φ)
    whole, _, _ = normal_equations(params, problem, Layout.of(params, problem.crystal, refined), chunk=64, block=32)
    marginal, gof = structural_covariance(params, problem, index, 12, nuisances=nuisances)
    np.testing.assert_allclose(marginal, np.linalg.inv(whole)[:index.size, :index.size] * gof**2, rtol=1e-6)
