"""Test configuration: float64, strict promotion, two fake CPU devices."""

import gc
import os
import pathlib
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
# The command line turns on JAX's persistent compilation cache (~/.cache/edrefine/jax) for its
# whole process, so in-process CLI tests turn it on for every later test too. A fresh folder
# per session keeps the tests off executables that other runs wrote there.
os.environ["EDREFINE_CACHE_DIR"] = tempfile.mkdtemp(prefix="edrefine-test-cache-")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_code():
    """Drop every compiled executable after each test module.

    XLA:CPU maps each loaded executable's code and data into memory, and JAX's caches keep them
    alive: the whole suite in one process came to 64,700 mappings, next to the kernel's limit of
    65,530 (vm.max_map_count), and the next compilation crashed the process. Clearing the caches
    brings the count back to a few hundred; the persistent cache still serves repeated kernels.
    """
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of the real and synthetic datasets; skips when absent."""
    path = SHARED_DATA.resolve()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path
