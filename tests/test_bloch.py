"""Bloch-wave structure matrix and propagator: analytic limits, invariants, reference routes and
derivatives (finite differences, forward = reverse mode, exact Daleckii–Krein reference), also at
exactly degenerate eigenvalues (zone axes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edrefine import bloch

K = 39.87
"""Wavenumber in the crystal [Å⁻¹] (200 keV plus a mean inner potential)."""
K_NORMAL = 39.6
"""K·n̂ [Å⁻¹]."""


def random_hermitian(rng, n, scale=1.0):
    x = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    return scale * (x + x.conj().T) / 2


def degenerate_hermitian(rng, eigenvalues):
    n = len(eigenvalues)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n)))
    return (q * np.asarray(eigenvalues)[None, :]) @ q.conj().T


def potential(h):
    """U(h) [Å⁻²] of a 1-D row of two Gaussian atoms: a positive potential, so U is positive definite."""
    return 0.03 * np.exp(-3.0 * h**2) * (np.exp(2j * np.pi * h * 0.1) + np.exp(2j * np.pi * h * 0.37))


def systematic_row(n, tilt_order=0.7, g0=0.3, normal_tilt=0.04):
    """Beams 0, 1, −1, 2, −2, … of a systematic row near the Bragg condition of order ``tilt_order``.

    Returns (excitation_error, u_coupling, g_normal, u_0) as numpy arrays [Å⁻¹, Å⁻², Å⁻¹, Å⁻²].
    """
    orders = np.array([0] + [s * m for m in range(1, n) for s in (1, -1)][: n - 1], dtype=float)
    g = orders * g0
    excitation = -(g**2 - g * tilt_order * g0) / (2 * K)
    u = potential(g[:, None] - g[None, :])
    return excitation, u, normal_tilt * g, potential(np.zeros(()))


def hexagonal_zone_axis(theta):
    """7 beams at an exact 6-fold zone axis: 0 and six equivalent g with equal S.

    theta = (U₁, U₂, U₃, S, κ) scaled to ~1: U(g_i − g_j) depends only on |g_i − g_j| ∈ {g, √3 g, 2g}.
    Returns (A', A'_abs); its eigenvalues are exactly pairwise degenerate (E₁, E₂ modes).
    """
    u1, u2, u3, s, kappa = 0.04 * theta[0], 0.02 * theta[1], 0.015 * theta[2], 0.003 * theta[3], 0.08 * theta[4]
    by_separation = jnp.stack([u1, u1, u2, u3, u2, u1])
    ring = by_separation[(np.arange(6)[:, None] - np.arange(6)[None, :]) % 6]
    u = jnp.zeros((7, 7)).at[0, 1:].set(u1).at[1:, 0].set(u1).at[1:, 1:].set(ring)
    excitation = jnp.zeros(7).at[1:].set(s)
    mask = jnp.ones(7, dtype=bool)
    matrix = bloch.structure_matrix(excitation, u, K, jnp.zeros(7), K_NORMAL, mask)
    return matrix, bloch.absorptive_matrix(kappa * u, kappa * 0.12, jnp.zeros(7), K_NORMAL, mask)


def dense_reference_tangent(matrix, dmatrix, phase):
    """dψ_k = C [(G_k ∘ Cᴴ dA C) Cᴴ e₀] with the exact G_k(i, j) = i a e^{ia(λi+λj)/2} sinc(a Δ/2)."""
    lam, c = np.linalg.eigh(np.asarray(matrix))
    x = c.conj().T @ np.asarray(dmatrix) @ c
    w = c[0].conj()
    out = []
    for a in np.asarray(phase):
        g = 1j * a * np.exp(0.5j * a * (lam[:, None] + lam[None, :])) * np.sinc(a * (lam[:, None] - lam[None, :]) / (2 * np.pi))
        out.append(c @ ((g * x) @ w))
    return np.array(out)


def loss_of_intensities(amplitudes, weights):
    return jnp.sum(weights[None, :] * (jnp.real(amplitudes) ** 2 + jnp.imag(amplitudes) ** 2))


def assert_gradient_matches_fd(fun, theta, step=1e-5, rtol=1e-6):
    """jax.grad of a scalar function against central finite differences, coordinate by coordinate."""
    gradient = np.asarray(jax.jit(jax.grad(fun))(theta))
    assert np.all(np.isfinite(gradient))
    shifted = theta[None, :] + step * jnp.concatenate([jnp.eye(theta.shape[0]), -jnp.eye(theta.shape[0])])
    values = np.asarray(jax.jit(jax.vmap(fun))(shifted))
    fd = (values[: theta.shape[0]] - values[theta.shape[0] :]) / (2 * step)
    assert np.linalg.norm(gradient - fd) <= rtol * np.linalg.norm(fd), (gradient, fd)


propagate = jax.jit(bloch.propagate)
propagate_expm = jax.jit(bloch.propagate_expm)
propagate_exact_absorptive = jax.jit(bloch.propagate_exact_absorptive)

PHASES = bloch.thickness_phase(jnp.array([0.0, 40.0, 150.0, 320.0, 600.0]), K_NORMAL)


# --- Analytic limits and invariants -----------------------------------------------------------


@pytest.mark.parametrize("excitation", [0.0, 4e-4, -1.5e-3])
def test_two_beam_pendellosung(excitation):
    """A = [[0, U], [U*, 2KS]] → I_g = |U|²/(|U|² + (KS)²) sin²(π t √(|U|² + (KS)²) / K_n)."""
    u_g = 0.021 - 0.013j
    u = jnp.array([[0.0, np.conj(u_g)], [u_g, 0.0]])
    mask = jnp.ones(2, dtype=bool)
    matrix = bloch.structure_matrix(jnp.array([0.0, excitation]), u, K, jnp.zeros(2), K_NORMAL, mask)
    thickness = jnp.linspace(0.0, 2000.0, 41)
    intensity = bloch.intensities(propagate(matrix, bloch.thickness_phase(thickness, K_NORMAL)), mask)
    omega = np.sqrt(abs(u_g) ** 2 + (K * excitation) ** 2)
    expected = abs(u_g) ** 2 / omega**2 * np.sin(np.pi * np.asarray(thickness) * omega / K_NORMAL) ** 2
    np.testing.assert_allclose(intensity[:, 1], expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(intensity[:, 0], 1 - expected, rtol=0, atol=1e-10)


def test_structure_matrix_entries():
    """A'_ij = M_i A_ij M_j with A_ii = 2KS_i, A_ij = U_ij, M = (1 + g_n/K_n)^(−1/2); Hermitian."""
    excitation, u, g_normal, _ = systematic_row(5)
    matrix = np.asarray(bloch.structure_matrix(excitation, u, K, g_normal, K_NORMAL, jnp.ones(5, dtype=bool)))
    m = (1 + g_normal / K_NORMAL) ** -0.5
    expected = u.copy()
    np.fill_diagonal(expected, 2 * K * excitation)
    np.testing.assert_allclose(matrix, m[:, None] * expected * m[None, :], rtol=1e-14)
    np.testing.assert_allclose(matrix, matrix.conj().T, atol=1e-16)


def test_zero_thickness_returns_incident_beam():
    excitation, u, g_normal, u0 = systematic_row(7)
    mask = jnp.ones(7, dtype=bool)
    matrix = bloch.structure_matrix(excitation, u, K, g_normal, K_NORMAL, mask)
    absorption = bloch.absorptive_matrix(0.1 * u, 0.1 * u0, g_normal, K_NORMAL, mask)
    incident = np.eye(7)[0]
    np.testing.assert_allclose(propagate(matrix, jnp.zeros(1))[0], incident, atol=1e-15)
    np.testing.assert_allclose(propagate(matrix, jnp.zeros(1), absorption=absorption)[0], incident, atol=1e-15)


def test_flux_conserved_without_absorption():
    excitation, u, g_normal, _ = systematic_row(11)
    mask = jnp.ones(11, dtype=bool)
    matrix = bloch.structure_matrix(excitation, u, K, g_normal, K_NORMAL, mask)
    phase = bloch.thickness_phase(jnp.linspace(0.0, 5000.0, 101), K_NORMAL)
    total = jnp.sum(bloch.intensities(propagate(matrix, phase), mask), axis=1)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_absorption_decays_monotonically():
    """With U′ = κU (positive definite) the total decreases with t, by both routes; one beam decays
    exactly as exp(−2π t U′₀ / K_n)."""
    excitation, u, g_normal, u0 = systematic_row(9)
    mask = jnp.ones(9, dtype=bool)
    matrix = bloch.structure_matrix(excitation, u, K, g_normal, K_NORMAL, mask)
    absorption = bloch.absorptive_matrix(0.08 * u, 0.08 * u0, g_normal, K_NORMAL, mask)
    phase = bloch.thickness_phase(jnp.linspace(0.0, 2000.0, 81), K_NORMAL)
    for amplitudes in (propagate(matrix, phase, absorption=absorption),
                       propagate_exact_absorptive(matrix, absorption, phase)):
        total = np.asarray(jnp.sum(bloch.intensities(amplitudes, mask), axis=1))
        assert np.all(np.diff(total) < 0) and total[-1] < 0.5
    single = propagate(jnp.zeros((1, 1)), phase, absorption=jnp.full((1, 1), 0.08 * u0.real))
    np.testing.assert_allclose(jnp.abs(single[:, 0]) ** 2, np.exp(-2 * phase * 0.08 * u0.real), rtol=1e-13)


def test_eigen_route_equals_matrix_exponential():
    excitation, u, g_normal, u0 = systematic_row(9)
    mask = jnp.ones(9, dtype=bool)
    matrix = bloch.structure_matrix(excitation, u, K, g_normal, K_NORMAL, mask)
    np.testing.assert_allclose(propagate(matrix, PHASES), propagate_expm(matrix, PHASES), atol=1e-10)
    absorption = bloch.absorptive_matrix(0.1 * u, 0.1 * u0, g_normal, K_NORMAL, mask)
    np.testing.assert_allclose(propagate_exact_absorptive(matrix, absorption, PHASES),
                               propagate_expm(matrix, PHASES, absorption), atol=1e-10)


def test_real_matrix_equals_complex_matrix():
    """A real symmetric A' (centrosymmetric U) takes the real-arithmetic path with the same result."""
    matrix, absorption = hexagonal_zone_axis(jnp.array([1.0, 0.7, 1.3, 0.4, 1.0]))
    weights = jnp.arange(7.0)
    for b in (None, absorption):
        def loss(m, b=b):
            return loss_of_intensities(propagate(m, PHASES, absorption=b), weights)

        real_value, real_grad = jax.jit(jax.value_and_grad(loss))(matrix)
        complex_value, complex_grad = jax.jit(jax.value_and_grad(loss))(matrix.astype(complex))
        np.testing.assert_allclose(real_value, complex_value, rtol=1e-13)
        np.testing.assert_allclose(real_grad, np.real(complex_grad), atol=1e-11)


@pytest.mark.parametrize("kappa", [0.05, 0.1])
def test_first_order_absorption_close_to_exact(kappa):
    """Documented accuracy of first-order absorption (eigenvalue shifts only, eigenvectors of A').

    The eigenvalues are right to O(κ²), but the neglected O(κ U′/gap) change of the eigenvectors
    leaves an intensity error linear in κ: in this 11-beam row near a Bragg condition
    (|U_g| ≤ 0.045 Å⁻²), max |ΔI| over 40–600 Å is 0.37 κ (at ~100 Å; I₀ = 1), 0.02–0.17 κ at
    320–600 Å. Tolerance: 0.4 κ.
    """
    excitation, u, g_normal, u0 = systematic_row(11)
    mask = jnp.ones(11, dtype=bool)
    matrix = bloch.structure_matrix(excitation, u, K, g_normal, K_NORMAL, mask)
    absorption = bloch.absorptive_matrix(kappa * u, kappa * u0, g_normal, K_NORMAL, mask)
    phase = bloch.thickness_phase(jnp.array([40.0, 100.0, 150.0, 320.0, 600.0]), K_NORMAL)
    first = bloch.intensities(propagate(matrix, phase, absorption=absorption), mask)
    exact = bloch.intensities(propagate_exact_absorptive(matrix, absorption, phase), mask)
    np.testing.assert_allclose(first, exact, atol=0.4 * kappa)
    lam, c = np.linalg.eigh(np.asarray(matrix))
    shift = np.real(np.diag(c.conj().T @ np.asarray(absorption) @ c))
    nu = np.sort_complex(np.linalg.eigvals(np.asarray(matrix) + 1j * np.asarray(absorption)))
    assert np.max(np.abs(nu - (lam + 1j * shift))) < 0.5 * kappa**2 * np.abs(u).max()


def test_kinematic_limit():
    """Weak coupling: I_g = |U_g|² sin²(a K S_g) / (K S_g)², → (π t |U_g| / K_n)² at S = 0."""
    excitation, u, _, _ = systematic_row(7)
    excitation[1] = 0.0
    u = 1e-7 * u / np.abs(u).max()
    mask = jnp.ones(7, dtype=bool)
    matrix = bloch.structure_matrix(excitation, u, K, jnp.zeros(7), K_NORMAL, mask)
    intensity = np.asarray(bloch.intensities(propagate(matrix, PHASES[1:]), mask))[:, 1:]
    a = np.asarray(PHASES[1:])[:, None]
    x = K * excitation[None, 1:]
    expected = np.abs(u[1:, 0])[None, :] ** 2 * np.where(x == 0, a**2, np.sin(a * x) ** 2 / np.where(x == 0, 1, x) ** 2)
    np.testing.assert_allclose(intensity, expected, rtol=2e-4)
    np.testing.assert_allclose(intensity[:, 0], (np.pi * np.array([40.0, 150.0, 320.0, 600.0]) * abs(u[1, 0]) / K_NORMAL) ** 2, rtol=2e-4)


def padded_system(theta, order, capacity):
    """The systematic row with its beams scattered into ``capacity`` slots (``order`` gives the
    slots), junk (NaN, large values) in the padded inputs; theta scales (U, S, κ)."""
    excitation, u, g_normal, u0 = systematic_row(len(order))
    slots = np.asarray(order)
    mask = np.zeros(capacity, dtype=bool)
    mask[slots] = True
    big_u = jnp.full((capacity, capacity), 1e6 + 1e6j).at[np.ix_(slots, slots)].set(theta[0] * u)
    big_s = jnp.full(capacity, 7.0).at[slots].set(theta[1] * excitation)
    big_gn = jnp.full(capacity, jnp.nan).at[slots].set(g_normal)
    matrix = bloch.structure_matrix(big_s, big_u, K, big_gn, K_NORMAL, jnp.asarray(mask))
    absorption = bloch.absorptive_matrix(theta[2] * big_u, theta[2] * u0, big_gn, K_NORMAL, jnp.asarray(mask))
    return matrix, absorption, jnp.asarray(mask)


@pytest.mark.parametrize("absorbing", [False, True])
def test_padded_equals_unpadded(absorbing):
    theta = jnp.array([1.0, 1.0, 0.07])
    weights = jnp.asarray(np.random.default_rng(3).uniform(size=9))
    order_padded = [0, 2, 3, 5, 6, 7, 9, 10, 12]

    def loss(theta, order, capacity):
        matrix, absorption, mask = padded_system(theta, order, capacity)
        amplitudes = bloch.propagate(matrix, PHASES, absorption=absorption if absorbing else None)
        intensity = bloch.intensities(amplitudes, mask)
        return intensity, jnp.sum(intensity[:, np.asarray(order)] * weights[None, :])

    plain, _ = jax.jit(loss, static_argnums=(1, 2))(theta, tuple(range(9)), 9)
    padded, _ = jax.jit(loss, static_argnums=(1, 2))(theta, tuple(order_padded), 14)
    np.testing.assert_allclose(padded[:, np.asarray(order_padded)], plain, atol=1e-12)
    assert np.all(np.asarray(padded)[:, ~np.asarray(padded_system(theta, order_padded, 14)[2])] == 0.0)
    grad_plain = jax.jit(jax.grad(lambda t: loss(t, tuple(range(9)), 9)[1]))(theta)
    grad_padded = jax.jit(jax.grad(lambda t: loss(t, tuple(order_padded), 14)[1]))(theta)
    assert np.all(np.isfinite(grad_padded))
    np.testing.assert_allclose(grad_padded, grad_plain, rtol=1e-10)


def test_batched_equals_looped():
    rng = np.random.default_rng(5)
    matrices = jnp.asarray(np.stack([random_hermitian(rng, 6, 0.05) for _ in range(3)]))
    absorption = jnp.asarray(np.stack([random_hermitian(rng, 6, 0.005) for _ in range(3)]))
    phases = jnp.asarray(rng.uniform(0, 30, size=(3, 4)))
    for b in (None, absorption):
        batched = jax.jit(bloch.propagate_orientations)(matrices, phases, absorption=b)
        for o in range(3):
            single = bloch.propagate(matrices[o], phases[o], absorption=None if b is None else b[o])
            np.testing.assert_allclose(batched[o], single, atol=1e-14)
    weights = jnp.asarray(rng.uniform(size=6))
    batched_grad = jax.jit(jax.grad(lambda m: loss_of_intensities(bloch.propagate_orientations(m, phases).reshape(-1, 6), weights)))(matrices)
    looped = jax.jit(jax.grad(lambda m, a: loss_of_intensities(bloch.propagate(m, a), weights)))
    for o in range(3):
        looped_grad = looped(matrices[o], phases[o])
        np.testing.assert_allclose(batched_grad[o], looped_grad, atol=1e-12)


# --- Derivatives ------------------------------------------------------------------------------


def general_and_degenerate_matrices():
    rng = np.random.default_rng(11)
    return {
        "general": random_hermitian(rng, 7, 0.05),
        "degenerate": degenerate_hermitian(rng, [0.02, 0.02, 0.02, -0.05, 0.08, 0.08, 0.0]),
        "near-degenerate": degenerate_hermitian(rng, [0.02, 0.02 + 2e-5, 0.02 - 1e-4, -0.05, 0.08, 0.08 + 3e-4, 0.0]),
    }


@pytest.mark.parametrize("case", ["general", "degenerate", "near-degenerate"])
def test_jvp_matches_dense_daleckii_krein(case):
    """Separable near/far JVP against the dense exact G_k(i, j) (and the expm JVP), any direction."""
    matrix = jnp.asarray(general_and_degenerate_matrices()[case])
    direction = jnp.asarray(random_hermitian(np.random.default_rng(2), 7))
    phase = PHASES * 10
    tangent = jax.jit(lambda m, d: jax.jvp(lambda m: bloch.propagate(m, phase), (m,), (d,))[1])(matrix, direction)
    np.testing.assert_allclose(tangent, dense_reference_tangent(matrix, direction, phase), atol=1e-11)
    expm_tangent = jax.jit(lambda m, d: jax.jvp(lambda m: bloch.propagate_expm(m, phase), (m,), (d,))[1])(matrix, direction)
    np.testing.assert_allclose(tangent, expm_tangent, atol=1e-10)


@pytest.mark.parametrize("case", ["general", "degenerate", "near-degenerate"])
def test_gradient_matches_finite_differences(case):
    """A(θ) = A₀ + Σ θ_m E_m (+ scale of the off-diagonal, thickness, K_n), loss of intensities."""
    rng = np.random.default_rng(4)
    base = jnp.asarray(general_and_degenerate_matrices()[case])
    directions = jnp.asarray(np.stack([random_hermitian(rng, 7, 0.01) for _ in range(2)]))
    weights = jnp.asarray(rng.uniform(size=7))
    off_diagonal = ~jnp.eye(7, dtype=bool)

    def loss(theta):
        matrix = jnp.where(off_diagonal, theta[0] * base, base) + jnp.einsum("m,mij->ij", theta[1:3], directions)
        thickness = theta[3] * jnp.array([100.0, 300.0, 700.0])
        return loss_of_intensities(bloch.propagate(matrix, bloch.thickness_phase(thickness, theta[4] * K_NORMAL)), weights)

    assert_gradient_matches_fd(loss, jnp.array([1.0, 0.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("case", ["general", "degenerate"])
def test_forward_mode_equals_reverse_mode(case):
    rng = np.random.default_rng(6)
    base = jnp.asarray(general_and_degenerate_matrices()[case])
    directions = jnp.asarray(np.stack([random_hermitian(rng, 7, 0.01) for _ in range(3)]))
    absorption = jnp.asarray(random_hermitian(rng, 7, 0.002))

    def intensities(theta):
        matrix = base + jnp.einsum("m,mij->ij", theta[:3], directions)
        amplitudes = bloch.propagate(matrix, theta[3] * PHASES, absorption=theta[4] * absorption)
        return jnp.real(amplitudes) ** 2 + jnp.imag(amplitudes) ** 2

    theta = jnp.array([0.0, 0.0, 0.0, 1.0, 1.0 if case == "general" else 0.0])
    forward, reverse = jax.jit(jax.jacfwd(intensities))(theta), jax.jit(jax.jacrev(intensities))(theta)
    assert np.all(np.isfinite(forward))
    np.testing.assert_allclose(forward, reverse, atol=1e-12)


def test_zone_axis_is_exactly_degenerate():
    matrix, _ = hexagonal_zone_axis(jnp.ones(5))
    lam = np.linalg.eigvalsh(np.asarray(matrix))
    gaps = np.diff(lam)
    assert np.sum(gaps < 1e-12) == 2 and np.min(gaps[gaps > 1e-12]) > 1e-3


@pytest.mark.parametrize("absorbing", [False, True])
def test_zone_axis_gradient_matches_finite_differences(absorbing):
    """Exact 6-fold zone axis: gradient w.r.t. U₁, U₂, U₃, S, κ and thickness, no NaN."""
    weights = jnp.asarray(np.random.default_rng(8).uniform(size=7))

    def loss(theta):
        matrix, absorption = hexagonal_zone_axis(theta[:5])
        phase = bloch.thickness_phase(theta[5] * jnp.array([80.0, 250.0, 500.0]), K_NORMAL)
        return loss_of_intensities(bloch.propagate(matrix, phase, absorption=absorption if absorbing else None), weights)

    theta = jnp.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert_gradient_matches_fd(loss, theta)
    forward = jax.jit(jax.jacfwd(loss))(theta)
    np.testing.assert_allclose(forward, jax.jit(jax.grad(loss))(theta), atol=1e-12)


@pytest.mark.parametrize("case", ["general", "zone-axis"])
def test_absorption_gradients_match_finite_differences(case):
    """First-order absorption: gradient w.r.t. the couplings of A', the absorption scale κ and t."""
    row = systematic_row(9)
    mask = jnp.ones(9, dtype=bool)
    weights = jnp.asarray(np.random.default_rng(9).uniform(size=9))

    def loss(theta):
        if case == "zone-axis":
            matrix, absorption = hexagonal_zone_axis(theta[:5])
            thickness = theta[5] * jnp.array([120.0, 400.0])
        else:
            excitation, u, g_normal, u0 = row
            matrix = bloch.structure_matrix(theta[1] * excitation, theta[0] * u, K, g_normal, K_NORMAL, mask)
            absorption = bloch.absorptive_matrix(theta[2] * u, theta[2] * u0, g_normal, K_NORMAL, mask)
            thickness = theta[3] * jnp.array([120.0, 400.0])
        amplitudes = bloch.propagate(matrix, bloch.thickness_phase(thickness, K_NORMAL), absorption=absorption)
        return loss_of_intensities(amplitudes, weights[: matrix.shape[0]])

    theta = jnp.ones(6) if case == "zone-axis" else jnp.array([1.0, 1.0, 0.08, 1.0])
    assert_gradient_matches_fd(loss, theta)


def test_no_nan_at_degenerate_zero_thickness_and_single_beam():
    matrix, absorption = hexagonal_zone_axis(jnp.ones(5))
    weights = jnp.arange(7.0)
    for b in (None, absorption):
        grad = jax.jit(jax.grad(lambda m, a: loss_of_intensities(bloch.propagate(m, a, absorption=b), weights)))
        for phase in (jnp.zeros(5), PHASES):
            assert np.all(np.isfinite(grad(matrix, phase)))
    gradient = jax.grad(lambda m: loss_of_intensities(bloch.propagate(m, PHASES), jnp.ones(1)))(jnp.zeros((1, 1)))
    assert np.all(np.isfinite(gradient))
