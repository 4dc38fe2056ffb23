"""Recovery of known structures from simulated data (the protocol of Malik et al. 2026).

For each thickness truth (plate, wedge, bimodal) a dataset is simulated on a continuous-rotation
geometry with Poisson noise; the structure is displaced by ``--perturbation`` Å RMS within its
site-symmetry subspaces and every U reset to 0.01 Å² (isotropic); it is refined with each
thickness model. Printed per case: coordinate RMSD, largest relative U_iso error, mean relative
error of the per-frame mean thickness, wR(all), time.

    python benchmarks/recovery.py --structure quartz [--truths plate,wedge,bimodal] \
        [--models neural,neural-grid,perframe] [--epochs 150] [--frames 41] [--json out.json]
    python benchmarks/recovery.py --malik quartz    # start *_02_displacement.cif vs *_paper_data

Structures: quartz (``examples/quartz.cif``), cspbbr3 (``../shared/data/cspbbr3/cspbbr3.cif``
made isotropic). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
TRUTHS = {"plate": "plate:300,15", "wedge": "wedge:200,500,8,-10", "bimodal": "bimodal:250,600,0.5,20"}


def structure(name: str):
    """The true structure: quartz as in examples/, CsPbBr₃ with U_iso = U_eq of the reference."""
    from edrefine import read_crystal
    from edrefine.crystal import build_crystal

    if name == "quartz":
        return read_crystal(ROOT / "examples" / "quartz.cif")
    crystal = read_crystal(SHARED / "cspbbr3" / "cspbbr3.cif")
    return build_crystal(crystal.cell, crystal.symops, crystal.labels, crystal.elements,
                         np.asarray(crystal.positions()), u_iso=np.asarray(crystal.u_iso()),
                         occupancy=np.asarray(crystal.params.occupancy))


def case(truth, truth_name: str, model: str, args) -> dict:
    import jax

    from edrefine import CalculationSettings, RefinementSettings, refine, simulate_dataset, synthetic_template
    from edrefine.crystal import coordinate_rmsd, perturb
    from edrefine.thickness import mean_thickness, parse_thickness_model

    calculation = CalculationSettings(gmax=args.gmax, sgmax=0.01, tilts=5, tilt_rule="gauss")
    span = args.step * (args.frames - 1) / 2
    template = synthetic_template(truth.cell, alpha_range=(-span, span), step=args.step, half_width=0.5, seed=1,
                                  rotation_axis_position=15.0)
    thickness = parse_thickness_model(TRUTHS[truth_name])
    data = simulate_dataset(truth, template, thickness, counts=1e5, seed=0, g_max=args.gmax, sg_max=0.01, tilts=5,
                            tilt_rule="gauss")
    start = perturb(truth, jax.random.key(1), args.perturbation)
    begin = time.perf_counter()
    result = refine(start, [data], calculation, RefinementSettings(epochs=args.epochs, thickness_model=model,
                                                                    u_reset=0.01))
    ids = np.array([f["id"] for f in result.frames]) - 1
    true_mean = mean_thickness(thickness, data.frames.alpha)[ids]
    learned = np.array([f["thickness_mean"] for f in result.frames])
    u_true = np.asarray(truth.u_iso())
    return {"truth": truth_name, "model": model, "rmsd": float(coordinate_rmsd(result.crystal, truth)),
            "u_error": float(np.max(np.abs(np.asarray(result.crystal.u_iso()) / u_true - 1))),
            "thickness_error": float(np.mean(np.abs(learned / true_mean - 1))), "wR_all": result.metrics["wR_all"],
            "seconds": time.perf_counter() - begin}


def malik(name: str, args) -> dict:
    from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets, refine
    from edrefine.crystal import build_crystal, coordinate_rmsd

    folder = SHARED / "malik2026_synthetic" / name
    data = read_pets(next(folder.glob("*_paper_data.cif_pets")))
    start = read_crystal(folder / f"{name}_02_displacement.cif")
    sites = data.truth_sites
    truth = build_crystal(start.cell, start.symops, sites.label, sites.type_symbol or start.elements, sites.xyz,
                          u_iso=sites.u_iso if sites.u_iso is not None else np.full(len(sites.label), 0.01))
    calculation = CalculationSettings(gmax=args.gmax, sgmax=0.01, tilts=args.tilts, tilt_rule="gauss")
    begin = time.perf_counter()
    result = refine(start, [data], calculation, RefinementSettings(epochs=args.epochs, u_reset=0.01))
    return {"dataset": name, "rmsd_start": float(coordinate_rmsd(start, truth)),
            "rmsd_refined": float(coordinate_rmsd(result.crystal, truth)), "wR_all": result.metrics["wR_all"],
            "R_obs_frame_mean": result.metrics["R_obs_frame_mean"], "seconds": time.perf_counter() - begin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structure", default="quartz", choices=["quartz", "cspbbr3"])
    parser.add_argument("--truths", default="plate,wedge,bimodal")
    parser.add_argument("--models", default="neural,neural-grid,perframe")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--frames", type=int, default=41)
    parser.add_argument("--step", type=float, default=2.0)
    parser.add_argument("--gmax", type=float, default=1.6)
    parser.add_argument("--tilts", type=int, default=12)
    parser.add_argument("--perturbation", type=float, default=0.15)
    parser.add_argument("--malik", choices=["quartz", "cspbbr3"], default=None)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    if args.malik:
        rows = [malik(args.malik, args)]
    else:
        truth = structure(args.structure)
        rows = [case(truth, t, m, args) for t in args.truths.split(",") for m in args.models.split(",")]
    for row in rows:
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
