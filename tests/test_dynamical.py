"""Engine-level physics: structure factors → Bloch waves, on real crystal models.

Acceptance tests of the Bloch-wave engine: kinematic limit, flux, Friedel pairs and the
absolute structure, the zone-axis convention, and finite-difference gradients with respect to
every physical parameter, at a general orientation and at the exact Si [110] zone axis.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edrefine.beams import centring_vectors, lattice_points, pad_beam_sets, select_beams
from edrefine.crystal import build_crystal
from edrefine.diffraction import crystal_potential, orientation_amplitudes
from edrefine.electron import crystal_wavenumber, lorentz_factor, wavelength
from edrefine.pattern import beam_direction_from_zone, simulate_pattern
from edrefine.structure_factor import form_factors_for, site_element_index, structure_factors

ENERGY = 200.0
LAMBDA = wavelength(ENERGY)
GAMMA = lorentz_factor(ENERGY)


def silicon(p1: bool = False):
    """Diamond-structure Si (Fd-3m origin 2), a = 5.4309 Å, B = 0.47 Å²; optionally as 8 P1 atoms."""
    base = np.array([[0.125, 0.125, 0.125], [0.875, 0.875, 0.875]])  # origin choice 2: inversion at 0
    if not p1:
        return build_crystal((5.4309,) * 3 + (90.0,) * 3, "F d -3 m:2", ["Si1"], ["Si"], base[:1], u_iso=[0.0059])
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    positions = (base[:, None, :] + fcc[None]).reshape(-1, 3)
    labels = [f"Si{i}" for i in range(8)]
    u = np.tile([0.0059, 0.0059, 0.0059, 0, 0, 0], (8, 1))
    return build_crystal((5.4309,) * 3 + (90.0,) * 3, ["x,y,z"], labels, ["Si"] * 8, positions, u_aniso=u)


def quartz():
    """α-quartz, P3₂21 (Levien et al. 1980 coordinates moved to this setting), anisotropic U."""
    u = np.array([[0.0066, 0.0052, 0.0060, 0.0026, -0.0001, -0.0002], [0.0136, 0.0101, 0.0117, 0.0070, -0.0030, -0.0040]])
    return build_crystal(
        (4.9134, 4.9134, 5.4052, 90.0, 90.0, 120.0), "P 32 2 1", ["Si1", "O1"], ["Si", "O"],
        [[0.4697, 0.0, 2 / 3], [0.4135, 0.2669, 0.7858]], u_aniso=u,
    )


def setup(crystal, direction, g_max=1.2, sg_max=0.03):
    """Host-side beam set and coupling table for one orientation."""
    factors = form_factors_for(crystal)
    index = jnp.asarray(site_element_index(crystal, factors))
    reciprocal = np.asarray(crystal.cell.reciprocal_matrix())
    u0 = jnp.real(crystal_potential(crystal, factors, index, jnp.zeros((1, 3), int), GAMMA)[0])
    k = float(crystal_wavenumber(LAMBDA, u0))
    candidates = lattice_points(reciprocal, g_max, centring_vectors(crystal.symops))
    beams = select_beams(candidates, reciprocal, k * direction / np.linalg.norm(direction), sg_max)
    return factors, index, pad_beam_sets([beams]), len(beams)


def amplitudes(crystal, factors, index, sets, direction, thickness, absorption=None):
    u_table = crystal_potential(crystal, factors, index, jnp.asarray(sets.coupling_hkl), GAMMA)
    return orientation_amplitudes(
        u_table, jnp.asarray(sets.coupling_index[0]), jnp.asarray(sets.hkl[0]), jnp.asarray(sets.mask[0]),
        crystal.cell.reciprocal_matrix(), jnp.asarray(direction), LAMBDA, jnp.asarray(thickness), absorption=absorption,
    )


def general_direction(crystal):
    return np.asarray(crystal.cell.orthogonalisation()) @ np.array([0.31, -0.17, -1.0])


def test_zero_thickness_and_flux():
    crystal = quartz()
    direction = general_direction(crystal)
    factors, index, sets, n = setup(crystal, direction)
    psi = amplitudes(crystal, factors, index, sets, direction, [0.0, 150.0, 600.0])
    intensity = np.abs(np.asarray(psi)) ** 2
    np.testing.assert_allclose(intensity[0, 0], 1.0, atol=1e-14)
    np.testing.assert_allclose(intensity[0, 1:], 0.0, atol=1e-14)
    np.testing.assert_allclose(intensity.sum(axis=1), 1.0, atol=1e-10)
    assert np.all(intensity[:, n:] < 1e-20)
    absorbed = np.abs(np.asarray(amplitudes(crystal, factors, index, sets, direction, [0.0, 150.0, 600.0], 0.08))) ** 2
    totals = absorbed.sum(axis=1)
    assert totals[0] == pytest.approx(1.0, abs=1e-12) and totals[0] > totals[1] > totals[2]


def test_thin_crystal_is_kinematic():
    """At small t, I_g = (π t |U_g| / K)² sin²(π S t)/(π S t)² (first Born approximation)."""
    crystal = quartz()
    direction = general_direction(crystal)
    factors, index, sets, n = setup(crystal, direction)
    t = 0.5
    intensity = np.abs(np.asarray(amplitudes(crystal, factors, index, sets, direction, [t])[0, :n])) ** 2
    hkl = sets.hkl[0, :n]
    u_g = np.asarray(crystal_potential(crystal, factors, index, jnp.asarray(hkl), GAMMA))
    u0 = np.real(u_g[0])
    k = np.sqrt(1 / LAMBDA**2 + u0)
    g = hkl @ np.asarray(crystal.cell.reciprocal_matrix()).T
    kvec = k * direction / np.linalg.norm(direction)
    s = -(2 * g @ kvec + np.sum(g**2, axis=1)) / (2 * k)
    kn = k  # normal incidence
    m = (1 + g @ (kvec / k) / kn) ** -0.5
    x = np.pi * s * t * k / kn
    kinematic = (np.pi * t * np.abs(u_g) * m / kn) ** 2 * np.sinc(x / np.pi) ** 2
    strong = kinematic[1:] > 1e-2 * kinematic[1:].max()
    assert strong.sum() > 10
    np.testing.assert_allclose(intensity[1:][strong], kinematic[1:][strong], rtol=1e-2)


def test_structure_factor_friedel_and_centrosymmetry():
    crystal = quartz()
    factors = form_factors_for(crystal)
    index = jnp.asarray(site_element_index(crystal, factors))
    hkl = jnp.asarray([[1, 0, 1], [1, 1, 0], [2, -1, 3], [0, 0, 1], [0, 0, 3]])
    f = structure_factors(crystal.expand(), factors, index, hkl, crystal.cell.reciprocal_matrix())
    f_minus = structure_factors(crystal.expand(), factors, index, -hkl, crystal.cell.reciprocal_matrix())
    np.testing.assert_allclose(np.asarray(f_minus), np.conj(np.asarray(f)), atol=1e-12)
    assert abs(f[3]) < 1e-10 and abs(f[4]) > 0.1  # 3₂ screw: 00l absent unless l = 3n
    inverted = crystal.invert()
    f_inv = structure_factors(inverted.expand(), factors, index, hkl, inverted.cell.reciprocal_matrix())
    np.testing.assert_allclose(np.asarray(f_inv), np.conj(np.asarray(f)), atol=1e-10)
    si = silicon()
    fs = structure_factors(si.expand(), form_factors_for(si), jnp.asarray([0]), jnp.asarray([[1, 1, 1], [2, 0, 0], [2, 2, 0]]),
                           si.cell.reciprocal_matrix())
    assert np.all(np.abs(np.imag(np.asarray(fs))) < 1e-10) and abs(fs[1]) < 1e-10 and abs(fs[2]) > 1.0


def test_friedel_pairs_equal_for_centrosymmetric_zone_axis():
    crystal = silicon()
    direction = beam_direction_from_zone(crystal, (1, 1, 0))
    factors, index, sets, n = setup(crystal, direction, g_max=1.5, sg_max=0.02)
    intensity = np.abs(np.asarray(amplitudes(crystal, factors, index, sets, direction, [250.0])[0, :n])) ** 2
    lookup = {tuple(h): i for i, h in enumerate(sets.hkl[0, :n])}
    pairs = [(i, lookup[tuple(-h)]) for i, h in enumerate(sets.hkl[0, :n]) if tuple(-h) in lookup]
    assert len(pairs) > 20
    for i, j in pairs:
        assert intensity[i] == pytest.approx(intensity[j], abs=1e-10)


def test_inversion_swaps_friedel_pairs():
    """Non-centrosymmetric quartz at the [001] zone (projection p31m, no inversion): I(g) ≠ I(−g), and the enantiomer swaps them."""
    crystal = quartz()
    direction = beam_direction_from_zone(crystal, (0, 0, 1))
    factors, index, sets, n = setup(crystal, direction, g_max=1.5, sg_max=0.015)
    hkl = sets.hkl[0, :n]
    g = hkl @ np.asarray(crystal.cell.reciprocal_matrix()).T
    assert np.allclose(g @ direction, 0.0, atol=1e-12)  # zero-order Laue zone only: S_g = S_−g
    t = [300.0]
    original = np.abs(np.asarray(amplitudes(crystal, factors, index, sets, direction, t)[0, :n])) ** 2
    inverted_crystal = crystal.invert()
    inverted = np.abs(np.asarray(amplitudes(inverted_crystal, factors, index, sets, direction, t)[0, :n])) ** 2
    lookup = {tuple(h): i for i, h in enumerate(hkl)}
    pairs = [(i, lookup[tuple(-h)]) for i, h in enumerate(hkl) if tuple(-h) in lookup]
    differences = [abs(original[i] - original[j]) for i, j in pairs]
    assert max(differences) > 1e-3
    for i, j in pairs:
        assert inverted[i] == pytest.approx(original[j], abs=1e-10)


def test_zone_axis_points_to_source():
    """``--zone u v w`` is the PETS2 convention: K is antiparallel to u a + v b + w c."""
    crystal = quartz()
    zone = np.array([0.2, -0.7, 1.0])
    direction = beam_direction_from_zone(crystal, tuple(zone))
    direct = np.asarray(crystal.cell.orthogonalisation()) @ zone
    np.testing.assert_allclose(direction, -direct / np.linalg.norm(direct), atol=1e-14)
    pattern = simulate_pattern(crystal, ENERGY, tuple(zone), [100.0], g_max=1.0, sg_max=0.02)
    # Positive S_g (inside the Ewald sphere) for g with a component along −K: g·[uvw] > 0.
    g = pattern.hkl @ np.asarray(crystal.cell.reciprocal_matrix()).T
    along_zone = g @ (direct / np.linalg.norm(direct))
    k = 1 / LAMBDA
    expected = (2 * k * along_zone - np.sum(g**2, axis=1)) / (2 * k)
    np.testing.assert_allclose(pattern.excitation_error, expected, atol=2e-6)


def _directional_checks(function, argument, rng, steps):
    """Central finite differences (Richardson-extrapolated, error O(h⁴)) along a random direction
    in each top-level part of ``argument`` in turn, against forward and reverse mode.

    Returns, per part, the relative errors of the forward- and reverse-mode derivatives.
    """
    function = jax.jit(function)
    forward_mode = jax.jit(lambda x, v: jax.jvp(function, (x,), (v,))[1])
    gradient = jax.jit(jax.grad(function))(argument)
    for leaf in jax.tree_util.tree_leaves(gradient):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    errors = {}
    for part, step in steps.items():
        tangent = jax.tree_util.tree_map(jnp.zeros_like, argument)
        chosen = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=np.shape(x))), argument[part])
        tangent = tangent[:part] + (chosen,) + tangent[part + 1:]
        shifted = lambda h: jax.tree_util.tree_map(lambda x, v: x + h * v, argument, tangent)
        central = lambda h: (function(shifted(h)) - function(shifted(-h))) / (2 * h)
        numeric = float((4 * central(step / 2) - central(step)) / 3)
        forward = float(forward_mode(argument, tangent))
        reverse = float(sum(jnp.vdot(g, v) for g, v in zip(jax.tree_util.tree_leaves(gradient), jax.tree_util.tree_leaves(tangent))))
        errors[part] = (abs(forward / numeric - 1), abs(reverse / numeric - 1))
    return errors


@pytest.mark.parametrize("case", ["general", (1, 1, 0), (0, 0, 1)], ids=["general", "Si110", "Si001"])
def test_gradients_match_finite_differences(case):
    """Coordinates, U and occupancy (0), thickness (1), κ (2) and the incident direction (3),
    elastic and absorptive, at a general orientation, at Si [110] (nearly degenerate) and at
    Si [001] (exactly degenerate): relative error ≤ 1e-6 in both modes, no NaN.

    At an exact zone axis the first-order absorptive route is not differentiable with respect
    to parameters that lift the degeneracy (its eigenvalue shifts depend on the basis chosen in
    a degenerate subspace; docs/propagator.md), so there only κ is checked with absorption.
    """
    crystal = silicon(p1=True)
    zone = case != "general"
    direction = beam_direction_from_zone(crystal, case) if zone else general_direction(crystal)
    direction = direction / np.linalg.norm(direction)
    factors, index, sets, n = setup(crystal, direction, g_max=1.1, sg_max=0.02)
    rng = np.random.default_rng(3)
    weights = jnp.asarray(rng.uniform(size=(2, sets.capacity)))

    def loss(variables):
        params, thickness, kappa, incident = variables
        psi = amplitudes(crystal.with_params(params), factors, index, sets, incident, thickness, kappa)
        return jnp.sum(weights * jnp.abs(psi) ** 2)

    steps = {0: 1e-4, 1: 1e-4, 3: 1e-6}
    for kappa in (None, jnp.asarray(0.07)):
        variables = (crystal.params, jnp.array([180.0, 420.0]), kappa, jnp.asarray(direction))
        chosen = steps if kappa is None else ({2: 1e-4} if zone else {**steps, 2: 1e-4})
        errors = _directional_checks(loss, variables, rng, chosen)
        assert max(max(e) for e in errors.values()) < 1e-6, errors


@pytest.mark.parametrize(("zone", "largest_gap"), [((1, 1, 0), 1e-4), ((0, 0, 1), 1e-10)])
def test_zone_axis_eigenvalues_are_degenerate(zone, largest_gap):
    """The zone-axis gradient tests are meaningful only if the spectrum is (nearly) degenerate.

    Si [001] (projected symmetry 4mm, two-dimensional irreducible representations) has exactly
    degenerate Bloch states; Si [110] (2mm, one-dimensional ones) has pairs split by ~1e-5 Å⁻²,
    where autodiff through ``eigh`` amplifies rounding by 1/Δλ ~ 1e5.
    """
    from edrefine import bloch
    from edrefine.diffraction import incident_geometry

    crystal = silicon(p1=True)
    direction = beam_direction_from_zone(crystal, zone)
    factors, index, sets, n = setup(crystal, direction, g_max=1.1, sg_max=0.02)
    u_table = crystal_potential(crystal, factors, index, jnp.asarray(sets.coupling_hkl), GAMMA)
    k = crystal_wavenumber(LAMBDA, jnp.real(u_table[0]))
    s, gn, kn = incident_geometry(jnp.asarray(sets.hkl[0]), crystal.cell.reciprocal_matrix(), jnp.asarray(direction), k)
    matrix = bloch.structure_matrix(s, u_table[sets.coupling_index[0]], k, gn, kn, jnp.asarray(sets.mask[0]))
    eigenvalues = np.linalg.eigvalsh(np.asarray(matrix)[:n, :n])
    assert np.min(np.diff(eigenvalues)) < largest_gap


def test_centrosymmetric_potential_is_real_and_gives_the_complex_result():
    """With an inversion centre at the origin U(g) is returned real (real-arithmetic path);
    the intensities equal those of the same table carried as complex numbers."""
    crystal = silicon()
    direction = general_direction(crystal)
    factors, index, sets, n = setup(crystal, direction, g_max=1.3, sg_max=0.02)
    u_table = crystal_potential(crystal, factors, index, jnp.asarray(sets.coupling_hkl), GAMMA)
    assert not jnp.iscomplexobj(u_table)
    arguments = (jnp.asarray(sets.coupling_index[0]), jnp.asarray(sets.hkl[0]), jnp.asarray(sets.mask[0]),
                 crystal.cell.reciprocal_matrix(), jnp.asarray(direction), LAMBDA, jnp.asarray([120.0, 480.0]))
    real = orientation_amplitudes(u_table, *arguments)
    complex_ = orientation_amplitudes(u_table.astype(jnp.complex128), *arguments)
    np.testing.assert_allclose(np.abs(np.asarray(real)) ** 2, np.abs(np.asarray(complex_)) ** 2, atol=1e-12)
    assert jnp.iscomplexobj(crystal_potential(quartz(), form_factors_for(quartz()), jnp.asarray([0, 1]),
                                              jnp.asarray(sets.coupling_hkl[:5]), GAMMA))
