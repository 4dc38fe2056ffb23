"""Recovery of known structures from simulated data (the protocol of Malik et al. 2026).

For each thickness truth (constant, plate, wedge, bimodal) a dataset is simulated on a
continuous-rotation geometry with Poisson noise; the structure is displaced by each of
``--perturbations`` Å RMS within its site-symmetry subspaces and every U reset to 0.01 Å²
(isotropic); it is refined with each thickness model. Printed per case: coordinate RMSD,
largest relative U_iso error, mean relative error of the per-frame mean thickness, wR(all),
wR(all) of the true model against the same noisy data (the noise floor), time. With
``--out DIR`` the rows (with every frame's learned and true thickness distribution) go to
``DIR/recovery.json`` and the learned-against-true thickness plots to
``DIR/recovery_thickness.png``.

    python benchmarks/recovery.py --structure quartz [--truths constant,plate,wedge,bimodal] \
        [--models constant,perframe,plate,neural,neural-grid] [--perturbations 0.08,0.16,0.3] [--epochs 150] \
        [--frames 41] [--out DIR]
    python benchmarks/recovery.py --quick --out DIR    # bimodal; perframe, neural-grid; 0.16 Å
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
from compiled_code import release_when_crowded
from quartz_refine import add_recipe_flags, settings_from

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
TRUTHS = {"constant": "constant:350", "plate": "plate:300,15", "wedge": "wedge:200,500,8,-10", "bimodal": "bimodal:250,600,0.5,20"}


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


def case(truth, truth_name: str, model: str, perturbation: float, args) -> dict:
    import jax

    from edrefine import CalculationSettings, refine
    from edrefine.crystal import coordinate_rmsd, perturb
    from edrefine.thickness import mean_thickness

    calculation = CalculationSettings(gmax=args.gmax, sgmax=0.01, tilts=5, tilt_rule="gauss")
    data, thickness, floor = simulated(truth, truth_name, args.gmax, args.step, args.frames)
    start = perturb(truth, jax.random.key(1), perturbation)
    begin = time.perf_counter()
    result = refine(start, [data], calculation, args.settings(thickness_model=model))
    ids = np.array([f["id"] for f in result.frames]) - 1
    true_mean = mean_thickness(thickness, data.frames.alpha)[ids]
    learned = np.array([f["thickness_mean"] for f in result.frames])
    u_true = np.asarray(truth.u_iso())
    true_nodes, true_weights = thickness.distribution(data.frames.alpha)
    return {"truth": truth_name, "model": model, "perturbation": perturbation,
            "rmsd_start": float(coordinate_rmsd(start, truth)), "rmsd": float(coordinate_rmsd(result.crystal, truth)),
            "u_error": float(np.max(np.abs(np.asarray(result.crystal.u_iso()) / u_true - 1))),
            "thickness_error": float(np.mean(np.abs(learned / true_mean - 1))), "wR_all": result.metrics["wR_all"],
            "wR_truth": floor, "seconds": time.perf_counter() - begin,
            "frames": {"alpha": np.asarray(data.frames.alpha)[ids].tolist(), "learned_mean": learned.tolist(),
                       "true_mean": true_mean.tolist(),
                       "learned_nodes": [f["thickness_nodes"] for f in result.frames],
                       "learned_weights": [f["thickness_weights"] for f in result.frames],
                       "true_nodes": np.asarray(true_nodes)[ids].tolist(),
                       "true_weights": np.asarray(true_weights)[ids].tolist()}}


_SIMULATED: dict = {}


def simulated(truth, truth_name: str, gmax: float, step: float, frames: int):
    """(data, true thickness model, noise floor) for one truth, simulated once for every model.

    The noise floor is wR(all) of the true model against the noisy data, the best wR a
    refinement can reach: the expected intensities (``noise=False``, same selection) are
    matched to the observed reflections by frame and hkl, one scale per frame profiled out as
    in the refinement."""
    key = (id(truth), truth_name, gmax, step, frames)
    if key in _SIMULATED:
        return _SIMULATED[key]
    from edrefine import simulate_dataset, synthetic_template
    from edrefine.merit import amplitudes_and_weights, frame_figures, optimal_scale, summarise
    from edrefine.thickness import parse_thickness_model

    span = step * (frames - 1) / 2
    template = synthetic_template(truth.cell, alpha_range=(-span, span), step=step, half_width=0.5, seed=1,
                                  rotation_axis_position=15.0)
    thickness = parse_thickness_model(TRUTHS[truth_name])
    simulation = dict(counts=1e5, g_max=gmax, sg_max=0.01, tilts=5, tilt_rule="gauss")
    data = simulate_dataset(truth, template, thickness, seed=0, **simulation)
    # without noise every reflection of the noisy set must be kept, also those whose expected
    # counts are below the 1-count cut (Poisson noise can lift them over it): the scale is
    # profiled out below, so a huge count rate loses nothing
    expected = simulate_dataset(truth, template, thickness, noise=False, **(simulation | {"counts": 1e15}))
    table = {(int(f), *map(int, h)): i for f, h, i in zip(expected.reflections.frame_id, expected.reflections.hkl,
                                                           expected.reflections.intensity)}
    obs = data.reflections
    ic = np.array([table[(int(f), *map(int, h))] for f, h in zip(obs.frame_id, obs.hkl)])
    fo, w = amplitudes_and_weights(obs.intensity, obs.sigma)
    fc = np.sqrt(ic)
    figures = []
    for f in np.unique(obs.frame_id):
        m = obs.frame_id == f
        k = optimal_scale(fo[m], fc[m], w[m])
        figures.append(frame_figures(fo[m], k * fc[m], w[m], obs.intensity[m] > 3 * obs.sigma[m]))
    _SIMULATED[key] = data, thickness, summarise(figures, 0)["wR_all"]
    return _SIMULATED[key]


def thickness_figure(rows: list[dict], path: pathlib.Path) -> None:
    """Learned against true thickness per frame: one panel per truth, the mean as lines and every
    node of each distribution as dots sized by its weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truths = list(dict.fromkeys(r["truth"] for r in rows))
    largest = max(r["perturbation"] for r in rows)
    fig, axes = plt.subplots(1, len(truths), figsize=(4.2 * len(truths), 3.6), squeeze=False)
    for ax, truth_name in zip(axes[0], truths):
        mine = [r for r in rows if r["truth"] == truth_name and r["perturbation"] == largest]
        f = mine[0]["frames"]
        for alpha, nodes, weights in zip(f["alpha"], f["true_nodes"], f["true_weights"]):
            ax.scatter([alpha] * len(nodes), nodes, s=60 * np.asarray(weights), c="k", alpha=0.25, lw=0)
        order = np.argsort(f["alpha"])
        ax.plot(np.asarray(f["alpha"])[order], np.asarray(f["true_mean"])[order], "k-", lw=2, label="true mean")
        for r in mine:
            g = r["frames"]
            line, = ax.plot(np.asarray(g["alpha"])[order], np.asarray(g["learned_mean"])[order], "--", label=r["model"])
            if r["model"].startswith("neural"):
                for alpha, nodes, weights in zip(g["alpha"], g["learned_nodes"], g["learned_weights"]):
                    ax.scatter([alpha] * len(nodes), nodes, s=60 * np.asarray(weights), color=line.get_color(),
                               alpha=0.35, lw=0)
        ax.set(title=f"truth: {truth_name} (start {largest} Å)", xlabel="α [deg]", ylabel="thickness [Å]")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def malik(name: str, args) -> dict:
    from edrefine import CalculationSettings, read_crystal, read_pets, refine
    from edrefine.crystal import build_crystal, coordinate_rmsd

    folder = SHARED / "malik2026_synthetic" / name
    data = read_pets(next(folder.glob("*_paper_data.cif_pets")), zero_sigma="drop")
    start = read_crystal(folder / f"{name}_02_displacement.cif")
    sites = data.truth_sites
    truth = build_crystal(start.cell, start.symops, sites.label, sites.type_symbol or start.elements, sites.xyz,
                          u_iso=sites.u_iso if sites.u_iso is not None else np.full(len(sites.label), 0.01))
    calculation = CalculationSettings(gmax=args.gmax, sgmax=0.01, tilts=args.tilts, tilt_rule="gauss")
    begin = time.perf_counter()
    result = refine(start, [data], calculation, args.settings())
    return {"dataset": name, "rmsd_start": float(coordinate_rmsd(start, truth)),
            "rmsd_refined": float(coordinate_rmsd(result.crystal, truth)), "wR_all": result.metrics["wR_all"],
            "R_obs_frame_mean": result.metrics["R_obs_frame_mean"], "seconds": time.perf_counter() - begin}


def row_line(row: dict) -> str:
    """One case on one line, every field but the per-frame arrays."""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structure", default="quartz", choices=["quartz", "cspbbr3"])
    parser.add_argument("--truths", default="constant,plate,wedge,bimodal")
    parser.add_argument("--models", default="constant,perframe,plate,neural,neural-grid")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--frames", type=int, default=41)
    parser.add_argument("--step", type=float, default=2.0)
    parser.add_argument("--gmax", type=float, default=1.6)
    parser.add_argument("--tilts", type=int, default=12)
    parser.add_argument("--perturbations", default="0.08,0.16,0.3", help="starting RMS displacements [Å]")
    parser.add_argument("--quick", action="store_true",
                        help="bimodal truth, perframe and neural-grid models, 0.16 Å, 41 frames, 150 epochs")
    parser.add_argument("--malik", choices=["quartz", "cspbbr3"], default=None)
    parser.add_argument("--learning-rate", action="append", default=[], metavar="GROUP=RATE",
                        help="Adam step of one group, repeatable (default: the refinement defaults)")
    add_recipe_flags(parser)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="folder for recovery.json and the figure")
    args = parser.parse_args()
    if args.quick:
        args.truths, args.models, args.perturbations = "bimodal", "perframe,neural-grid", "0.16"
        args.frames, args.epochs = 41, 150
    args.settings = lambda **values: settings_from(parser, args, epochs=args.epochs, u_reset=0.01, **values)
    args.settings()

    import jax

    jax.config.update("jax_enable_x64", True)
    if args.malik:
        rows = [malik(args.malik, args)]
        print(row_line(rows[0]), flush=True)
    else:
        truth = structure(args.structure)
        rows = []
        for p in (float(v) for v in args.perturbations.split(",")):
            for t in args.truths.split(","):
                for m in args.models.split(","):
                    rows.append(case(truth, t, m, p, args))
                    print(row_line(rows[-1]), flush=True)
                    release_when_crowded()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in vars(args).items() if k not in ("out", "settings")} | {
            "refinement": args.settings().as_dict()}
        (args.out / "recovery.json").write_text(json.dumps({"settings": meta, "rows": rows}, indent=1))
        if not args.malik:
            thickness_figure(rows, args.out / "recovery_thickness.png")
    if not args.malik:
        print(f"\n{'start Å':>7s} {'truth':8s} {'model':11s} {'RMSD Å':>8s} {'U err':>7s} {'t err':>7s} "
              f"{'wR(all)':>8s} {'wR(truth)':>9s} {'time s':>7s}")
        for r in rows:
            print(f"{r['perturbation']:7.2f} {r['truth']:8s} {r['model']:11s} {r['rmsd']:8.4f} "
                  f"{100 * r['u_error']:6.1f}% {100 * r['thickness_error']:6.1f}% {100 * r['wR_all']:7.3f}% "
                  f"{100 * r['wR_truth']:8.3f}% {r['seconds']:7.0f}")


if __name__ == "__main__":
    main()
