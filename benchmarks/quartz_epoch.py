"""Reference workload: one epoch over the real α-quartz data at the published settings.

Real α-quartz (Klar et al. 2023), 99 frames, g_max 2.0 Å⁻¹, sg_max 0.01 Å⁻¹, ±1.0° frames
sampled by 42 midpoint tilts, RSg 0.9, DSg 0.0015 Å⁻¹, the default thickness model. Prints the time
of one forward pass and one forward+gradient pass over all frames (steady state: after one
warm-up call), in a child process with 1 and with 2 threads, and their ratio. With ``--refine
DIR`` it then refines the structure at these settings (``quartz_refine.py --tilts 42``: the
default recipe from the kinematical start, about 20 minutes on 2 cores; outputs in DIR) and prints
the R values of the refined model.

    python benchmarks/quartz_epoch.py [--tilts 42] [--threads 1 2] [--json FILE] [--refine DIR]

Not collected by pytest. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
DATA = ROOT / ".." / "shared" / "data" / "quartz"


def measure(tilts: int, repeats: int) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets
    from edrefine.objective import chunk_evaluation
    from edrefine.optimise import batch_gradient, build_parameters
    from edrefine.refine import build_problem

    crystal = read_crystal(DATA / "quartz_kinematical.cif")
    data = read_pets(DATA / "quartz.cif_pets")
    calculation = CalculationSettings(gmax=2.0, sgmax=0.01, tilts=tilts, rsg=0.9, dsg=0.0015)
    settings = RefinementSettings()
    begin = time.perf_counter()
    problem = build_problem(crystal, [data], calculation)
    params = build_parameters(problem, settings, None)
    prepare = time.perf_counter() - begin
    dataset = problem.datasets[0]
    rows = np.arange(dataset.frames.count)
    chunk = settings.chunk_frames

    def forward():
        for start in range(0, len(rows), chunk):
            frames = dataset.frames.take(rows[start:start + chunk], chunk)
            e = chunk_evaluation(params, 0, frames, problem.crystal, problem.context, dataset.constants)
            jax.block_until_ready(e.chi2)

    def gradient():
        _, g = batch_gradient(params, problem, [rows], chunk)
        jax.block_until_ready(g)

    timings = {}
    for name, fn in (("forward", forward), ("forward_gradient", gradient)):
        fn()
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        timings[name] = min(samples)
    beams = dataset.frames.beam_counts()
    return {"frames": int(dataset.frames.count), "beams_mean": float(beams.mean()), "beams_max": int(beams.max()),
            "capacity": dataset.frames.capacity, "tilts": tilts, "prepare_seconds": prepare,
            **timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tilts", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the timings here")
    parser.add_argument("--refine", type=pathlib.Path, default=None, metavar="DIR",
                        help="then refine at these settings (quartz_refine.py, outputs in DIR) and print the R values")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.tilts, args.repeats)))
        return
    results = {}
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   XLA_FLAGS=f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                             f"intra_op_parallelism_threads={threads}")
        child = subprocess.run([sys.executable, __file__, "--child", "--tilts", str(args.tilts), "--repeats",
                                str(args.repeats)], env=env, capture_output=True, text=True, check=True)
        results[threads] = json.loads(child.stdout.strip().splitlines()[-1])
        r = results[threads]
        print(f"threads={threads} frames={r['frames']} beams mean {r['beams_mean']:.0f} max {r['beams_max']} "
              f"(capacity {r['capacity']}) tilts={r['tilts']}: forward {r['forward']:.2f} s, "
              f"forward+gradient {r['forward_gradient']:.2f} s, "
              f"gradient/forward {r['forward_gradient'] / r['forward']:.2f}")
    if len(results) > 1:
        one, two = results[min(results)], results[max(results)]
        print(f"quartz_epoch forward_gradient threads {min(results)}/{max(results)} "
              f"ratio={one['forward_gradient'] / two['forward_gradient']:.2f}")
    record = {str(k): v for k, v in results.items()}
    if args.refine is not None:
        subprocess.run([sys.executable, "-u", str(HERE / "quartz_refine.py"), "--tilts", str(args.tilts),
                        "--out", str(args.refine)], check=True)
        refined = json.loads((args.refine / "quartz_refine.json").read_text())
        record["refinement"] = {"out": str(args.refine), "seconds": refined["seconds"],
                                "epochs_run": refined["epochs_run"], "thickness_model": refined["thickness_model"],
                                **{k: refined["refined"][k] for k in ("R_obs_frame_mean", "wR_frame_mean", "R_obs",
                                                                      "wR_all", "GoF")}}
        r = record["refinement"]
        print(f"quartz_epoch refined ({r['thickness_model']}, {r['epochs_run']} epochs, {r['seconds']:.0f} s): "
              f"R_obs frame mean {100 * r['R_obs_frame_mean']:.2f} %, wR frame mean {100 * r['wR_frame_mean']:.2f} %, "
              f"R(obs) {100 * r['R_obs']:.2f} %, wR(all) {100 * r['wR_all']:.2f} %, GoF {r['GoF']:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
