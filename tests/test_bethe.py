"""Bethe reduction: exact limits, convergence to the full matrix, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edrefine import bethe, bloch, measurement
from edrefine.diffraction import orientation_amplitudes
from edrefine.frames import rotation_z

from test_precession import LAMBDA, setup as silicon_setup

THICKNESS = jnp.array([80.0, 250.0, 600.0])


@pytest.fixture(scope="module")
def orientation():
    m, k, candidates, u_table = silicon_setup(2.0)
    sets = measurement.orientation_beam_sets(candidates, np.asarray(m)[None, None], k, 0.05)
    u = u_table(sets)
    args = (u, jnp.asarray(sets.coupling_index[0]), jnp.asarray(sets.hkl[0]), jnp.asarray(sets.mask[0]),
            jnp.asarray(m), jnp.asarray([0.0, 0.0, -1.0]), LAMBDA, THICKNESS)
    return args, int(sets.mask[0].sum())


@functools.partial(jax.jit, static_argnames="strong")
def _amplitudes(args, strong, absorption):
    return orientation_amplitudes(*args, absorption=absorption, strong_beams=strong)


def intensity(args, strong=0, absorption=None):
    return np.abs(np.asarray(_amplitudes(args, strong, absorption))) ** 2


def test_all_beams_strong_is_the_full_matrix(orientation):
    args, valid = orientation
    full = intensity(args)
    np.testing.assert_allclose(intensity(args, valid), full, atol=1e-12)  # every valid beam strong: exact
    np.testing.assert_allclose(full.sum(axis=1), 1.0, atol=1e-10)


def test_error_falls_as_strong_beams_grow(orientation):
    args, valid = orientation
    full = intensity(args)
    errors = [np.abs(intensity(args, n) - full).sum(axis=1).max() for n in (4, 16, 32, valid - 2)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.2 * errors[0]
    assert errors[1] < 0.02  # 16 of 51 beams: within 2 % of the incident intensity in total


def test_one_strong_beam_gives_the_kinematical_amplitudes():
    # Two beams, A' = [[0, u], [u*, d]]: with only the incident beam strong, ψ_0 = 1 and
    # ψ_1 = (u*/d)(e^{iad} − 1), the first Born amplitude, |ψ_1|² = |u|² sin²(ad/2)/(d/2)².
    u, d = 0.002 + 0.001j, 0.3
    matrix = jnp.array([[0.0, u], [np.conj(u), d]])
    phase = jnp.array([10.0, 40.0])
    psi = bethe.reduced_propagate(matrix, phase, jnp.array([0.0, 1.0]), jnp.array([True, True]), 1)
    a = np.asarray(phase)
    np.testing.assert_allclose(np.asarray(psi[:, 0]), 1.0, rtol=1e-12)
    expected = (np.conj(u) / d) * (np.exp(1j * a * d) - 1.0)
    np.testing.assert_allclose(np.asarray(psi[:, 1]), expected, rtol=1e-12)
    np.testing.assert_allclose(np.abs(np.asarray(psi[:, 1])) ** 2, abs(u) ** 2 * np.sin(a * d / 2) ** 2 / (d / 2) ** 2,
                               rtol=1e-12)
    exact = bloch.propagate(matrix, phase)
    np.testing.assert_allclose(np.asarray(psi[:, 1]), np.asarray(exact[:, 1]), rtol=0.05)


def test_the_kinematical_model_stays_finite_at_the_bragg_condition():
    # a second weak beam exactly at its Bragg condition: the kinematical amplitude grows as u·a
    u = 0.002
    matrix = jnp.array([[0.0, u, u], [u, 0.3, 0.0], [u, 0.0, 1e-9]])
    phase = jnp.array([10.0, 40.0])
    psi = bethe.reduced_propagate(matrix, phase, jnp.array([0.0, 1.0, 1e-9]), jnp.array([True, True, True]), 1)
    np.testing.assert_allclose(np.abs(np.asarray(psi[:, 0])), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.abs(np.asarray(psi[:, 2])), u * np.asarray(phase), rtol=1e-6)


def test_padded_beams_stay_dark_and_the_strong_set_starts_with_the_incident_beam(orientation):
    args, valid = orientation
    mask = np.asarray(args[3])
    assert not mask.all()  # the fixture's set is padded
    order = np.asarray(bethe.strong_order(jnp.asarray(np.linspace(0.3, -0.3, mask.size)), jnp.asarray(mask)))
    assert order[0] == 0 and not mask[order[valid:]].any()
    assert np.all(intensity(args, 10)[:, ~mask] == 0.0)


def test_bethe_gradients_match_finite_differences(orientation):
    args, _ = orientation
    u, rest = args[0], args[1:]
    probe = jnp.asarray(np.random.default_rng(0).uniform(size=(THICKNESS.size, rest[1].shape[0])))

    @jax.jit
    def loss(scale, angle, kappa):
        m = rotation_z(angle) @ rest[3]
        psi = orientation_amplitudes(u * scale, *rest[:3], m, *rest[4:], absorption=kappa, strong_beams=12)
        return jnp.sum(probe * jnp.abs(psi) ** 2)

    h = 1e-6
    for kappa in (None, 0.05):
        grad = jax.grad(loss, argnums=(0, 1))(1.0, 0.0, kappa)
        numeric = ((float(loss(1.0 + h, 0.0, kappa)) - float(loss(1.0 - h, 0.0, kappa))) / (2 * h),
                   (float(loss(1.0, h, kappa)) - float(loss(1.0, -h, kappa))) / (2 * h))
        for g, n in zip(grad, numeric):
            assert float(g) == pytest.approx(n, rel=1e-5, abs=1e-8)


def test_absorption_with_bethe_approaches_the_full_absorptive_result(orientation):
    args, valid = orientation
    full = intensity(args, absorption=0.05)
    assert np.all(full.sum(axis=1) < 1.0)
    reduced = intensity(args, 32, absorption=0.05)
    assert np.abs(reduced - full).sum(axis=1).max() < 0.02


def test_strong_rows_from_the_table_equal_the_reduction_of_the_full_matrix(orientation):
    args, _ = orientation
    u, index, hkl, mask, m, direction, lam, thickness = args
    from edrefine.diffraction import incident_geometry
    from edrefine.electron import crystal_wavenumber

    k = crystal_wavenumber(lam, jnp.real(u[0]))
    s, gn, kn = incident_geometry(hkl, m, direction, k)
    phase = bloch.thickness_phase(thickness, kn)
    for kappa in (None, 0.05):
        coupling = u[index]
        full = bloch.structure_matrix(s, coupling, k, gn, kn, mask)
        absorptive = None if kappa is None else bloch.absorptive_matrix(kappa * coupling, kappa * jnp.real(u[0]), gn,
                                                                        kn, mask)
        a = bethe.reduced_propagate(full, phase, s, mask, 12, absorptive)
        b = bethe.strong_rows_propagate(u, index, s, gn, k, kn, mask, phase, 12, kappa)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_the_fold_and_its_derivatives_equal_the_plain_product(dtype):
    """bethe.fold's hand-written tangent (one product for the couplings) against autodiff of the
    plain expression, forward and reverse, with and without a tangent of the weak diagonal."""
    rng = np.random.default_rng(4)
    a = rng.normal(size=(9, 4)).astype(dtype)
    if np.iscomplexobj(a):
        a = a + 1j * rng.normal(size=a.shape)
    a, d = jnp.asarray(a), jnp.asarray(rng.uniform(1.0, 3.0, 9) * np.sign(rng.normal(size=9)))
    plain = lambda a, d: (jnp.conj(a).T / d[None, :]) @ a  # noqa: E731
    np.testing.assert_allclose(bethe.fold(a, d), plain(a, d), rtol=1e-13)
    da, dd = jnp.asarray(rng.normal(size=a.shape)).astype(a.dtype), jnp.asarray(rng.normal(size=9))
    for tangents in ((da, dd), (da, jnp.zeros(9)), (jnp.zeros_like(a), dd)):
        np.testing.assert_allclose(jax.jvp(bethe.fold, (a, d), tangents)[1], jax.jvp(plain, (a, d), tangents)[1],
                                   rtol=1e-12, atol=1e-13)
    only_a = jax.jvp(lambda x: bethe.fold(x, d), (a,), (da,))[1]
    np.testing.assert_allclose(only_a, jax.jvp(lambda x: plain(x, d), (a,), (da,))[1], rtol=1e-12, atol=1e-13)
    weights = jnp.asarray(rng.normal(size=(4, 4)))
    loss = lambda f: lambda a, d: jnp.sum(weights * jnp.real(f(a, d) * jnp.conj(f(a, d))))  # noqa: E731
    for got, want in zip(jax.grad(loss(bethe.fold), argnums=(0, 1))(a, d), jax.grad(loss(plain), argnums=(0, 1))(a, d)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
