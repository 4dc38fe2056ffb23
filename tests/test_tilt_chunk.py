"""Tilt chunking: the same intensities, loss and gradients with fewer tilts side by side, and the
chunk chosen to fit the memory limit."""

import dataclasses
import functools
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edrefine import measurement, objective
from edrefine.cif import read_crystal
from edrefine.errors import InputError
from edrefine.learned_thickness import Bounds, make_thickness_model
from edrefine.parameters import initial_parameters
from edrefine.problem import bound_memory, frame_memory, prepare_dataset, structure_context, tilt_chunks
from edrefine.settings import CalculationSettings
from edrefine.simulation import simulate_dataset, synthetic_template
from edrefine.thickness import Constant

from test_precession import LAMBDA, setup as silicon_setup

QUARTZ = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quartz.cif"
CALC = CalculationSettings(gmax=1.2, sgmax=0.01, tilts=5, tilt_rule="gauss")


@pytest.mark.parametrize("chunk", [3])
def test_chunked_tilts_give_the_same_intensities_and_gradients(chunk):
    m, k, candidates, u_table = silicon_setup(1.0)
    tilts, weights = measurement.tilt_rule(7, np.deg2rad(0.4), "gauss")
    axis = jnp.asarray([0.6, 0.8, 0.0])
    stack = measurement.rotation_orientations(jnp.asarray(m), axis, jnp.asarray(tilts))
    sets = measurement.orientation_beam_sets(candidates, np.asarray(stack)[None], k, 0.02)
    u = u_table(sets)
    probe = jnp.asarray(np.random.default_rng(3).uniform(size=(2, sets.capacity)))

    @functools.partial(jax.jit, static_argnums=2)
    def total(u_table, stack, chunk):
        i = measurement.orientation_intensities(u_table, jnp.asarray(sets.coupling_index[0]), jnp.asarray(sets.hkl[0]),
                                                jnp.asarray(sets.mask[0]), stack, jnp.asarray(weights),
                                                jnp.asarray(LAMBDA), jnp.array([150.0, 410.0]), None, chunk)
        return i, jnp.sum(i * probe)

    def both(chunk):
        return jax.jit(jax.value_and_grad(lambda u, s: total(u, s, chunk)[1], argnums=(0, 1)))(u, stack)

    np.testing.assert_allclose(total(u, stack, chunk)[0], total(u, stack, 0)[0], rtol=1e-12, atol=1e-15)
    (v0, g_full), (v1, g_chunk) = both(0), both(chunk)
    assert float(v1) == pytest.approx(float(v0), rel=1e-12)
    for a, b in zip(g_chunk, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_tilt_chunks_pad_by_less_than_one_chunk():
    for tilts in (1, 2, 7, 42):
        sizes = tilt_chunks(tilts)
        assert sizes[0] == tilts and sizes[-1] == 1 and sizes == sorted(sizes, reverse=True)
        for c in sizes:
            chunks = -(-tilts // c)
            assert chunks * c - tilts < chunks  # padding: fewer zero-weight tilts than chunks


@pytest.fixture(scope="module")
def quartz():
    crystal = read_crystal(QUARTZ)
    template = synthetic_template(crystal.cell, alpha_range=(-8.0, 8.0), step=8.0, half_width=0.4, seed=2)
    data = simulate_dataset(crystal, template, Constant(300.0), counts=1e5, seed=1, g_max=1.2, sg_max=0.01, tilts=5,
                            tilt_rule="gauss")
    return crystal, prepare_dataset(crystal, data, CALC), structure_context(crystal, CALC)


def test_a_chunked_objective_has_the_same_loss_and_gradient(quartz):
    crystal, problem, context = quartz
    model = make_thickness_model("neural", problem.data.frames.alpha, np.full(problem.frame_count, 300.0),
                                 Bounds(50.0, 1500.0), key=jax.random.key(0), width=8, depth=1)
    params = initial_parameters(crystal, [model], [problem.frame_count], None)
    frames = jax.tree_util.tree_map(jnp.asarray, problem.frames)
    results = []
    for chunk in (0, 2):
        constants = dataclasses.replace(problem.constants, tilt_chunk=chunk)
        results.append(objective.chunk_value_and_grad(params, 0, frames, crystal, context, constants))
    (v0, g0), (v2, g2) = results
    assert float(v2) == pytest.approx(float(v0), rel=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(g2, eqx.is_inexact_array)),
                    jax.tree_util.tree_leaves(eqx.filter(g0, eqx.is_inexact_array))):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(b)) + 1e-30))


def test_bound_memory_picks_the_largest_chunk_that_fits(quartz):
    _, problem, _ = quartz
    tilts = problem.frames.tilts_per_segment
    full = frame_memory(problem, 1, tilt_chunk=0)
    datasets, peak = bound_memory([problem], 1, 1e6)
    assert datasets[0].constants.tilt_chunk == 0 and frame_memory(datasets[0], 1) == full
    base = peak - full
    limit = (base + 0.5 * full) / 1e9
    datasets, peak = bound_memory([problem], 1, limit)
    chunk = datasets[0].constants.tilt_chunk
    assert 0 < chunk < tilts and peak <= limit * 1e9
    larger = min(c for c in tilt_chunks(tilts) if c > chunk)
    assert base + frame_memory(problem, 1, tilt_chunk=larger) > limit * 1e9
    forced, _ = bound_memory([problem], 1, 1e6, tilt_chunk=2)
    assert forced[0].constants.tilt_chunk == 2
    with pytest.raises(InputError, match="memory_limit"):
        bound_memory([problem], 1, base / 1e9)
