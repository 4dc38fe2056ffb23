"""The ``refine`` and ``demo`` commands (registered on :data:`edrefine.cli.app`)."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .cli import CONFIG, DSG, GMAX, RSG, SEGMENTS, SGMAX, TILTS, app, console
from .errors import InputError

RUN = "Refinement"


class _Progress:
    """Progress of a refinement on stderr: a live bar on a terminal, plain lines otherwise (a
    log file of a long run then shows each stage and epoch as it happens)."""

    def __init__(self, epochs: int):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.epochs = epochs
        self.begin = time.perf_counter()
        self.bar = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("epoch"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                                transient=True)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
            self.task = self.bar.add_task(RUN, total=self.epochs, info="preparing")
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            return self.bar.__exit__(*exc)
        return False

    def _line(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.begin:7.0f} s] {text}", file=sys.stderr, flush=True)

    def stage(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, info=text)
        else:
            self._line(text)

    def epoch(self, state, record: dict) -> None:
        info = f"loss {record['loss']:.4g}"
        if "R_obs_frame_mean" in record:
            info += f"  R_obs {100 * record['R_obs_frame_mean']:.2f} %"
        if self.bar is not None:
            self.bar.update(self.task, completed=state.epoch, info=info)
        else:
            self._line(f"epoch {state.epoch}/{self.epochs}  {info}  ({record.get('seconds', math.nan):.0f} s)")


def _check_folder(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", source=str(out))
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError("output folder exists and is not empty; use --resume to continue it or choose another",
                         source=str(out))


def _prepare_folder(out: Path, resume: bool) -> None:
    _check_folder(out, resume)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create: {error.strerror}", source=str(out)) from None


def run_refinement(crystal, datasets, calculation, settings, out: Path, *, resume=False, provenance=None,
                   restraints=None, names=None, truth=None, truth_thickness=None):
    """Refine with a progress bar and write every output into ``out``; returns the result."""
    from . import checkpoint
    from .outputs import write_outputs
    from .refine import refine

    provenance = dict(provenance or {})
    key = checkpoint.fingerprint(provenance, calculation.__dict__, settings.as_dict(), restraints)
    with _Progress(settings.epochs) as progress:
        result = refine(crystal, datasets, calculation, settings, restraints=restraints, folder=out, resume=resume,
                        fingerprint=key, on_epoch=progress.epoch, names=names, on_stage=progress.stage)
    from . import __version__

    provenance.update(edrefine_version=__version__, seed=settings.seed)
    write_outputs(out, result, datasets, provenance, truth, truth_thickness)
    return result


@app.command()
def refine(
    structure: Annotated[Path, typer.Option(help="Starting model (small-molecule CIF).")],
    data: Annotated[list[Path], typer.Option(help="PETS2 dataset(s); repeat --data for several crystals.")],
    out: Annotated[Path, typer.Option(help="Output folder (created; never overwritten unless --resume).")],
    config: Annotated[Optional[Path], CONFIG] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    gmax: Annotated[Optional[float], GMAX] = None,
    sgmax: Annotated[Optional[float], SGMAX] = None,
    tilts: Annotated[Optional[int], TILTS] = None,
    tilt_rule: Annotated[Optional[str], typer.Option(help="midpoint, uniform or gauss.")] = None,
    strong_beams: Annotated[Optional[int], typer.Option(help="Beams per orientation solved exactly, the rest by Bethe perturbation (default: automatic, all beams up to 384 per orientation, else 256; 0: all beams; 1: kinematical, single scattering).")] = None,
    tilt_segments: Annotated[Optional[int], SEGMENTS] = None,
    rsg: Annotated[Optional[float], RSG] = None,
    dsg: Annotated[Optional[float], DSG] = None,
    form_factors: Annotated[Optional[str], typer.Option(help="lobato (default), kirkland or peng.")] = None,
    absorption: Annotated[Optional[float], typer.Option(help="Start κ of U' = κU and refine it (default: elastic).")] = None,
    thickness_model: Annotated[Optional[str], typer.Option(help="constant, perframe, plate, neural (Gaussian per frame) or neural-grid (weights over a thickness grid, the default).")] = None,
    grid_nodes: Annotated[Optional[int], typer.Option(help="Thickness grid nodes of neural-grid (default 24).")] = None,
    grid_span: Annotated[Optional[float], typer.Option(help="neural-grid nodes span [min start / SPAN, max start × SPAN] of the starting thicknesses (default 2.5).")] = None,
    start_width: Annotated[Optional[float], typer.Option(help="Width of the neural models' starting distribution per frame, a share of its starting thickness (default 0.3 for neural-grid, 0.1 for neural).")] = None,
    thickness_min: Annotated[Optional[float], typer.Option(help="Lower thickness bound [Å] (default 50).")] = None,
    thickness_max: Annotated[Optional[float], typer.Option(help="Upper thickness bound [Å] (default 2500).")] = None,
    thickness_start: Annotated[Optional[str], typer.Option(help="Starting thickness search: auto (default), dataset or frame.")] = None,
    optimiser: Annotated[Optional[str], typer.Option(help="adam (default), lbfgs, or lm (Levenberg–Marquardt on every refined group).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (Adam) or iterations (L-BFGS, LM) (default 150).")] = None,
    refine_groups: Annotated[Optional[str], typer.Option("--refine", help="Comma list of groups to refine: positions, adp, occupancy, absorption, orientation, thickness.")] = None,
    learning_rate: Annotated[Optional[list[str]], typer.Option(help="GROUP=RATE, repeatable, e.g. positions=0.002.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="cosine (default), exponential or constant.")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Epochs of linear warm-up of every Adam step (default 5).")] = None,
    orientation_delay: Annotated[Optional[float], typer.Option(help="Share of the Adam steps before orientation corrections start to move (default 0: from the start).")] = None,
    omega_step: Annotated[Optional[float], typer.Option(help="Adam step of Δω (rotation about the beam) as a multiple of the orientation step, in [0, 1] (default 1).")] = None,
    orientation_solver: Annotated[Optional[str], typer.Option(help="gauss-newton (default: one trust-region Gauss–Newton step per frame every --orientation-every epochs) or adam (orientations are one more Adam group).")] = None,
    orientation_sigma: Annotated[Optional[float], typer.Option(help="Restraint (standard deviation, degrees) of each correction to zero in the Gauss–Newton step (default 1.0).")] = None,
    orientation_every: Annotated[Optional[int], typer.Option(help="Epochs between Gauss–Newton orientation steps (default 10).")] = None,
    batch_frames: Annotated[Optional[int], typer.Option(help="Frames per mini-batch (0: all, the default).")] = None,
    validation_fraction: Annotated[Optional[float], typer.Option(help="Share of frames held out for early stopping.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Epochs without improvement before stopping (0: never).")] = None,
    polish_steps: Annotated[Optional[int], typer.Option(help="Levenberg–Marquardt steps on the structure at the end.")] = None,
    epoch_precision: Annotated[Optional[str], typer.Option(help="Precision of the orientation solves in the epochs: float32 (default; about 1.6 times faster) or float64. Thickness search, reported R, polish and s.u.s use float64.")] = None,
    uncertainty_beams: Annotated[Optional[int], typer.Option(help="Strong beams per orientation in the Jacobian of the s.u.s when the calculation solves more (default 96; 0: the calculation itself).")] = None,
    uncertainty_marginal: Annotated[Optional[bool], typer.Option("--uncertainty-marginal/--uncertainty-conditional", help="s.u.s marginal over the refined orientations, thickness model and κ (default), or conditional on them (smaller).")] = None,
    chunk_frames: Annotated[Optional[int], typer.Option(help="Frames per compiled call (bounds memory).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the neural model and the batch order.")] = None,
    u_reset: Annotated[Optional[float], typer.Option(help="Start every site isotropic at this U_iso [Å²].")] = None,
    u_min: Annotated[Optional[float], typer.Option(help="Lower bound of U eigenvalues [Å²] (default 1e-4).")] = None,
    nn_width: Annotated[Optional[int], typer.Option(help="Hidden width of the neural thickness model (default 16).")] = None,
    nn_depth: Annotated[Optional[int], typer.Option(help="Hidden layers of the neural thickness model (default 2).")] = None,
    nn_frequencies: Annotated[Optional[int], typer.Option(help="Fourier features sin, cos(kπx/2), k = 1…n, of the neural thickness model's input (default 8).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Epochs between checkpoints (default 5).")] = None,
    report_every: Annotated[Optional[int], typer.Option(help="Epochs between full R evaluations in the history (default 10).")] = None,
    drop_zero_sigma: Annotated[bool, typer.Option(help="Drop reflections with σ = 0 instead of failing.")] = False,
    memory_limit: Annotated[Optional[float], typer.Option(help="Refuse to start above this estimated peak memory [GB] (default: 80 % of RAM).")] = None,
    devices: Annotated[Optional[int], typer.Option(help="Split frames over this many devices (default 1; experimental: stalls on real data with host CPU devices, see docs/benchmarks.md).")] = None,
    tilt_chunk: Annotated[Optional[int], typer.Option(help="Tilts of a frame solved side by side (default: as many as fit the memory limit).")] = None,
    time_limit: Annotated[Optional[float], typer.Option(help="Minutes for the whole run: after timing the first epochs, plan the epochs that fit, keeping time for the s.u.s (default 20; 0: no limit).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate inputs and settings, prepare the problem, print its size and memory estimate, and stop.")] = False,
) -> None:
    """Refine a structure against 3D-ED data: structure, orientations and a learned thickness model."""
    from .checkpoint import file_checksum
    from .objective import request_host_devices
    from .cif import read_crystal
    from .pets import read_pets
    from .refine_settings import read_refinement_table, refinement_settings
    from .restraints import distance_restraints
    from .settings import resolve_settings

    calculation = resolve_settings(config, gmax=gmax, sgmax=sgmax, tilts=tilts, tilt_rule=tilt_rule, rsg=rsg, dsg=dsg,
                                   strong_beams=strong_beams, tilt_segments=tilt_segments,
                                   form_factors=form_factors, absorption=absorption)
    table, restraints = read_refinement_table(config)
    flags = dict(thickness_model=thickness_model, grid_nodes=grid_nodes, grid_span=grid_span, start_width=start_width, thickness_min=thickness_min, thickness_max=thickness_max,
                 thickness_start=thickness_start,
                 optimiser=optimiser, epochs=epochs, refine=refine_groups, schedule=schedule, warmup=warmup,
                 u_min=u_min, nn_width=nn_width, nn_depth=nn_depth, nn_frequencies=nn_frequencies, checkpoint_every=checkpoint_every,
                 report_every=report_every,
                 orientation_delay=orientation_delay, omega_step=omega_step, orientation_solver=orientation_solver,
                 orientation_every=orientation_every, orientation_sigma=orientation_sigma,
                 batch_frames=batch_frames, validation_fraction=validation_fraction, patience=patience,
                 polish_steps=polish_steps, uncertainty_beams=uncertainty_beams,
                 uncertainty_marginal=uncertainty_marginal, epoch_precision=epoch_precision, chunk_frames=chunk_frames, seed=seed, u_reset=u_reset,
                 memory_limit=memory_limit, tilt_chunk=tilt_chunk, time_limit=time_limit, devices=devices, learning_rates=_rates(learning_rate, table))
    settings = refinement_settings(table, flags, str(config) if config else "settings")
    if absorption is not None and "absorption" not in settings.refine:
        settings = refinement_settings(table, {**flags, "refine": settings.refine + ("absorption",)})
    request_host_devices(settings.devices)
    crystal = read_crystal(structure)
    if restraints:
        distance_restraints(crystal, restraints, source=str(config))
    datasets = [read_pets(p, zero_sigma="drop" if drop_zero_sigma else "raise") for p in data]
    if check:
        _check_folder(out, resume)
        _print_check(crystal, datasets, calculation, settings, restraints, [p.stem for p in data])
        return
    _prepare_folder(out, resume)
    provenance = {"inputs": {str(p): file_checksum(p) for p in [structure, *data]}}
    names = [p.stem for p in data]
    result = run_refinement(crystal, datasets, calculation, settings, out, resume=resume, provenance=provenance,
                            restraints=restraints, names=names if len(set(names)) == len(names) else None)
    _print_result(result, out)
    if result.interrupted:
        print(f"edrefine: interrupted; outputs of the best state so far and a checkpoint are in {out} "
              "(--resume continues)", file=sys.stderr)
        raise typer.Exit(130)


def _print_check(crystal, datasets, calculation, settings, restraints, names) -> None:
    """What ``refine`` would work on: per dataset frames, reflections, beams; parameters; memory."""
    import numpy as np

    from .learned_thickness import node_count
    from .loss import StructuralIndex
    from .parameters import reset_u
    from .problem import bound_memory, memory_limit
    from .refine import build_problem

    start = reset_u(crystal, settings.u_reset) if settings.u_reset is not None else crystal
    problem = build_problem(start, datasets, calculation, restraints, names if len(set(names)) == len(names) else None)
    nodes = node_count(settings.thickness_model, settings.grid_nodes)
    datasets, peak = bound_memory(problem.datasets, nodes, settings.memory_limit, settings.tilt_chunk)
    table = Table(title="Refinement check (nothing refined)")
    for column in ("dataset", "frames", "reflections", "beams max/mean", "capacity", "tilts", "segments",
                   "side by side"):
        table.add_column(column, justify="right")
    for dataset in datasets:
        f = dataset.frames
        beams = np.asarray(f.beam_mask).sum(axis=2)
        table.add_row(dataset.name, str(f.count), str(int(np.asarray(f.refl_mask).sum())),
                      f"{beams.max()} / {beams.mean():.0f}", str(f.capacity), str(f.tilt_count), str(f.segments),
                      str(dataset.constants.tilt_chunk or f.tilts_per_segment))
    console.print(table)
    groups = tuple(g for g in ("positions", "adp", "occupancy") if g in settings.refine)
    console.print(f"refined structural parameters: {StructuralIndex.of(problem.crystal, groups).size}; "
                  f"estimated peak memory {peak / 1e9:.2f} GB of "
                  f"{memory_limit(settings.memory_limit) / 1e9:.1f} GB allowed")
    console.print("inputs and settings are valid")


def _rates(pairs: list[str] | None, table: dict) -> dict | None:
    from .refine_settings import learning_rate_pairs

    if not pairs:
        return None
    return dict(table.get("learning_rates", {})) | learning_rate_pairs(pairs)


def _print_result(result, out: Path, extra: list[tuple[str, str]] = ()) -> None:
    table = Table(title="Refinement (figures on |F|; observed: I > 3σ)")
    for column in ("figure", "start", "refined"):
        table.add_column(column, justify="right")
    start = result.metrics["start"]
    for key, label in (("R_obs_frame_mean", "R_obs, mean of frames"), ("wR_frame_mean", "wR, mean of frames"),
                       ("R_obs", "R(obs), Jana form"), ("wR_all", "wR(all), Jana form")):
        table.add_row(label, f"{100 * start[key]:.2f} %", f"{100 * result.metrics[key]:.2f} %")
    table.add_row("GoF", *(f"{g:.3f}" if math.isfinite(g) else "undefined" for g in (start["GoF"], result.metrics["GoF"])))
    if "GoF_restrained" in result.metrics:
        g = result.metrics["GoF_restrained"]
        table.add_row(f"GoF with {result.metrics['n_restraints']} restraints (scales the s.u.s)", "",
                      f"{g:.3f}" if math.isfinite(g) else "undefined")
    table.add_row("refined parameters", "", str(result.metrics.get("n_parameters", "")))
    for label, before, after in extra:
        table.add_row(label, before, after)
    table.add_row("reflections observed / all", "", f"{result.metrics['n_obs']} / {result.metrics['n_all']}")
    table.add_row("time", "", f"{result.seconds:.1f} s")
    console.print(table)
    for event in result.events:
        console.print(f"  {event}")
    console.print(f"outputs in {out} (report: {out / 'report.html'})")


@app.command()
def demo(
    out: Annotated[Optional[Path], typer.Option(help="Folder for the demo (default: a new temporary folder).")] = None,
    epochs: Annotated[int, typer.Option(help="Adam epochs.")] = 150,
    seed: Annotated[int, typer.Option(help="Seed of noise, perturbation and network.")] = 0,
) -> None:
    """Simulate a small α-quartz dataset with a tilt-dependent wedge, perturb the structure, and refine
    it back with the neural thickness model; prints what was recovered."""
    from .demo import run_demo

    folder = Path(tempfile.mkdtemp(prefix="edrefine-demo-")) if out is None else out
    _prepare_folder(folder, False)
    begin = time.perf_counter()
    summary = run_demo(folder, epochs=epochs, seed=seed, console=console, runner=run_refinement)
    result = summary.pop("result")
    rows = [("coordinate RMSD [Å]", f"{summary['rmsd_start']:.4f}", f"{summary['rmsd_refined']:.4f}"),
            ("U_iso error (max, relative)", f"{100 * summary['u_error_start']:.1f} %",
             f"{100 * summary['u_error_refined']:.1f} %"),
            ("thickness error (mean |Δt|/t)", f"{100 * summary['thickness_error_start']:.1f} %",
             f"{100 * summary['thickness_error_refined']:.1f} %")]
    _print_result(result, folder / "refinement", rows)
    console.print("true vs learned mean thickness [Å] at α = " + ", ".join(
        f"{a:+.0f}°: {t:.0f}/{m:.0f}" for a, t, m in summary["thickness_samples"]))
    console.print(f"demo finished in {time.perf_counter() - begin:.1f} s; files in {folder}")
    (folder / "demo.json").write_text(json.dumps(summary, indent=1, default=float))
