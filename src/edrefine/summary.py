"""Figures of merit and per-frame tables of a parameter state (host side, forward only)."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from . import merit
from .crystal import Crystal
from .learned_thickness import mean_and_width
from .loss import Problem, StructuralIndex
from .objective import chunk_evaluation
from .parameters import RefinementParameters, group_labels
from .refine_settings import RefinementSettings


def frame_table(params: RefinementParameters, problem: Problem, chunk: int) -> list[dict]:
    """Per dataset, per frame (file order): figures, scale, thickness distribution, orientation, the fit."""
    rows = []
    for d, dataset in enumerate(problem.datasets):
        f = dataset.frames
        for part, frames in f.chunks(np.arange(f.count), problem.chunk_size(chunk), problem.devices):
            e = chunk_evaluation(params, d, frames, problem.crystal, problem.context, dataset.constants, problem.mesh)
            mean, width = mean_and_width(e.nodes, e.node_weights)
            delta = np.asarray(params.datasets[d].orientation)[np.asarray(frames.index)]
            for i in range(len(part)):
                m = np.asarray(frames.refl_mask[i])
                fo, fc, w = (np.asarray(a[i])[m] for a in (frames.fo, e.fc, frames.weight))
                obs = np.asarray(frames.observed[i])[m]
                row = {"dataset": dataset.name, "id": int(dataset.data.frames.id[int(frames.index[i])]),
                       "alpha": float(frames.alpha[i]), "scale": float(e.scale[i]),
                       "thickness_mean": float(mean[i]), "thickness_width": float(width[i]),
                       "thickness_nodes": np.asarray(e.nodes[i]).tolist(),
                       "thickness_weights": np.asarray(e.node_weights[i]).tolist(),
                       "d_alpha_deg": float(np.rad2deg(delta[i, 0])), "d_beta_deg": float(np.rad2deg(delta[i, 1])),
                       "d_omega_deg": float(np.rad2deg(delta[i, 2])),
                       "rows": np.asarray(frames.refl_row[i])[m], "fo": fo, "fc": fc, "weight": w, "observed": obs,
                       **merit.frame_figures(fo, fc, w, obs)}
                rows.append((d, int(frames.index[i]), row))
    return [row for _, _, row in sorted(rows, key=lambda r: r[:2])]


def figures_of_merit(table: list[dict], n_parameters: int) -> dict:
    """Jana-form and per-frame-mean figures from :func:`frame_table` rows."""
    return merit.summarise(table, n_parameters)


def count_parameters(params: RefinementParameters, crystal: Crystal, settings: RefinementSettings) -> int:
    """Refined parameters: free structural entries of the refined groups, plus every array entry of
    the other refined groups (each frame's scale counts one more)."""
    structural = StructuralIndex.of(crystal, tuple(g for g in ("positions", "adp", "occupancy") if g in settings.refine))
    others = 0
    labels = group_labels(params)
    for leaf, label in zip(jax.tree_util.tree_leaves(eqx.filter(params, eqx.is_inexact_array)),
                           jax.tree_util.tree_leaves(labels)):
        if label in settings.refine and label in ("absorption", "orientation", "thickness"):
            others += int(np.size(leaf))
    scales = sum(int(np.shape(d.orientation)[0]) for d in params.datasets)
    return structural.size + others + scales
