"""Refine the real α-quartz data from the kinematical model and compare with the published numbers.

Start: ``quartz_kinematical.cif`` (Malik et al.'s starting model); data: ``quartz.cif_pets``
(Klar et al. 2023, 99 frames); the published settings g_max 2.0 Å⁻¹, sg_max 0.01 Å⁻¹, RSg 0.9,
DSg 0.0015 Å⁻¹, ±1° frames. The refinement integrates each frame with ``--tilts`` midpoint
tilts (default 21); the refined model (structure, orientations, learned thickness) is then
evaluated again with the published 42 tilts, and both are printed, with the coordinates
against ``enantiomer_1.cif`` in units of the refined s.u.s. Published: R_obs 4.12 % (mean of
frames, elastic), the published code 5.17 % in 5 minutes on this CPU.

    python benchmarks/quartz_refine.py --tilts 42 --out DIR      # the default recipe, published settings
    python benchmarks/quartz_refine.py [--tilts 21] [--epochs N] [--thickness-model M] [--absorption 0.05] \
        [--form-factors lobato|kirkland|peng] [--start kinematical|reference] [--kinematic] [--invert] [--out DIR]

Refinement settings not given are the defaults of :class:`edrefine.RefinementSettings`.

Not collected by pytest. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "quartz"
PUBLISHED = dict(gmax=2.0, sgmax=0.01, rsg=0.9, dsg=0.0015)
"""The published calculation settings for these data (g_max, sg_max [Å⁻¹], RSg, DSg [Å⁻¹])."""


def grid_span_flag(text: str) -> float | str:
    """``--grid-span``: a number, or 'none' (the whole thickness bounds)."""
    if text == "none":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def settings_from(parser: argparse.ArgumentParser, args: argparse.Namespace, **values):
    """RefinementSettings: defaults < ``values`` < the recipe flags given (``--orientation-*``,
    ``--omega-step``, ``--grid-nodes``, ``--batch-frames``, ``--seed``, ``--nn-frequencies``, ``--nn-width``, ``--start-width``, ``--learning-rate``); a bad flag is a
    one-line usage error."""
    from edrefine import InputError
    from edrefine.refine_settings import learning_rate_pairs, refinement_settings

    try:
        flags = dict(orientation_delay=args.orientation_delay, orientation_solver=args.orientation_solver,
                     orientation_every=args.orientation_every, orientation_sigma=args.orientation_sigma,
                     omega_step=args.omega_step, grid_nodes=args.grid_nodes, batch_frames=args.batch_frames,
                     seed=args.seed, nn_frequencies=args.nn_frequencies, nn_width=args.nn_width,
                     start_width=args.start_width,
                     learning_rates=learning_rate_pairs(args.learning_rate) or None)
        return refinement_settings({k: v for k, v in values.items() if v is not None}, flags, source="flags")
    except InputError as error:
        parser.error(f"{error.source}: {error.message}")


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    for flag, kind in (("--orientation-delay", float), ("--orientation-solver", str), ("--orientation-every", int),
                       ("--orientation-sigma", float), ("--omega-step", float), ("--grid-nodes", int),
                       ("--batch-frames", int), ("--seed", int), ("--nn-frequencies", int),
                       ("--nn-width", int), ("--start-width", float)):
        parser.add_argument(flag, type=kind, default=None, help="default: the refinement default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tilts", type=int, default=21)
    parser.add_argument("--epochs", type=int, default=None, help="default: the refinement default")
    parser.add_argument("--thickness-model", default=None, help="default: the refinement default")
    parser.add_argument("--thickness-start", default=None, help="default: the refinement default")
    parser.add_argument("--polish-steps", type=int, default=None, help="default: the refinement default")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="minutes (0: no limit; default: the refinement default)")
    parser.add_argument("--grid-span", type=grid_span_flag, default=None,
                        help="neural-grid span (a number > 1, or 'none': the whole bounds; default: the refinement default)")
    add_recipe_flags(parser)
    parser.add_argument("--learning-rate", action="append", default=[], metavar="GROUP=RATE",
                        help="Adam step of one group, repeatable (default: the refinement defaults)")
    parser.add_argument("--absorption", type=float, default=None,
                        help="refine absorption κ from this start (default: elastic)")
    parser.add_argument("--form-factors", default="lobato", choices=("lobato", "kirkland", "peng"),
                        help="electron scattering factors (default: lobato, the program's default)")
    parser.add_argument("--kinematic", action="store_true",
                        help="single scattering (strong_beams = 1: kinematical amplitudes with each frame's rocking "
                             "curve), to show what the dynamical model gains")
    parser.add_argument("--start", choices=("kinematical", "reference"), default="kinematical",
                        help="starting model: quartz_kinematical.cif (default) or the reference enantiomer_1.cif "
                             "itself, to see whether the refinement stays at the reference")
    parser.add_argument("--invert", action="store_true",
                        help="start from the inverted enantiomer of the kinematical model (absolute structure)")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets, refine, write_outputs
    from edrefine.summary import count_parameters, figures_of_merit, frame_table
    from edrefine.refine import build_problem

    reference = read_crystal(DATA / "enantiomer_1.cif")
    start = reference if args.start == "reference" else read_crystal(DATA / "quartz_kinematical.cif")
    if args.invert:
        start, reference = start.invert(), reference.invert()
    data = read_pets(DATA / "quartz.cif_pets")
    published = PUBLISHED | {"strong_beams": 1 if args.kinematic else 0}
    published["form_factors"] = args.form_factors
    calculation = CalculationSettings(tilts=args.tilts, absorption=args.absorption, **published)
    groups = RefinementSettings().refine + (("absorption",) if args.absorption is not None else ())
    settings = settings_from(parser, args, report_every=10, refine=groups, epochs=args.epochs,
                             thickness_model=args.thickness_model, thickness_start=args.thickness_start,
                             polish_steps=args.polish_steps,
                             time_limit=args.time_limit,
                             grid_span=None if args.grid_span == "none" else args.grid_span)
    if args.grid_span == "none":  # None among the values means "the default", so set it afterwards
        settings = dataclasses.replace(settings, grid_span=None)
    begin = time.perf_counter()

    def on_epoch(state, record):
        if "R_obs_frame_mean" in record:
            print(f"epoch {state.epoch}: loss {record['loss']:.5f} R_obs (frame mean) "
                  f"{100 * record['R_obs_frame_mean']:.2f} %  {time.perf_counter() - begin:.0f} s", flush=True)

    result = refine(start, [data], calculation, settings, on_epoch=on_epoch)
    seconds = time.perf_counter() - begin
    full = build_problem(result.start, [data], CalculationSettings(tilts=42, absorption=args.absorption, **published))
    table = frame_table(result.params, full, settings.chunk_frames)
    at42 = figures_of_merit(table, count_parameters(result.params, result.start, settings))
    shift = np.asarray(result.crystal.positions()) - np.asarray(reference.positions())

    def in_su(su):
        su = np.asarray(su)
        return np.nanmax(np.where(np.isfinite(su) & (su > 0), np.abs(shift) / np.where(su > 0, su, 1), np.nan), axis=1)

    # the s.u.s conditional on the refined orientations and thickness, beside the refinement's own
    conditional = None
    if settings.uncertainty_marginal:
        from edrefine.least_squares import STRUCTURAL
        from edrefine.loss import StructuralIndex
        from edrefine.uncertainty import crystal_uncertainties, table_chi2

        problem = build_problem(result.start, [data], calculation)
        index = StructuralIndex.of(result.start, tuple(g for g in STRUCTURAL if g in settings.refine))
        conditional, _, _ = crystal_uncertainties(result.params, problem, index,
                                                  count_parameters(result.params, result.start, settings),
                                                  settings.chunk_frames, 32,
                                                  table_chi2(result.frames, result.params, problem))
    cartesian = shift @ np.asarray(result.crystal.cell.orthogonalisation()).T
    summary = {"tilts_refined": args.tilts, "kinematic": args.kinematic, "inverted": args.invert, "start_model": args.start,
               "form_factors": args.form_factors, "absorption": None if result.params.absorption is None
               else float(result.params.absorption), "epochs": settings.epochs, "seconds": seconds,
               "thickness_model": settings.thickness_model, "thickness_start": settings.thickness_start,
               "grid_span": settings.grid_span, "grid_nodes": settings.grid_nodes, "seed": settings.seed, "nn_frequencies": settings.nn_frequencies,
               "nn_width": settings.nn_width,
               "batch_frames": settings.batch_frames,
               "time_limit": settings.time_limit, "epochs_run": len(result.history),
               "polish_steps": settings.polish_steps, "orientation_delay": settings.orientation_delay,
               "orientation_solver": settings.orientation_solver, "orientation_every": settings.orientation_every,
               "orientation_sigma": settings.orientation_sigma, "omega_step": settings.omega_step, "learning_rates": dict(settings.learning_rates),
               "start": {k: result.metrics["start"][k] for k in ("R_obs_frame_mean", "wR_frame_mean", "R_obs", "wR_all", "GoF")},
               "refined": {k: result.metrics[k] for k in ("R_obs_frame_mean", "wR_frame_mean", "R_obs", "wR_all", "GoF")},
               "refined_at_42_tilts": {k: at42[k] for k in ("R_obs_frame_mean", "wR_frame_mean", "R_obs", "wR_all")},
               "coordinates": {label: [float(x) for x in xyz] for label, xyz in
                               zip(result.crystal.labels, np.asarray(result.crystal.positions()))},
               "coordinate_su": {label: [float(x) for x in su] for label, su in
                                 zip(result.crystal.labels, np.asarray(result.uncertainties.positions))},
               "coordinate_shift_angstrom": np.linalg.norm(cartesian, axis=1).tolist(),
               "uncertainty_marginal": settings.uncertainty_marginal,
               "coordinate_shift_in_su": in_su(result.uncertainties.positions).tolist(),
               "coordinate_shift_in_conditional_su": None if conditional is None else in_su(conditional.positions).tolist(),
               "events": result.events}
    print(json.dumps(summary, indent=1))
    for name, values in (("start", summary["start"]), (f"refined ({args.tilts} tilts)", summary["refined"]),
                         ("refined, evaluated with 42 tilts", summary["refined_at_42_tilts"])):
        print(f"{name}: R_obs frame mean {100 * values['R_obs_frame_mean']:.2f} %, wR frame mean "
              f"{100 * values['wR_frame_mean']:.2f} %, R(obs) {100 * values['R_obs']:.2f} %, "
              f"wR(all) {100 * values['wR_all']:.2f} %")
    print(f"time {seconds:.0f} s; largest |x − x(enantiomer_1)| / s.u. per site: {summary['coordinate_shift_in_su']}"
          f" (conditional s.u.s: {summary['coordinate_shift_in_conditional_su']}); distance "
          f"{summary['coordinate_shift_angstrom']} Å")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_outputs(args.out, result, [data], {"benchmark": "quartz_refine", "tilts": args.tilts})
        (args.out / "quartz_refine.json").write_text(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
