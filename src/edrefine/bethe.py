"""Bethe reduction: the strong beams in the eigenproblem, the weak ones folded in by perturbation.

For one orientation split the beams into a strong set s (the ``strong`` beams of smallest
|S_g|, the incident beam always among them) and a weak set w (the rest). In the propagation
equation dψ/da = i A' ψ (:mod:`edrefine.bloch`) a weak beam has a large diagonal A'_ww = M_w² 2K S_w
compared with its couplings, so it follows the strong beams adiabatically. To first order in
A'_ws / A'_ww (Bethe 1928; Zuo & Weickenmeier 1995):

    A_eff = A'_ss − A'_sw diag(1/A'_ww) A'_ws                 (strong beams, N_s × N_s),
    ψ_w(a) = −[Σ_s A'_ws ψ_s(a) − A'_w0 exp(i a A'_ww)] / A'_ww    (weak beams),

the second term being the weak beam's own Bloch wave that makes ψ_w(0) = 0. Weak–weak couplings
are dropped. With only the incident beam strong (N_s = 1) the fold is left out as well, since its
second-order phase |A'_0w|²/A'_ww diverges for any beam near its Bragg condition: ψ_0 = 1 and
ψ_w = A'_w0 (exp(i a A'_ww) − 1) / A'_ww, the kinematical (first Born) amplitude with the
rocking curve of a crystal of that thickness. That is the program's kinematical model. The
cost is one N_s × N_s eigendecomposition plus N_s² (N − N_s) for the correction, instead of an
N × N eigendecomposition. The strong set is chosen per orientation inside ``jit`` (a sort of
|S_g|), so it follows the tilt; the choice is piecewise constant, its derivative zero.

With absorption the absorptive matrix is restricted to the strong beams and the weak beams are
reconstructed from the elastic couplings (first order in both κ and A'_ws / A'_ww).
The accuracy against the full matrix is measured in tests/test_bethe.py and docs/benchmarks.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Complex, Float, Inexact, Int

from . import bloch


AUTO_FULL_MATRIX = 384
"""Automatic choice (``strong_beams`` None): the full matrix up to this many beams per orientation."""
AUTO_STRONG_BEAMS = 256
"""Automatic choice beyond :data:`AUTO_FULL_MATRIX`: this many strong beams (docs/benchmarks.md:
on CsPbBr₃ at 2.3 Å⁻¹, 1280 beams, Σ|ΔFc|/ΣFc 1.3 % against the full matrix at 7 times its speed)."""


def solved_strong_beams(strong_beams: int | None, capacity: int) -> int:
    """The strong-beam count a calculation with ``capacity`` beams per orientation uses: 0 (the
    full matrix) or N_s. ``strong_beams`` as given, or for None the automatic choice."""
    if strong_beams is not None:
        return strong_beams
    return 0 if capacity <= AUTO_FULL_MATRIX else AUTO_STRONG_BEAMS


def strong_order(excitation_error: Float[Array, " beam"], beam_mask: Bool[Array, " beam"]) -> Array:
    """Beam indices by increasing |S_g|: the incident beam (index 0) first, padded beams last."""
    key = jnp.where(beam_mask, jnp.abs(excitation_error), jnp.inf).at[0].set(-1.0)
    return jnp.argsort(key, stable=True)


def reduced_propagate(
    matrix: Inexact[Array, "beam beam"],
    phase: Float[Array, " thickness"],
    excitation_error: Float[Array, " beam"],
    beam_mask: Bool[Array, " beam"],
    strong: int,
    absorption: Inexact[Array, "beam beam"] | None = None,
) -> Complex[Array, "thickness beam"]:
    """Amplitudes ψ(a) of every beam with the ``strong`` beams of smallest |S_g| solved exactly.

    Args:
        matrix: A' [Å⁻²] of all beams (:func:`edrefine.bloch.structure_matrix`).
        phase: a = π t / K_n [Å²].
        excitation_error: S_g [Å⁻¹] (chooses the strong beams).
        beam_mask: True for valid beams.
        strong: number of strong beams N_s (static), 1 ≤ N_s < N.
        absorption: A'_abs [Å⁻²] or None.

    Returns:
        ψ [thickness beam] in the original beam order (zero on padding).
    """
    order = strong_order(excitation_error, beam_mask)
    s, w = order[:strong], order[strong:]
    valid = matrix * (beam_mask[:, None] & beam_mask[None, :])
    absorptive = None if absorption is None else absorption[s][:, s]
    return _fold_and_propagate(valid[s][:, s], valid[w][:, s], jnp.real(jnp.diagonal(valid)[w]), s, w, beam_mask,
                               phase, absorptive)


def strong_rows_propagate(
    u_table: Complex[Array, " coupling"],
    coupling_index: Int[Array, "beam beam"],
    excitation_error: Float[Array, " beam"],
    g_normal: Float[Array, " beam"],
    k_crystal: Float[Array, ""],
    k_normal: Float[Array, ""],
    beam_mask: Bool[Array, " beam"],
    phase: Float[Array, " thickness"],
    strong: int,
    absorption: Float[Array, ""] | None = None,
) -> Complex[Array, "thickness beam"]:
    """:func:`reduced_propagate` from the potential table, building only the N_s strong rows of A'.

    The same matrix elements as :func:`edrefine.bloch.structure_matrix` (A'_ij = M_i A_ij M_j),
    but N_s × N of them instead of N × N: A'_ws is the conjugate transpose of A'_sw (U Hermitian)
    and A'_ww is only needed on its diagonal. With ``absorption`` κ the absorptive matrix of the
    strong beams is κ times their coupling block plus M_s² κ U₀ on the diagonal.
    """
    order = strong_order(excitation_error, beam_mask)
    s, w = order[:strong], order[strong:]
    m = bloch._surface_factors(g_normal, k_normal, beam_mask)
    mask_s = beam_mask[s]
    off_diagonal = mask_s[:, None] & beam_mask[None, :] & (jnp.arange(beam_mask.shape[0])[None, :] != s[:, None])
    coupling_rows = m[s][:, None] * jnp.where(off_diagonal, u_table[coupling_index[s]], 0.0) * m[None, :]
    diagonal = m**2 * 2.0 * k_crystal * jnp.where(beam_mask, excitation_error, 0.0)
    a_ss = coupling_rows[:, s] + jnp.diag(jnp.where(mask_s, diagonal[s], 0.0))
    a_ws = jnp.conj(coupling_rows[:, w]).T
    absorptive = None
    if absorption is not None:
        u0 = jnp.real(u_table[0])
        absorptive = absorption * coupling_rows[:, s] + jnp.diag(jnp.where(mask_s, absorption * u0 * m[s] ** 2, 0.0))
    return _fold_and_propagate(a_ss, a_ws, diagonal[w], s, w, beam_mask, phase, absorptive)


@jax.custom_jvp
def fold(a_ws: Inexact[Array, "weak strong"], d_w: Float[Array, " weak"]) -> Inexact[Array, "strong strong"]:
    """The Bethe correction A'_sw diag(1/A'_ww) A'_ws = (A'_wsᴴ / d) A'_ws (Hermitian).

    Its tangent X + Xᴴ − A'_wsᴴ diag(δd/d²) A'_ws with X = (A'_wsᴴ / d) δA'_ws takes one N_s × N_w × N_s
    product for the couplings instead of the two of the product rule (the reverse pass, its
    transpose, likewise), and none for d when d has no tangent (structural derivatives)."""
    return (jnp.conj(a_ws).T / d_w[None, :]) @ a_ws


def _fold_jvp(primals, tangents):
    a_ws, d_w = primals
    da_ws, dd_w = tangents
    weighted = jnp.conj(a_ws).T / d_w[None, :]
    out = weighted @ a_ws
    tangent = jnp.zeros_like(out)
    if not isinstance(da_ws, jax.custom_derivatives.SymbolicZero):
        x = weighted @ da_ws
        tangent = x + jnp.conj(x).T
    if not isinstance(dd_w, jax.custom_derivatives.SymbolicZero):
        tangent = tangent - (weighted * (dd_w / d_w)[None, :]) @ a_ws
    return out, tangent


fold.defjvp(_fold_jvp, symbolic_zeros=True)


def _fold_and_propagate(a_ss, a_ws, d_w, s, w, beam_mask, phase, absorptive):
    """A_eff from the strong block, the weak-to-strong couplings and the weak diagonal; ψ of all beams."""
    mask_s, mask_w = beam_mask[s], beam_mask[w]
    a_ws = jnp.where(mask_w[:, None] & mask_s[None, :], a_ws, 0.0)
    d_w = jnp.where(mask_w, d_w, 1.0)
    if s.shape[0] == 1:
        # kinematical limit: folding near-Bragg weak beams into the incident one diverges as S_w → 0
        correction = jnp.zeros_like(a_ss)
    else:
        correction = fold(a_ws, d_w)
    reduced = jnp.where(mask_s[:, None] & mask_s[None, :], a_ss - correction, 0.0)
    reduced = reduced + jnp.diag(bloch._padding_diagonal(reduced, mask_s))
    psi_s = bloch.propagate(reduced, phase, absorption=absorptive)
    own_wave = jnp.exp(1j * phase[:, None] * d_w[None, :]) * a_ws[:, 0][None, :]
    psi_w = -(psi_s @ a_ws.T - own_wave) / d_w[None, :]
    psi_w = jnp.where(mask_w[None, :], psi_w, 0.0)
    psi = jnp.zeros((phase.shape[0], beam_mask.shape[0]), dtype=psi_s.dtype)
    return psi.at[:, s].set(psi_s).at[:, w].set(psi_w.astype(psi_s.dtype))
