"""Calculation settings shared by every command that simulates: defaults, TOML files, flags.

Precedence: defaults < the TOML file given with ``--config`` < flags given on the command line.
A TOML file holds the same names as the flags (with ``-`` or ``_``), at top level or under a
``[calculation]`` table, e.g.::

    gmax = 2.0
    sgmax = 0.01
    tilts = 42
    rsg = 0.9
    dsg = 0.0015
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

from .errors import InputError
from .scattering import PARAMETRISATIONS


def check_field_types(settings: object) -> None:
    """Reject values of the wrong type in a frozen settings dataclass, before any range check.

    ``float`` fields take int or float (stored as float), ``int`` fields int, ``str`` fields str,
    ``tuple[...]`` fields a list or tuple; ``X | None`` also takes None. Booleans are never
    numbers here (TOML ``true`` is not an epoch count). The error names the field.
    """
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        kinds = [kind.strip() for kind in str(field.type).split("|")]
        if value is None and "None" in kinds:
            continue
        kind = kinds[0]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "float" and number:
            object.__setattr__(settings, field.name, float(value))
        elif kind == "int" and number and isinstance(value, int):
            continue
        elif kind == "str" and isinstance(value, str):
            continue
        elif kind == "bool" and isinstance(value, bool):
            continue
        elif kind.startswith("tuple") and isinstance(value, (list, tuple)):
            object.__setattr__(settings, field.name, tuple(value))
        elif kind not in ("float", "int", "str", "bool") and not kind.startswith("tuple"):
            continue
        else:
            expected = {"float": "a number", "int": "an integer", "str": "a string",
                        "bool": "true or false"}.get(kind, "a list")
            raise InputError(f"must be {expected}, got {value!r}", source=field.name)


@dataclasses.dataclass(frozen=True)
class CalculationSettings:
    """Settings of the dynamical calculation and of the reflection selection.

    Attributes:
        gmax: largest |g| of a beam and of a scored reflection [Å⁻¹].
        sgmax: largest |S_g| of a beam over the frame's tilts [Å⁻¹].
        tilts: quadrature points across a frame's ±half-width.
        tilt_rule: "midpoint", "uniform" or "gauss".
        rsg: keep a reflection if |S_g| / ΔS_g < rsg (Klar et al. 2023).
        dsg: ... and ΔS_g − |S_g| > dsg [Å⁻¹].
        form_factors: "lobato", "kirkland" or "peng".
        absorption: κ of U′ = κU, or None for an elastic calculation.
        strong_beams: beams per orientation solved exactly (those of smallest |S_g|); the others
            enter by Bethe perturbation (:mod:`edrefine.bethe`). 0: the full matrix; 1: the
            kinematical (single-scattering) model, each reflection with the rocking curve of a
            crystal of the frame's thickness. None (the default): automatic, the full matrix up to
            384 beams per orientation and 256 strong beams beyond
            (:func:`edrefine.bethe.solved_strong_beams`).
        tilt_segments: consecutive parts of each frame's tilts that get a beam set of their own
            (the union over the part's tilts instead of the whole frame's), so that a wide frame
            needs fewer beams per solve; a divisor of ``tilts``. 1: one set per frame.
        thickness_min, thickness_max, thickness_step: thickness-search grid [Å].
    """

    gmax: float = 2.0
    sgmax: float = 0.01
    tilts: int = 42
    tilt_rule: str = "midpoint"
    rsg: float = 0.9
    dsg: float = 0.0015
    form_factors: str = "lobato"
    absorption: float | None = None
    strong_beams: int | None = None
    tilt_segments: int = 1
    thickness_min: float = 50.0
    thickness_max: float = 2000.0
    thickness_step: float = 25.0

    def __post_init__(self) -> None:
        check_field_types(self)
        positive = ("gmax", "sgmax", "rsg", "thickness_min", "thickness_max", "thickness_step")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"must be a positive number, got {value!r}", source=name)
        if not (isinstance(self.dsg, (int, float)) and math.isfinite(self.dsg) and self.dsg >= 0):
            raise InputError(f"must be a non-negative number, got {self.dsg!r}", source="dsg")
        if self.strong_beams is not None and self.strong_beams < 0:
            raise InputError(f"must be 0 (full matrix) or a positive integer, got {self.strong_beams!r}",
                             source="strong_beams")
        if not (isinstance(self.tilts, int) and self.tilts >= 1):
            raise InputError(f"must be a positive integer, got {self.tilts!r}", source="tilts")
        if not (isinstance(self.tilt_segments, int) and 1 <= self.tilt_segments <= self.tilts
                and self.tilts % self.tilt_segments == 0):
            raise InputError(f"must be a divisor of tilts ({self.tilts}), got {self.tilt_segments!r}",
                             source="tilt_segments")
        if self.tilt_rule not in ("midpoint", "uniform", "gauss"):
            raise InputError(f"must be midpoint, uniform or gauss, got {self.tilt_rule!r}", source="tilt_rule")
        if self.form_factors.lower() not in PARAMETRISATIONS + ("itc", "c4322"):
            raise InputError(f"unknown parametrisation {self.form_factors!r}", source="form_factors")
        if self.absorption is not None and not (math.isfinite(self.absorption) and self.absorption >= 0):
            raise InputError(f"must be a non-negative number, got {self.absorption!r}", source="absorption")
        if self.thickness_max < self.thickness_min:
            raise InputError("thickness_max is below thickness_min", source="thickness_max")
        for name, largest in LARGEST.items():
            if getattr(self, name) is not None and getattr(self, name) > largest:
                raise InputError(f"{getattr(self, name)!r} is beyond the sane limit {largest:g}", source=name)
        if (self.thickness_max - self.thickness_min) / self.thickness_step > 100_000:
            raise InputError("more than 100000 thickness-search points; raise thickness_step", source="thickness_step")

    def thickness_grid(self) -> list[float]:
        """The thickness-search grid [Å], both ends included."""
        count = int(math.floor((self.thickness_max - self.thickness_min) / self.thickness_step + 1e-9)) + 1
        return [self.thickness_min + i * self.thickness_step for i in range(count)]

    def score_arguments(self) -> dict:
        """Keyword arguments of :func:`edrefine.score.score_dataset`."""
        return dict(g_max=self.gmax, sg_max=self.sgmax, tilts=self.tilts, tilt_rule=self.tilt_rule, rsg=self.rsg,
                    dsg=self.dsg, form_factors=self.form_factors, absorption=self.absorption, strong_beams=self.strong_beams,
                    tilt_segments=self.tilt_segments)


LARGEST = {"gmax": 10.0, "sgmax": 1.0, "tilts": 1000, "strong_beams": 100_000, "thickness_max": 1e5, "absorption": 10.0}
"""Upper limits beyond which a setting is a typo, not a calculation (|g| ≤ 10 Å⁻¹ is
d ≥ 0.1 Å; 1000 tilts per frame; 10 µm of crystal; κ ≤ 10)."""
FIELDS = {f.name for f in dataclasses.fields(CalculationSettings)}
NON_CALCULATION = ("refinement", "restraint")
"""Top-level TOML entries read elsewhere (:mod:`edrefine.refine_settings`)."""


def load_toml(path: Path) -> dict:
    """The whole TOML file as a dict; InputError naming the file when missing or invalid."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError("no such file", source=str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"not valid TOML: {error}", source=str(path)) from None


def read_config(path: Path | None) -> dict:
    """Settings from a TOML file (names as the flags); unknown names are an error."""
    if path is None:
        return {}
    table = load_toml(path)
    table = {**{k: v for k, v in table.items() if not isinstance(v, dict) and k not in NON_CALCULATION},
             **table.get("calculation", {})}
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise InputError(f"unknown setting '{key}' (known: {', '.join(sorted(FIELDS))})", source=str(path))
        values[name] = value
    return values


def resolve_settings(config: Path | None, **flags) -> CalculationSettings:
    """Defaults, then the TOML file, then the flags that were given (not None)."""
    values = read_config(config)
    given = {k: v for k, v in flags.items() if v is not None}
    values.update(given)
    try:
        return CalculationSettings(**values)
    except InputError as error:
        if config is not None and error.source in values and error.source not in given:
            raise InputError(f"{error.source}: {error.message}", source=str(config)) from None
        raise
