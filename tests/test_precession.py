"""Precession cones and mosaic spread as orientation stacks: limits, invariants, beam unions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edrefine import measurement
from edrefine.beams import centring_vectors, excitation_errors, lattice_points, pad_beam_sets
from edrefine.crystal import build_crystal
from edrefine.diffraction import crystal_potential
from edrefine.electron import crystal_wavenumber, lorentz_factor, wavelength
from edrefine.errors import InputError
from edrefine.frames import rotation_x, rotation_y, rotation_z
from edrefine.structure_factor import form_factors_for, site_element_index

LAMBDA = wavelength(200.0)
GAMMA = lorentz_factor(200.0)
AXIS = np.array([1.0, 0.0, 0.0])


def silicon():
    return build_crystal((5.4309,) * 3 + (90.0,) * 3, "F d -3 m:2", ["Si1"], ["Si"], [[0.125, 0.125, 0.125]], u_iso=[0.0059])


def setup(g_max=1.0):
    crystal = silicon()
    factors = form_factors_for(crystal)
    index = jnp.asarray(site_element_index(crystal, factors))
    u0 = jnp.real(crystal_potential(crystal, factors, index, jnp.zeros((1, 3), int), GAMMA)[0])
    k = float(crystal_wavenumber(LAMBDA, u0))
    rotation = np.asarray(rotation_z(0.3) @ rotation_x(0.7) @ rotation_y(-0.4))
    m = rotation @ np.asarray(crystal.cell.reciprocal_matrix())
    candidates = lattice_points(m, g_max, centring_vectors(crystal.symops))

    def u_table(sets):
        return crystal_potential(crystal, factors, index, jnp.asarray(sets.coupling_hkl), GAMMA)

    return m, k, candidates, u_table


def intensities(stacks, weights, thickness, sg_max=0.02, g_max=1.0, sets=None):
    m, k, candidates, u_table = setup(g_max)
    stacks = np.asarray(stacks)
    if sets is None:
        sets = measurement.orientation_beam_sets(candidates, stacks, k, sg_max)
    out = measurement.integrate_orientations(u_table(sets), sets, stacks, np.asarray(weights), LAMBDA, thickness)
    return out, sets


def test_cone_geometry_and_weights():
    m, _, _, _ = setup()
    phi = np.deg2rad(1.5)
    stack, w = measurement.precession_orientations(jnp.asarray(m), phi, 12, 0.2)
    assert w.shape == (12,) and float(w.sum()) == pytest.approx(1.0)
    # The beam seen by the crystal, as direct-lattice [uvw] = M_kᵀ(−e_z), mapped back to the
    # frame-centre lab frame with M⁻ᵀ: a cone of half-angle φ about the zone axis (−e_z).
    beams = np.einsum("ij,kaj,a->ki", np.linalg.inv(m).T, np.asarray(stack), [0.0, 0.0, -1.0])
    np.testing.assert_allclose(np.linalg.norm(beams, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(-beams[:, 2], np.cos(phi), atol=1e-12)
    np.testing.assert_allclose(beams.mean(axis=0)[:2], 0.0, atol=1e-12)
    with pytest.raises(InputError):
        measurement.precession_orientations(jnp.asarray(m), phi, 0)


def test_zero_precession_angle_is_one_orientation():
    m, _, _, _ = setup()
    stack, w = measurement.precession_orientations(jnp.asarray(m), 0.0, 8)
    thickness = np.array([90.0, 300.0])
    cone, sets = intensities(np.asarray(stack)[None], np.asarray(w)[None], thickness)
    single, _ = intensities(m[None, None], np.ones((1, 1)), thickness, sets=sets)
    np.testing.assert_allclose(cone, single, atol=1e-13)


def test_rotation_stack_reproduces_frame_intensities_bit_for_bit():
    m, k, candidates, u_table = setup()
    nodes, weights = measurement.tilt_rule(6, np.deg2rad(0.4))
    sets = measurement.frame_beam_sets(candidates, m[None], AXIS, [nodes], k, 0.02)
    thickness = np.array([120.0, 400.0])
    u = u_table(sets)
    old = measurement.integrate_frames(u, sets, m[None], AXIS, nodes[None], weights[None], LAMBDA, thickness)
    stack = np.asarray(measurement.rotation_orientations(jnp.asarray(m), jnp.asarray(AXIS), jnp.asarray(nodes)))
    new = measurement.integrate_orientations(u, sets, stack[None], weights[None], LAMBDA, thickness)
    np.testing.assert_allclose(new, old, rtol=1e-12, atol=1e-15)
    union = measurement.orientation_beam_sets(candidates, stack[None], k, 0.02)
    assert {tuple(h) for h in union.hkl[0, : union.counts[0]]} == {tuple(h) for h in sets.hkl[0, : sets.counts[0]]}


def test_union_covers_every_cone_orientation():
    m, k, candidates, _ = setup()
    stack, _ = measurement.precession_orientations(jnp.asarray(m), np.deg2rad(2.0), 16)
    beams = measurement.orientation_beams(candidates, np.asarray(stack), k, 0.01, required=np.array([[4, 4, 0]]))
    have = {tuple(b) for b in beams}
    assert tuple(beams[0]) == (0, 0, 0) and len(have) == len(beams) and (4, 4, 0) in have
    for mk in np.asarray(stack):
        s = excitation_errors(candidates @ mk.T, np.array([0.0, 0.0, -k]))
        assert {tuple(h) for h in candidates[np.abs(s) <= 0.01]} <= have


def test_converged_precession_is_invariant_to_starting_azimuth_and_conserves_flux():
    m, _, _, _ = setup()
    phi = np.deg2rad(1.0)
    a, _ = measurement.precession_orientations(jnp.asarray(m), phi, 96, 0.0)
    b, _ = measurement.precession_orientations(jnp.asarray(m), phi, 96, 0.037)
    stacks = np.stack([np.asarray(a), np.asarray(b)])
    weights = np.full((2, 96), 1 / 96)
    m_, k, candidates, u_table = setup()
    union = measurement.orientation_beams(candidates, stacks.reshape(-1, 3, 3), k, 0.02)
    sets = pad_beam_sets([union, union])
    out, _ = intensities(stacks, weights, np.array([150.0]), sets=sets)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-10)
    strong = out[0, 0, 1:] > 1e-3 * out[0, 0, 1:].max()
    assert strong.sum() >= 5
    np.testing.assert_allclose(out[1, 0, 1:][strong], out[0, 0, 1:][strong], rtol=1e-2)


def test_mosaic_rule_limits_and_moments():
    h = np.deg2rad(0.5)
    nodes, weights = measurement.mosaic_rule(10, h, 0.0)
    ref = measurement.tilt_rule(10, h)
    np.testing.assert_array_equal(nodes, ref[0])
    np.testing.assert_array_equal(weights, ref[1])
    nodes, weights = measurement.mosaic_rule(10, h, 1e-12)
    np.testing.assert_allclose(weights[1:-1], ref[1], atol=1e-12)
    assert weights[0] < 1e-9 and weights[-1] < 1e-9  # σ φ(0) / 2h
    sigma = np.deg2rad(0.2)
    nodes, weights = measurement.mosaic_rule(10, h, sigma)
    assert weights.sum() == pytest.approx(1.0) and np.all(weights >= 0)
    assert nodes.max() + h / 10 >= h + 3 * sigma - 1e-15  # outer cell edge
    np.testing.assert_allclose(np.diff(nodes), 2 * h / 10, rtol=1e-10)
    # variance of box ⊛ Gaussian = h²/3 + σ² (the midpoint cells add Δ²/12 at most)
    assert np.sum(weights * nodes**2) == pytest.approx(h**2 / 3 + sigma**2, rel=2e-2)
    nodes, weights = measurement.mosaic_rule(4, 0.0, sigma)
    assert np.sum(weights * nodes) == pytest.approx(0.0, abs=1e-15)
    assert np.sum(weights * nodes**2) == pytest.approx(sigma**2, rel=3e-2)
    with pytest.raises(InputError):
        measurement.mosaic_rule(4, h, -1.0)


def rocking_curve(sigma, centres, half_width, count, thickness, hkl, sets):
    m, k, candidates, u_table = setup()
    stacks, weights = [], []
    for c in centres:
        nodes, w = measurement.mosaic_rule(count, half_width, sigma)
        stacks.append(np.asarray(measurement.rotation_orientations(jnp.asarray(m), jnp.asarray(AXIS),
                                                                   jnp.asarray(nodes + c))))
        weights.append(w)
    out = measurement.integrate_orientations(u_table(sets), sets, np.stack(stacks), np.stack(weights), LAMBDA,
                                             np.array([thickness]))
    return out[:, 0, measurement.lookup_beams(sets.hkl[0], hkl[None])[0]]


def test_mosaic_broadens_rocking_curve_and_keeps_its_area():
    m, k, candidates, _ = setup()
    g = candidates @ m.T
    s0 = excitation_errors(g, np.array([0.0, 0.0, -k]))
    rate = np.linalg.norm(np.cross(g, AXIS), axis=1)
    pick = np.flatnonzero((np.linalg.norm(g, axis=1) > 0.3) & (rate > 0.3))
    hkl = candidates[pick[np.argmin(np.abs(s0[pick]))]]
    centres = np.deg2rad(np.linspace(-2.0, 2.0, 41))
    hw, sigma, thickness = np.deg2rad(0.05), np.deg2rad(0.25), 200.0
    scan = np.stack([np.asarray(measurement.rotation_orientations(jnp.asarray(m), jnp.asarray(AXIS), jnp.asarray(
        measurement.mosaic_rule(2, hw, sigma)[0] + c))) for c in centres]).reshape(-1, 3, 3)
    union = measurement.orientation_beams(candidates, scan, k, 0.02, required=hkl[None])
    sets = pad_beam_sets([union] * len(centres))
    plain = rocking_curve(0.0, centres, hw, 2, thickness, hkl, sets)
    broad = rocking_curve(sigma, centres, hw, 2, thickness, hkl, sets)
    peak = int(np.argmax(plain))
    assert 5 < peak < len(centres) - 6, "the reflection's Bragg condition must lie inside the scan"
    assert broad.max() < 0.9 * plain.max()
    assert broad.sum() == pytest.approx(plain.sum(), rel=0.05)

    def width(curve):
        mean = np.sum(curve * centres) / curve.sum()
        return np.sqrt(np.sum(curve * (centres - mean) ** 2) / curve.sum())

    assert width(broad) > width(plain)
    tails = np.abs(centres - centres[peak]) > np.deg2rad(0.6)
    assert broad[tails].sum() > plain[tails].sum()


def test_vanishing_mosaic_reproduces_the_plain_frame():
    m, k, candidates, _ = setup()
    hw = np.deg2rad(0.3)
    stacks, weights = [], []
    for sigma in (0.0, 1e-10):
        nodes, w = measurement.mosaic_rule(4, hw, sigma)
        nodes, w = np.pad(nodes, (0, 6 - len(nodes))), np.pad(w, (0, 6 - len(w)))  # one kernel shape
        stacks.append(np.asarray(measurement.rotation_orientations(jnp.asarray(m), jnp.asarray(AXIS), jnp.asarray(nodes))))
        weights.append(w)
    out, sets = intensities(np.stack(stacks), np.stack(weights), np.array([100.0, 350.0]))
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-10)
    np.testing.assert_allclose(out[1], out[0], atol=1e-8)


def score_setup():
    from test_score import quartz, synthetic_data

    crystal = quartz()
    data = synthetic_data(crystal, g_max=1.0, alphas=(-20.0, 25.0))
    settings = dict(g_max=1.0, sg_max=0.01, tilts=6, thickness_grid=[200.0], thickness_search=False, details=True)
    return crystal, data, settings


def test_score_dataset_mosaic_option_defaults_off():
    from edrefine.score import score_dataset

    crystal, data, settings = score_setup()
    plain = score_dataset(crystal, data, **settings)
    zero = score_dataset(crystal, data, mosaicity=0.0, geometry="rotation", **settings)
    for a, b in zip(plain["frames"], zero["frames"]):
        np.testing.assert_array_equal(a["fc"], b["fc"])
    with pytest.raises(InputError):
        score_dataset(crystal, data, mosaicity="file", **settings)
    with pytest.raises(InputError):
        score_dataset(crystal, data, geometry="stepwise", **settings)


def test_score_dataset_precession_simulate_then_score():
    import equinox as eqx

    from edrefine.score import score_dataset

    crystal, data, settings = score_setup()
    options = dict(geometry="precession", precession_steps=4)
    run = score_dataset(crystal, data, **options, **settings)
    simulated = np.array(data.reflections.intensity, dtype=float)
    for row in run["frames"]:
        simulated[row["rows"]] = 1e4 * (row["fc"] / row["scale"]) ** 2
    noiseless = eqx.tree_at(lambda d: (d.reflections.intensity, d.reflections.sigma), data,
                            (simulated, 0.01 * simulated + 1e-3))
    result = score_dataset(crystal, noiseless, **options, **settings)
    assert result["n_all"] > 10 and result["R_obs"] < 1e-6
    assert result["settings"]["geometry"] == "precession"


def test_mosaic_on_a_cone_and_gradient_in_the_precession_angle():
    m, k, candidates, u_table = setup(g_max=0.7)
    cone, w = measurement.precession_orientations(jnp.asarray(m), 0.02, 4)
    tilt, v = measurement.mosaic_rule(1, 0.0, 0.003)
    stack, weights = measurement.mosaic_orientations(cone, w, jnp.asarray(AXIS), jnp.asarray(tilt), jnp.asarray(v))
    assert stack.shape == (4 * len(tilt), 3, 3) and float(weights.sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(stack[len(tilt) // 2], cone[0], atol=1e-15)  # the middle mosaic node is δ = 0
    sets = measurement.orientation_beam_sets(candidates, np.asarray(cone)[None], k, 0.02)
    u = u_table(sets)
    probe = jnp.asarray(np.random.default_rng(1).uniform(size=sets.capacity))

    @jax.jit
    def loss(phi):
        c, cw = measurement.precession_orientations(jnp.asarray(m), phi, 4)
        i = measurement.orientation_intensities(u, jnp.asarray(sets.coupling_index[0]), jnp.asarray(sets.hkl[0]),
                                                jnp.asarray(sets.mask[0]), c, cw, jnp.asarray(LAMBDA),
                                                jnp.array([180.0]))
        return jnp.sum(i * probe[None, :])

    h = 1e-6
    numeric = (loss(0.02 + h) - loss(0.02 - h)) / (2 * h)
    assert float(jax.grad(loss)(0.02)) == pytest.approx(float(numeric), rel=1e-5, abs=1e-10)
