"""How the s.u.s change when their Jacobian comes from fewer strong beams, and what that saves.

CsPbBr₃ at the published settings (g_max 2.3, sg_max 0.02, RSg 0.66, 42 tilts), K frames spread
over the dataset, the calculation with N_s strong beams. The covariance of the 27 structural
parameters (positions, anisotropic U) is taken with the calculation's own Jacobian and with
Jacobians from fewer strong beams (``RefinementSettings.uncertainty_beams``), every one with the
χ² of the calculation itself; printed: the time of each and the ratio of each parameter's s.u.
to the reference (median, largest deviation).

    python benchmarks/uncertainty_beams.py 8 256 192 128 96    # FRAMES N_S REDUCED...

Not collected by pytest. Needs ../shared/data.
"""
import pathlib
import sys
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets  # noqa: E402
from edrefine.least_squares import tangent_plan, total_chi2  # noqa: E402
from edrefine.loss import Problem, StructuralIndex  # noqa: E402
from edrefine.optimise import build_parameters  # noqa: E402
from edrefine.problem import bound_memory, prepare_dataset, structure_context  # noqa: E402
from edrefine.uncertainty import jacobian_problem, structural_covariance  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cspbbr3"


def main(frames: int, strong: int, reduced: list[int]) -> None:
    crystal = read_crystal(DATA / "cspbbr3.cif")
    data = read_pets(DATA / "CsPbBr_P67-crot-050_dyn.cif_pets", zero_sigma="drop")
    chosen = np.unique(np.linspace(0, len(data.frames.id) - 1, frames).round().astype(int))
    calc = CalculationSettings(gmax=2.3, sgmax=0.02, rsg=0.66, dsg=0.0015, strong_beams=strong)
    dataset = prepare_dataset(crystal, data, calc, frames=chosen)
    (dataset,), _ = bound_memory((dataset,), 24, None, None)
    problem = Problem(crystal, structure_context(crystal, calc), (dataset,))
    settings = RefinementSettings(thickness_start="dataset", chunk_frames=min(16, frames))
    params = build_parameters(problem, settings, None)
    index = StructuralIndex.of(crystal, ("positions", "adp"))
    chi2 = total_chi2(params, problem, settings.chunk_frames)
    print(f"CsPbBr3, frames {chosen.tolist()}, capacity {dataset.frames.capacity}, N_s {strong}, "
          f"{index.size} structural parameters, chi2 {chi2:.6g}", flush=True)
    results = {}
    for beams in [0, *reduced]:
        cheaper, block = tangent_plan(jacobian_problem(problem, beams), 24, None, index.size)
        begin = time.perf_counter()
        covariance, _ = structural_covariance(params, cheaper, index, None, settings.chunk_frames, block, chi2)
        seconds = time.perf_counter() - begin
        results[beams] = (np.sqrt(np.diag(covariance)), seconds)
        su, reference_seconds = results[0][0], results[0][1]
        ratio = results[beams][0] / su
        label = f"N_s {strong} (itself)" if beams == 0 else f"Jacobian from N_s {beams}"
        print(f"{label:28s} {seconds:7.1f} s (x{reference_seconds / seconds:4.2f})  s.u. ratio median "
              f"{np.median(ratio):.4f}, range {ratio.min():.4f}-{ratio.max():.4f}, "
              f"largest |ratio-1| {np.max(np.abs(ratio - 1)):.4f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), [int(a) for a in sys.argv[3:]])
