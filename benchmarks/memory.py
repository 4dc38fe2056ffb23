"""Memory estimate against measured peak memory of one forward+gradient epoch.

For real α-quartz (and CsPbBr₃ with ``--cases quartz cspbbr3``) at a few (g_max, tilts) settings, a child
process prepares the problem, runs one forward+gradient pass over all frames and reports its
peak resident memory (``ru_maxrss``); the parent prints it next to
:func:`edrefine.problem.check_memory` (runtime + resident arrays + one frame's working set)
and their ratio. The estimate is what the refinement
checks against its memory limit before it compiles anything, so it should not be below the
measurement.

    python benchmarks/memory.py [--cases quartz cspbbr3]

Not collected by pytest. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
CASES = {
    "quartz": ("quartz/quartz_kinematical.cif", "quartz/quartz.cif_pets", 0.01,
               [(1.4, 8), (2.0, 8), (2.0, 42)]),
    "cspbbr3": ("cspbbr3/cspbbr3.cif", "cspbbr3/CsPbBr_P67-crot-050_dyn.cif_pets", 0.02, [(1.6, 2), (2.3, 2)]),
}


def child(case: str, gmax: float, tilts: int) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets
    from edrefine.learned_thickness import node_count
    from edrefine.optimise import batch_gradient, build_parameters
    from edrefine.problem import check_memory
    from edrefine.refine import build_problem

    structure, data, sgmax, _ = CASES[case]
    crystal = read_crystal(DATA / structure)
    dataset = read_pets(DATA / data, zero_sigma="drop")
    calculation = CalculationSettings(gmax=gmax, sgmax=sgmax, tilts=tilts)
    settings = RefinementSettings()
    problem = build_problem(crystal, [dataset], calculation)
    params = build_parameters(problem, settings, None)
    rows = np.arange(problem.datasets[0].frames.count)
    _, grad = batch_gradient(params, problem, [rows], settings.chunk_frames)
    jax.block_until_ready(grad)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = check_memory(problem.datasets, node_count(settings.thickness_model, settings.grid_nodes),
                            limit_gb=1e6)
    frames = problem.datasets[0].frames
    return {"case": case, "gmax": gmax, "tilts": tilts, "capacity": frames.capacity,
            "frames": int(frames.count), "measured_gb": peak / 1e9, "estimate_gb": estimate / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["quartz"], choices=sorted(CASES),
                        help="datasets (cspbbr3 takes several minutes)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], float(args.child[1]), int(args.child[2]))))
        return
    cases = args.cases
    print(f"{'case':>8} {'gmax':>5} {'tilts':>5} {'beams':>6} {'frames':>6} {'measured GB':>12} {'estimate GB':>12} "
          f"{'estimate/measured':>18}")
    for case in cases:
        for gmax, tilts in CASES[case][3]:
            out = subprocess.run([sys.executable, __file__, "--child", case, str(gmax), str(tilts)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['case']:>8} {r['gmax']:>5} {r['tilts']:>5} {r['capacity']:>6} {r['frames']:>6} "
                  f"{r['measured_gb']:>12.2f} {r['estimate_gb']:>12.2f} {r['estimate_gb'] / r['measured_gb']:>18.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
