"""One refinement epoch (forward + gradient over all frames) with and without each speed lever.

For real α-quartz and CsPbBr₃ each configuration runs in its own child process (precision and
device count are fixed when JAX starts), one after the other, and reports: problem size,
compile time (first call), steady-state forward+gradient time (median of repeats), forward
time, the eigendecomposition share of the forward pass (``eigh`` of the same number of
matrices of the same size and dtype, timed alone), R_obs frame mean at the starting model,
and the deviation of |Fc| from the first (reference) configuration, Σ|ΔFc| / ΣFc. Ratios are
printed against the reference, which runs in the same invocation.

The levers: ``strong`` (Bethe reduction to N_s strong beams), ``segments`` (each of that many
parts of a frame's tilts with its own beam set), ``chunk`` (tilts side by side: memory, not
speed), ``float32`` (the whole process in single precision), ``single`` (only the orientation
solves in float32 / complex64 in a float64 process: ``epoch_precision = "float32"``), ``devices``
(frames split over host devices), ``model`` (the thickness model, default ``neural``). A full-matrix
CsPbBr₃ epoch takes most of an hour on 2 cores, so ``--frames K`` times K frames spread over the
dataset and scales the times to the whole dataset (printed as "per epoch (scaled)").

    python benchmarks/epoch.py                        # quartz (all 99 frames) and CsPbBr3 (4 frames)
    python benchmarks/epoch.py --cases cspbbr3 --frames 6 --json out.json

Not collected by pytest. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
CASES = {
    "quartz": dict(structure="quartz/quartz_kinematical.cif", data="quartz/quartz.cif_pets", gmax=2.0, sgmax=0.01,
                   rsg=0.9, dsg=0.0015, tilts=42, frames=0,
                   levers=[{}, {"strong": 96}, {"strong": 64}, {"chunk": 6}, {"float32": True}, {"devices": 2},
                           {"strong": 96, "devices": 2, "float32": True}, {"segments": 6}, {"single": True},
                           {"model": "neural-grid"}, {"model": "neural-grid", "single": True}]),
    "cspbbr3": dict(structure="cspbbr3/cspbbr3.cif", data="cspbbr3/CsPbBr_P67-crot-050_dyn.cif_pets", gmax=2.3,
                    sgmax=0.02, rsg=0.66, dsg=0.0015, tilts=42, frames=4,
                    levers=[{"chunk": 14}, {"strong": 384, "chunk": 14}, {"strong": 256}, {"strong": 256, "segments": 6},
                            {"strong": 384, "segments": 6}, {"strong": 384, "float32": True},
                            {"strong": 384, "devices": 2}, {"strong": 384, "devices": 2, "float32": True},
                            {"strong": 256, "single": True}]),
}


def child(spec: dict) -> dict:
    import jax

    jax.config.update("jax_enable_x64", not spec.get("float32", False))
    import dataclasses

    import jax.numpy as jnp
    import numpy as np

    from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets
    from edrefine.loss import Problem
    from edrefine.objective import frame_mesh
    from edrefine.optimise import batch_gradient, build_parameters, evaluate_loss
    from edrefine.problem import prepare_dataset, structure_context
    from edrefine.summary import frame_table

    case = CASES[spec["case"]]
    crystal = read_crystal(DATA / case["structure"])
    data = read_pets(DATA / case["data"], zero_sigma="drop")
    count = len(data.frames.id)
    k = spec["frames"] or count
    chosen = np.unique(np.linspace(0, count - 1, k).round().astype(int))
    calc = CalculationSettings(gmax=case["gmax"], sgmax=case["sgmax"], rsg=case["rsg"], dsg=case["dsg"],
                               tilts=case["tilts"], strong_beams=spec.get("strong", 0),
                               tilt_segments=spec.get("segments", 1))
    begin = time.perf_counter()
    dataset = prepare_dataset(crystal, data, calc, frames=chosen)
    dataset = dataclasses.replace(dataset, constants=dataclasses.replace(dataset.constants,
                                                                         tilt_chunk=spec.get("chunk", 0)))
    prepare = time.perf_counter() - begin
    problem = Problem(crystal, structure_context(crystal, calc), (dataset,), mesh=frame_mesh(spec.get("devices", 1)))
    if spec.get("single"):
        problem = problem.with_constants(single_precision=True)
    # chunks of 16 frames, as a refinement uses, but never padded beyond the frames timed
    settings = RefinementSettings(thickness_model=spec.get("model", "neural"), thickness_start="dataset",
                                  chunk_frames=min(16, int(dataset.frames.count)))
    params = build_parameters(problem, settings, None)
    rows = [np.arange(dataset.frames.count)]

    def timed(function, repeats):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = function()
            jax.block_until_ready(out)
            times.append(time.perf_counter() - start)
        return times

    gradient = lambda: batch_gradient(params, problem, rows, settings.chunk_frames)[1]  # noqa: E731
    forward = lambda: evaluate_loss(params, problem, rows, settings.chunk_frames)  # noqa: E731
    first = timed(gradient, 1)[0]
    steady = statistics.median(timed(gradient, spec["repeats"]))
    timed(forward, 1)
    forward_time = statistics.median(timed(forward, spec["repeats"]))
    table = frame_table(params, problem, settings.chunk_frames)
    fc = np.concatenate([row["fc"] / row["scale"] for row in table]).tolist()
    r_frame = float(np.mean([row["R_obs"] for row in table]))
    # Eigendecomposition alone: the same number of matrices of the strong size, dtype of the potential.
    f = dataset.frames
    n = f.capacity
    strong = calc.strong_beams if 0 < calc.strong_beams < n else n
    single = spec.get("float32") or spec.get("single")
    dtype = jnp.float32 if single else jnp.float64
    matrix_dtype = dtype if spec["real_matrix"] else (jnp.complex64 if single else jnp.complex128)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((strong, strong))
    if not spec["real_matrix"]:
        a = a + 1j * rng.standard_normal((strong, strong))
    a = jnp.asarray(a + a.conj().T, dtype=matrix_dtype)
    eigh = jax.jit(jnp.linalg.eigh)
    jax.block_until_ready(eigh(a))
    one = statistics.median(timed(lambda: eigh(a), 3))
    solves = f.count * f.tilt_count
    return dict(frames=int(f.count), frames_total=count, capacity=n, strong=strong, tilts=f.tilt_count,
                segments=f.segments,
                prepare_s=prepare, first_call_s=first, epoch_s=steady, forward_s=forward_time,
                eigh_share=float(one * solves / forward_time), R_obs_frame_mean=r_frame, fc=fc,
                devices=len(jax.devices()))


def label(lever: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in lever.items()) or "reference (full matrix, float64, 1 device)"


def run_case(name: str, frames: int | None, repeats: int, only: list[str] | None = None,
             timeout: float = 3600.0) -> list[dict]:
    case = CASES[name]
    real_matrix = name == "cspbbr3"  # centrosymmetric: real structure matrix
    results = []
    for lever in [lever for lever in case["levers"] if only is None or label(lever) in only]:
        spec = dict(case=name, frames=case["frames"] if frames is None else frames, repeats=repeats,
                    real_matrix=real_matrix, **lever)
        env = dict(os.environ)
        if lever.get("devices", 1) > 1:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={lever['devices']}"
        try:
            run = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"{name} {label(lever)}: no result within {timeout} s", file=sys.stderr, flush=True)
            continue
        if run.returncode != 0:
            print(f"{name} {label(lever)}: failed\n{run.stderr[-2000:]}", file=sys.stderr)
            continue
        out = json.loads(run.stdout.strip().splitlines()[-1])
        out["lever"] = label(lever)
        results.append(out)
        ref = results[0]
        fc, fc0 = out["fc"], ref["fc"]
        deviation = sum(abs(a - b) for a, b in zip(fc, fc0)) / sum(fc0) if len(fc) == len(fc0) else float("nan")
        out["fc_deviation"] = deviation
        scale = out["frames_total"] / out["frames"]
        print(f"{name:8s} {out['lever']:44s} N={out['capacity']:5d} Ns={out['strong']:5d} T={out['tilts']:3d} "
              f"epoch {out['epoch_s']:8.2f} s (per epoch scaled {out['epoch_s'] * scale:8.1f} s, ×{ref['epoch_s'] / out['epoch_s']:5.2f} "
              f"faster) fwd {out['forward_s']:7.2f} s eigh {100 * out['eigh_share']:4.0f} % compile+1st "
              f"{out['first_call_s']:6.1f} s R_frame {100 * out['R_obs_frame_mean']:6.3f} % ΔFc {100 * deviation:6.3f} %",
              flush=True)
    for out in results:
        out.pop("fc")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--frames", type=int, default=None, help="frames per case (0: all; default per case)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--only", nargs="+", default=None, help="levers to run, as printed (the first is the reference)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    results = {name: run_case(name, args.frames, args.repeats, args.only, args.timeout) for name in args.cases}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
