"""Tilt quadrature and Bethe reduction against the full calculation on real CsPbBr₃ frames.

For frames of the CsPbBr₃ dataset (g_max 2.3, sg_max 0.02, RSg 0.66, DSg 0.0015) ``score_dataset``
with a thickness search runs once per configuration: 42 midpoint tilts with the full matrix (the
reference), 42 tilts with N_s = 384, 256, 128 strong beams, and 12 / 8 tilts (midpoint and
Gauss–Legendre) with N_s = 256, and frames cut into segments with a beam set each (``tilt_segments``,
full matrix and Bethe). Prints R(obs), the per-frame R, the chosen thickness, the beams of the
largest set, the time and Σ|ΔFc| / ΣFc against the reference (one JSON line per configuration).

    python benchmarks/tilts.py [--frames 5 30] [--only NAME ...] [--thickness T]   # names as in CONFIGS; the reference always runs

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
           ("Ns 256, 12 midpoint", dict(tilts=12, tilt_rule="midpoint", strong_beams=256)),
           ("full, 42 midpoint, 3 segments", dict(tilts=42, tilt_rule="midpoint", strong_beams=0, tilt_segments=3)),
           ("full, 42 midpoint, 6 segments", dict(tilts=42, tilt_rule="midpoint", strong_beams=0, tilt_segments=6)),
           ("full, 42 midpoint, 14 segments", dict(tilts=42, tilt_rule="midpoint", strong_beams=0, tilt_segments=14)),
           ("Ns 384, 42 midpoint, 6 segments", dict(tilts=42, tilt_rule="midpoint", strong_beams=384, tilt_segments=6)),
           ("Ns 256, 42 midpoint, 6 segments", dict(tilts=42, tilt_rule="midpoint", strong_beams=256, tilt_segments=6)),
           ("full, 42 midpoint, 6 segments, sg_max 0.03",
            dict(tilts=42, tilt_rule="midpoint", strong_beams=0, tilt_segments=6, sg_max=0.03))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 30])
    parser.add_argument("--only", nargs="+", default=None, help="configurations to run besides the reference")
    parser.add_argument("--thickness", type=float, default=None,
                        help="one thickness [Å] for every frame instead of the search (Fc compared at equal thickness)")
    args = parser.parse_args()
    known = [name for name, _ in CONFIGS]
    if args.only and not set(args.only) <= set(known):
        parser.error(f"unknown configuration(s) {sorted(set(args.only) - set(known))}; known: {known}")
    jax.config.update("jax_enable_x64", True)
    from edrefine import read_crystal, read_pets
    from edrefine.score import score_dataset

    crystal = read_crystal(DATA / "cspbbr3.cif")
    data = read_pets(DATA / "CsPbBr_P67-crot-050_dyn.cif_pets", zero_sigma="drop")
    grid = np.arange(100.0, 1001.0, 50.0) if args.thickness is None else np.array([args.thickness])
    reference = None
    for name, options in CONFIGS:
        if reference is not None and args.only and name not in args.only:
            continue
        start = time.perf_counter()
        result = score_dataset(crystal, data, g_max=2.3, rsg=0.66, dsg=0.0015, thickness_search=args.thickness is None,
                               thickness_grid=grid, frames=np.asarray(args.frames), details=True,
                               **({"sg_max": 0.02} | options))
        seconds = time.perf_counter() - start
        fc = np.concatenate([f["fc"] / f["scale"] for f in result["frames"]])
        out = dict(name=name, seconds=seconds, R_obs=result["R_obs"], frame_R=[f["R_obs"] for f in result["frames"]],
                   thickness=[f["thickness"] for f in result["frames"]], beams=max(result["beams_per_frame"]))
        if reference is None:
            reference = fc
        else:
            out["fc_deviation"] = float(np.sum(np.abs(fc - reference)) / np.sum(reference))
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
