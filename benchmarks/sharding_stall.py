"""Reproduction of the stall of frames sharded over two host CPU devices (docs/benchmarks.md).

Prepares FRAMES frames of real α-quartz at TILTS tilts and GMAX, splits them over two host
devices (``objective.frame_mesh(2)``) and runs one forward+gradient pass. At g_max 1.0 it prints
the result; at g_max ≥ 1.4 it did not return on the 2-core machine (every XLA worker idle).
After ``--timeout`` seconds Python's faulthandler prints where it waits and exits.

    python benchmarks/sharding_stall.py 2 2 1.4            # FRAMES TILTS GMAX

Starts itself with ``--xla_force_host_platform_device_count=2``. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import pathlib
import sys
import time

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "quartz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("frames", type=int)
    parser.add_argument("tilts", type=int)
    parser.add_argument("gmax", type=float)
    parser.add_argument("--timeout", type=float, default=100.0)
    args = parser.parse_args()
    flag = "--xla_force_host_platform_device_count=2"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
        os.execv(sys.executable, [sys.executable, *sys.argv])
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets
    from edrefine.loss import Problem
    from edrefine.objective import frame_mesh
    from edrefine.optimise import batch_gradient, build_parameters
    from edrefine.problem import prepare_dataset, structure_context

    crystal = read_crystal(DATA / "quartz_kinematical.cif")
    data = read_pets(DATA / "quartz.cif_pets", zero_sigma="drop")
    calc = CalculationSettings(gmax=args.gmax, sgmax=0.01, tilts=args.tilts)
    dataset = prepare_dataset(crystal, data, calc, frames=np.arange(args.frames))
    problem = Problem(crystal, structure_context(crystal, calc), (dataset,), mesh=frame_mesh(2))
    params = build_parameters(problem, RefinementSettings(thickness_model="constant", thickness_start="dataset"), None)
    start = time.perf_counter()
    value, _ = batch_gradient(params, problem, [np.arange(dataset.frames.count)], 16)
    print(f"returned: chi2 {value:.6g} in {time.perf_counter() - start:.1f} s "
          f"(capacity {dataset.frames.capacity} beams)")


if __name__ == "__main__":
    main()
