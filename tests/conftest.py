"""Test configuration: float64, strict promotion, two fake CPU devices."""

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


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of the real and synthetic datasets; skips when absent."""
    path = SHARED_DATA.resolve()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path
