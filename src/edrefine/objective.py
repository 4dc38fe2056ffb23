"""The refinement target: weighted residuals on |F| with per-frame scales profiled out.

For frame f with orientation M_f' = R_ẑ(Δω) R_{ẑ×â}(Δβ) R_â(Δα) M_f, the model intensity of
reflection g is the tilt quadrature of the Bloch-wave intensity averaged over the frame's
thickness distribution (nodes t_n, weights w_n from the thickness model):

    I_g = Σ_n w_n Σ_j v_j |ψ_g(t_n; R_â(δ_j) M_f')|²,    |Fc| = √I_g.

With the Klar et al. weights w_g, the per-frame scale k_f = Σ w Fo Fc / Σ w Fc² is exact and
profiled out, χ²_f = Σ_g w_g (|Fo| − k_f |Fc|)², and the loss is

    L = (Σ_f χ²_f + Σ_r ρ_r²) / Σ_f Σ_g w_g |Fo|²,

the square of the global wR(all) plus restraints ρ_r (:mod:`edrefine.restraints`). The
denominator depends on the data only, so a loss summed over chunks of frames is exact.

Frames are mapped with ``lax.map`` (sequentially, so memory is one frame at a time), each frame
under ``jax.checkpoint`` when ``remat`` is set (the reverse pass then recomputes a frame's
forward instead of keeping every frame's eigenvectors).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from jaxtyping import Array, Float

from .crystal import Crystal
from .diffraction import crystal_potential
from .errors import InputError
from .frames import axis_rotation
from .learned_thickness import FrameFeatures
from .measurement import orientation_intensities, rotation_orientations
from .parameters import DatasetParameters, RefinementParameters
from .problem import DatasetConstants, FrameArrays, StructureContext


def corrected_orientation(orientation: Float[Array, "3 3"], axis: Float[Array, "3"], delta: Float[Array, "3"]):
    """M' = R_ẑ(Δω) R_{ẑ×â}(Δβ) R_â(Δα) M for corrections (Δα, Δβ, Δω) [rad]."""
    z = jnp.array([0.0, 0.0, 1.0], dtype=orientation.dtype)
    perpendicular = jnp.cross(z, axis)
    rotation = axis_rotation(z, delta[2]) @ axis_rotation(perpendicular, delta[1]) @ axis_rotation(axis, delta[0])
    return rotation @ orientation


def safe_sqrt(x: Array) -> Array:
    """√x with a finite derivative everywhere (0 for x ≤ 0: the double-``where`` guard)."""
    positive = x > 1e-30
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def reflection_intensities(u_table, frame: FrameArrays, delta, nodes, axis, wavelength, kappa, chunk=0,
                           strong_beams=0, single_precision=False):
    """Tilt-integrated intensity of every reflection of one frame at every thickness node,
    ``[node, refl]``: the sum over the frame's segments, each solved with its own beam set (a
    reflection absent from a segment's set is dark there). ``chunk``: tilts solved side by side,
    ``strong_beams``: Bethe reduction, ``single_precision``: float32 solves
    (:func:`edrefine.measurement.orientation_intensities`)."""
    m = corrected_orientation(frame.orientation, axis, delta)

    def segment(parts):
        tilts, weights, hkl, mask, coupling, where = parts
        stack = rotation_orientations(m, axis, tilts)
        per_node = orientation_intensities(u_table, coupling, hkl, mask, stack, weights, wavelength, nodes, kappa,
                                           chunk, strong_beams, single_precision)
        return jnp.where(where >= 0, per_node[:, jnp.maximum(where, 0)], 0.0)

    parts = (frame.tilts, frame.tilt_weights, frame.beam_hkl, frame.beam_mask, frame.coupling_index, frame.refl_beam)
    if frame.tilts.shape[0] == 1:
        return segment(jax.tree_util.tree_map(lambda x: x[0], parts))
    return jnp.sum(jax.lax.map(jax.checkpoint(segment), parts), axis=0)


def frame_intensities(u_table, frame: FrameArrays, delta, nodes, node_weights, axis, wavelength, kappa, chunk=0,
                      strong_beams=0, single_precision=False):
    """Thickness- and tilt-averaged intensity of every reflection of one frame, ``[refl]``
    (:func:`reflection_intensities` averaged with the thickness weights)."""
    return node_weights @ reflection_intensities(u_table, frame, delta, nodes, axis, wavelength, kappa, chunk,
                                                 strong_beams, single_precision)


def scaled_fit(intensity, frame: FrameArrays):
    """(χ², scale, k|Fc|) of one frame's reflections (model intensities ``[refl]``) with the
    closed-form scale."""
    mask = frame.refl_mask & frame.frame_mask
    fc = jnp.where(mask, safe_sqrt(intensity), 0.0)
    w = jnp.where(mask, frame.weight, 0.0)
    numerator = jnp.sum(w * frame.fo * fc)
    denominator = jnp.sum(w * fc * fc)
    scale = jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0), 0.0)
    residual = jnp.where(mask, frame.fo - scale * fc, 0.0)
    return jnp.sum(w * residual**2), scale, scale * fc


class Evaluation(eqx.Module):
    """Per-frame results of one chunk: χ² ``[frame]``, scale ``[frame]``, k|Fc| ``[frame refl]``,
    thickness nodes and weights ``[frame node]``."""

    chi2: Array
    scale: Array
    fc: Array
    nodes: Array
    node_weights: Array


def potential_table(sites, crystal: Crystal, context: StructureContext, constants: DatasetConstants):
    """U(g) on the dataset's coupling table for the crystal with ``sites`` [Å⁻²]."""
    return crystal_potential(crystal.with_params(sites), context.form_factors, context.element_index,
                             jnp.asarray(constants.coupling_hkl), constants.gamma)


def evaluate_frames(
    sites,
    kappa,
    dataset: DatasetParameters,
    frames: FrameArrays,
    crystal: Crystal,
    context: StructureContext,
    constants: DatasetConstants,
    remat: bool = True,
    frame_offsets: Float[Array, "frame 4"] | None = None,
) -> Evaluation:
    """Model and fit of every frame in ``frames`` (traceable; differentiable in the first three).

    ``frame_offsets``: per frame of the chunk, (Δα, Δβ, Δω) [rad] added to the orientation
    corrections and s scaling the thickness nodes by eˢ; each frame's own directions, for the
    per-frame blocks of a Jacobian (:mod:`edrefine.uncertainty`)."""
    u_table = potential_table(sites, crystal, context, constants)
    axis = jnp.asarray(constants.axis)
    nodes, node_weights = dataset.thickness(FrameFeatures(frames.index, frames.alpha, axis))
    deltas = dataset.orientation[frames.index]
    if frame_offsets is not None:
        deltas = deltas + frame_offsets[:, :3]
        nodes = nodes * jnp.exp(frame_offsets[:, 3:4])

    def one(args):
        frame, delta, t, w = args
        intensity = frame_intensities(u_table, frame, delta, t, w, axis, constants.wavelength, kappa,
                                      constants.tilt_chunk, constants.strong_beams, constants.single_precision)
        return scaled_fit(intensity, frame)

    body = jax.checkpoint(one) if remat else one
    chi2, scale, fc = jax.lax.map(body, (frames, deltas, nodes, node_weights))
    return Evaluation(chi2, scale, fc, nodes, node_weights)


def weighted_total(frames: FrameArrays) -> float:
    """Σ w |Fo|² over the real reflections of real frames (the loss's data-only denominator)."""
    mask = np.asarray(frames.refl_mask) & np.asarray(frames.frame_mask)[:, None]
    return float(np.sum(np.where(mask, np.asarray(frames.weight) * np.asarray(frames.fo) ** 2, 0.0)))


def chunk_chi2(params: RefinementParameters, d: int, frames: FrameArrays, crystal, context, constants, remat=True):
    """Σ χ² of a chunk of frames of dataset ``d`` (the differentiable part of the loss)."""
    evaluation = evaluate_frames(params.sites, params.absorption, params.datasets[d], frames, crystal, context,
                                 constants, remat)
    return jnp.sum(evaluation.chi2)


@eqx.filter_jit
def _chunk_value_and_grad(params, d, frames, crystal, context, constants, remat=True):
    return eqx.filter_value_and_grad(chunk_chi2)(params, d, frames, crystal, context, constants, remat)


@eqx.filter_jit
def _device_values_and_grads(params, d, frames, crystal, context, constants, remat, mesh):
    """Per device: (Σ χ² of its frames, gradient), stacked on a leading device axis (no collective)."""
    arrays, static = eqx.partition(params, eqx.is_array)

    def local(arrays, frames):
        def value(a):
            return chunk_chi2(eqx.combine(a, static), d, frames, crystal, context, constants, remat)

        # A per-device copy: differentiating the replicated parameters would insert a psum.
        arrays = jax.tree_util.tree_map(lambda x: jax.lax.pcast(x, FRAME_AXIS, to="varying"), arrays)
        v, g = eqx.filter_value_and_grad(value)(arrays)
        return v[None], jax.tree_util.tree_map(lambda x: x[None], g)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(FRAME_AXIS)), out_specs=P(FRAME_AXIS))(arrays, frames)


def chunk_value_and_grad(params, d, frames, crystal, context, constants, remat=True, mesh=None):
    """(Σ χ², ∂/∂params) of one chunk; ``d``, ``remat`` and ``mesh`` static (jit cache keys).

    With a ``mesh`` of several devices the chunk's frames are split over them (``shard_map``):
    every device returns the χ² and gradient of its own frames, and the partial results are
    added on the host (no device collective). Frames are independent until this sum, so the
    result equals the unsharded one up to the order of the additions.
    """
    if mesh is None or mesh.size == 1:
        return _chunk_value_and_grad(params, d, frames, crystal, context, constants, remat)
    values, grads = _device_values_and_grads(params, d, frames, crystal, context, constants, remat, mesh)
    total = jnp.asarray(np.sum(np.asarray(values)))
    summed = jax.tree_util.tree_map(lambda g: jnp.asarray(np.sum(np.asarray(g), axis=0)), grads)
    return total, eqx.combine(summed, eqx.partition(params, eqx.is_array)[1])


@eqx.filter_jit
def chunk_evaluation(params, d, frames, crystal, context, constants, mesh=None):
    """:func:`evaluate_frames` of one chunk, forward only (jitted); frames split over ``mesh``."""
    if mesh is None or mesh.size == 1:
        return evaluate_frames(params.sites, params.absorption, params.datasets[d], frames, crystal, context,
                               constants, remat=False)
    arrays, static = eqx.partition(params, eqx.is_array)

    def local(arrays, frames):
        p = eqx.combine(arrays, static)
        return evaluate_frames(p.sites, p.absorption, p.datasets[d], frames, crystal, context, constants, remat=False)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(FRAME_AXIS)), out_specs=P(FRAME_AXIS))(arrays, frames)


FRAME_AXIS = "frames"
"""Name of the device-mesh axis over which frames are split."""


def request_host_devices(devices: int) -> None:
    """Ask for ``devices`` CPU devices, which JAX honours only before its backend starts (a
    command line entry point calls this first); later, :func:`frame_mesh` reports the shortfall."""
    if devices > 1:
        try:
            jax.config.update("jax_num_cpu_devices", devices)
        except RuntimeError:
            pass


def frame_mesh(devices: int) -> Mesh | None:
    """A one-axis mesh of the first ``devices`` JAX devices (None for one device); InputError if
    fewer are available (on a CPU host, start with ``edrefine --devices N`` or set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts)."""
    if devices <= 1:
        return None
    if jax.process_count() > 1:
        raise InputError("multi-process runs (jax.distributed) are not supported yet; use the devices of one "
                         "process (docs/refinement.md, Several devices)", source="devices")
    available = jax.devices()
    if devices > len(available):
        raise InputError(f"{devices} devices asked for, {len(available)} available ({available[0].platform}); on a "
                         "CPU give the count before JAX starts (edrefine --devices N)", source="devices")
    return Mesh(np.array(available[:devices]), (FRAME_AXIS,))


def grid_chi2(sites, kappa, orientation, frames: FrameArrays, grid, crystal, context, constants):
    """χ² of every frame at every thickness of ``grid`` [Å] (own scale each): ``[frame, thickness]``."""
    u_table = potential_table(sites, crystal, context, constants)
    axis = jnp.asarray(constants.axis)
    eye = jnp.eye(grid.shape[0], dtype=grid.dtype)

    def one(args):
        frame, delta = args
        per_node = reflection_intensities(u_table, frame, delta, grid, axis, constants.wavelength, kappa,
                                          constants.tilt_chunk, constants.strong_beams, constants.single_precision)
        return jax.vmap(lambda e: scaled_fit(e @ per_node, frame)[0])(eye)

    return jax.lax.map(one, (frames, orientation[frames.index]))


grid_chi2_jit = eqx.filter_jit(grid_chi2)
