"""Settings of a refinement: optimiser, parameter groups, thickness model, stopping rules.

Read like the calculation settings (:mod:`edrefine.settings`): defaults < the ``[refinement]``
table of the TOML file given with ``--config`` < command-line flags. Learning rates per group
are a ``[refinement.learning_rates]`` table (group = one of
:data:`edrefine.parameters.GROUPS`); restraints are ``[[restraint]]`` tables
(:mod:`edrefine.restraints`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from .errors import InputError
from .learned_thickness import MODEL_KINDS
from .parameters import GROUPS
from .settings import check_field_types, load_toml

DEFAULT_LEARNING_RATES = {
    "positions": 2e-3,
    "adp": 5e-4,
    "occupancy": 0.02,
    "absorption": 0.05,
    "orientation": 1e-4,
    "thickness": 0.01,
}
"""Adam step sizes (roughly the largest change per step): fractional coordinates, U [Å²],
occupancy, κ, orientation corrections [rad], thickness-model raw values."""


@dataclasses.dataclass(frozen=True)
class RefinementSettings:
    """How to refine.

    Attributes:
        thickness_model: constant, perframe, plate, neural (Gaussian per frame) or neural-grid
            (weights over a thickness grid per frame, the default).
        thickness_min, thickness_max: bounds of every thickness model [Å].
        thickness_start: dataset, frame or auto: the starting thickness from a dataset-wide or a
            per-frame search (:func:`edrefine.optimise.initial_thickness`).
        optimiser: adam, lbfgs, or lm (Levenberg–Marquardt on every refined group,
            :mod:`edrefine.least_squares`).
        epochs: passes over the training frames (Adam) or iterations (L-BFGS, L–M).
        refine: the groups that change; the others stay at their starting values.
        learning_rates: Adam step size per group (see :data:`DEFAULT_LEARNING_RATES`).
        schedule: cosine (decay to 1 % at the end), exponential (same end point) or constant.
        warmup: epochs of linear warm-up.
        orientation_delay: share of the Adam steps before the orientation corrections start to
            move (then their own warm-up and schedule over the remaining steps), so that early
            structural misfit is not absorbed by orientations. With the Gauss–Newton solver: the
            share of the epochs before its first call.
        omega_step: the Adam step of Δω (the rotation about the beam, to which the excitation errors
            are nearly blind) as a multiple of the orientation group's step (1: the same step; 0:
            Δω held at zero), so that Δα and Δβ can move fast while Δω, which Adam's
            per-parameter normalisation would otherwise move by a full step whatever its
            gradient, moves little.
        orientation_solver: gauss-newton (the default: Adam holds them; every
            ``orientation_every`` epochs, and after the last, one trust-region Gauss–Newton
            iteration per frame moves them with the rest fixed, :mod:`edrefine.orientation_solve`;
            Adam optimiser only) or adam (the orientation corrections are one more Adam group).
        orientation_every: epochs between the Gauss–Newton calls.
        orientation_sigma: standard deviation [deg] with which the Gauss–Newton step restrains each
            correction to zero (None: unrestrained), so that the rotation about the beam, which the
            excitation errors barely see, stays put unless the data ask for it.
        batch_frames: frames per mini-batch (0: the whole dataset each step).
        validation_fraction: share of frames held out (every k-th frame) for early stopping.
        patience: epochs without improvement before stopping (0: never stop early).
        polish_steps: Levenberg–Marquardt iterations on the structure after Adam (0: none); each costs
            about one forward pass per structural parameter.
        uncertainty_beams: strong beams per orientation in the Jacobian of the s.u.s when the
            calculation solves more (0: the calculation itself). One tangent costs about one
            forward pass, so a CsPbBr₃-sized calculation (256 of 1280 beams) spends most of a
            short run on its s.u.s; with fewer strong beams they cost a fraction of that and
            change by a few per cent (docs/refinement.md). GoF keeps the refined calculation's χ².
        uncertainty_marginal: s.u.s marginal over the other refined groups (orientation
            corrections, thickness model, κ), which move with the structure (True), or
            conditional on them, held at their refined values (False: smaller; the structural
            block of JᵀJ alone). :mod:`edrefine.uncertainty` says how each group enters.
        epoch_precision: float64 or float32: the precision of the orientation solves in the
            epochs (Adam, L-BFGS or L–M iterations and the Gauss–Newton orientation steps); the
            thickness search, every reported R, the polish and the s.u.s use the process's
            precision (float64 by default). float32 roughly halves an epoch
            (docs/refinement.md, "Single-precision epochs").
        chunk_frames: frames evaluated in one compiled call (bounds memory).
        seed: initialisation of the neural model and the mini-batch order.
        u_min: lower bound of U eigenvalues [Å²]; u_reset: start every site isotropic at this
            U_iso [Å²] (None: keep the starting model's ADPs).
        nn_width, nn_depth, grid_nodes: neural thickness model size; grid nodes for neural-grid.
        nn_frequencies: Fourier features sin, cos(kπx/2), k = 1 … n, of the neural models' input x
            (the normalised goniometer angle).
        grid_span: the neural-grid nodes span [min start / grid_span, max start × grid_span] of the
            starting thicknesses, within the bounds (None: the whole bounds).
        start_width: standard deviation of the neural models' starting distribution per frame, as a
            share of the frame's starting thickness (None: the model's default,
            ``learned_thickness.START_WIDTH``: 0.3 for neural-grid, 0.1 for neural). A broad start
            lets the neural-grid weights move to thicknesses far from the start, which a narrow one
            leaves with almost no weight and so almost no gradient; the Gaussian's five nodes
            spread a broad start too coarsely.
        checkpoint_every: epochs between checkpoints.
        report_every: epochs between full R evaluations in the history.
        memory_limit: largest estimated peak memory of a forward+gradient pass [GB] before the
            refinement refuses to start (None: 80 % of this machine's physical memory).
        devices: JAX devices over which frames are split (1: no sharding); on a CPU host the
            process must be started with that many host devices (``edrefine --devices N``).
        tilt_chunk: tilts of a frame solved side by side (None: the most that fit the memory
            limit; fewer tilts at a time need less memory and give the same result).
        time_limit: minutes for the whole refinement (0 or None: no limit). After timing its first
            epochs the run plans the epoch count that fits, keeping time for the s.u.s and the
            final R (:func:`edrefine.optimise.planned_epochs`); the polish runs only while time
            is left. The plan is kept in the checkpoint, so a resumed run follows it. The default
            (20 minutes) only shortens runs that would take longer, which then depend on the
            machine's speed and say so in their events; give ``time_limit = 0`` for a run that
            never does.
    """

    thickness_model: str = "neural-grid"
    thickness_min: float = 50.0
    thickness_max: float = 2500.0
    thickness_start: str = "auto"
    optimiser: str = "adam"
    epochs: int = 150
    refine: tuple[str, ...] = ("positions", "adp", "orientation", "thickness")
    learning_rates: tuple[tuple[str, float], ...] = tuple(DEFAULT_LEARNING_RATES.items())
    schedule: str = "cosine"
    warmup: int = 5
    orientation_delay: float = 0.0
    omega_step: float = 1.0
    orientation_solver: str = "gauss-newton"
    orientation_every: int = 10
    orientation_sigma: float | None = 1.0
    batch_frames: int = 0
    validation_fraction: float = 0.0
    patience: int = 30
    polish_steps: int = 3
    uncertainty_beams: int = 96
    uncertainty_marginal: bool = True
    epoch_precision: str = "float32"
    chunk_frames: int = 16
    seed: int = 0
    u_min: float = 1e-4
    u_reset: float | None = None
    nn_width: int = 16
    nn_frequencies: int = 8
    nn_depth: int = 2
    grid_nodes: int = 24
    grid_span: float | None = 2.5
    start_width: float | None = None
    checkpoint_every: int = 5
    report_every: int = 10
    memory_limit: float | None = None
    tilt_chunk: int | None = None
    devices: int = 1
    time_limit: float | None = 20.0

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.thickness_model not in MODEL_KINDS:
            raise InputError(f"must be one of {', '.join(MODEL_KINDS)}, got {self.thickness_model!r}",
                             source="thickness_model")
        if self.thickness_start not in ("auto", "dataset", "frame"):
            raise InputError(f"must be auto, dataset or frame, got {self.thickness_start!r}", source="thickness_start")
        if self.optimiser not in ("adam", "lbfgs", "lm"):
            raise InputError(f"must be adam, lbfgs or lm, got {self.optimiser!r}", source="optimiser")
        if self.epoch_precision not in ("float64", "float32"):
            raise InputError(f"must be float64 or float32, got {self.epoch_precision!r}", source="epoch_precision")
        if self.schedule not in ("cosine", "exponential", "constant"):
            raise InputError(f"must be cosine, exponential or constant, got {self.schedule!r}", source="schedule")
        for name in ("epochs", "chunk_frames", "devices", "checkpoint_every", "report_every", "nn_width", "nn_depth", "nn_frequencies", "grid_nodes",
                     "orientation_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise InputError(f"must be a positive integer, got {value!r}", source=name)
        for name in ("batch_frames", "patience", "polish_steps", "warmup", "seed", "uncertainty_beams"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise InputError(f"must be a non-negative integer, got {value!r}", source=name)
        if not (0.0 <= self.validation_fraction < 0.5):
            raise InputError(f"must be in [0, 0.5), got {self.validation_fraction}", source="validation_fraction")
        if not (0 < self.thickness_min < self.thickness_max and math.isfinite(self.thickness_max)):
            raise InputError("need 0 < thickness_min < thickness_max", source="thickness_min")
        unknown = [g for g in self.refine if g not in GROUPS]
        if unknown:
            raise InputError(f"unknown group(s) {unknown} (known: {', '.join(GROUPS)})", source="refine")
        for group, rate in self.learning_rates:
            if group not in GROUPS:
                raise InputError(f"unknown group {group!r} (known: {', '.join(GROUPS)})", source="learning_rates")
            if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate >= 0):
                raise InputError(f"{group}: must be a non-negative number, got {rate!r}", source="learning_rates")
        if self.orientation_solver not in ("adam", "gauss-newton"):
            raise InputError(f"must be adam or gauss-newton, got {self.orientation_solver!r}",
                             source="orientation_solver")
        if self.orientation_sigma is not None and not (isinstance(self.orientation_sigma, (int, float))
                                                       and math.isfinite(self.orientation_sigma)
                                                       and self.orientation_sigma > 0):
            raise InputError(f"must be a positive number of degrees, got {self.orientation_sigma!r}",
                             source="orientation_sigma")
        if not (isinstance(self.orientation_delay, (int, float)) and 0 <= self.orientation_delay < 1):
            raise InputError(f"must be in [0, 1), got {self.orientation_delay!r}", source="orientation_delay")
        if not (isinstance(self.omega_step, (int, float)) and math.isfinite(self.omega_step)
                and 0 <= self.omega_step <= 1):
            raise InputError(f"must be in [0, 1], got {self.omega_step!r}", source="omega_step")
        if self.grid_span is not None and not (math.isfinite(self.grid_span) and self.grid_span > 1):
            raise InputError(f"must be a number > 1, got {self.grid_span!r}", source="grid_span")
        if self.start_width is not None and not (math.isfinite(self.start_width) and self.start_width > 0):
            raise InputError(f"must be a positive number, got {self.start_width!r}", source="start_width")
        if self.tilt_chunk is not None and self.tilt_chunk < 1:
            raise InputError(f"must be a positive integer, got {self.tilt_chunk!r}", source="tilt_chunk")
        if self.time_limit is not None and not (math.isfinite(self.time_limit) and self.time_limit >= 0):
            raise InputError(f"must be a number of minutes (0: no limit), got {self.time_limit!r}", source="time_limit")
        if self.memory_limit is not None and not (math.isfinite(self.memory_limit) and self.memory_limit > 0):
            raise InputError(f"must be a positive number of GB, got {self.memory_limit!r}", source="memory_limit")
        if not (math.isfinite(self.u_min) and self.u_min > 0):
            raise InputError(f"must be a positive number [Å²], got {self.u_min!r}", source="u_min")
        if self.u_reset is not None and not (math.isfinite(self.u_reset) and self.u_reset > 0):
            raise InputError(f"must be a positive number [Å²], got {self.u_reset!r}", source="u_reset")

    def rate(self, group: str) -> float:
        return dict(self.learning_rates)[group]

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["learning_rates"] = dict(self.learning_rates)
        out["refine"] = list(self.refine)
        return out


FIELDS = {f.name for f in dataclasses.fields(RefinementSettings)}


def learning_rate_pairs(pairs: list[str]) -> dict[str, float]:
    """``GROUP=RATE`` strings (the ``--learning-rate`` flag) as {group: rate}; the groups and
    rates themselves are checked by :class:`RefinementSettings`."""
    rates = {}
    for pair in pairs:
        group, sep, value = pair.partition("=")
        try:
            rates[group.strip()] = float(value)
        except ValueError:
            raise InputError(f"expected GROUP=RATE, got {pair!r}", source="learning-rate") from None
        if not sep:
            raise InputError(f"expected GROUP=RATE, got {pair!r}", source="learning-rate")
    return rates


def refinement_settings(table: dict, flags: dict, source: str = "config") -> RefinementSettings:
    """Defaults < ``table`` (the TOML ``[refinement]`` table) < ``flags`` that are not None."""
    values: dict = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise InputError(f"unknown refinement setting '{key}' (known: {', '.join(sorted(FIELDS))})", source=source)
        values[name] = value
    values.update({k: v for k, v in flags.items() if v is not None})
    rates = dict(DEFAULT_LEARNING_RATES)
    given = values.get("learning_rates", {})
    try:
        rates.update(dict(given) if not isinstance(given, dict) else given)
    except (TypeError, ValueError):
        raise InputError(f"learning_rates: must be a table of group = rate, got {given!r}", source=source) from None
    values["learning_rates"] = tuple(rates.items())
    if "refine" in values:
        refine = values["refine"]
        if not isinstance(refine, (str, list, tuple)):
            raise InputError(f"refine: must be a list of groups, got {refine!r}", source=source)
        values["refine"] = tuple(refine.split(",") if isinstance(refine, str) else refine)
    try:
        return RefinementSettings(**values)
    except TypeError as error:
        raise InputError(f"bad refinement settings: {error}", source=source) from None
    except InputError as error:
        from_table = {key.replace("-", "_") for key in table}
        if error.source in from_table and flags.get(error.source) is None:
            raise InputError(f"[refinement] {error.source}: {error.message}", source=source) from None
        raise


def read_refinement_table(path: Path | None) -> tuple[dict, list[dict]]:
    """The ``[refinement]`` table and the ``[[restraint]]`` list of a TOML file (both may be empty)."""
    if path is None:
        return {}, []
    table = load_toml(path)
    refinement = table.get("refinement", {})
    restraints = table.get("restraint", [])
    if not isinstance(refinement, dict) or not isinstance(restraints, list) or not all(
            isinstance(entry, dict) for entry in restraints):
        raise InputError("[refinement] must be a table and [[restraint]] an array of tables", source=str(path))
    return refinement, restraints
