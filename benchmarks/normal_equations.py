"""Cost of the normal equations (JᵀJ over the structural parameters) against one forward pass.

CsPbBr₃ at the published settings, K frames spread over the dataset, N_s strong beams, the
tangent plan of :func:`edrefine.least_squares.tangent_plan`; prints the forward, forward+gradient
and normal-equation times and their ratio (``TANGENT_COST`` comes from this).

    python benchmarks/normal_equations.py 4 256      # FRAMES STRONG_BEAMS

Not collected by pytest. Needs ../shared/data.
"""
import pathlib
import sys, time, numpy as np, jax
jax.config.update("jax_enable_x64", True)

from edrefine import CalculationSettings, RefinementSettings, read_crystal, read_pets
from edrefine.loss import Problem, StructuralIndex
from edrefine.problem import prepare_dataset, structure_context, bound_memory, frame_memory
from edrefine.optimise import build_parameters, batch_gradient, evaluate_loss
from edrefine.least_squares import Layout, normal_equations, tangent_plan
D = str(pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cspbbr3") + "/"
frames = int(sys.argv[1]); strong = int(sys.argv[2])
crystal = read_crystal(D + "cspbbr3.cif"); data = read_pets(D + "CsPbBr_P67-crot-050_dyn.cif_pets", zero_sigma="drop")
chosen = np.unique(np.linspace(0, len(data.frames.id) - 1, frames).round().astype(int))
calc = CalculationSettings(gmax=2.3, sgmax=0.02, rsg=0.66, dsg=0.0015, strong_beams=strong)
ds = prepare_dataset(crystal, data, calc, frames=chosen)
(ds,), peak = bound_memory((ds,), 24, None, None)
print("tilt_chunk", ds.constants.tilt_chunk, "frame_memory GB", frame_memory(ds, 24) / 1e9, "peak", peak / 1e9)
problem = Problem(crystal, structure_context(crystal, calc), (ds,))
settings = RefinementSettings(thickness_start="dataset", chunk_frames=min(16, frames))
params = build_parameters(problem, settings, None)
rows = [np.arange(ds.frames.count)]
def t(f, n=1):
    out = []
    for _ in range(n):
        s = time.perf_counter(); r = f(); jax.block_until_ready(r); out.append(time.perf_counter() - s)
    return min(out)
t(lambda: evaluate_loss(params, problem, rows, settings.chunk_frames)); fwd = t(lambda: evaluate_loss(params, problem, rows, settings.chunk_frames))
t(lambda: batch_gradient(params, problem, rows, settings.chunk_frames)[1]); grad = t(lambda: batch_gradient(params, problem, rows, settings.chunk_frames)[1])
index = StructuralIndex.of(crystal, ("positions", "adp"))
layout = Layout(index, Layout.of(params, crystal, ()).others)
tp, block = tangent_plan(problem, 24, None, index.size)
print('tangent tilt chunk', tp.datasets[0].constants.tilt_chunk)
print("params", index.size, "block", block, flush=True)
t0 = time.perf_counter(); normal_equations(params, tp, layout, settings.chunk_frames, block); first = time.perf_counter() - t0
ne = t(lambda: normal_equations(params, tp, layout, settings.chunk_frames, block)[0])
print(f"frames {frames} Ns {strong}: forward {fwd:.2f} s, fwd+grad {grad:.2f} s, normal equations {ne:.2f} s (first {first:.1f}) = {ne/fwd:.1f} forwards", flush=True)
