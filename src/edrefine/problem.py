"""A refinement problem: every data-dependent size decided on the host, padded, then frozen.

:func:`prepare_dataset` turns a crystal, a PETS2 dataset and the calculation settings into a
:class:`DatasetProblem`: per frame the measured reflections kept by the selection rule, the
beam set of each frame segment (union over the segment's tilts plus those reflections; one
segment, the whole frame, unless ``tilt_segments`` says otherwise), the tilt quadrature, and the
observed amplitudes and weights, all padded to one beam capacity and one reflection capacity
with masks (:class:`FrameArrays`), plus the shared coupling table. Inside ``jit`` every shape
is then static; mini-batches are index subsets of the frame axis (:meth:`FrameArrays.take`).

The beam sets are chosen once, with the starting structure and orientations. Orientation
corrections of a few mrad move S_g by ≪ sg_max, so the sets stay adequate; a refinement can
re-prepare the problem between stages (:func:`prepare_dataset` again) if they grow large.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from . import measurement, merit, selection
from .bethe import solved_strong_beams
from .beams import bucket_capacity, centring_vectors, lattice_points
from .crystal import Crystal
from .diffraction import crystal_potential
from .electron import crystal_wavenumber, energy_from_wavelength, lorentz_factor
from .errors import InputError
from .frames import frame_orientations, rotation_axis
from .pets import PetsData
from .scattering import ScatteringFactors
from .score import _rotation_quadrature, _select
from .settings import CalculationSettings
from .structure_factor import form_factors_for, site_element_index


class FrameArrays(eqx.Module):
    """Per-frame static arrays, stacked over frames (numpy on the host, JAX inside ``jit``).

    Attributes:
        index: frame index in its dataset (file order), ``[frame]``.
        alpha: goniometer angle α [deg], ``[frame]``.
        orientation: M of the frame centre, g_lab = M hkl [Å⁻¹], ``[frame 3 3]``.
        tilts, tilt_weights: quadrature over ±half-width [rad], cut into consecutive segments,
            ``[frame segment tilt]`` (the weights of all segments of a frame sum to 1).
        beam_hkl, beam_mask, coupling_index: padded beam set of each segment,
            ``[frame segment beam (3|beam)]``.
        refl_beam: index of each reflection in each segment's beam set (−1: not in that set, dark
            there), ``[frame segment refl]``.
        refl_row: row in ``PetsData.reflections`` (−1 on padding), ``[frame refl]``.
        fo, weight: |Fo| and w = 1/(σ(|Fo|)² + (μ|Fo|)²), ``[frame refl]`` (0 on padding).
        observed: I > 3σ(I), ``[frame refl]``; refl_mask: True for real reflections.
        frame_mask: True for real frames (False for padding in a mini-batch), ``[frame]``.
    """

    index: Int[Array, " frame"]
    alpha: Float[Array, " frame"]
    orientation: Float[Array, "frame 3 3"]
    tilts: Float[Array, "frame segment tilt"]
    tilt_weights: Float[Array, "frame segment tilt"]
    beam_hkl: Int[Array, "frame segment beam 3"]
    beam_mask: Bool[Array, "frame segment beam"]
    coupling_index: Int[Array, "frame segment beam beam"]
    refl_beam: Int[Array, "frame segment refl"]
    refl_row: Int[Array, "frame refl"]
    fo: Float[Array, "frame refl"]
    weight: Float[Array, "frame refl"]
    observed: Bool[Array, "frame refl"]
    refl_mask: Bool[Array, "frame refl"]
    frame_mask: Bool[Array, " frame"]

    @property
    def count(self) -> int:
        return int(np.shape(self.index)[0])

    @property
    def capacity(self) -> int:
        """Beams per solve after padding."""
        return int(np.shape(self.beam_mask)[2])

    @property
    def segments(self) -> int:
        """Segments per frame, each with its own beam set."""
        return int(np.shape(self.tilts)[1])

    @property
    def tilts_per_segment(self) -> int:
        return int(np.shape(self.tilts)[2])

    @property
    def tilt_count(self) -> int:
        """Tilts per frame (all segments)."""
        return self.segments * self.tilts_per_segment

    def beam_counts(self) -> np.ndarray:
        """Real beams of every frame's largest segment (host)."""
        return np.asarray(self.beam_mask).sum(axis=2).max(axis=1)

    def take(self, rows: np.ndarray, size: int | None = None, trim: bool = True) -> FrameArrays:
        """Frames ``rows`` (host), padded to ``size`` by repeating the first with frame_mask False.

        With ``trim`` the beam axis is cut to the bucketed largest beam count among ``rows``
        (real beams come first, and padded beams are decoupled exactly, so nothing changes but
        the cost, which goes as the capacity cubed).
        """
        rows = np.asarray(rows, dtype=np.int64)
        size = len(rows) if size is None else size
        padded = np.concatenate([rows, np.full(size - len(rows), rows[0] if len(rows) else 0)])
        real = np.arange(size) < len(rows)
        taken = {f.name: np.asarray(getattr(self, f.name))[padded] for f in dataclasses.fields(self)}
        taken["frame_mask"] = taken["frame_mask"] & real
        if trim and len(rows):
            n = min(bucket_capacity(int(self.beam_counts()[rows].max())), self.capacity)
            taken["beam_hkl"], taken["beam_mask"] = taken["beam_hkl"][:, :, :n], taken["beam_mask"][:, :, :n]
            taken["coupling_index"] = taken["coupling_index"][:, :, :n, :n]
        return FrameArrays(**taken)

    def chunks(self, rows: np.ndarray, size: int, multiple: int = 1) -> list[tuple[np.ndarray, FrameArrays]]:
        """``rows`` ordered by beam count, largest first, and cut into the fewest chunks of at most
        ``size`` frames, all of one size (a multiple of ``multiple``, the devices a chunk is split
        over): (rows, arrays) pairs. Each chunk's trimmed capacity (:meth:`take`) is as small as its
        frames allow, and the padding of the last, partly filled chunk is at the smallest one."""
        rows = np.asarray(rows, dtype=np.int64)
        ordered = rows[np.argsort(-self.beam_counts()[rows], kind="stable")]
        count = max(-(-len(ordered) // max(size, 1)), 1)
        even = -(-len(ordered) // count)
        even = max(min(-(-even // multiple) * multiple, max(size, 1)), 1)
        return [(ordered[i:i + even], self.take(ordered[i:i + even], even)) for i in range(0, len(ordered), even)]


class DatasetConstants(eqx.Module):
    """Dataset-wide values the jitted model needs.

    Attributes:
        coupling_hkl: distinct g_i − g_j of all beam sets, the origin first, ``[coupling 3]``.
        axis: goniometer axis (lab unit vector), ``[3]``.
        wavelength: λ [Å]; gamma: relativistic γ (static).
        tilt_chunk: tilts of a frame segment solved side by side (static; 0: all of them), chosen by
            :func:`bound_memory` so that one pass fits the memory limit.
        strong_beams: beams solved exactly per orientation, the rest by Bethe perturbation
            (static; 0: the full matrix).
        single_precision: each orientation solved in float32 / complex64, everything around it
            (structure factors, geometry, sums, fit) in the process's precision (static).
    """

    coupling_hkl: Int[Array, "coupling 3"]
    axis: Float[Array, "3"]
    wavelength: float = eqx.field(static=True)
    gamma: float = eqx.field(static=True)
    tilt_chunk: int = eqx.field(static=True, default=0)
    strong_beams: int = eqx.field(static=True, default=0)
    single_precision: bool = eqx.field(static=True, default=False)


@dataclasses.dataclass(frozen=True)
class DatasetProblem:
    """One dataset ready for refinement (host object).

    Attributes:
        frames: :class:`FrameArrays` of every frame that has selected reflections.
        constants: :class:`DatasetConstants`.
        data: the dataset; name: label used in outputs.
    """

    frames: FrameArrays
    constants: DatasetConstants
    data: PetsData
    name: str = "data"

    @property
    def frame_count(self) -> int:
        """Number of frames in the dataset file (per-frame parameters have this length)."""
        return len(self.data.frames.id)


class StructureContext(eqx.Module):
    """What the potential needs besides the crystal: scattering factors and element rows."""

    form_factors: ScatteringFactors
    element_index: Int[Array, " site"]


def structure_context(crystal: Crystal, settings: CalculationSettings) -> StructureContext:
    factors = form_factors_for(crystal, settings.form_factors)
    return StructureContext(factors, jnp.asarray(site_element_index(crystal, factors)))


def prepare_dataset(
    crystal: Crystal,
    data: PetsData,
    settings: CalculationSettings,
    *,
    frames: np.ndarray | None = None,
    name: str = "data",
    refl_granularity: int = 16,
) -> DatasetProblem:
    """Selection, beam sets, quadrature and padded arrays of one dataset (host side).

    Frames without any selected reflection are left out. Raises InputError if none is left.
    """
    context = structure_context(crystal, settings)
    gamma = lorentz_factor(energy_from_wavelength(data.wavelength))
    u0 = crystal_potential(crystal, context.form_factors, context.element_index, jnp.zeros((1, 3), jnp.int32), gamma)[0]
    k_crystal = float(crystal_wavenumber(data.wavelength, jnp.real(u0)))
    index = np.arange(len(data.frames.id)) if frames is None else np.asarray(frames, dtype=np.int64)
    orientations = np.asarray(frame_orientations(data))[index]
    axis = np.asarray(rotation_axis(data))
    half_widths = np.deg2rad(np.asarray(data.frames.half_width, dtype=np.float64))[index]
    chosen = _select(data, index, orientations, axis, half_widths, k_crystal, rsg=settings.rsg, dsg=settings.dsg,
                     g_max=settings.gmax, sweep="half")
    keep = np.array([len(rows) > 0 for rows in chosen], dtype=bool)
    if not keep.any():
        raise InputError("no reflection passes the selection rule; raise gmax or rsg", source=data.source or name)
    index, orientations, half_widths = index[keep], orientations[keep], half_widths[keep]
    chosen = [rows for rows, k in zip(chosen, keep) if k]
    tilts, tilt_weights = measurement.split_tilts(
        *_rotation_quadrature(settings.tilts, settings.tilt_rule, half_widths, 0.0), settings.tilt_segments)
    candidates = lattice_points(np.asarray(data.ub), settings.gmax, centring_vectors(crystal.symops))
    required = [data.reflections.hkl[rows] for rows in chosen]
    beam_sets = measurement.segment_beam_sets(candidates, orientations, axis, tilts, k_crystal, settings.sgmax,
                                              required)
    segments = settings.tilt_segments
    arrays = _reflection_arrays(data, chosen, beam_sets, segments,
                                bucket_capacity(max(map(len, chosen)), refl_granularity))
    per_segment = (len(index), segments)
    frames_arrays = FrameArrays(
        index=index, alpha=np.asarray(data.frames.alpha, dtype=np.float64)[index], orientation=orientations,
        tilts=tilts, tilt_weights=tilt_weights, beam_hkl=beam_sets.hkl.reshape(*per_segment, -1, 3),
        beam_mask=beam_sets.mask.reshape(*per_segment, -1),
        coupling_index=beam_sets.coupling_index.reshape(*per_segment, *beam_sets.coupling_index.shape[1:]),
        frame_mask=np.ones(len(index), dtype=bool), **arrays)
    constants = DatasetConstants(beam_sets.coupling_hkl, axis, float(data.wavelength), float(gamma),
                                 strong_beams=solved_strong_beams(settings.strong_beams, int(beam_sets.hkl.shape[1])))
    return DatasetProblem(frames_arrays, constants, data, name)


def _reflection_arrays(data: PetsData, chosen: list[np.ndarray], beam_sets, segments: int, capacity: int) -> dict:
    """Per frame the selected reflections, padded to ``capacity``, and their place in each of the
    frame's ``segments`` beam sets (rows ``frame × segments + segment`` of ``beam_sets``)."""
    n = len(chosen)
    out = dict(refl_beam=np.full((n, segments, capacity), -1, np.int64), refl_row=np.full((n, capacity), -1, np.int64),
               fo=np.zeros((n, capacity)), weight=np.zeros((n, capacity)),
               observed=np.zeros((n, capacity), bool), refl_mask=np.zeros((n, capacity), bool))
    refl = data.reflections
    for f, rows in enumerate(chosen):
        where = np.stack([measurement.lookup_beams(beam_sets.hkl[r, : beam_sets.counts[r]], refl.hkl[rows])
                          for r in range(f * segments, (f + 1) * segments)])
        if np.any((where < 0).all(axis=0)):
            raise ValueError(f"frame {f}: a selected reflection is in none of its segments' beam sets")
        fo, w = merit.amplitudes_and_weights(refl.intensity[rows], refl.sigma[rows])
        m = len(rows)
        out["refl_beam"][f, :, :m] = where
        out["refl_row"][f, :m] = rows
        out["fo"][f, :m] = fo
        out["weight"][f, :m] = w
        out["observed"][f, :m] = selection.observed(refl.intensity[rows], refl.sigma[rows])
        out["refl_mask"][f, :m] = True
    return out


MEMORY_MATRICES_PER_TILT = 24
"""Complex N × N arrays alive per tilt while one frame's forward and reverse pass run
(structure matrix, eigenvectors, their cotangents, the congruence products, XLA temporaries)."""
MEMORY_FULL_MATRICES_BETHE = 6
"""Complex N × N arrays per tilt charged for a Bethe reduction. Only the N_s × N strong rows are
built (:func:`edrefine.bethe.strong_rows_propagate`), so this is a generous upper bound, not yet
calibrated by ``benchmarks/memory.py``."""
MEMORY_BYTES_PER_COUPLING = 72
"""Bytes per frame and beam pair kept for the whole dataset (coupling index on host and device,
the chunk's copies and gathered potentials). Both constants are calibrated against measured
peak memory by ``benchmarks/memory.py`` (docs/robustness.md)."""


def frame_memory(problem: DatasetProblem, thickness_nodes: int, itemsize: int = 16, tilt_chunk: int | None = None) -> float:
    """Bytes of one frame's working set in a forward+gradient pass (an upper estimate).

    Frames run one after the other (``lax.map`` under ``jax.checkpoint``), and so do the segments
    of a frame, ``tilt_chunk`` of a segment's tilts side by side (default: the dataset's
    ``constants.tilt_chunk``; 0 means all):
    chunk × (N × N matrices + N × nodes blocks) of ``itemsize`` bytes. With a Bethe reduction to
    N_s strong beams the eigenproblem's matrices are N_s × N_s and the strong rows and their
    gathers are charged as :data:`MEMORY_FULL_MATRICES_BETHE` N × N arrays.
    """
    n = problem.frames.capacity
    t = problem.frames.tilts_per_segment
    chunk = problem.constants.tilt_chunk if tilt_chunk is None else tilt_chunk
    t = min(t, chunk) if chunk > 0 else t
    strong = problem.constants.strong_beams
    matrices = MEMORY_MATRICES_PER_TILT * n * n
    if 0 < strong < n:
        matrices = MEMORY_MATRICES_PER_TILT * strong * strong + MEMORY_FULL_MATRICES_BETHE * n * n
    return float(t * (matrices + 4 * n * (thickness_nodes + 1)) * itemsize)


def resident_memory(problem: DatasetProblem) -> float:
    """Bytes of the N × N arrays per frame segment kept for the whole dataset during a pass."""
    n = problem.frames.capacity
    return float(MEMORY_BYTES_PER_COUPLING * n * n * problem.frames.count * problem.frames.segments)


RUNTIME_MEMORY = 0.9e9
"""Bytes of the process before any dataset: Python, JAX and compiling the refinement's functions."""


def physical_memory() -> float:
    """Bytes of physical memory of this machine (0 when the system does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0.0


def memory_limit(limit_gb: float | None) -> float:
    """The memory limit in bytes: ``limit_gb`` GB, or 80 % of the physical memory for None."""
    return 0.8 * physical_memory() if limit_gb is None else limit_gb * 1e9


def tilt_chunks(tilts: int) -> list[int]:
    """Chunk sizes worth trying for ``tilts`` tilts, largest first: ⌈tilts / k⌉ for k = 1, 2, … (each
    the smallest chunk for its number of chunks, so the zero-weight padding stays below one chunk)."""
    return sorted({-(-tilts // k) for k in range(1, tilts + 1)}, reverse=True)


def check_memory(datasets: Sequence[DatasetProblem], thickness_nodes: int, limit_gb: float | None) -> float:
    """Estimated peak bytes of a forward+gradient pass over all datasets; InputError above the limit.

    Datasets are evaluated one after the other, so the peak is the runtime, the resident arrays
    of all of them and the largest frame working set (at each dataset's ``tilt_chunk``).
    """
    working = [frame_memory(d, thickness_nodes) for d in datasets]
    peak = RUNTIME_MEMORY + sum(resident_memory(d) for d in datasets) + max(working)
    limit = memory_limit(limit_gb)
    if limit > 0 and peak > limit:
        worst = datasets[int(np.argmax(working))]
        n, t = worst.frames.capacity, worst.frames.tilts_per_segment
        chunk = worst.constants.tilt_chunk
        side = f"{chunk} of {t} tilts" if 0 < chunk < t else f"{t} tilts"
        side += f" (of each of {worst.frames.segments} segments)" if worst.frames.segments > 1 else ""
        raise InputError(
            f"a refinement step needs about {peak / 1e9:.1f} GB (dataset {worst.name}: {n} beams, {side} per "
            f"frame side by side), more than the limit of {limit / 1e9:.1f} GB; lower tilt_chunk, tilts or gmax, "
            "or raise memory_limit", source="memory_limit")
    return peak


def bound_memory(datasets: Sequence[DatasetProblem], thickness_nodes: int, limit_gb: float | None,
                 tilt_chunk: int | None = None) -> tuple[tuple[DatasetProblem, ...], float]:
    """Datasets with the ``tilt_chunk`` that keeps a forward+gradient pass under the memory limit.

    With ``tilt_chunk`` None each dataset gets the largest chunk (all tilts if they fit) for which
    the estimate (:func:`check_memory`) stays under the limit; a given ``tilt_chunk`` is used as it
    is. Returns the datasets and the estimated peak bytes; InputError when even one tilt at a time
    does not fit.
    """
    limit = memory_limit(limit_gb)
    resident = RUNTIME_MEMORY + sum(resident_memory(d) for d in datasets)
    chosen = []
    for d in datasets:
        t = d.frames.tilts_per_segment
        if tilt_chunk is not None:
            chunk = min(tilt_chunk, t)
        else:
            fits = [c for c in tilt_chunks(t)
                    if limit <= 0 or resident + frame_memory(d, thickness_nodes, tilt_chunk=c) <= limit]
            chunk = fits[0] if fits else 1
        constants = dataclasses.replace(d.constants, tilt_chunk=0 if chunk >= t else chunk)
        chosen.append(dataclasses.replace(d, constants=constants))
    chosen = tuple(chosen)
    return chosen, check_memory(chosen, thickness_nodes, limit_gb)
