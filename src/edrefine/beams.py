"""Beam sets: which reflections take part in the dynamical calculation of an orientation.

Everything here runs on the host (numpy) because the number of beams depends on the data: a
beam set is chosen per orientation, then padded to a fixed capacity with a mask so that the
jitted calculation sees static shapes (the JAX MD neighbour-list pattern). The couplings
U(g_i − g_j) are gathered from one table of distinct difference vectors shared by all
orientations, so the potential is evaluated once per step, not once per orientation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import gemmi
import numpy as np

from .errors import InputError


def centring_vectors(symops: Sequence[str]) -> np.ndarray:
    """Lattice-centring translations [n, 3] (the origin included) among space-group operators."""
    vectors = [np.array(gemmi.Op(t).wrap().tran) / gemmi.Op.DEN for t in symops if gemmi.Op(t).rot == gemmi.Op().rot]
    return np.array(vectors or [np.zeros(3)])


def lattice_points(reciprocal_matrix: np.ndarray, g_max: float, centring: np.ndarray | None = None) -> np.ndarray:
    """All Miller indices with |g| ≤ g_max, the origin first, then by increasing |g|.

    Reciprocal-lattice points absent because of lattice centring (Σ_t exp(2πi h·t) = 0 over the
    centring vectors t) are left out: they do not exist, so no multiple scattering can excite
    them. Screw-axis and glide absences stay, since double diffraction can excite those.

    Args:
        reciprocal_matrix: B with g_cart = B hkl [Å⁻¹].
        g_max: radius of the sphere [Å⁻¹].
        centring: centring translations from :func:`centring_vectors`; None for primitive.

    Returns:
        Int array [n, 3].
    """
    if not g_max > 0:
        raise InputError(f"g_max must be positive, got {g_max}", source="gmax")
    inverse_norms = np.linalg.norm(np.linalg.inv(reciprocal_matrix), axis=1)
    limits = np.ceil(g_max * inverse_norms).astype(int)
    ranges = [np.arange(-n, n + 1) for n in limits]
    hkl = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    length = np.linalg.norm(hkl @ np.asarray(reciprocal_matrix).T, axis=1)
    keep = length <= g_max * (1 + 1e-12)
    if centring is not None:
        keep &= np.abs(np.exp(2j * np.pi * hkl @ np.asarray(centring).T).sum(axis=1)) > 0.5
    order = np.lexsort((hkl[keep][:, 2], hkl[keep][:, 1], hkl[keep][:, 0], length[keep]))
    return hkl[keep][order]


def excitation_errors(g_cart: np.ndarray, k_vector: np.ndarray) -> np.ndarray:
    """S_g = (K² − |K + g|²) / 2K [Å⁻¹] for incident wave vector K [Å⁻¹]; positive inside the Ewald sphere."""
    k = np.linalg.norm(k_vector)
    return -(2.0 * g_cart @ k_vector + np.sum(g_cart**2, axis=-1)) / (2.0 * k)


def select_beams(
    candidates: np.ndarray,
    reciprocal_matrix: np.ndarray,
    k_vectors: np.ndarray,
    sg_max: float,
) -> np.ndarray:
    """Beams with |S_g| ≤ sg_max for at least one of the incident wave vectors.

    Args:
        candidates: Miller indices within g_max, origin first (from :func:`lattice_points`).
        reciprocal_matrix: B [Å⁻¹].
        k_vectors: [n_k, 3] incident wave vectors [Å⁻¹] in the same Cartesian frame; a frame
            integrated over several tilts passes all of them to get the union.
        sg_max: excitation-error cut-off [Å⁻¹].

    Returns:
        Int array [N, 3], the origin first, then by increasing min |S_g|.
    """
    if not sg_max > 0:
        raise InputError(f"sg_max must be positive, got {sg_max}", source="sgmax")
    g_cart = candidates @ np.asarray(reciprocal_matrix).T
    k_vectors = np.atleast_2d(k_vectors)
    s_min = np.min(np.abs(np.stack([excitation_errors(g_cart, k) for k in k_vectors])), axis=0)
    s_min[0] = -1.0
    chosen = np.flatnonzero(s_min <= sg_max)
    return candidates[chosen[np.argsort(s_min[chosen], kind="stable")]]


@dataclasses.dataclass(frozen=True)
class BeamSets:
    """Beam sets of several orientations padded to one capacity (host-side numpy data).

    Attributes:
        hkl: [orientation, capacity, 3] Miller indices; padding rows are zero.
        mask: [orientation, capacity] True for real beams; beam 0 is always the origin.
        coupling_index: [orientation, capacity, capacity] index into ``coupling_hkl`` of
            g_i − g_j (0, the origin, on padding).
        coupling_hkl: [n_coupling, 3] the distinct difference vectors, the origin first.
    """

    hkl: np.ndarray
    mask: np.ndarray
    coupling_index: np.ndarray
    coupling_hkl: np.ndarray

    @property
    def capacity(self) -> int:
        return self.hkl.shape[1]

    @property
    def counts(self) -> np.ndarray:
        return self.mask.sum(axis=1)


def bucket_capacity(n: int, granularity: int = 16) -> int:
    """Capacity for ``n`` beams rounded up to a multiple of ``granularity``, so that compiled
    functions are reused when beam counts change a little."""
    return max(granularity, int(np.ceil(n / granularity)) * granularity)


def pad_beam_sets(beam_lists: list[np.ndarray], capacity: int | None = None) -> BeamSets:
    """Pad per-orientation beam lists to one capacity and build the shared coupling table.

    Args:
        beam_lists: one [N_o, 3] int array per orientation, origin first.
        capacity: beams per orientation after padding; default the bucketed maximum.
    """
    largest = max(len(b) for b in beam_lists)
    capacity = bucket_capacity(largest) if capacity is None else capacity
    if largest > capacity:
        raise InputError(f"beam set of {largest} beams exceeds capacity {capacity}", source="capacity")
    n = len(beam_lists)
    hkl = np.zeros((n, capacity, 3), dtype=np.int64)
    mask = np.zeros((n, capacity), dtype=bool)
    for o, beams in enumerate(beam_lists):
        hkl[o, : len(beams)] = beams
        mask[o, : len(beams)] = True
    differences = hkl[:, :, None, :] - hkl[:, None, :, :]
    valid = mask[:, :, None] & mask[:, None, :]
    differences = np.where(valid[..., None], differences, 0)
    span = int(np.abs(differences).max()) + 1
    keys = ((differences[..., 0] + span) * (2 * span + 1) + differences[..., 1] + span) * (2 * span + 1) + (
        differences[..., 2] + span
    )
    origin_key = (span * (2 * span + 1) + span) * (2 * span + 1) + span
    distinct, inverse = np.unique(np.concatenate([[origin_key], keys.ravel()]), return_inverse=True)
    order = np.argsort(distinct != origin_key, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    coupling_index = rank[inverse[1:]].reshape(keys.shape)
    decoded = distinct[order]
    coupling_hkl = np.stack(
        [decoded // (2 * span + 1) ** 2 - span, (decoded // (2 * span + 1)) % (2 * span + 1) - span, decoded % (2 * span + 1) - span],
        axis=-1,
    )
    return BeamSets(hkl=hkl, mask=mask, coupling_index=coupling_index.astype(np.int32), coupling_hkl=coupling_hkl)
