"""Benchmark: Bloch propagator forward + gradient against one numpy eigh, per orientation.

For N = 100, 200, 400 beams: intensities at 16 thicknesses and the gradient of a scalar loss of
them with respect to the complex Hermitian structure matrix (``jax.value_and_grad``, jitted,
complex128, timed after warm-up), divided by the time of one ``numpy.linalg.eigh`` of the same
matrix. The runs are interleaved round by round and the ratio is the median over rounds of the
ratio within a round, so that the drifting load of a shared machine cancels; the times shown are
medians. Also shown: JAX's own eigh
(LAPACK zheevd through scipy's OpenBLAS) and the same gradient with first-order absorption.
Not a pytest; run with ``python benchmarks/propagator.py``. The last line printed is
``propagator_grad_over_eigh N=400 ratio=X``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from edrefine import bloch  # noqa: E402

SIZES = (100, 200, 400)
THICKNESSES = 16
REPEATS = {100: 41, 200: 31, 400: 15}


def interleaved_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, np.ndarray]:
    """Wall times [s] of each run over ``repeats`` rounds, after two warm-up rounds.

    Each round calls every run once, one after the other, so that the load of this shared
    machine drifts the same way for all of them and the ratios of one round are comparable.
    """
    for run in runs.values():
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(values) for name, values in times.items()}


def random_structure_matrix(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Hermitian matrix shaped like a Bloch structure matrix: 2 K S on the diagonal, U off it [Å⁻²]."""
    coupling = 0.02 * (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n)))
    matrix = (coupling + coupling.conj().T) / 2
    np.fill_diagonal(matrix, 2 * 40.0 * rng.uniform(-0.02, 0.02, n))
    return matrix


def gradient_function(phase: jax.Array, weights: jax.Array, absorption: jax.Array | None):
    """Jitted value_and_grad w.r.t. A' of Σ_k Σ_g w_g I_g(t_k)."""
    mask = jnp.ones(weights.shape[0], dtype=bool)

    def loss(matrix):
        amplitudes = bloch.propagate(matrix, phase, absorption=absorption)
        return jnp.sum(weights[None, :] * bloch.intensities(amplitudes, mask))

    return jax.jit(jax.value_and_grad(loss))


def time_size(n: int, phase: jax.Array, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Times [s] per round of numpy eigh, jax eigh and the gradient without and with absorption."""
    matrix = random_structure_matrix(n, rng)
    device_matrix = jnp.asarray(matrix)
    weights = jnp.asarray(rng.uniform(size=n))
    absorption = 0.1 * (device_matrix - jnp.diag(jnp.diag(device_matrix))) + 0.01 * jnp.eye(n)
    plain, absorbing = gradient_function(phase, weights, None), gradient_function(phase, weights, absorption)
    jax_eigh = jax.jit(jnp.linalg.eigh)
    runs = {
        "numpy_eigh": lambda: np.linalg.eigh(matrix),
        "jax_eigh": lambda: jax.block_until_ready(jax_eigh(device_matrix)),
        "grad": lambda: jax.block_until_ready(plain(device_matrix)),
        "grad_abs": lambda: jax.block_until_ready(absorbing(device_matrix)),
    }
    return interleaved_seconds(runs, REPEATS[n])


def main() -> None:
    rng = np.random.default_rng(0)
    phase = bloch.thickness_phase(jnp.linspace(50.0, 800.0, THICKNESSES), 39.9)
    header = ("N", "numpy eigh", "jax eigh", "fwd+grad", "fwd+grad abs", "ratio", "ratio abs")
    print("{:>5} {:>11} {:>10} {:>10} {:>13} {:>7} {:>10}   (times in ms)".format(*header))
    ratio = float("nan")
    for n in SIZES:
        t = time_size(n, phase, rng)
        ms = {name: 1e3 * float(np.median(values)) for name, values in t.items()}
        ratio = float(np.median(t["grad"] / t["numpy_eigh"]))
        ratio_abs = float(np.median(t["grad_abs"] / t["numpy_eigh"]))
        print(
            f"{n:>5} {ms['numpy_eigh']:>11.2f} {ms['jax_eigh']:>10.2f} {ms['grad']:>10.2f} "
            f"{ms['grad_abs']:>13.2f} {ratio:>7.2f} {ratio_abs:>10.2f}"
        )
    print(f"propagator_grad_over_eigh N={SIZES[-1]} ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
