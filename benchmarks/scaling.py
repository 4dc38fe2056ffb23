"""Cost of first-order refinement (Adam, L-BFGS) against Levenberg–Marquardt as parameters grow.

One simulated α-quartz dataset (wedge-shaped crystal, Poisson noise) is refined with a growing
set of parameters on the same data: the P3₂21 model with U_iso, then anisotropic U, then the
same structure described in P1 (9 independent atoms, anisotropic: a larger asymmetric unit),
then one thickness per frame, then three orientation corrections per frame. Every case starts
from the same 0.1 Å RMS coordinate perturbation and is refined by each optimiser with the same
objective. Printed per case and optimiser: parameters, steady-state time per iteration (median
over iterations after the first, so compile time is left out), compile time (first iteration
minus the median), iterations and steady-state optimisation time until 99 % of the achievable decrease of
the loss was reached (achievable: the lowest loss any optimiser reached on that case), and
the final wR(all).

The L–M baseline (``optimiser = "lm"``, :mod:`edrefine.least_squares`) builds the dense
Jacobian in forward mode, one tangent per parameter, as normal-matrix least-squares programs do;
Adam needs one reverse-mode gradient per step whatever the parameter count.

    python benchmarks/scaling.py [--quick] [--frames 40] [--out DIR]

Writes ``scaling.json`` and ``scaling.png`` into ``--out`` (default
``benchmarks/results/scaling``). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from compiled_code import release_when_crowded

ROOT = pathlib.Path(__file__).resolve().parents[1]
STRUCTURE = ("positions", "adp")


def descriptions(truth):
    """(name, crystal, groups, thickness model) of each case, smallest first."""
    from edrefine.crystal import build_crystal

    cell = truth.cell
    iso = np.asarray(truth.u_iso())
    aniso = build_crystal(cell, truth.symops, truth.labels, truth.elements, np.asarray(truth.positions()),
                          u_aniso=iso[:, None] * np.asarray(cell.isotropic_u_cif())[None, :])
    atoms = truth.expand()
    mask = np.asarray(atoms.mask)
    positions, labels, elements = [], [], []
    for s in range(len(truth.labels)):
        for m in np.flatnonzero(mask[s]):
            positions.append(np.asarray(atoms.positions[s, m]) % 1.0)
            labels.append(f"{truth.labels[s]}_{m + 1}")
            elements.append(truth.elements[s])
    u_p1 = np.array([iso[truth.labels.index(label.rsplit("_", 1)[0])] for label in labels])
    p1 = build_crystal(cell, ["x,y,z"], labels, elements, np.array(positions),
                       u_aniso=u_p1[:, None] * np.asarray(cell.isotropic_u_cif())[None, :])
    return [
        ("P3221 Uiso", truth, STRUCTURE, "constant"),
        ("P3221 Uaniso", aniso, STRUCTURE, "constant"),
        ("P1 Uaniso", p1, STRUCTURE, "constant"),
        ("P1 Uaniso + thickness/frame", p1, STRUCTURE + ("thickness",), "perframe"),
        ("P1 Uaniso + thickness, orientation/frame", p1, STRUCTURE + ("thickness", "orientation"), "perframe"),
    ]


def run_case(name, crystal, groups, model, data, calculation, budgets, args) -> list[dict]:
    import jax

    from edrefine import RefinementSettings, refine
    from edrefine.crystal import perturb
    from edrefine.least_squares import Layout

    start = perturb(crystal, jax.random.key(11), args.perturbation)
    rows = []
    for optimiser, iterations in budgets.items():
        settings = RefinementSettings(optimiser=optimiser, epochs=iterations, refine=groups, thickness_model=model,
                                      polish_steps=0, patience=0, report_every=10**6, thickness_start="dataset")
        result = refine(start, [data], calculation, settings)
        seconds = np.array([h["seconds"] for h in result.history])
        losses = np.array([h["loss"] for h in result.history])
        size = Layout.of(result.params, result.start, groups).size(result.params)
        rows.append({"case": name, "optimiser": optimiser, "parameters": size, "iterations": len(seconds),
                     "seconds_per_iteration": float(np.median(seconds[1:])) if len(seconds) > 1 else float(seconds[0]),
                     "compile_seconds": float(max(seconds[0] - np.median(seconds[1:]), 0.0)) if len(seconds) > 1 else 0.0,
                     "cumulative_seconds": np.cumsum(seconds).tolist(), "losses": losses.tolist(),
                     "start_loss": result.metrics["start"]["wR_all"] ** 2, "wR_all": result.metrics["wR_all"],
                     "stopped": [e for e in result.events if "converged" in e or "stop" in e]})
        print(f"{name:42s} {optimiser:6s} p={size:5d}  {rows[-1]['seconds_per_iteration']:8.3f} s/iter  "
              f"{len(seconds):4d} iter  wR {100 * result.metrics['wR_all']:.3f} %", flush=True)
    best = min(min(r["losses"]) for r in rows)
    for r in rows:
        target = best + 0.01 * (r["start_loss"] - best)
        reached = np.flatnonzero(np.array(r["losses"]) <= target)
        r["converged_iteration"] = int(reached[0]) + 1 if len(reached) else None
        r["seconds_to_converge"] = float(r["cumulative_seconds"][reached[0]] - r["compile_seconds"]) \
            if len(reached) else None
    return rows


def figure(rows, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for optimiser, marker in (("adam", "o"), ("lbfgs", "s"), ("lm", "^")):
        mine = sorted((r for r in rows if r["optimiser"] == optimiser), key=lambda r: r["parameters"])
        p = [r["parameters"] for r in mine]
        axes[0].loglog(p, [r["seconds_per_iteration"] for r in mine], marker=marker, label=optimiser)
        done = [(r["parameters"], r["seconds_to_converge"]) for r in mine if r["seconds_to_converge"] is not None]
        if done:
            axes[1].loglog(*zip(*done), marker=marker, label=optimiser)
    axes[0].set(xlabel="refined parameters", ylabel="time per iteration [s]", title="per iteration (steady state)")
    axes[1].set(xlabel="refined parameters", ylabel="time to 99 % of the loss decrease [s]", title="to converge")
    for ax in axes:
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 frames, fewer iterations, cases 1, 3 and 5 (6, 81 and 161 parameters; a few minutes)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames of the dataset (default 20 quick: up to 161 parameters; 230 full: up to 1001)")
    parser.add_argument("--gmax", type=float, default=1.2)
    parser.add_argument("--perturbation", type=float, default=0.1)
    parser.add_argument("--cases", default=None, help="comma-separated case numbers (1-5) to run (default: all; 1,3,5 with --quick)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "scaling")
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    from edrefine import CalculationSettings, read_crystal, simulate_dataset, synthetic_template
    from edrefine.thickness import parse_thickness_model

    frames = args.frames or (20 if args.quick else 230)
    budgets = {"adam": 60, "lbfgs": 30, "lm": 8} if args.quick else {"adam": 200, "lbfgs": 100, "lm": 25}
    truth = read_crystal(ROOT / "examples" / "quartz.cif")
    step = min(2.0, 120.0 / max(frames - 1, 1))
    span = step * (frames - 1) / 2
    template = synthetic_template(truth.cell, alpha_range=(-span, span), step=step, half_width=0.5, seed=2,
                                  rotation_axis_position=15.0)
    calculation = CalculationSettings(gmax=args.gmax, sgmax=0.01, tilts=3, tilt_rule="gauss")
    data = simulate_dataset(truth, template, parse_thickness_model("wedge:200,500,8,-10"), counts=1e5, seed=0,
                            g_max=args.gmax, sg_max=0.01, tilts=3, tilt_rule="gauss")
    cases = descriptions(truth)
    picked = args.cases or ("1,3,5" if args.quick else None)
    chosen = range(len(cases)) if picked is None else [int(c) - 1 for c in picked.split(",")]
    begin = time.perf_counter()
    rows = []
    for i in chosen:
        rows += run_case(*cases[i], data, calculation, budgets, args)
        release_when_crowded()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"frames": frames, "gmax": args.gmax, "budgets": budgets, "perturbation": args.perturbation,
            "jax_devices": [str(d) for d in jax.devices()], "seconds": time.perf_counter() - begin}
    (args.out / "scaling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    figure(rows, args.out / "scaling.png")
    print(f"\n{'case':42s} {'optimiser':9s} {'p':>5s} {'s/iter':>8s} {'compile':>8s} {'iter→99%':>9s} "
          f"{'s→99%':>8s} {'wR(all)':>8s}")
    for r in rows:
        conv = r["converged_iteration"]
        secs = r["seconds_to_converge"]
        print(f"{r['case']:42s} {r['optimiser']:9s} {r['parameters']:5d} {r['seconds_per_iteration']:8.3f} "
              f"{r['compile_seconds']:8.1f} {conv if conv else '—':>9} {f'{secs:.1f}' if secs else '—':>8s} "
              f"{100 * r['wR_all']:7.3f}%")
    print(f"written {args.out / 'scaling.json'} and scaling.png ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
