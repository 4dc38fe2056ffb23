"""The ``edrefine`` command line: a thin shell that reads inputs, calls the library, prints.

Input problems surface as :class:`~edrefine.errors.InputError` and are printed as one line on
standard error with exit status 2; an interrupted run exits with status 130.
"""

from __future__ import annotations

import enum
import json
import os
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


def _write_json(path: Path, payload: object) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1))
    os.replace(temporary, path)


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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``edrefine`` script."""
    arguments = _expand_multi_value_options(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=arguments, prog_name="edrefine", standalone_mode=False)
    except InputError as error:
        print(f"edrefine: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("edrefine: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort,):
        sys.exit(1)
    except Exception as error:  # click usage errors
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
