"""Refine the real CsPbBr₃ data with the published settings, with and without the speed levers.

Data: ``CsPbBr_P67-crot-050_dyn.cif_pets`` (59 frames, ±1.5°), start ``cspbbr3.cif``; the
published calculation settings g_max 2.3 Å⁻¹, sg_max 0.02 Å⁻¹, RSg 0.66, DSg 0.0015 Å⁻¹, 42
midpoint tilts. Each configuration runs in its own child process, one after the other, and
reports the wall time of the whole refinement (problem, thickness search, epochs, polish, s.u.s,
final R), R_obs frame mean, R(obs), wR(all), GoF, and where the time went (from the history).
Published: R_obs 6.40 % elastic (Colmey et al. 2026); diffBloch 0.2.0 6.54 % in 20.9 min on a
data-centre GPU.

    python benchmarks/cspbbr3.py --out DIR                  # the defaults (the plain command)
    python benchmarks/cspbbr3.py [--thickness-model M] [--absorption 0.05] --out DIR
    python benchmarks/cspbbr3.py --epochs 8 --time-limit 0 --levers-off --out DIR
        # and the same refinement with every lever off (full matrix, float64 epochs, the
        # refined calculation's Jacobian for the s.u.s: hours on 2 cores), side by side

Calculation and refinement settings not given are the defaults of
:class:`edrefine.CalculationSettings` (automatic strong beams) and
:class:`edrefine.RefinementSettings` (float32 epochs, 96-beam s.u. Jacobian, 20-minute limit).
Not collected by pytest. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "cspbbr3"
PUBLISHED = dict(gmax=2.3, sgmax=0.02, rsg=0.66, dsg=0.0015)


def child(spec: dict) -> dict:
    import jax

    jax.config.update("jax_enable_x64", not spec["float32"])
    from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets, refine, write_outputs

    start = read_crystal(DATA / "cspbbr3.cif")
    data = read_pets(DATA / "CsPbBr_P67-crot-050_dyn.cif_pets")
    calculation = CalculationSettings(strong_beams=spec["strong_beams"], tilt_segments=spec["segments"],
                                      absorption=spec.get("absorption"), **PUBLISHED)
    values = {k: spec[k] for k in ("epochs", "time_limit", "polish_steps", "orientation_every", "epoch_precision",
                                   "uncertainty_beams", "thickness_model", "start_width") if spec.get(k) is not None}
    groups = RefinementSettings().refine + (("absorption",) if spec.get("absorption") is not None else ())
    settings = RefinementSettings(report_every=spec["report_every"], refine=groups, **values)
    stages = []
    begin = time.perf_counter()

    def on_stage(text):
        stages.append((text, time.perf_counter() - begin))
        print(f"[{time.perf_counter() - begin:7.0f} s] {text}", file=sys.stderr, flush=True)

    def on_epoch(state, record):
        r = f" R_obs frame mean {100 * record['R_obs_frame_mean']:.2f} %" if "R_obs_frame_mean" in record else ""
        print(f"[{time.perf_counter() - begin:7.0f} s] epoch {state.epoch}: loss {record['loss']:.5f}{r}",
              file=sys.stderr, flush=True)

    result = refine(start, [data], calculation, settings, on_epoch=on_epoch, on_stage=on_stage)
    seconds = time.perf_counter() - begin
    keys = ("R_obs_frame_mean", "wR_frame_mean", "R_obs", "wR_all", "GoF")
    shifts = {name: coordinate_shifts(result, read_crystal(DATA / name))
              for name in ("cspbbr3.cif", "cspbbr3_paper_table_s5_abs.cif")}
    summary = {"configuration": spec, "seconds": seconds, "epochs_run": len(result.history),
               "absorption": None if result.params.absorption is None else float(result.params.absorption),
               "start": {k: result.metrics["start"][k] for k in keys}, "refined": {k: result.metrics[k] for k in keys},
               "coordinate_shifts": shifts, "stages": stages, "events": result.events,
               "epoch_seconds": [h.get("seconds") for h in result.history]}
    if spec["out"]:
        out = pathlib.Path(spec["out"])
        out.mkdir(parents=True, exist_ok=True)
        write_outputs(out, result, [data], {"benchmark": "cspbbr3", **spec})
        (out / "cspbbr3.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def coordinate_shifts(result, reference) -> dict:
    """Per site of the refined model: the largest |Δx| / s.u. over x, y, z and |Δr| [Å] against
    ``reference`` (same labels; differences taken modulo lattice translations)."""
    import numpy as np

    delta = np.asarray(result.crystal.positions()) - np.asarray(reference.positions())
    delta -= np.round(delta)
    su = np.asarray(result.uncertainties.positions)
    in_su = np.where(np.isfinite(su) & (su > 0), np.abs(delta) / np.where(su > 0, su, 1), np.nan)
    metric = np.asarray(result.crystal.cell.orthogonalisation())
    return {label: {"max_shift_in_su": float(np.nanmax(in_su[i])) if np.isfinite(in_su[i]).any() else None,
                    "shift_angstrom": float(np.linalg.norm(metric @ delta[i]))}
            for i, label in enumerate(result.crystal.labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strong-beams", type=int, default=None, help="N_s of the levers-on run (default: automatic)")
    parser.add_argument("--epoch-precision", default=None, help="float32 or float64 (default: the settings' default)")
    parser.add_argument("--uncertainty-beams", type=int, default=None)
    parser.add_argument("--tilt-segments", type=int, default=1)
    parser.add_argument("--float32", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=None, help="minutes (default: the settings' default; 0: none)")
    parser.add_argument("--polish-steps", type=int, default=None)
    parser.add_argument("--orientation-every", type=int, default=None)
    parser.add_argument("--thickness-model", default=None, help="default: the refinement default")
    parser.add_argument("--start-width", type=float, default=None,
                        help="neural models' starting width per frame, a share of the thickness (default: the settings')")
    parser.add_argument("--absorption", type=float, default=None,
                        help="refine absorption κ from this start (default: elastic)")
    parser.add_argument("--report-every", type=int, default=1)
    parser.add_argument("--levers-off", action="store_true",
                        help="also run the same refinement with every lever off (full matrix, one beam set per frame, "
                             "float64)")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child)), default=float))
        return
    common = dict(epochs=args.epochs, time_limit=args.time_limit, polish_steps=args.polish_steps,
                  orientation_every=args.orientation_every, report_every=args.report_every,
                  thickness_model=args.thickness_model, start_width=args.start_width,
                  absorption=args.absorption)
    configurations = {"levers on": dict(strong_beams=args.strong_beams, segments=args.tilt_segments,
                                        float32=args.float32, epoch_precision=args.epoch_precision,
                                        uncertainty_beams=args.uncertainty_beams, **common)}
    if args.levers_off:
        configurations["levers off"] = dict(strong_beams=0, segments=1, float32=False, epoch_precision="float64",
                                            uncertainty_beams=0, **common)
    results = {}
    for name, spec in configurations.items():
        spec["out"] = str(args.out / name.replace(" ", "-")) if args.out else None
        run = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True)
        if run.returncode != 0:
            print(f"{name}: failed (exit {run.returncode})", file=sys.stderr)
            continue
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        s, f = r["start"], r["refined"]
        print(f"{name:10s} {r['seconds'] / 60:6.1f} min, {r['epochs_run']} epochs: R_obs frame mean "
              f"{100 * s['R_obs_frame_mean']:.2f} → {100 * f['R_obs_frame_mean']:.2f} %, R(obs) {100 * f['R_obs']:.2f} %, "
              f"wR(all) {100 * f['wR_all']:.2f} %, GoF {f['GoF']:.2f}")
    if len(results) == 2:
        on, off = results["levers on"], results["levers off"]
        print(f"levers on / off: time ×{off['seconds'] / on['seconds']:.2f} faster, R_obs frame mean "
              f"{100 * (on['refined']['R_obs_frame_mean'] - off['refined']['R_obs_frame_mean']):+.2f} points")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cspbbr3_summary.json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
