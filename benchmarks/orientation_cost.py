"""Cost of one Gauss–Newton orientation call against one Adam gradient pass, on real α-quartz.

Times, side by side in one process and after a first (compiling) call, over the first
``--frames`` frames at ``--tilts`` midpoint tilts (published settings otherwise): the
forward+gradient pass of an Adam epoch, a forward χ² pass, the orientation normal equations
(three forward-mode tangents) and a whole :func:`edrefine.orientation_solve.orientation_step`
(normal equations and its trust-region trials), and prints each as a multiple of the gradient
pass.

    python benchmarks/orientation_cost.py [--tilts 12] [--frames 32] [--repeats 2]

Not collected by pytest. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from quartz_refine import DATA, PUBLISHED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tilts", type=int, default=12)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not (args.tilts >= 1 and 1 <= args.frames <= 99 and args.repeats >= 1):
        parser.error("need --tilts ≥ 1, 1 ≤ --frames ≤ 99, --repeats ≥ 1")

    import jax

    jax.config.update("jax_enable_x64", True)
    from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets
    from edrefine.optimise import batch_gradient, build_parameters
    from edrefine.orientation_solve import frame_chi2, orientation_normal_equations, orientation_step
    from edrefine.refine import build_problem

    start = read_crystal(DATA / "quartz_kinematical.cif")
    data = read_pets(DATA / "quartz.cif_pets")
    calculation = CalculationSettings(tilts=args.tilts, **PUBLISHED)
    problem = build_problem(start, [data], calculation)
    settings = RefinementSettings(thickness_start="dataset")
    params = build_parameters(problem, settings, None)
    rows = np.arange(args.frames)
    chunk = settings.chunk_frames
    work = {
        "Adam gradient pass": lambda: batch_gradient(params, problem, [rows], chunk)[1],
        "forward χ²": lambda: frame_chi2(params, problem, 0, rows, chunk),
        "orientation normal equations": lambda: orientation_normal_equations(params, problem, 0, rows, chunk),
        "orientation step (σ 1°)": lambda: orientation_step(params, problem, [rows], chunk, 1.0)[0].datasets[0].orientation,
    }
    seconds = {}
    for name, run in work.items():
        jax.block_until_ready(run())
        times = []
        for _ in range(args.repeats):
            begin = time.perf_counter()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - begin)
        seconds[name] = min(times)
    reference = seconds["Adam gradient pass"]
    print(f"real quartz, {args.frames} frames, {args.tilts} tilts, steady state (best of {args.repeats}):")
    for name, value in seconds.items():
        print(f"  {name:30s} {value:7.2f} s  {value / reference:5.2f} × gradient pass")


if __name__ == "__main__":
    main()
