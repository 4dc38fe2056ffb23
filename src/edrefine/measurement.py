"""Continuous-rotation integration of virtual frames: tilt quadrature, beam sets, intensities.

A virtual frame of a continuous-rotation experiment records every reflection while the crystal
turns by ±half-width about the goniometer axis. Its integrated intensity is modelled as the
quadrature average over tilts δ_j of the Bloch-wave intensity at orientation

    M(δ) = R_axis(δ) M_frame        (g_lab = M(δ) hkl, incident k = −K e_z fixed in the lab),

I_g = Σ_j w_j |ψ_g(t; δ_j)|², Σ_j w_j = 1. All thicknesses come from one eigendecomposition per
tilt (:func:`edrefine.bloch.propagate`), so a whole thickness grid or a per-frame thickness
distribution costs almost nothing extra. Everything runs in the lab frame: the structure
matrix only needs hkl (potential) and M(δ) (geometry), so the UB's metric is used for the
geometry and the crystal's own cell for the structure factors.

Host-side (numpy) parts choose the beams; the jitted part (:func:`frame_intensities`) is
``vmap``-ed over tilts and looped over frames by :func:`integrate_frames`.

The general form averages over any per-frame stack of orientations M_k with weights w_k
(:func:`orientation_intensities`, :func:`integrate_orientations`): a precession cone
(:func:`precession_orientations`) or a mosaic spread (:func:`mosaic_rule`,
:func:`mosaic_orientations`). The rotation path above is that special case, kept as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Complex, Float, Int

from .beams import BeamSets, excitation_errors, pad_beam_sets
from .bethe import solved_strong_beams
from .diffraction import orientation_amplitudes
from .errors import InputError
from .frames import axis_rotation, tilted_orientation

LAB_BEAM = np.array([0.0, 0.0, -1.0])
"""Electron propagation direction in the lab frame (lab +z points to the source)."""


def tilt_rule(count: int, half_width: float, rule: str = "midpoint") -> tuple[np.ndarray, np.ndarray]:
    """Tilt nodes δ_j [rad] and weights w_j (Σ w = 1) over [−half_width, +half_width].

    Args:
        count: number of tilts.
        half_width: half-width of the frame [rad].
        rule: "midpoint" (uniform cells, node at each centre), "uniform" (``linspace`` with
            both end points, equal weights, as the published sampling of 42 tilts over ±1°),
            or "gauss" (Gauss–Legendre).
    """
    if count < 1:
        raise InputError(f"tilt count must be ≥ 1, got {count}", source="tilts")
    if rule == "midpoint":
        nodes = (-1.0 + (2.0 * np.arange(count) + 1.0) / count) * half_width
        return nodes, np.full(count, 1.0 / count)
    if rule == "uniform":
        nodes = np.linspace(-half_width, half_width, count) if count > 1 else np.zeros(1)
        return nodes, np.full(count, 1.0 / count)
    if rule == "gauss":
        x, w = np.polynomial.legendre.leggauss(count)
        return x * half_width, w / 2.0
    raise InputError(f"unknown tilt rule {rule!r} (midpoint, uniform, gauss)", source="tilt_rule")


def _rotation_np(axis: np.ndarray, angle: float) -> np.ndarray:
    return np.asarray(axis_rotation(jnp.asarray(axis, dtype=jnp.float64), jnp.asarray(angle, dtype=jnp.float64)))


def smallest_excitation_error(
    g_cart: Float[np.ndarray, "n 3"], axis: Float[np.ndarray, "3"], tilts: Float[np.ndarray, " tilt"], k_crystal: float
) -> Float[np.ndarray, " n"]:
    """min over ``tilts`` of |S_g| [Å⁻¹] for lab vectors ``g_cart`` of the untilted frame (the beam
    fixed along −e_z, the crystal turned by δ about ``axis``)."""
    k_lab = k_crystal * LAB_BEAM
    s = np.stack([excitation_errors(g_cart, _rotation_np(axis, d).T @ k_lab) for d in np.atleast_1d(tilts)])
    return np.min(np.abs(s), axis=0)


def frame_beams(
    candidates: Int[np.ndarray, "cand 3"],
    orientation: Float[np.ndarray, "3 3"],
    axis: Float[np.ndarray, "3"],
    tilts: Float[np.ndarray, " tilt"],
    k_crystal: float,
    sg_max: float,
    required: Int[np.ndarray, "req 3"] | None = None,
) -> Int[np.ndarray, "beam 3"]:
    """Union over the frame's tilts of the beams with |S_g| ≤ sg_max, plus ``required`` hkl.

    S_g at tilt δ is computed with g = R(δ) M hkl and the fixed lab k = −K e_z, which equals
    S_g for g = M hkl and k = R(δ)ᵀ k. The origin comes first, then by increasing min |S_g|;
    ``required`` rows (e.g. the measured reflections that enter the fit) are appended if absent.
    """
    s_min = smallest_excitation_error(np.asarray(candidates) @ np.asarray(orientation).T, axis, tilts, k_crystal)
    s_min[0] = -1.0
    chosen = np.flatnonzero(s_min <= sg_max)
    beams = np.asarray(candidates)[chosen[np.argsort(s_min[chosen], kind="stable")]]
    if required is not None and len(required):
        present = {tuple(h) for h in beams.tolist()}
        extra = [h for h in np.asarray(required).tolist() if tuple(h) not in present and any(h)]
        extra = list(dict.fromkeys(map(tuple, extra)))
        if extra:
            beams = np.concatenate([beams, np.array(extra, dtype=beams.dtype)])
    return beams


def frame_beam_sets(
    candidates: Int[np.ndarray, "cand 3"],
    orientations: Float[np.ndarray, "frame 3 3"],
    axis: Float[np.ndarray, "3"],
    tilts: Sequence[np.ndarray],
    k_crystal: float,
    sg_max: float,
    required: Sequence[np.ndarray] | None = None,
) -> BeamSets:
    """:func:`frame_beams` for every frame, padded to one capacity with a shared coupling table."""
    lists = [
        frame_beams(candidates, m, axis, t, k_crystal, sg_max, None if required is None else required[f])
        for f, (m, t) in enumerate(zip(orientations, tilts))
    ]
    return pad_beam_sets(lists)


def split_tilts(
    tilts: Float[np.ndarray, "frame tilt"], weights: Float[np.ndarray, "frame tilt"], segments: int
) -> tuple[Float[np.ndarray, "frame segment per"], Float[np.ndarray, "frame segment per"]]:
    """Cut each frame's tilt quadrature into ``segments`` consecutive parts of equal length.

    The weights keep their values (a segment's weights sum to its share of the frame), so the
    frame's integral is the sum of its segments' integrals. InputError unless ``segments``
    divides the tilt count.
    """
    tilts, weights = np.asarray(tilts), np.asarray(weights)
    count = tilts.shape[1]
    if not (1 <= segments <= count and count % segments == 0):
        raise InputError(f"{segments} segments do not divide {count} tilts evenly; choose a divisor of tilts",
                         source="tilt_segments")
    shape = (tilts.shape[0], segments, count // segments)
    return tilts.reshape(shape), weights.reshape(shape)


def segment_beam_sets(
    candidates: Int[np.ndarray, "cand 3"],
    orientations: Float[np.ndarray, "frame 3 3"],
    axis: Float[np.ndarray, "3"],
    tilts: Float[np.ndarray, "frame segment per"],
    k_crystal: float,
    sg_max: float,
    required: Sequence[np.ndarray],
) -> BeamSets:
    """One beam set per frame segment, rows in frame-major order ``[frame × segment]``.

    Each segment's set is the union over its own tilts of the beams with |S_g| ≤ sg_max
    (:func:`frame_beams`), so a segment needs fewer beams than its whole frame. Every
    ``required`` reflection of a frame is guaranteed a place in at least the segment where its
    smallest |S_g| is smallest; elsewhere it is present only if it passes sg_max there, and
    counts as dark in the segments without it.
    """
    lists = []
    for f, m in enumerate(orientations):
        hkl = np.asarray(required[f]).reshape(-1, 3)
        g_cart = hkl @ np.asarray(m).T
        closest = np.stack([smallest_excitation_error(g_cart, axis, part, k_crystal) for part in tilts[f]])
        home = np.argmin(closest, axis=0)
        for s, part in enumerate(tilts[f]):
            lists.append(frame_beams(candidates, m, axis, part, k_crystal, sg_max, hkl[home == s]))
    return pad_beam_sets(lists)


def frame_intensities(
    u_table: Complex[Array, " coupling"],
    coupling_index: Int[Array, "beam beam"],
    beam_hkl: Int[Array, "beam 3"],
    beam_mask: Bool[Array, " beam"],
    orientation: Float[Array, "3 3"],
    axis: Float[Array, "3"],
    tilts: Float[Array, " tilt"],
    weights: Float[Array, " tilt"],
    wavelength: Float[Array, ""],
    thickness: Float[Array, " thickness"],
    absorption: Float[Array, ""] | None = None,
) -> Float[Array, "thickness beam"]:
    """Integrated intensity Σ_j w_j |ψ_g(t; δ_j)|² of one frame at every thickness [Å].

    Differentiable in every floating argument; ``vmap``-ed over tilts internally.
    """
    stack = rotation_orientations(orientation, axis, tilts)
    return orientation_intensities(
        u_table, coupling_index, beam_hkl, beam_mask, stack, weights, wavelength, thickness, absorption
    )


def integrate_frames(
    u_table: Complex[Array, " coupling"],
    beam_sets: BeamSets,
    orientations: Float[np.ndarray, "frame 3 3"],
    axis: Float[np.ndarray, "3"],
    tilts: Float[np.ndarray, "frame tilt"],
    weights: Float[np.ndarray, "frame tilt"],
    wavelength: float,
    thickness: Float[np.ndarray, "frame thickness"] | Float[np.ndarray, " thickness"],
    absorption: float | None = None,
    progress: Callable[[int], None] | None = None,
    strong_beams: int | None = 0,
) -> Float[np.ndarray, "frame thickness beam"]:
    """Integrated intensities of every frame at its thickness nodes (host loop over frames).

    One compiled kernel serves every frame (all share the padded capacity and the tilt and
    thickness counts), so memory stays bounded by one frame: tilt × thickness × beam.

    Args:
        u_table: U(g) on ``beam_sets.coupling_hkl`` [Å⁻²].
        beam_sets: padded per-frame beam sets (:func:`frame_beam_sets`).
        orientations: M of every frame centre (g_lab = M hkl) [Å⁻¹].
        axis: unit goniometer axis in the lab.
        tilts, weights: per-frame quadrature from :func:`tilt_rule` [rad].
        wavelength: λ [Å].
        thickness: nodes [Å], shared [T] or per frame [frame, T].
        absorption: κ of the proportional absorptive potential, or None.
        progress: called with the number of frames done after each frame.
        strong_beams: beams solved exactly, the rest by Bethe perturbation (0: full matrix).

    Returns:
        numpy [frame, thickness, beam]; zero on padded beams.
    """
    stacks = np.stack([np.asarray(rotation_orientations(jnp.asarray(m), jnp.asarray(axis), jnp.asarray(t)))
                       for m, t in zip(orientations, tilts)])
    return integrate_orientations(u_table, beam_sets, stacks, weights, wavelength, thickness, absorption, progress,
                                  strong_beams)


def thickness_average(
    intensity: Float[np.ndarray, "frame thickness beam"], weights: Float[np.ndarray, "frame thickness"]
) -> Float[np.ndarray, "frame beam"]:
    """Incoherent average over each frame's thickness distribution (weights normalised here)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum(axis=1, keepdims=True)
    return np.einsum("ft,ftb->fb", w, intensity)


def lookup_beams(beam_hkl: Int[np.ndarray, "beam 3"], hkl: Int[np.ndarray, "refl 3"]) -> Int[np.ndarray, " refl"]:
    """Index of each ``hkl`` row in ``beam_hkl`` (−1 when absent)."""
    table = {tuple(h): i for i, h in enumerate(np.asarray(beam_hkl).tolist())}
    return np.array([table.get(tuple(h), -1) for h in np.asarray(hkl).tolist()], dtype=np.int64)


# --- Orientation stacks: precession cones, mosaic spread, general integration ----------------


def precession_orientations(
    orientation: Float[Array, "3 3"], angle: Float[Array, ""], steps: int, azimuth: Float[Array, ""] = 0.0
) -> tuple[Float[Array, "step 3 3"], Float[Array, " step"]]:
    """Orientations M_k and weights (1/steps each) of a precession frame.

    The beam is tilted by φ = ``angle`` [rad] away from the frame's zone axis (lab +z for the
    orientation M) at azimuths θ_k = ``azimuth`` + 2πk/steps: tilted beam b_k = R(a_k, φ)(−e_z)
    with the tilt axis a_k = (cos θ_k, sin θ_k, 0). In the lab frame, where the beam stays −e_z,
    the crystal turns by the inverse, M_k = R(a_k, −φ) M, so g·b_k = (M_k hkl)·(−e_z).
    Differentiable in ``orientation``, ``angle`` and ``azimuth``.
    """
    if steps < 1:
        raise InputError(f"precession steps must be ≥ 1, got {steps}", source="precession_steps")
    theta = jnp.asarray(azimuth) + 2.0 * jnp.pi * jnp.arange(steps) / steps
    axes = jnp.stack([jnp.cos(theta), jnp.sin(theta), jnp.zeros_like(theta)], axis=1)
    stack = jax.vmap(lambda a: axis_rotation(a, -jnp.asarray(angle)) @ orientation)(axes)
    return stack, jnp.full(steps, 1.0 / steps)


def rotation_orientations(
    orientation: Float[Array, "3 3"], axis: Float[Array, "3"], tilts: Float[Array, " tilt"]
) -> Float[Array, "tilt 3 3"]:
    """M(δ_j) = R_axis(δ_j) M for every tilt [rad]: a continuous-rotation frame as a stack."""
    return jax.vmap(lambda d: tilted_orientation(orientation, axis, d))(jnp.asarray(tilts))


def mosaic_orientations(
    orientations: Float[Array, "k 3 3"],
    weights: Float[Array, " k"],
    axis: Float[Array, "3"],
    tilts: Float[Array, " tilt"],
    tilt_weights: Float[Array, " tilt"],
) -> tuple[Float[Array, "k_tilt 3 3"], Float[Array, " k_tilt"]]:
    """Product rule: every orientation of a stack also turned by δ_j about ``axis``.

    Used for a mosaic spread (``tilts`` from :func:`mosaic_rule` with half-width 0) on top of
    a precession cone. Order: k-major (index k * tilt + j); weights w_k v_j.
    """
    rotations = jax.vmap(lambda d: axis_rotation(axis, d))(jnp.asarray(tilts))
    stack = jnp.einsum("jab,kbc->kjac", rotations, orientations).reshape(-1, 3, 3)
    return stack, (weights[:, None] * tilt_weights[None, :]).reshape(-1)


def _gauss_cdf_integral(x: np.ndarray) -> np.ndarray:
    """G(x) = x Φ(x) + φ(x), the antiderivative of the standard normal CDF Φ."""
    erf = np.frompyfunc(math.erf, 1, 1)
    x = np.asarray(x, dtype=np.float64)
    cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)).astype(np.float64))
    return x * cdf + np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def mosaic_rule(count: int, half_width: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Tilt nodes [rad] and weights for a ±half-width frame box convolved with a mosaic Gaussian.

    The density is W(δ) = [Φ((δ+h)/σ) − Φ((δ−h)/σ)] / 2h (box of half-width h convolved with a
    normal of standard deviation σ; for h = 0 the normal itself). The midpoint cells of
    :func:`tilt_rule` (width Δ = 2h/count) are extended by ⌈3σ/Δ⌉ cells on each side and each
    node gets the exact integral of W over its cell (renormalised: the ±3σ truncation loses
    < 0.2 %). With h = 0 the cells have width σ/2. σ = 0 returns ``tilt_rule(count, h)``
    exactly. Every extra node is one more eigendecomposition per frame.

    Args:
        count: tilts over the frame's own ±h (midpoint rule).
        half_width: h [rad]; sigma: mosaic standard deviation σ [rad].
    """
    if sigma < 0 or half_width < 0:
        raise InputError(f"mosaic spread and half-width must be ≥ 0, got {sigma}, {half_width}", source="mosaicity")
    if sigma == 0:
        return tilt_rule(count, half_width, "midpoint")
    step = 2.0 * half_width / count if half_width > 0 else 0.5 * sigma
    extra = int(math.ceil(3.0 * sigma / step - 1e-9)) if half_width > 0 else 6
    inner = count if half_width > 0 else 1
    edges = (np.arange(inner + 2 * extra + 1) - extra) * step - inner * step / 2
    if half_width > 0:  # σG(x/σ) = max(x, 0) + σG(−|x|/σ): no cancellation when σ ≪ h
        def tail(x):
            return sigma * _gauss_cdf_integral(-np.abs(x) / sigma)

        inside = np.clip(edges, -half_width, half_width)
        weights = np.diff(inside + tail(edges + half_width) - tail(edges - half_width))
    else:
        weights = np.diff([0.5 * math.erfc(-e / (sigma * math.sqrt(2.0))) for e in edges])
    return 0.5 * (edges[1:] + edges[:-1]), weights / weights.sum()


def orientation_beams(
    candidates: Int[np.ndarray, "cand 3"],
    orientations: Float[np.ndarray, "k 3 3"],
    k_crystal: float,
    sg_max: float,
    required: Int[np.ndarray, "req 3"] | None = None,
) -> Int[np.ndarray, "beam 3"]:
    """Union over a stack of orientations of the beams with |S_g| ≤ sg_max, plus ``required``.

    S_g with g = M_k hkl and the lab k = −K e_z. Same ordering as :func:`frame_beams`: origin
    first, then by increasing min_k |S_g|, then absent ``required`` rows.
    """
    k_lab = k_crystal * LAB_BEAM
    s = np.stack([excitation_errors(np.asarray(candidates) @ np.asarray(m).T, k_lab) for m in orientations])
    s_min = np.min(np.abs(s), axis=0)
    s_min[0] = -1.0
    chosen = np.flatnonzero(s_min <= sg_max)
    beams = np.asarray(candidates)[chosen[np.argsort(s_min[chosen], kind="stable")]]
    if required is not None and len(required):
        present = {tuple(h) for h in beams.tolist()}
        extra = [h for h in np.asarray(required).tolist() if tuple(h) not in present and any(h)]
        extra = list(dict.fromkeys(map(tuple, extra)))
        if extra:
            beams = np.concatenate([beams, np.array(extra, dtype=beams.dtype)])
    return beams


def orientation_beam_sets(
    candidates: Int[np.ndarray, "cand 3"],
    orientations: Float[np.ndarray, "frame k 3 3"],
    k_crystal: float,
    sg_max: float,
    required: Sequence[np.ndarray] | None = None,
) -> BeamSets:
    """:func:`orientation_beams` for every frame, padded to one capacity."""
    lists = [
        orientation_beams(candidates, stack, k_crystal, sg_max, None if required is None else required[f])
        for f, stack in enumerate(orientations)
    ]
    return pad_beam_sets(lists)


def orientation_intensities(
    u_table: Complex[Array, " coupling"],
    coupling_index: Int[Array, "beam beam"],
    beam_hkl: Int[Array, "beam 3"],
    beam_mask: Bool[Array, " beam"],
    orientations: Float[Array, "k 3 3"],
    weights: Float[Array, " k"],
    wavelength: Float[Array, ""],
    thickness: Float[Array, " thickness"],
    absorption: Float[Array, ""] | None = None,
    chunk: int = 0,
    strong_beams: int = 0,
    single_precision: bool = False,
) -> Float[Array, "thickness beam"]:
    """Σ_k w_k |ψ_g(t; M_k)|² of one frame over a stack of orientations, every thickness [Å].

    The general form of :func:`frame_intensities` (which is the stack
    :func:`rotation_orientations`); differentiable in every float input.

    Args:
        chunk: orientations solved side by side (``vmap``); 0 (or ≥ k) solves all k at once.
            Otherwise the stack is padded with zero-weight copies to a multiple of ``chunk`` and
            scanned chunk by chunk under ``jax.checkpoint``, so a forward+gradient pass keeps one
            chunk's eigenvectors alive instead of k: memory ∝ chunk, same result.
        strong_beams: beams solved exactly per orientation, the rest by Bethe perturbation
            (:mod:`edrefine.bethe`); 0 for the full matrix.
        single_precision: each orientation solved in float32 / complex64
            (:func:`edrefine.diffraction.orientation_amplitudes`), the intensities summed over the
            stack in the orientations' precision.
    """
    direction = jnp.asarray(LAB_BEAM, dtype=orientations.dtype)

    def one(m):
        psi = orientation_amplitudes(
            u_table, coupling_index, beam_hkl, beam_mask, m, direction, wavelength, thickness, absorption=absorption,
            strong_beams=strong_beams, single_precision=single_precision,
        )
        return jnp.where(beam_mask, jnp.real(psi) ** 2 + jnp.imag(psi) ** 2, 0.0).astype(orientations.dtype)

    def weighted(stack, w):
        return jnp.einsum("k,ktb->tb", w, jax.vmap(one)(stack))

    count = orientations.shape[0]
    if chunk <= 0 or chunk >= count:
        return weighted(orientations, weights)
    pad = -count % chunk
    stack = jnp.concatenate([orientations, jnp.broadcast_to(orientations[:1], (pad, 3, 3))])
    w = jnp.concatenate([weights, jnp.zeros(pad, weights.dtype)])

    @jax.checkpoint
    def body(total, xs):
        return total + weighted(*xs), None

    start = jnp.zeros((thickness.shape[0], beam_hkl.shape[0]), dtype=orientations.dtype)
    total, _ = jax.lax.scan(body, start, (stack.reshape(-1, chunk, 3, 3), w.reshape(-1, chunk)))
    return total


_orientation_intensities_jit = jax.jit(orientation_intensities, static_argnames=("chunk", "strong_beams",
                                                                                 "single_precision"))


def integrate_orientations(
    u_table: Complex[Array, " coupling"],
    beam_sets: BeamSets,
    orientations: Float[np.ndarray, "frame k 3 3"],
    weights: Float[np.ndarray, "frame k"],
    wavelength: float,
    thickness: Float[np.ndarray, "frame thickness"] | Float[np.ndarray, " thickness"],
    absorption: float | None = None,
    progress: Callable[[int], None] | None = None,
    strong_beams: int | None = 0,
) -> Float[np.ndarray, "frame thickness beam"]:
    """:func:`integrate_frames` for per-frame orientation stacks (precession, mosaic spread).

    Frames must share k (pad with zero weights); one compiled kernel serves every frame.
    ``strong_beams``: as in :func:`orientation_intensities`; None: the automatic choice
    (:func:`edrefine.bethe.solved_strong_beams`).
    """
    n = len(orientations)
    thickness = np.broadcast_to(np.asarray(thickness, dtype=np.float64), (n, np.shape(thickness)[-1]))
    kappa = None if absorption is None else jnp.asarray(absorption)
    strong_beams = solved_strong_beams(strong_beams, int(beam_sets.hkl.shape[1]))
    out = []
    for f in range(n):
        out.append(np.asarray(_orientation_intensities_jit(
            u_table, jnp.asarray(beam_sets.coupling_index[f]), jnp.asarray(beam_sets.hkl[f]),
            jnp.asarray(beam_sets.mask[f]), jnp.asarray(orientations[f]), jnp.asarray(weights[f]),
            jnp.asarray(wavelength), jnp.asarray(thickness[f]), kappa, strong_beams=strong_beams,
        )))
        if progress is not None:
            progress(f + 1)
    return np.stack(out)
