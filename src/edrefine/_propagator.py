"""The eigen-propagator ψ(a) = exp(i a H) e₀ and its Daleckii–Krein derivative.

Private kernel of :mod:`edrefine.bloch`. One Hermitian eigendecomposition H = C Λ Cᴴ gives
ψ_k = C (f_k ∘ w) for every phase a_k, with f_k = exp(i a_k ν) and w = Cᴴ e₀. Without
absorption ν = λ; with an absorptive matrix B (first-order, Hermitian basis) ν = λ + i μ,
μ_j = (Cᴴ B C)_jj.

The derivative is a ``jax.custom_jvp`` (forward mode for Levenberg–Marquardt; JAX transposes
the linear tangent map for reverse mode). For a perturbation dH, with X = Cᴴ dH C,

    dψ_k = C z_k,   z_k,i = Σ_j G_k(i, j) X_ij w_j,
    G_k(i, j) = (f_k(ν_i) − f_k(ν_j)) / (λ_i − λ_j),   G_k(i, i) = i a_k f_k(ν_i)

(Daleckii & Krein 1965). Pairs are split by the gap. *Far* pairs use Y_ij = X_ij/(λ_j − λ_i):
z_k = Y (w ∘ f_k) − f_k ∘ (Y w), one N × N by N × (T+1) product. *Near* pairs
(|λ_i − λ_j| < δ = 0.1 / max_k a_k, diagonal included) use G_k(i, j) = i a_k f_k,i φ(a_k Δ_ij),
Δ = λ_i − λ_j, φ(x) = (1 − e^{−ix})/(ix) = Σ_p (−ix)^p/(p+1)! to p = 6 (|x| ≤ 0.1, relative
error ≤ 3e-12); the moments Σ_j X_ij Δ_ij^p w_j cost O(N²) each and Δ is formed directly,
so nothing cancels. Exactly degenerate eigenvalues (zone axes) are exact and free of 0/0. No
thickness × beam × beam tensor is formed. Cost of a tangent or cotangent of H: 2 N³ complex
products (done as 6 N³ real ones) on top of the forward ``eigh``.

First-order absorption adds −a_k f_k μ̇ w with μ̇_j = (Cᴴ dB C)_jj + 2 Re Σ_i P_ji Y_ij,
P = Cᴴ B C, summed over far pairs only: inside a degenerate subspace of a symmetric zone axis P
is a multiple of the identity (Schur's lemma), so the near-pair terms vanish in the limit. The
near-pair form above, with f_k(ν), is then also exact (μ_i = μ_j there). At an accidental
near-degeneracy with μ_i ≠ μ_j first-order theory itself breaks down (its derivative grows as
1/Δ); the near-pair form is the regularisation used there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Complex, Float, Inexact

NEAR_PHASE = 0.1
"""a_max δ: eigenvalue pairs closer than δ = NEAR_PHASE / max_k a_k are treated as near."""
NEAR_ORDER = 6
"""Last power of the near-pair series of φ; truncation error ≤ 0.1⁷ / 8! ≈ 2.5e-12 relative."""


def _is_zero(tangent) -> bool:
    return isinstance(tangent, SymbolicZero)


def _hermitian_part(matrix: Inexact[Array, "n n"]) -> Inexact[Array, "n n"]:
    return 0.5 * (matrix + jnp.conj(matrix).T)


def _complex_matmul(a: Inexact[Array, "n m"], b: Inexact[Array, "m k"]) -> Inexact[Array, "n k"]:
    """a @ b through real products: three (Gauss) if both are complex, two if one is.

    XLA's CPU complex dot is about 2x slower than its real dots."""
    a_complex, b_complex = jnp.iscomplexobj(a), jnp.iscomplexobj(b)
    if a_complex and b_complex:
        real_product, imag_product = a.real @ b.real, a.imag @ b.imag
        mixed = (a.real + a.imag) @ (b.real + b.imag)
        return jax.lax.complex(real_product - imag_product, mixed - real_product - imag_product)
    if a_complex:
        return jax.lax.complex(a.real @ b, a.imag @ b)
    if b_complex:
        return jax.lax.complex(a @ b.real, a @ b.imag)
    return a @ b


def _congruence(vectors: Inexact[Array, "n n"], matrix: Inexact[Array, "n n"]) -> Inexact[Array, "n n"]:
    """Cᴴ M C [same units as M]: 2 N³ complex (6 N³ real) multiply-adds."""
    return _complex_matmul(_complex_matmul(jnp.conj(vectors).T, matrix), vectors)


def _diagonal_elements(vectors: Inexact[Array, "n n"], matrix: Inexact[Array, "n n"]) -> Float[Array, " n"]:
    """Re (Cᴴ M C)_jj, which is (Cᴴ M_h C)_jj for the Hermitian part M_h of M (one N³ product)."""
    return jnp.real(jnp.sum(jnp.conj(vectors) * _complex_matmul(matrix, vectors), axis=0))


def _phase_factors(phase: Float[Array, " t"], nu: Inexact[Array, " n"]) -> Complex[Array, "t n"]:
    return jnp.exp(1j * phase[:, None] * nu[None, :])


def _pair_split(eigenvalues: Float[Array, " n"], phase: Float[Array, " t"]):
    """Inverse gaps 1/(λ_j − λ_i) on far pairs (0 on near ones), and the gaps λ_i − λ_j on near
    pairs including the diagonal (0 on far ones) with the near mask."""
    lam = jax.lax.stop_gradient(eigenvalues)
    gap = lam[:, None] - lam[None, :]
    a_max = jnp.max(jnp.abs(jax.lax.stop_gradient(phase)))
    near = jnp.abs(gap) < NEAR_PHASE / jnp.maximum(a_max, jnp.finfo(lam.dtype).tiny)
    inverse_gap = jnp.where(near, 0.0, -1.0 / jnp.where(near, 1.0, gap))
    return inverse_gap, jnp.where(near, gap, 0.0), near


def _near_pair_sum(x, near_gap, near, f, w, phase) -> Complex[Array, "t n"]:
    """Σ_j G_k(i, j) X_ij w_j over near pairs (and the diagonal), G_k = i a_k f_k,i φ(a_k Δ_ij).

    φ(x) = (1 − e^{−ix}) / (ix) = Σ_p (−ix)^p / (p + 1)!, exact divided difference when
    f_k,j = f_k,i e^{−i a_k Δ_ij}; the moments D_p,i = Σ_j X_ij Δ_ij^p w_j cost O(N²) each.
    """
    x_near = jnp.where(near, x, 0.0)
    moments = [x_near @ w]
    for _ in range(1, NEAR_ORDER + 1):
        x_near = x_near * near_gap
        moments.append(x_near @ w)
    a = phase[:, None]
    series = jnp.zeros_like(f)
    for p in reversed(range(NEAR_ORDER + 1)):
        series = series * (-1j * a) / (p + 2) + moments[p][None, :]
    return 1j * a * f * series


def _matrix_tangent(x, eigenvalues, nu, w, phase):
    """z_k,i = Σ_j G_k(i, j) X_ij w_j [t n], and Y (X on far pairs over λ_j − λ_i)."""
    inverse_gap, near_gap, near = _pair_split(eigenvalues, phase)
    f = _phase_factors(phase, nu)
    y = x * inverse_gap
    product = _complex_matmul(y, jnp.concatenate([(f * w[None, :]).T, w[:, None]], axis=1))
    far = product[:, :-1].T - f * product[:, -1][None, :]
    return far + _near_pair_sum(x, near_gap, near, f, w, phase), y


def _amplitudes(eigenvalues, vectors, phase, mu=None) -> Complex[Array, "t n"]:
    """ψ_k = C (exp(i a_k ν) ∘ w), ν = λ + i μ, w = Cᴴ e₀; [t n]."""
    nu = eigenvalues if mu is None else eigenvalues + 1j * mu
    return _complex_matmul(_phase_factors(phase, nu) * jnp.conj(vectors[0])[None, :], vectors.T)


def _tangent(eigenvalues, vectors, phase, dphase, x=None, mu=None, absorptive=None, dmu=None):
    """dψ [t n] from the eigenpairs, the rotated tangent X = Cᴴ dH C and the absorption terms."""
    nu = eigenvalues if mu is None else eigenvalues + 1j * mu
    w = jnp.conj(vectors[0])
    f = _phase_factors(phase, nu)
    z = jnp.zeros_like(f)
    if x is not None:
        z_matrix, y = _matrix_tangent(x, eigenvalues, nu, w, phase)
        z = z + z_matrix
        if absorptive is not None:
            shift = 2 * jnp.real(jnp.sum(absorptive.T * y, axis=0))
            dmu = shift if dmu is None else dmu + shift
    if dmu is not None:
        z = z - phase[:, None] * f * (dmu * w)[None, :]
    if not _is_zero(dphase):
        z = z + dphase[:, None] * 1j * nu[None, :] * f * w[None, :]
    return _complex_matmul(z, vectors.T)


@jax.custom_jvp
def eigen_propagate(matrix: Inexact[Array, "n n"], phase: Float[Array, " t"]) -> Complex[Array, "t n"]:
    """ψ_k = exp(i a_k H) e₀ for Hermitian H [Å⁻²] and phases a_k [Å²]; returns [t n]."""
    eigenvalues, vectors = jnp.linalg.eigh(matrix)
    return _amplitudes(eigenvalues, vectors, phase)


def _eigen_propagate_jvp(primals, tangents):
    matrix, phase = primals
    dmatrix, dphase = tangents
    eigenvalues, vectors = jnp.linalg.eigh(matrix)
    x = None if _is_zero(dmatrix) else _congruence(vectors, _hermitian_part(dmatrix))
    tangent = _tangent(eigenvalues, vectors, phase, dphase, x=x)
    return _amplitudes(eigenvalues, vectors, phase), tangent


eigen_propagate.defjvp(_eigen_propagate_jvp, symbolic_zeros=True)


@jax.custom_jvp
def absorptive_propagate(
    matrix: Inexact[Array, "n n"], absorption: Inexact[Array, "n n"], phase: Float[Array, " t"]
) -> Complex[Array, "t n"]:
    """First-order ψ_k = C exp(i a_k (λ + i μ)) Cᴴ e₀, μ = diag(Cᴴ B C), H = C Λ Cᴴ; [t n]."""
    eigenvalues, vectors = jnp.linalg.eigh(matrix)
    mu = _diagonal_elements(vectors, absorption)
    return _amplitudes(eigenvalues, vectors, phase, mu)


def _absorptive_propagate_jvp(primals, tangents):
    matrix, absorption, phase = primals
    dmatrix, dabsorption, dphase = tangents
    eigenvalues, vectors = jnp.linalg.eigh(matrix)
    absorption_vectors = _complex_matmul(_hermitian_part(absorption), vectors)
    mu = jnp.real(jnp.sum(jnp.conj(vectors) * absorption_vectors, axis=0))
    x = p = None
    if not _is_zero(dmatrix):
        x = _congruence(vectors, _hermitian_part(dmatrix))
        p = _complex_matmul(jnp.conj(vectors).T, absorption_vectors)
    dmu = None if _is_zero(dabsorption) else _diagonal_elements(vectors, dabsorption)
    tangent = _tangent(eigenvalues, vectors, phase, dphase, x=x, mu=mu, absorptive=p, dmu=dmu)
    return _amplitudes(eigenvalues, vectors, phase, mu), tangent


absorptive_propagate.defjvp(_absorptive_propagate_jvp, symbolic_zeros=True)
