"""The ``edrefine`` command line: a thin shell that reads inputs, calls the library, prints.

Input problems surface as :class:`~edrefine.errors.InputError` and are printed as one line on
standard error with exit status 2; a run interrupted by Ctrl-C (SIGINT) or stopped by SIGTERM (what
batch schedulers send before they kill a job) writes its checkpoint and outputs and exits with
status 130.
"""

from __future__ import annotations

import enum
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import InputError

app = typer.Typer(
    name="edrefine",
    help="Dynamical (Bloch-wave) simulation and refinement for 3D electron diffraction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
MULTI_VALUE_OPTIONS = ("--thickness",)


class Precision(str, enum.Enum):
    float64 = "float64"
    float32 = "float32"


@app.callback()
def _configure(
    precision: Annotated[
        Precision, typer.Option(help="Floating-point precision of the calculation (float64 is the reference).")
    ] = Precision.float64,
) -> None:
    import jax

    jax.config.update("jax_enable_x64", precision is Precision.float64)
    cache = os.environ.get("EDREFINE_CACHE_DIR", str(Path.home() / ".cache" / "edrefine" / "jax"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@app.command()
def pattern(
    structure: Annotated[Path, typer.Option(help="Crystal structure (small-molecule CIF).")],
    zone: Annotated[
        tuple[float, float, float],
        typer.Option(
            help="Zone axis u v w, a direct-lattice direction pointing back towards the source "
            "(the PETS2/TEM convention): the electrons travel along −[uvw]."
        ),
    ],
    thickness: Annotated[list[float], typer.Option(help="Crystal thickness(es) [Å], e.g. --thickness 100 300.")],
    energy: Annotated[float, typer.Option(help="Electron energy [keV].")] = 200.0,
    gmax: Annotated[float, typer.Option(help="Largest |g| of a beam [Å⁻¹].")] = 2.0,
    sgmax: Annotated[float, typer.Option(help="Largest |S_g| of a beam [Å⁻¹].")] = 0.02,
    form_factors: Annotated[str, typer.Option(help="Electron scattering factors: lobato, kirkland or peng.")] = "lobato",
    absorption: Annotated[
        Optional[float], typer.Option(help="κ of a proportional absorptive potential U' = κU (default: none).")
    ] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Write the records (h, k, l, g, sg, thickness, intensity) here.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows printed per thickness (strongest first; 0 for all).")] = 30,
) -> None:
    """Dynamical intensities of one orientation: h k l, |g|, S_g and I (fraction of the incident beam)."""
    from .cif import read_crystal
    from .pattern import simulate_pattern

    crystal = read_crystal(structure)
    result = simulate_pattern(crystal, energy, zone, thickness, gmax, sgmax, form_factors, absorption)
    for t, row in zip(result.thickness, result.intensity):
        order = sorted(range(len(row)), key=lambda i: -row[i])
        table = Table(
            title=f"{structure.name} [{' '.join(f'{z:g}' for z in zone)}] t = {t:g} Å",
            caption=f"{len(row)} beams, Σ I = {row.sum():.6f}",
        )
        for column in ("h", "k", "l", "|g| [Å⁻¹]", "S_g [Å⁻¹]", "I"):
            table.add_column(column, justify="right")
        for i in order[: limit or None]:
            h, k, l_ = result.hkl[i]
            table.add_row(str(h), str(k), str(l_), f"{result.g[i]:.4f}", f"{result.excitation_error[i]:+.5f}", f"{row[i]:.6f}")
        console.print(table)
    if json_out is not None:
        _write_json(json_out, result.records())
        console.print(f"wrote {len(result.records())} records to {json_out}")


GMAX = typer.Option("--gmax", help="Largest |g| of a beam and of a scored reflection [Å⁻¹] (default 2.0).")
SGMAX = typer.Option("--sgmax", help="Largest |S_g| of a beam over a frame's tilts [Å⁻¹] (default 0.01).")
TILTS = typer.Option("--tilts", help="Tilt samples across a frame's ±half-width (default 42).")
RSG = typer.Option("--rsg", help="Keep reflections with |S_g|/ΔS_g < RSg (default 0.9).")
DSG = typer.Option("--dsg", help="... and ΔS_g − |S_g| > DSg [Å⁻¹] (default 0.0015).")
STRONG = typer.Option("--strong-beams", help="Beams per orientation solved exactly, the rest by Bethe perturbation (default: automatic, all beams up to 384 per orientation, else 256; 0: all beams; 1: kinematical, single scattering).")
SEGMENTS = typer.Option("--tilt-segments", help="Cut each frame's tilts into this many consecutive parts, each with a beam set of its own (fewer beams per solve for wide frames; a divisor of --tilts; default 1).")
CONFIG = typer.Option("--config", help="TOML file with calculation settings (flags override it).")


@app.command()
def score(
    structure: Annotated[Path, typer.Option(help="Crystal structure (small-molecule CIF).")],
    data: Annotated[Path, typer.Option(help="PETS2 dataset (.cif_pets / _dyn.cif_pets).")],
    thickness_search: Annotated[
        bool, typer.Option("--thickness-search", help="Choose each frame's thickness on a grid (best weighted fit).")
    ] = False,
    thickness: Annotated[Optional[float], typer.Option(help="One thickness for all frames [Å] (no search).")] = None,
    gmax: Annotated[Optional[float], GMAX] = None,
    sgmax: Annotated[Optional[float], SGMAX] = None,
    tilts: Annotated[Optional[int], TILTS] = None,
    rsg: Annotated[Optional[float], RSG] = None,
    dsg: Annotated[Optional[float], DSG] = None,
    form_factors: Annotated[Optional[str], typer.Option(help="lobato (default), kirkland or peng.")] = None,
    absorption: Annotated[Optional[float], typer.Option(help="κ of U' = κU (default: elastic).")] = None,
    strong_beams: Annotated[Optional[int], STRONG] = None,
    tilt_segments: Annotated[Optional[int], SEGMENTS] = None,
    config: Annotated[Optional[Path], CONFIG] = None,
    geometry: Annotated[
        str, typer.Option(help="rotation (continuous rotation), precession, or file (as the file's details say).")
    ] = "rotation",
    precession_steps: Annotated[int, typer.Option(help="Orientations on the precession cone.")] = 24,
    mosaicity: Annotated[
        Optional[str], typer.Option(help="Mosaic spread σ [deg], or 'file' for the file's mosaicity (default: none).")
    ] = None,
    drop_zero_sigma: Annotated[bool, typer.Option(help="Drop reflections with σ = 0 instead of failing.")] = False,
    per_frame: Annotated[bool, typer.Option(help="Print the per-frame table.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write all figures of merit here.")] = None,
) -> None:
    """R values of a fixed model on a 3D-ED dataset (Jana form and per-frame means)."""
    from .cif import read_crystal
    from .pets import read_pets
    from .score import score_dataset
    from .settings import resolve_settings

    settings = resolve_settings(config, gmax=gmax, sgmax=sgmax, tilts=tilts, rsg=rsg, dsg=dsg,
                                form_factors=form_factors, absorption=absorption, strong_beams=strong_beams,
                                tilt_segments=tilt_segments)
    if not thickness_search and thickness is None:
        raise InputError("give --thickness T for one thickness, or --thickness-search", source="thickness")
    if thickness is not None and not thickness > 0:
        raise InputError(f"must be positive, got {thickness}", source="thickness")
    crystal = read_crystal(structure)
    dataset = read_pets(data, zero_sigma="drop" if drop_zero_sigma else "raise")
    grid = settings.thickness_grid() if thickness_search else [thickness]
    mosaic = _mosaicity(mosaicity)
    with _progress("integrating frames") as (bar, task):
        result = score_dataset(crystal, dataset, thickness_search=thickness_search, thickness_grid=grid,
                               geometry=geometry, precession_steps=precession_steps, mosaicity=mosaic,
                               progress=lambda done, total: bar.update(task, completed=done, total=total),
                               **settings.score_arguments())
    result["structure"], result["data"] = str(structure), str(data)
    _print_scores(result, per_frame)
    if json_out is not None:
        _write_json(json_out, result)
        console.print(f"wrote {json_out}")


@app.command()
def simulate(
    structure: Annotated[Path, typer.Option(help="Crystal structure to simulate (CIF).")],
    out: Annotated[Path, typer.Option(help="Output PETS2 file (.cif_pets); never overwritten.")],
    thickness: Annotated[
        str,
        typer.Option(help="Thickness model: constant:T, plate:T0[,α_n], wedge:TMIN,TMAX[,nodes[,α_n]], "
                     "bimodal:T1,T2,F[,width], perframe:FILE or perframe:T1,T2,... (Å, degrees)."),
    ],
    template: Annotated[Optional[Path], typer.Option(help="Take the frame geometry from this PETS2 file.")] = None,
    alpha_range: Annotated[
        Optional[tuple[float, float]], typer.Option(help="Goniometer range A B [deg] (without --template).")
    ] = None,
    step: Annotated[float, typer.Option(help="Frame step [deg] (without --template).")] = 1.0,
    half_width: Annotated[Optional[float], typer.Option(help="Frame half-width [deg]; default step/2.")] = None,
    energy: Annotated[float, typer.Option(help="Electron energy [keV] (without --template).")] = 200.0,
    counts: Annotated[float, typer.Option(help="Counts of the strongest reflection.")] = 1e6,
    seed: Annotated[int, typer.Option(help="Random seed (orientation and Poisson noise).")] = 0,
    noise: Annotated[bool, typer.Option(help="Poisson noise (--no-noise: expected counts).")] = True,
    gmax: Annotated[Optional[float], GMAX] = None,
    sgmax: Annotated[Optional[float], SGMAX] = None,
    tilts: Annotated[Optional[int], TILTS] = None,
    rsg: Annotated[Optional[float], RSG] = None,
    dsg: Annotated[Optional[float], DSG] = None,
    form_factors: Annotated[Optional[str], typer.Option(help="lobato (default), kirkland or peng.")] = None,
    absorption: Annotated[Optional[float], typer.Option(help="κ of U' = κU (default: elastic).")] = None,
    config: Annotated[Optional[Path], CONFIG] = None,
) -> None:
    """A synthetic 3D-ED dataset with Poisson noise; the true structure and per-frame thickness
    distribution are written into the file."""
    from .cif import read_crystal
    from .pets import read_pets, write_pets
    from .settings import resolve_settings
    from .simulation import simulate_dataset, synthetic_template
    from .thickness import parse_thickness_model

    settings = resolve_settings(config, gmax=gmax, sgmax=sgmax, tilts=tilts, rsg=rsg, dsg=dsg,
                                form_factors=form_factors, absorption=absorption)
    if out.exists():
        raise InputError("output exists; choose another name or remove it", source=str(out))
    model = parse_thickness_model(thickness)
    crystal = read_crystal(structure)
    if template is not None:
        geometry = read_pets(template, zero_sigma="drop")
    elif alpha_range is None:
        raise InputError("give --template FILE or --alpha-range A B", source="alpha-range")
    else:
        if not step > 0 or alpha_range[1] <= alpha_range[0]:
            raise InputError(f"need A < B and step > 0, got {alpha_range} step {step}", source="alpha-range")
        geometry = synthetic_template(crystal.cell.parameters(), energy_kev=energy, alpha_range=alpha_range,
                                      step=step, half_width=half_width, seed=seed)
    arguments = settings.score_arguments()
    arguments.pop("tilt_rule")
    if arguments.pop("tilt_segments") != 1:
        raise InputError("simulations use one beam set per frame (the reference calculation); remove tilt_segments",
                         source="tilt_segments")
    dataset = simulate_dataset(crystal, geometry, model, counts=counts, seed=seed, noise=noise, **arguments)
    write_pets(out, dataset)
    console.print(f"wrote {len(dataset.reflections.hkl)} reflections in {len(dataset.frames.id)} frames to {out}")


def _mosaicity(text: str | None) -> float | str | None:
    """The --mosaicity value: None, "file", or a non-negative σ in degrees."""
    if text is None or text == "file":
        return text
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"expected a number or 'file', got {text!r}", source="mosaicity") from None
    if not value >= 0:
        raise InputError(f"must be non-negative, got {value}", source="mosaicity")
    return value


def _progress(description: str):
    """A rich progress bar as a context manager yielding (progress, task id)."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def bar():
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as progress:
            yield progress, progress.add_task(description, total=None)

    return bar()


def _print_scores(result: dict, per_frame: bool) -> None:
    table = Table(title="Figures of merit (on |F| = √I; observed: I > 3σ)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, label in (("R_obs", "R(obs), Jana form"), ("wR_all", "wR(all), Jana form"), ("GoF", "GoF"),
                       ("R_obs_frame_mean", "R_obs, mean of frames (published method)"),
                       ("wR_frame_mean", "wR, mean of frames (published method)")):
        value = result[key]
        table.add_row(label, f"{value:.3f}" if key == "GoF" else f"{100 * value:.2f} %")
    table.add_row("reflections observed / all", f"{result['n_obs']} / {result['n_all']}")
    table.add_row("time", f"{result['seconds']:.1f} s")
    console.print(table)
    if per_frame:
        frames = Table(title="Per frame")
        for column in ("frame", "thickness [Å]", "scale", "R_obs", "wR", "obs/all"):
            frames.add_column(column, justify="right")
        for row in result["frames"]:
            frames.add_row(str(row["id"]), f"{row['thickness']:.0f}", f"{row['scale']:.4g}",
                           f"{100 * row['R_obs']:.2f} %", f"{100 * row['wR']:.2f} %", f"{row['n_obs']}/{row['n_all']}")
        console.print(frames)


def _write_json(path: Path, payload: object) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(json.dumps(payload, indent=1, default=_json_default))
    except OSError as error:
        raise InputError(f"cannot write: {error.strerror}", source=str(path)) from None
    os.replace(temporary, path)


def _json_default(value: object) -> object:
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _expand_multi_value_options(argv: list[str]) -> list[str]:
    """Turn ``--thickness 100 300`` into ``--thickness 100 --thickness 300`` for the parser."""
    expanded: list[str] = []
    current: str | None = None
    for token in argv:
        if token.startswith("-") and not _is_number(token):
            current = token if token in MULTI_VALUE_OPTIONS else None
            expanded.append(token)
        elif current is not None and expanded[-1] != current:
            expanded.extend([current, token])
        else:
            expanded.append(token)
    return expanded


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


from . import cli_refine  # noqa: E402,F401  (registers refine and demo)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``edrefine`` script."""
    arguments = _expand_multi_value_options(list(sys.argv[1:] if argv is None else argv))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app(args=arguments, prog_name="edrefine")
    except InputError as error:
        print(f"edrefine: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("edrefine: interrupted", file=sys.stderr)
        sys.exit(130)
