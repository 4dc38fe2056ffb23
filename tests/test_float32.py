"""Single precision (``edrefine --precision float32``): intensities and gradients within the
documented tolerance of float64 (docs/benchmarks.md). JAX's precision is fixed when it starts,
so the float32 side runs in a child process."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOAT32_INTENSITY_TOLERANCE = 2e-4
"""Largest |ΔI| (fraction of the incident beam) of complex64 against complex128 on this case."""
FLOAT32_GRADIENT_TOLERANCE = 1e-2
"""Largest relative error of the float32 gradient (the eigenvector derivative divides by gaps)."""

CHILD = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", sys.argv[1] == "64")
import jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[2])
from test_precession import LAMBDA, setup
from edrefine import measurement
m, k, candidates, u_table = setup(1.6)
tilts, weights = measurement.tilt_rule(4, np.deg2rad(0.3), "gauss")
axis = jnp.asarray([0.6, 0.8, 0.0])
stack = measurement.rotation_orientations(jnp.asarray(m), axis, jnp.asarray(tilts))
sets = measurement.orientation_beam_sets(candidates, np.asarray(stack)[None], k, 0.03)
u = u_table(sets)
probe = jnp.asarray(np.random.default_rng(0).uniform(size=(3, sets.capacity)))
def intensity(scale, strong):
    return measurement.orientation_intensities(u * scale, jnp.asarray(sets.coupling_index[0]), jnp.asarray(sets.hkl[0]),
        jnp.asarray(sets.mask[0]), stack, jnp.asarray(weights), jnp.asarray(LAMBDA), jnp.array([100.0, 300.0, 700.0]),
        None, 0, strong)
out = {}
for strong in (0, 12):
    f = jax.jit(lambda s: intensity(s, strong))
    g = jax.jit(jax.grad(lambda s: jnp.sum(probe * intensity(s, strong))))
    out[strong] = dict(i=np.asarray(f(1.0)).tolist(), g=float(g(1.0)), dtype=str(f(1.0).dtype))
print(json.dumps(out))
"""


def run(bits: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", CHILD, bits, str(ROOT / "tests")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_float32_is_within_its_documented_tolerance():
    single, double = run("32"), run("64")
    for strong in ("0", "12"):
        assert single[strong]["dtype"] == "float32" and double[strong]["dtype"] == "float64"
        i32, i64 = np.asarray(single[strong]["i"]), np.asarray(double[strong]["i"])
        error = np.abs(i32 - i64).max()
        assert error < FLOAT32_INTENSITY_TOLERANCE
        assert error > 1e-9  # really single precision
        assert single[strong]["g"] == pytest.approx(double[strong]["g"], rel=FLOAT32_GRADIENT_TOLERANCE)
