"""Tilt quadrature and Bethe reduction against the full calculation on real CsPbBr₃ frames.

For frames of the CsPbBr₃ dataset (g_max 2.3, sg_max 0.02, RSg 0.66, DSg 0.0015) ``score_dataset``
with a thickness search runs once per configuration: 42 midpoint tilts with the full matrix (the
reference), 42 tilts with N_s = 384, 256, 128 strong beams, and 12 / 8 tilts (midpoint and
Gauss–Legendre) with N_s = 256. Prints R(obs), the per-frame R, the chosen thickness, the time and
Σ|ΔFc| / ΣFc against the reference (one JSON line per configuration).

    python benchmarks/tilts.py [--frames 5 30]

Not collected by pytest. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cspbbr3"
CONFIGS = [("full, 42 midpoint", dict(tilts=42, tilt_rule="midpoint", strong_beams=0)),
           ("Ns 384, 42 midpoint", dict(tilts=42, tilt_rule="midpoint", strong_beams=384)),
           ("Ns 256, 42 midpoint", dict(tilts=42, tilt_rule="midpoint", strong_beams=256)),
           ("Ns 128, 42 midpoint", dict(tilts=42, tilt_rule="midpoint", strong_beams=128)),
           ("Ns 256, 12 gauss", dict(tilts=12, tilt_rule="gauss", strong_beams=256)),
           ("Ns 256, 8 gauss", dict(tilts=8, tilt_rule="gauss", strong_beams=256)),
           ("Ns 256, 12 midpoint", dict(tilts=12, tilt_rule="midpoint", strong_beams=256))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 30])
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    from edrefine import read_crystal, read_pets
    from edrefine.score import score_dataset

    crystal = read_crystal(DATA / "cspbbr3.cif")
    data = read_pets(DATA / "CsPbBr_P67-crot-050_dyn.cif_pets", zero_sigma="drop")
    grid = np.arange(100.0, 1001.0, 50.0)
    reference = None
    for name, options in CONFIGS:
        start = time.perf_counter()
        result = score_dataset(crystal, data, g_max=2.3, sg_max=0.02, rsg=0.66, dsg=0.0015, thickness_search=True,
                               thickness_grid=grid, frames=np.asarray(args.frames), details=True, **options)
        seconds = time.perf_counter() - start
        fc = np.concatenate([f["fc"] / f["scale"] for f in result["frames"]])
        out = dict(name=name, seconds=seconds, R_obs=result["R_obs"], frame_R=[f["R_obs"] for f in result["frames"]],
                   thickness=[f["thickness"] for f in result["frames"]])
        if reference is None:
            reference = fc
        else:
            out["fc_deviation"] = float(np.sum(np.abs(fc - reference)) / np.sum(reference))
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
