"""R of a finished CsPbBr₃ refinement recomputed with every accuracy lever off.

Reads the output folder of ``edrefine refine`` (``metrics.json`` for the settings, the last
checkpoint for the refined parameters: structure, orientation corrections, thickness model),
rebuilds the same problem, and evaluates the same parameters twice in float64: with the
refinement's own calculation (the Bethe reduction it chose) and with the full matrix. Prints
both sets of figures of merit and their difference, the "R within 0.1 point of the
full-accuracy calculation" of issue 5.

    python benchmarks/full_accuracy.py DIR [--data ../shared/data/cspbbr3]

Not collected by pytest. Needs ../shared/data. The full-matrix pass over 59 frames of 1280 beams
takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402

from edrefine import CalculationSettings, read_crystal, read_pets  # noqa: E402
from edrefine import checkpoint  # noqa: E402
from edrefine.optimise import build_parameters, first_order_optimiser, training_state  # noqa: E402
from edrefine.problem import bound_memory  # noqa: E402
from edrefine.parameters import reset_u  # noqa: E402
from edrefine.refine import build_problem  # noqa: E402
from edrefine.learned_thickness import node_count  # noqa: E402
from edrefine.refine_settings import refinement_settings  # noqa: E402
from edrefine.summary import count_parameters, figures_of_merit, frame_table  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = ("R_obs_frame_mean", "wR_frame_mean", "R_obs", "wR_all", "GoF")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=pathlib.Path)
    parser.add_argument("--data", type=pathlib.Path, default=ROOT / ".." / "shared" / "data" / "cspbbr3")
    parser.add_argument("--structure", default="cspbbr3.cif")
    parser.add_argument("--pets", default="CsPbBr_P67-crot-050_dyn.cif_pets")
    args = parser.parse_args()
    metrics = json.loads((args.folder / "metrics.json").read_text())
    calculation = CalculationSettings(**metrics["settings"]["calculation"])
    table = dict(metrics["settings"]["refinement"])
    settings = refinement_settings(table, {})
    crystal = read_crystal(args.data / args.structure)
    data = read_pets(args.data / args.pets, zero_sigma="raise")
    start = reset_u(crystal, settings.u_reset) if settings.u_reset is not None else crystal
    problem = build_problem(start, [data], calculation, None, None)
    nodes = node_count(settings.thickness_model, settings.grid_nodes)
    params = build_parameters(problem, settings, calculation.absorption)
    state = training_state(params)
    state.opt_state = first_order_optimiser(problem, params, settings).init(eqx.filter(params, eqx.is_inexact_array))
    key = json.loads((args.folder / checkpoint.META).read_text())["fingerprint"]
    state, stage = checkpoint.load(args.folder, state, key)
    print(f"checkpoint: epoch {state.epoch}, stage {stage}", flush=True)
    rows = {}
    for name, changes in (("refined calculation", {}), ("full matrix", {"strong_beams": 0, "tilt_chunk": 0})):
        candidate = problem.with_constants(**changes) if changes else problem
        bounded, peak = bound_memory(candidate.datasets, nodes, settings.memory_limit, None)
        candidate = dataclasses.replace(candidate, datasets=bounded)
        begin = time.perf_counter()
        merit = figures_of_merit(frame_table(state.params, candidate, settings.chunk_frames),
                                 count_parameters(state.params, start, settings))
        rows[name] = merit
        strong = candidate.datasets[0].constants.strong_beams
        print(f"{name:20s} (N_s {strong or 'all'}, tilt chunk {candidate.datasets[0].constants.tilt_chunk}, "
              f"{time.perf_counter() - begin:.0f} s): "
              + ", ".join(f"{k} {100 * merit[k]:.3f} %" if k != "GoF" else f"GoF {merit[k]:.3f}" for k in KEYS),
              flush=True)
    a, b = rows["refined calculation"], rows["full matrix"]
    print("full matrix − refined calculation: " + ", ".join(
        f"{k} {100 * (b[k] - a[k]):+.3f} points" for k in KEYS if k != "GoF"))


if __name__ == "__main__":
    main()
