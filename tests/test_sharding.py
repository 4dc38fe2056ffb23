"""Frames split over two devices give the same loss, gradient and refinement as one device.

tests/conftest.py starts JAX with two host CPU devices (``--xla_force_host_platform_device_count=2``).
"""

import equinox as eqx
import jax
import numpy as np
import pytest

from edrefine import objective
from edrefine.crystal import perturb
from edrefine.errors import InputError
from edrefine.learned_thickness import Bounds, make_thickness_model
from edrefine.parameters import initial_parameters
from edrefine.problem import prepare_dataset, structure_context
from edrefine.refine import refine
from edrefine.refine_settings import RefinementSettings
from edrefine.settings import CalculationSettings
from edrefine.simulation import simulate_dataset, synthetic_template
from edrefine.thickness import Constant

from test_tilt_chunk import QUARTZ

CALC = CalculationSettings(gmax=1.1, sgmax=0.01, tilts=2, tilt_rule="gauss")


@pytest.fixture(scope="module")
def case():
    if len(jax.devices()) < 2:
        pytest.skip("needs two devices (tests/conftest.py asks for two host devices)")
    from edrefine.cif import read_crystal

    crystal = read_crystal(QUARTZ)
    template = synthetic_template(crystal.cell, alpha_range=(-9.0, 9.0), step=6.0, half_width=0.4, seed=2)
    data = simulate_dataset(crystal, template, Constant(300.0), counts=1e5, seed=1, g_max=1.1, sg_max=0.01, tilts=2,
                            tilt_rule="gauss")
    return crystal, data


def test_sharded_chunk_equals_unsharded(case):
    crystal, data = case
    problem = prepare_dataset(crystal, data, CALC)
    context = structure_context(crystal, CALC)
    model = make_thickness_model("neural", problem.data.frames.alpha, np.full(problem.frame_count, 300.0),
                                 Bounds(50.0, 1500.0), key=jax.random.key(0), width=8, depth=1)
    params = initial_parameters(crystal, [model], [problem.frame_count], None)
    frames = problem.frames.take(np.arange(problem.frames.count), 4)
    out = []
    for mesh in (None, objective.frame_mesh(2)):
        value, grad = objective.chunk_value_and_grad(params, 0, frames, crystal, context, problem.constants, True, mesh)
        e = objective.chunk_evaluation(params, 0, frames, crystal, context, problem.constants, mesh)
        out.append((float(value), np.asarray(e.fc), jax.tree_util.tree_leaves(eqx.filter(grad, eqx.is_inexact_array))))
    (v1, fc1, g1), (v2, fc2, g2) = out
    assert v2 == pytest.approx(v1, rel=1e-12)
    np.testing.assert_allclose(fc2, fc1, rtol=1e-12, atol=1e-14)
    for a, b in zip(g2, g1):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(b), initial=0.0)))


def test_a_refinement_on_two_devices_ends_where_one_device_ends(case):
    crystal, data = case
    start = perturb(crystal, jax.random.key(3), 0.05)
    results = []
    for devices in (1, 2):
        settings = RefinementSettings(epochs=2, polish_steps=0, nn_width=8, nn_depth=1, devices=devices,
                                      chunk_frames=3, thickness_start="dataset", report_every=2,
                                      refine=("positions", "thickness"), epoch_precision="float64")
        results.append(refine(start, [data], CALC, settings))
    one, two = results
    assert two.metrics["R_obs"] == pytest.approx(one.metrics["R_obs"], rel=1e-9)
    np.testing.assert_allclose(two.crystal.params.position_free, one.crystal.params.position_free, rtol=1e-8,
                               atol=1e-12)


def test_more_devices_than_available_is_a_clear_error():
    with pytest.raises(InputError, match="devices"):
        objective.frame_mesh(len(jax.devices()) + 1)
