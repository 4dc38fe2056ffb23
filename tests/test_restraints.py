"""Distance restraints: the distance to the nearest image, its derivatives, and their pull in a refinement."""

import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from edrefine.cif import read_crystal
from edrefine.crystal import perturb
from edrefine.errors import InputError
from edrefine.refine import refine
from edrefine.refine_settings import RefinementSettings
from edrefine.restraints import distance_restraints, restraint_residuals
from edrefine.settings import CalculationSettings
from edrefine.symmetry import operators_from_triplets
from edrefine.simulation import simulate_dataset, synthetic_template
from edrefine.thickness import Constant

QUARTZ = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quartz.cif"


@pytest.fixture(scope="module")
def quartz():
    return read_crystal(QUARTZ)


def brute_force_distance(crystal, i: int, j: int) -> float:
    """Shortest distance [Å] from site i to any other image of site j, over ±2 cells."""
    x = np.asarray(crystal.positions())
    o = np.asarray(crystal.cell.orthogonalisation())
    operators = operators_from_triplets(crystal.symops)
    images = [r @ x[j] + t for r, t in zip(operators.rotations, operators.translations)]
    best = np.inf
    for image, shift in itertools.product(images, itertools.product(range(-2, 3), repeat=3)):
        d = np.linalg.norm(o @ (image + np.array(shift) - x[i]))
        if d > 1e-3:
            best = min(best, d)
    return best


@pytest.mark.parametrize("atoms", [("Si1", "O1"), ("O1", "Si1"), ("O1", "O1"), ("Si1", "Si1")])
def test_the_residual_is_the_distance_to_the_nearest_image_over_sigma(quartz, atoms):
    i, j = (quartz.labels.index(a) for a in atoms)
    expected = brute_force_distance(quartz, i, j)
    restraint = distance_restraints(quartz, [{"atoms": list(atoms), "distance": 1.0, "sigma": 0.05}])
    np.testing.assert_allclose(float(restraint_residuals(quartz, restraint)[0]), (expected - 1.0) / 0.05, rtol=1e-10)
    assert expected > 1.5  # Si–O 1.61 Å, O–O 2.6 Å, Si–Si 3.06 Å: never the site itself


def test_the_residuals_have_the_finite_difference_gradient(quartz):
    crystal = perturb(quartz, jax.random.key(3), 0.05)
    restraint = distance_restraints(crystal, [{"atoms": ["Si1", "O1"], "distance": 1.6, "sigma": 0.02},
                                              {"atoms": ["O1", "O1"], "distance": 2.6, "sigma": 0.05}])

    def residuals(position_free):
        params = crystal.params
        return restraint_residuals(crystal.with_params(type(params)(position_free, params.u_free, params.occupancy)),
                                   restraint)

    check_grads(residuals, (crystal.params.position_free,), order=1, modes=("rev", "fwd"), eps=1e-6, atol=1e-6,
                rtol=1e-5)


def test_bad_restraints_are_refused_with_the_entry_named(quartz):
    with pytest.raises(InputError, match="restraint 2: no site 'C9'"):
        distance_restraints(quartz, [{"atoms": ["Si1", "O1"], "distance": 1.6}, {"atoms": ["Si1", "C9"], "distance": 1.6}])
    with pytest.raises(InputError, match="restraint 1: need distance > 0"):
        distance_restraints(quartz, [{"atoms": ["Si1", "O1"], "distance": -1.0}])
    with pytest.raises(InputError, match="restraint 1: 'atoms'"):
        distance_restraints(quartz, [{"atoms": ["Si1"], "distance": 1.6}])


def test_a_tight_restraint_pulls_the_refined_distance_to_its_target(quartz):
    template = synthetic_template(quartz.cell, alpha_range=(-20.0, 20.0), step=5.0, half_width=0.5, seed=4,
                                  rotation_axis_position=10.0)
    data = simulate_dataset(quartz, template, Constant(280.0), counts=1e5, noise=False, g_max=1.2, sg_max=0.01,
                            tilts=3, tilt_rule="gauss")
    calculation = CalculationSettings(gmax=1.2, sgmax=0.01, tilts=3, tilt_rule="gauss")
    settings = RefinementSettings(thickness_model="constant", optimiser="lm", epochs=6, refine=("positions",),
                                  report_every=100, time_limit=None)
    # shorter than both Si–O bonds (1.607, 1.613 Å): a longer target would swap the nearest image
    entries = [{"atoms": ["Si1", "O1"], "distance": 1.57, "sigma": 0.0002}]
    restraint = distance_restraints(quartz, entries)
    si, o = quartz.labels.index("Si1"), quartz.labels.index("O1")
    free = refine(quartz, [data], calculation, settings)
    pulled = refine(quartz, [data], calculation, settings, restraints=entries)
    distance = lambda crystal: 1.57 + 0.0002 * float(restraint_residuals(crystal, restraint)[0])  # noqa: E731
    assert abs(distance(free.crystal) - brute_force_distance(quartz, si, o)) < 1e-3  # exact data: stays put
    assert abs(distance(pulled.crystal) - 1.57) < 0.003
    # GoF of the reflections alone (the Jana form) and the restrained GoF that scales the s.u.s
    assert np.isfinite(pulled.metrics["GoF_restrained"]) and "GoF_restrained" not in free.metrics
    assert pulled.metrics["GoF_restrained"] != pytest.approx(pulled.metrics["GoF"], rel=1e-3)
