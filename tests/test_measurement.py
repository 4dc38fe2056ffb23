"""Continuous-rotation frame integration: quadrature, beam unions, convergence, flux, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edrefine import measurement
from edrefine.beams import centring_vectors, excitation_errors, lattice_points, pad_beam_sets
from edrefine.crystal import build_crystal
from edrefine.diffraction import crystal_potential, orientation_amplitudes
from edrefine.electron import crystal_wavenumber, lorentz_factor, wavelength
from edrefine.errors import InputError
from edrefine.frames import axis_rotation, rotation_x, rotation_y, rotation_z
from edrefine.structure_factor import form_factors_for, site_element_index

LAMBDA = wavelength(200.0)
GAMMA = lorentz_factor(200.0)
AXIS = np.array([1.0, 0.0, 0.0])


def silicon():
    return build_crystal((5.4309,) * 3 + (90.0,) * 3, "F d -3 m:2", ["Si1"], ["Si"], [[0.125, 0.125, 0.125]], u_iso=[0.0059])


def general_orientation(crystal):
    rotation = np.asarray(rotation_z(0.3) @ rotation_x(0.7) @ rotation_y(-0.4))
    return rotation @ np.asarray(crystal.cell.reciprocal_matrix())


def frame_setup(crystal, half_width, tilts, rule="midpoint", g_max=1.0, sg_max=0.02):
    factors = form_factors_for(crystal)
    index = jnp.asarray(site_element_index(crystal, factors))
    u0 = jnp.real(crystal_potential(crystal, factors, index, jnp.zeros((1, 3), int), GAMMA)[0])
    k = float(crystal_wavenumber(LAMBDA, u0))
    m = general_orientation(crystal)
    candidates = lattice_points(m, g_max, centring_vectors(crystal.symops))
    nodes, weights = measurement.tilt_rule(tilts, half_width, rule)
    sets = measurement.frame_beam_sets(candidates, m[None], AXIS, [nodes], k, sg_max)
    u_table = crystal_potential(crystal, factors, index, jnp.asarray(sets.coupling_hkl), GAMMA)
    return m, sets, u_table, nodes, weights


def integrated(crystal, half_width, tilts, thickness, rule="midpoint", sets=None, g_max=1.0):
    m, own_sets, u_table, nodes, weights = frame_setup(crystal, half_width, tilts, rule, g_max=g_max)
    if sets is not None:
        factors = form_factors_for(crystal)
        index = jnp.asarray(site_element_index(crystal, factors))
        u_table = crystal_potential(crystal, factors, index, jnp.asarray(sets.coupling_hkl), GAMMA)
    sets = own_sets if sets is None else sets
    out = measurement.integrate_frames(u_table, sets, m[None], AXIS, nodes[None], weights[None], LAMBDA, thickness)
    return out[0], sets


def test_tilt_rules():
    for rule in ("midpoint", "uniform", "gauss"):
        nodes, weights = measurement.tilt_rule(7, 0.02, rule)
        assert weights.sum() == pytest.approx(1.0) and np.all(weights > 0)
        np.testing.assert_allclose(nodes, -nodes[::-1], atol=1e-15)
        assert np.all(np.abs(nodes) <= 0.02 + 1e-15)
    nodes, weights = measurement.tilt_rule(4, 1.0, "gauss")
    assert np.sum(weights * nodes**6) == pytest.approx(1 / 7)  # exact to degree 7
    assert measurement.tilt_rule(42, np.deg2rad(1.0), "uniform")[0][-1] == pytest.approx(np.deg2rad(1.0))
    with pytest.raises(InputError):
        measurement.tilt_rule(3, 0.01, "simpson")


def test_beam_union_covers_every_tilt_and_required():
    crystal = silicon()
    m = general_orientation(crystal)
    candidates = lattice_points(m, 1.0, centring_vectors(crystal.symops))
    k = 1 / LAMBDA
    nodes, _ = measurement.tilt_rule(9, np.deg2rad(1.0))
    required = np.array([[4, 4, 0], [0, 0, 0]])
    beams = measurement.frame_beams(candidates, m, AXIS, nodes, k, 0.01, required=required)
    assert tuple(beams[0]) == (0, 0, 0) and len({tuple(b) for b in beams}) == len(beams)
    assert tuple(beams[-1]) == (4, 4, 0)
    have = {tuple(b) for b in beams}
    for d in nodes:
        g = candidates @ (np.asarray(axis_rotation(jnp.asarray(AXIS), d)) @ m).T
        s = excitation_errors(g, np.array([0.0, 0.0, -k]))
        assert {tuple(h) for h in candidates[np.abs(s) <= 0.01]} <= have


def test_zero_width_frame_is_one_orientation():
    crystal = silicon()
    m, sets, u_table, _, _ = frame_setup(crystal, 0.0, 1)
    thickness = np.array([80.0, 240.0])
    frame = measurement.integrate_frames(u_table, sets, m[None], AXIS, np.zeros((1, 1)), np.ones((1, 1)), LAMBDA, thickness)[0]
    psi = orientation_amplitudes(u_table, jnp.asarray(sets.coupling_index[0]), jnp.asarray(sets.hkl[0]),
                                 jnp.asarray(sets.mask[0]), jnp.asarray(m), jnp.array([0.0, 0.0, -1.0]), LAMBDA,
                                 jnp.asarray(thickness))
    np.testing.assert_allclose(frame, np.abs(np.asarray(psi)) ** 2, atol=1e-14)


def test_flux_is_conserved_by_the_average():
    frame, sets = integrated(silicon(), np.deg2rad(0.5), 8, np.array([100.0, 500.0]))
    np.testing.assert_allclose(frame.sum(axis=1), 1.0, atol=1e-10)
    assert np.all(frame[:, sets.counts[0]:] == 0.0)


def test_integration_converges_when_tilts_double():
    """Doubling the tilt count changes every non-negligible integrated intensity by < 0.5 %."""
    crystal = silicon()
    hw = np.deg2rad(0.5)
    coarse, sets = integrated(crystal, hw, 24, np.array([150.0]), g_max=1.6)
    fine, _ = integrated(crystal, hw, 48, np.array([150.0]), sets=sets)
    gauss, _ = integrated(crystal, hw, 24, np.array([150.0]), rule="gauss", sets=sets)
    strong = fine[0, 1:] > 1e-3 * fine[0, 1:].max()
    assert strong.sum() >= 5
    np.testing.assert_allclose(coarse[0, 1:][strong], fine[0, 1:][strong], rtol=5e-3)
    np.testing.assert_allclose(gauss[0, 1:][strong], fine[0, 1:][strong], rtol=5e-3)


def test_thickness_average_and_lookup():
    intensity = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    weights = np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    avg = measurement.thickness_average(intensity, weights)
    np.testing.assert_allclose(avg[0], (intensity[0, 0] + intensity[0, 2]) / 2)
    np.testing.assert_allclose(avg[1], intensity[1, 1])
    beams = np.array([[0, 0, 0], [1, 1, 1], [2, 0, 0]])
    np.testing.assert_array_equal(measurement.lookup_beams(beams, np.array([[2, 0, 0], [3, 3, 3]])), [2, -1])


def test_gradient_with_respect_to_orientation_and_thickness():
    crystal = silicon()
    m, sets, u_table, nodes, weights = frame_setup(crystal, np.deg2rad(0.3), 4)
    rng = np.random.default_rng(0)
    probe = jnp.asarray(rng.uniform(size=sets.capacity))

    def loss(x):
        orientation = jnp.asarray(axis_rotation(jnp.array([0.0, 1.0, 0.0]), x[0])) @ jnp.asarray(m)
        i = measurement.frame_intensities(u_table, jnp.asarray(sets.coupling_index[0]), jnp.asarray(sets.hkl[0]),
                                          jnp.asarray(sets.mask[0]), orientation, jnp.asarray(AXIS),
                                          jnp.asarray(nodes), jnp.asarray(weights), jnp.asarray(LAMBDA), x[1:])
        return jnp.sum(i * probe[None, :])

    x = jnp.array([0.0, 210.0])
    gradient = jax.grad(loss)(x)
    for j, h in ((0, 1e-6), (1, 1e-3)):
        e = jnp.zeros(2).at[j].set(h)
        numeric = (loss(x + e) - loss(x - e)) / (2 * h)
        assert float(gradient[j]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-10)
