"""The refinement target: closed-form scales, agreement with score_dataset, chunking, exact gradients."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edrefine import objective
from edrefine.cif import read_crystal
from edrefine.learned_thickness import Bounds, FrameFeatures, make_thickness_model
from edrefine.parameters import group_labels, initial_parameters, project
from edrefine.problem import prepare_dataset, structure_context
from edrefine.score import score_dataset
from edrefine.settings import CalculationSettings
from edrefine.simulation import simulate_dataset, synthetic_template
from edrefine.thickness import Constant

QUARTZ = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quartz.cif"
CALC = CalculationSettings(gmax=1.3, sgmax=0.01, tilts=3, tilt_rule="gauss")


@pytest.fixture(scope="module")
def setup():
    crystal = read_crystal(QUARTZ)
    template = synthetic_template(crystal.cell, alpha_range=(-12.0, 12.0), step=6.0, half_width=0.5, seed=2,
                                  rotation_axis_position=10.0)
    data = simulate_dataset(crystal, template, Constant(320.0), counts=1e5, seed=1, g_max=1.3, sg_max=0.01, tilts=3,
                            tilt_rule="gauss")
    problem = prepare_dataset(crystal, data, CALC)
    context = structure_context(crystal, CALC)
    return crystal, data, problem, context


def params_for(crystal, problem, kind, thickness=320.0, kappa=None):
    model = make_thickness_model(kind, problem.data.frames.alpha, np.full(problem.frame_count, thickness),
                                 Bounds(50.0, 1500.0), key=jax.random.key(0), width=8, depth=1)
    return initial_parameters(crystal, [model], [problem.frame_count], kappa)


def total_chi2(params, problem, crystal, context):
    return float(objective.chunk_chi2(params, 0, jax.tree_util.tree_map(jnp.asarray, problem.frames), crystal,
                                      context, problem.constants))


def test_scale_is_the_weighted_least_squares_optimum(setup):
    crystal, _, problem, context = setup
    params = params_for(crystal, problem, "constant", 300.0)
    evaluation = objective.chunk_evaluation(params, 0, problem.frames, crystal, context, problem.constants)
    f = problem.frames
    for i in range(f.count):
        m = np.asarray(f.refl_mask[i])
        fc = np.asarray(evaluation.fc[i])[m] / float(evaluation.scale[i])
        fo, w = np.asarray(f.fo[i])[m], np.asarray(f.weight[i])[m]
        chi2 = lambda k: np.sum(w * (fo - k * fc) ** 2)  # noqa: E731
        k = float(evaluation.scale[i])
        assert chi2(k) <= min(chi2(1.001 * k), chi2(0.999 * k))
        np.testing.assert_allclose(chi2(k), float(evaluation.chi2[i]), rtol=1e-10)


def test_matches_score_dataset_at_one_thickness(setup):
    crystal, data, problem, context = setup
    params = params_for(crystal, problem, "constant", 320.0)
    features = FrameFeatures(jnp.arange(1), jnp.zeros(1), jnp.zeros(3))
    thickness = float(params.datasets[0].thickness(features)[0][0, 0])
    scored = score_dataset(crystal, data, thickness_search=False, thickness_grid=thickness, **CALC.score_arguments())
    evaluation = objective.chunk_evaluation(params, 0, problem.frames, crystal, context, problem.constants)
    np.testing.assert_allclose(np.asarray(evaluation.scale), [row["scale"] for row in scored["frames"]], rtol=1e-9)
    loss = float(np.sum(evaluation.chi2)) / objective.weighted_total(problem.frames)
    np.testing.assert_allclose(np.sqrt(loss), scored["wR_all"], rtol=1e-9)


def test_truth_fits_to_the_noise_level_and_chunks_add_up(setup):
    crystal, _, problem, context = setup
    params = params_for(crystal, problem, "constant", 320.0)
    whole = total_chi2(params, problem, crystal, context)
    assert np.sqrt(whole / objective.weighted_total(problem.frames)) < 0.02
    parts = 0.0
    for rows in (np.arange(0, 2), np.arange(2, problem.frames.count)):
        frames = problem.frames.take(rows, 4)
        parts += float(objective.chunk_chi2(params, 0, frames, crystal, context, problem.constants))
    np.testing.assert_allclose(parts, whole, rtol=1e-12)


def _gradient_check(setup, kind, kappa, leaf_tolerance):
    crystal, _, problem, context = setup
    params = params_for(crystal, problem, kind, 300.0, kappa=kappa)
    frames = jax.tree_util.tree_map(jnp.asarray, problem.frames)
    params = eqx.tree_at(lambda p: p.datasets[0].orientation, params,
                         0.002 * jnp.sin(jnp.arange(params.datasets[0].orientation.size) + 1.0).reshape(-1, 3))
    params = eqx.tree_at(lambda p: p.sites.position_free, params, params.sites.position_free + 0.003)
    array_part, static_part = eqx.partition(params, eqx.is_inexact_array)
    labels = jax.tree_util.tree_leaves(group_labels(params))
    leaves, treedef = jax.tree_util.tree_flatten(array_part)

    @jax.jit
    def f(values):
        return objective.chunk_chi2(eqx.combine(jax.tree_util.tree_unflatten(treedef, values), static_part), 0,
                                    frames, crystal, context, problem.constants)

    gradient = jax.grad(f)(leaves)
    h = 1e-6
    # a central difference cannot resolve less than the rounding of f itself, ~ eps·|f|/h
    resolution = max(1e-6, 10 * np.finfo(np.float64).eps * abs(float(f(leaves))) / h)
    rng = np.random.default_rng(0)
    for i, (leaf, label) in enumerate(zip(leaves, labels)):
        assert np.all(np.isfinite(np.asarray(gradient[i])))
        direction = jnp.asarray(rng.standard_normal(leaf.shape))
        shifted = lambda t: f([x + t * direction if j == i else x for j, x in enumerate(leaves)])  # noqa: E731
        numeric = float((shifted(h) - shifted(-h)) / (2 * h))
        exact = float(jnp.sum(gradient[i] * direction))
        assert exact == pytest.approx(numeric, rel=leaf_tolerance.get(label, 1e-6), abs=resolution), label


@pytest.mark.parametrize("kind", ["constant", "neural-grid"])
def test_gradients_match_finite_differences(setup, kind):
    """Every parameter group (positions, U, occupancy, orientation, thickness model), elastic. The other
    thickness models' own derivatives are checked in test_learned_thickness.py."""
    _gradient_check(setup, kind, None, {})


def test_gradients_with_absorption(setup):
    """κ and structure to 1e-6; orientation to 5e-3: the first-order absorption route regularises its
    derivative at accidental near-degeneracies (docs/propagator.md), which a tilt sweep meets."""
    _gradient_check(setup, "neural", 0.05, {"orientation": 5e-3})


def test_projection_keeps_u_positive_and_occupancy_bounded(setup):
    crystal, _, problem, _ = setup
    params = params_for(crystal, problem, "constant")
    bad = eqx.tree_at(lambda p: (p.sites.u_free, p.sites.occupancy), params,
                      (params.sites.u_free.at[:, 0].set(-0.01), jnp.array([1.3, -0.2])))
    fixed = project(bad, crystal, 1e-4)
    assert np.all(np.asarray(fixed.sites.u_free[:, 0]) == 1e-4)
    np.testing.assert_array_equal(np.asarray(fixed.sites.occupancy), [1.0, 0.0])


def test_chunks_trim_padding_without_changing_the_result(setup):
    """Extra padded beams (the capacity of the largest frame) are decoupled exactly; chunks cut them."""
    import dataclasses

    crystal, _, problem, context = setup
    params = params_for(crystal, problem, "constant", 320.0)
    f = problem.frames
    extra = 32
    wide = dataclasses.replace(
        f, beam_hkl=np.pad(f.beam_hkl, ((0, 0), (0, 0), (0, extra), (0, 0))),
        beam_mask=np.pad(f.beam_mask, ((0, 0), (0, 0), (0, extra))),
        coupling_index=np.pad(f.coupling_index, ((0, 0), (0, 0), (0, extra), (0, extra))))
    rows = np.arange(f.count)
    untrimmed = wide.take(rows, trim=False)
    (_, trimmed), = wide.chunks(rows, f.count)
    assert trimmed.capacity < untrimmed.capacity
    a = objective.chunk_evaluation(params, 0, untrimmed, crystal, context, problem.constants)
    b = objective.chunk_evaluation(params, 0, trimmed, crystal, context, problem.constants)
    order = np.argsort(-f.beam_counts(), kind="stable")
    np.testing.assert_allclose(np.asarray(b.chi2), np.asarray(a.chi2)[order], rtol=1e-9)


@pytest.mark.parametrize("size, multiple, expected", [(4, 1, 3), (3, 1, 3), (2, 1, 2), (4, 2, 4), (5, 1, 5), (9, 1, 5)])
def test_chunks_are_even_and_put_the_padding_at_the_fewest_beams(setup, size, multiple, expected):
    """Every row once, in the fewest chunks of at most ``size`` frames, all of one size (a multiple
    of ``multiple``); beam counts fall from chunk to chunk, so the padded frames of the last chunk
    are solved at the smallest capacity."""
    f = setup[2].frames
    assert f.count == 5
    rows = np.arange(f.count)
    pieces = f.chunks(rows, size, multiple)
    taken = np.concatenate([part for part, _ in pieces])
    np.testing.assert_array_equal(np.sort(taken), rows)
    assert np.all(np.diff(f.beam_counts()[taken]) <= 0)
    assert all(arrays.count == expected for _, arrays in pieces)
    assert len(pieces) == -(-f.count // expected)
    assert pieces[-1][1].capacity == min(arrays.capacity for _, arrays in pieces)
