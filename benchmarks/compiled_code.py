"""Keeping a long benchmark process under the kernel's limit on memory mappings.

XLA:CPU maps each loaded executable's code and data into memory and JAX's caches keep them, so
a process that runs many differently shaped refinements (a full recovery grid) passes Linux's
``vm.max_map_count`` (65,530 by default) and the next compilation crashes. Clearing the caches
after every case avoids that but makes every case recompile what the previous one had compiled
(on quartz at 21 frames, a per-frame refinement of a second thickness truth took 75 s instead of
22 s). :func:`release_when_crowded` clears them only once the mappings reach a share of the limit.
"""

from __future__ import annotations

import pathlib

MAPS = pathlib.Path("/proc/self/maps")
LIMIT = pathlib.Path("/proc/sys/vm/max_map_count")


def mapping_count() -> tuple[int, int] | None:
    """(memory mappings of this process, the kernel's limit), or None where /proc does not tell."""
    try:
        with MAPS.open("rb") as maps:
            count = sum(1 for _ in maps)
        return count, int(LIMIT.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def release_when_crowded(share: float = 0.4) -> bool:
    """Clear JAX's caches if this process holds more than ``share`` of the allowed memory
    mappings; True if it did. Where the count is unknown (no /proc) the caches are kept."""
    import jax

    counted = mapping_count()
    if counted is None or counted[0] < share * counted[1]:
        return False
    jax.clear_caches()
    return True
