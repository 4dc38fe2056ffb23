"""Checkpoints of a running refinement, written atomically, read back for ``--resume``.

A checkpoint is two files in the output folder: ``checkpoint-<epoch>.eqx`` (every array leaf of
the parameters, the optimiser state and the best parameters, by ``equinox.tree_serialise_leaves``)
and ``checkpoint.json`` (epoch, best loss and epoch, step factor, history, events, a fingerprint
of the inputs and settings, and the name and SHA-256 of its arrays file). Each is written to a
temporary file, synced and renamed; the arrays get a new name per epoch and the JSON that points
at them is renamed last, after which the previous arrays file is removed. A kill at any moment
(``kill -9`` included) therefore leaves one complete, matching pair: the new one or the previous. Resuming rebuilds
the same pytree skeletons deterministically from the inputs and the seed and fills them in.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from .errors import InputError
from .optimise import TrainingState

META = "checkpoint.json"
ARRAYS_PATTERN = "checkpoint-*.eqx"


def fingerprint(*parts: object) -> str:
    """SHA-256 of the JSON of ``parts`` (settings, input checksums, seed)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_checksum(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _atomic_write(path: Path, write) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _skeleton(state: TrainingState):
    best = state.best_params if state.best_params is not None else state.params
    return (eqx.filter(state.params, eqx.is_inexact_array), state.opt_state, eqx.filter(best, eqx.is_inexact_array))


def save(folder: Path, state: TrainingState, stage: str, key: str) -> None:
    """Write the state of ``stage`` atomically (arrays first, then the JSON that points at them)."""
    folder = Path(folder)
    arrays = f"checkpoint-{state.epoch:06d}.eqx"
    _atomic_write(folder / arrays, lambda h: eqx.tree_serialise_leaves(h, _skeleton(state)))
    meta = {"stage": stage, "epoch": state.epoch, "best_loss": state.best_loss, "best_epoch": state.best_epoch,
            "step_factor": state.step_factor, "history": state.history, "events": state.events,
            "stopped": state.stopped, "planned_epochs": state.planned_epochs, "has_best": state.best_params is not None, "fingerprint": key,
            "arrays": arrays, "arrays_sha256": file_checksum(folder / arrays)}
    text = json.dumps(meta, indent=1, default=float).encode()
    _atomic_write(folder / META, lambda h: h.write(text))
    for old in folder.glob(ARRAYS_PATTERN):
        if old.name != arrays:
            old.unlink(missing_ok=True)


def _meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read checkpoint: {error}", source=str(folder / META)) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), str):
        raise InputError("not a checkpoint of this edrefine version", source=str(folder / META))
    return meta


def exists(folder: Path) -> bool:
    return (Path(folder) / META).is_file()


def load(folder: Path, state: TrainingState, key: str) -> tuple[TrainingState, str]:
    """Fill ``state`` (built as for a new run, optimiser initialised) from the checkpoint in ``folder``."""
    folder = Path(folder)
    meta = _meta(folder)
    if meta.get("fingerprint") != key:
        raise InputError("checkpoint was made with other inputs or settings; start a new output folder",
                         source=str(folder / META))
    skeleton = _skeleton(state)
    arrays = folder / Path(meta["arrays"]).name
    if not arrays.is_file() or file_checksum(arrays) != meta.get("arrays_sha256"):
        raise InputError("checkpoint arrays are missing or do not match checkpoint.json", source=str(arrays))
    try:
        with open(arrays, "rb") as handle:
            params, opt_state, best = eqx.tree_deserialise_leaves(handle, skeleton)
    except Exception as error:  # a foreign file with a matching checksum: tell the user which one
        raise InputError(f"cannot read checkpoint arrays ({type(error).__name__})", source=str(arrays)) from None
    _, static = eqx.partition(state.params, eqx.is_inexact_array)
    state.params = eqx.combine(params, static)
    state.opt_state = jax.tree_util.tree_map(lambda x: jnp.asarray(x) if eqx.is_array(x) else x, opt_state)
    state.best_params = eqx.combine(best, static) if meta["has_best"] else None
    state.epoch, state.best_loss, state.best_epoch = meta["epoch"], meta["best_loss"], meta["best_epoch"]
    state.step_factor, state.history, state.events = meta["step_factor"], meta["history"], meta["events"]
    state.stopped = meta.get("stopped", "")
    state.planned_epochs = meta.get("planned_epochs")
    return state, meta["stage"]
