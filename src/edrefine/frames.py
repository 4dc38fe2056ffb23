"""Orientation of PETS2 frames in the laboratory frame.

Conventions (established on every ``.cif_pets`` file in ``../shared/data``; see
``tests/test_frames.py``):

- Rotations are active and right-handed: ``rotation_x(θ)`` turns y towards z.
- The orientation of frame i maps Miller indices to lab-frame reciprocal vectors [Å⁻¹],
  g_lab = M_i hkl, with M_i = R_z(ω_i) R_x(α_i) R_y(β_i) UB (α, β, ω from the frame loop).
  The lab frame is right-handed: det UB > 0, so UB = U B with U a proper rotation.
- The listed zone axis [uvw] is the direct-lattice direction along lab +z: uvw ∝ M_iᵀ e_z
  (the third row of M_i), scaled so that the largest |component| is 1, sign kept.
- Lab +z points from the crystal **towards the electron source**: the incident wave vector
  is k = −(1/λ) e_z. With this choice the observed reflections of each frame have a mean
  excitation error ≈ 0 in every |g| shell; with k = +(1/λ) e_z it is ≈ −|g|²λ.
- The goniometer axis lies in the xy plane at the "rotation axis position" p from lab x:
  (cos p, sin p, 0). α is the goniometer angle: M(α + δ) ≈ R_axis(δ) M(α) with the axis at
  azimuth ≈ ω ≈ p (within 0.7°; mean ω − p within 0.1°).

Angles are in radians in every function here except :func:`frame_orientations` and
:func:`rotation_axis`, which read the degrees stored in :class:`edrefine.pets.PetsData`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .errors import InputError
from .pets import PetsData


def _rotation(axis_index: int, angle: Float[Array, ""]) -> Float[Array, "3 3"]:
    c, s = jnp.cos(angle), jnp.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis_index]
    eye = jnp.eye(3, dtype=c.dtype)
    return eye.at[i, i].set(c).at[j, j].set(c).at[i, j].set(-s).at[j, i].set(s)


def rotation_x(angle: Float[Array, ""]) -> Float[Array, "3 3"]:
    """Active right-handed rotation by ``angle`` [rad] about lab x."""
    return _rotation(0, jnp.asarray(angle))


def rotation_y(angle: Float[Array, ""]) -> Float[Array, "3 3"]:
    """Active right-handed rotation by ``angle`` [rad] about lab y."""
    return _rotation(1, jnp.asarray(angle))


def rotation_z(angle: Float[Array, ""]) -> Float[Array, "3 3"]:
    """Active right-handed rotation by ``angle`` [rad] about lab z."""
    return _rotation(2, jnp.asarray(angle))


def axis_rotation(axis: Float[Array, "3"], angle: Float[Array, ""]) -> Float[Array, "3 3"]:
    """Rodrigues rotation R = I + sin δ [n]ₓ + (1 − cos δ) [n]ₓ² about unit ``axis`` by δ [rad]."""
    n = jnp.asarray(axis)
    cross = jnp.array([[0.0, -n[2], n[1]], [n[2], 0.0, -n[0]], [-n[1], n[0], 0.0]])
    return jnp.eye(3) + jnp.sin(angle) * cross + (1.0 - jnp.cos(angle)) * (cross @ cross)


def frame_rotation(
    alpha: Float[Array, ""], beta: Float[Array, ""], omega: Float[Array, ""]
) -> Float[Array, "3 3"]:
    """R_z(ω) R_x(α) R_y(β) for one frame, angles [rad]."""
    return rotation_z(omega) @ rotation_x(alpha) @ rotation_y(beta)


def orientation_matrices(
    ub: Float[Array, "3 3"],
    alpha: Float[Array, " frame"],
    beta: Float[Array, " frame"],
    omega: Float[Array, " frame"],
) -> Float[Array, "frame 3 3"]:
    """M_i = R_z(ω_i) R_x(α_i) R_y(β_i) UB: hkl → lab reciprocal vector [Å⁻¹]; angles [rad]."""
    rotations = jax.vmap(frame_rotation)(alpha, beta, omega)
    return jnp.einsum("fij,jk->fik", rotations, jnp.asarray(ub))


def frame_orientations(data: PetsData) -> Float[Array, "frame 3 3"]:
    """Orientation matrix of every frame of ``data`` (g_lab = M hkl, Å⁻¹), in file order."""
    f = data.frames
    return orientation_matrices(data.ub, *(jnp.deg2rad(jnp.asarray(a)) for a in (f.alpha, f.beta, f.omega)))


def zone_axis_from_orientation(orientation: Float[Array, "3 3"]) -> Float[Array, "3"]:
    """Direct-lattice direction [uvw] along lab +z, PETS-normalised (largest |component| = 1).

    [uvw] ∝ Mᵀ e_z: the lab vector of u a + v b + w c is M⁻ᵀ uvw, parallel to e_z.
    """
    z = orientation[2, :]
    return z / jnp.max(jnp.abs(z))


def goniometer_axis(position: Float[Array, ""]) -> Float[Array, "3"]:
    """Unit lab vector (cos p, sin p, 0) of the goniometer axis at in-plane angle p [rad] from x."""
    p = jnp.asarray(position)
    return jnp.stack([jnp.cos(p), jnp.sin(p), jnp.zeros_like(p)])


def rotation_axis(data: PetsData) -> Float[Array, "3"]:
    """The goniometer axis of ``data`` from its "rotation axis position" [deg]."""
    position = data.measurement.rotation_axis_position
    if position is None:
        raise InputError("measurement details lack 'rotation axis position'", source=data.source)
    return goniometer_axis(jnp.deg2rad(position))


def tilted_orientation(
    orientation: Float[Array, "3 3"], axis: Float[Array, "3"], delta: Float[Array, ""]
) -> Float[Array, "3 3"]:
    """M(δ) = R_axis(δ) M: the orientation turned by δ [rad] about the lab ``axis``.

    With the goniometer axis, δ > 0 is the direction in which α grows; ``jax.vmap`` over δ
    samples a continuous-rotation frame.
    """
    return axis_rotation(axis, delta) @ orientation


def incident_wavevector(wavelength: float) -> Float[Array, "3"]:
    """Incident wave vector in the lab frame, k = −(1/λ) e_z [Å⁻¹] (|k| = 1/λ, no 2π)."""
    return jnp.array([0.0, 0.0, -1.0 / wavelength])


def _reciprocal_basis(cell: Float[np.ndarray, "6"]) -> Float[np.ndarray, "3 3"]:
    """Upper-triangular B with BᵀB = G* (reciprocal metric); one fixed convention."""
    a, b, c = cell[:3]
    ca, cb, cg = np.cos(np.radians(cell[3:]))
    metric = np.array(
        [[a * a, a * b * cg, a * c * cb], [a * b * cg, b * b, b * c * ca], [a * c * cb, b * c * ca, c * c]]
    )
    return np.linalg.cholesky(np.linalg.inv(metric)).T


def ub_with_cell(ub: Float[np.ndarray, "3 3"], cell: Float[np.ndarray, "6"]) -> Float[np.ndarray, "3 3"]:
    """UB re-built with the metric of ``cell`` and the rotation of ``ub`` (host, numpy).

    A PETS2 UB carries its own cell, which can differ from the listed one (quartz.cif_pets:
    the UB implies a = 4.87 Å, the file lists 4.9226 Å). UB = U B_ub with U the nearest
    rotation; the result is U B(cell).
    """
    ub = np.asarray(ub, dtype=np.float64)
    metric = ub.T @ ub
    b_ub = np.linalg.cholesky(metric).T
    u, _, vt = np.linalg.svd(ub @ np.linalg.inv(b_ub))
    return (u @ vt) @ _reciprocal_basis(np.asarray(cell, dtype=np.float64))
