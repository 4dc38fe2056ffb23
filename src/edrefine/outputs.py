"""Files a refinement writes into its output folder (every one atomically).

- ``refined.cif``: the refined structure with s.u.s (:func:`edrefine.cif.write_crystal`);
- ``reflections.csv``: dataset, h, k, l, frame, Io, σ(Io), Ic (model intensity k²|Fc|² on the
  scale of Io), observed (I > 3σ), of every reflection that entered the fit;
- ``frames.csv``: per frame scale, orientation corrections [deg], thickness mean and width [Å],
  R_obs and wR, and the thickness distribution as ``node:weight`` pairs;
- ``metrics.json``: the keys of ``edrefine score`` (R_obs, wR_all, GoF, R_obs_frame_mean,
  wR_frame_mean, n_obs, n_all, seconds), ``start`` (the same for the starting model), the
  history, events, settings, the edrefine version, input checksums and the seed;
- figures and ``report.html`` (:mod:`edrefine.report`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from .cif import write_crystal
from .errors import InputError
from .refine import RefinementResult


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot write: {error.strerror}", source=str(path)) from None
    os.replace(temporary, path)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def reflections_csv(result: RefinementResult, datasets) -> str:
    """CSV text of every fitted reflection (see the module docstring)."""
    by_name = dict(zip(result.datasets, datasets))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "h", "k", "l", "frame", "Io", "sigma", "Ic", "observed"])
    for frame in result.frames:
        refl = by_name[frame["dataset"]].reflections
        for row, fc, obs in zip(frame["rows"], frame["fc"], frame["observed"]):
            h, k, l_ = refl.hkl[row]
            writer.writerow([frame["dataset"], int(h), int(k), int(l_), frame["id"], f"{refl.intensity[row]:.6g}",
                             f"{refl.sigma[row]:.6g}", f"{fc * fc:.6g}", int(bool(obs))])
    return buffer.getvalue()


def frames_csv(result: RefinementResult) -> str:
    """CSV text of the per-frame table."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ["dataset", "id", "alpha", "scale", "d_alpha_deg", "d_beta_deg", "d_omega_deg", "thickness_mean",
               "thickness_width", "R_obs", "wR", "n_obs", "n_all"]
    writer.writerow(columns + ["thickness_distribution"])
    for frame in result.frames:
        values = [frame[c] if isinstance(frame[c], (str, int)) else f"{frame[c]:.6g}" for c in columns]
        distribution = " ".join(f"{t:.1f}:{w:.4f}" for t, w in zip(frame["thickness_nodes"], frame["thickness_weights"])
                                if w > 1e-4)
        writer.writerow(values + [distribution])
    return buffer.getvalue()


def metrics_payload(result: RefinementResult, provenance: dict) -> dict:
    """The ``metrics.json`` content."""
    keys = ("R_obs", "wR_all", "GoF", "GoF_restrained", "R_obs_frame_mean", "wR_frame_mean", "n_obs", "n_all",
            "n_parameters", "n_restraints")
    payload = {k: _finite_or_none(result.metrics[k]) for k in keys if k in result.metrics}
    payload.update(seconds=result.seconds, start=result.metrics["start"], history=result.history,
                   events=result.events, settings=result.settings, **provenance)
    payload["frames"] = [{k: v for k, v in f.items() if k not in ("rows", "fo", "fc", "weight", "observed")}
                         for f in result.frames]
    return payload


def _finite_or_none(value):
    """``value``, or None (JSON null) for a NaN or infinite float such as an undefined GoF."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def provenance_items(result: RefinementResult, provenance: dict) -> dict[str, str]:
    """Flat name → text of what made a result: version, seed, input SHA-256s, every setting (JSON)."""
    items = {"edrefine_version": str(provenance.get("edrefine_version", "")), "seed": str(provenance.get("seed", ""))}
    for path, checksum in dict(provenance.get("inputs", {})).items():
        items[f"input_sha256 {path}"] = str(checksum)
    items["settings"] = json.dumps(result.settings, sort_keys=True, default=_json_default)
    return items


def write_outputs(folder: Path, result: RefinementResult, datasets, provenance: dict,
                  truth: dict | None = None, truth_thickness: dict | None = None) -> list[Path]:
    """Write every output file into ``folder`` (which must exist); returns the paths written."""
    from . import report

    folder = Path(folder)
    written = [folder / "refined.cif", folder / "reflections.csv", folder / "frames.csv", folder / "metrics.json"]
    write_crystal(written[0], result.crystal, result.uncertainties, provenance=provenance_items(result, provenance))
    _write_text(written[1], reflections_csv(result, datasets))
    _write_text(written[2], frames_csv(result))
    _write_text(written[3], json.dumps(metrics_payload(result, provenance), indent=1, default=_json_default))
    figures = report.write_figures(folder, result, truth_thickness=truth_thickness)
    written += [folder / name for name in figures]
    written.append(report.write_html(folder, result, figures, truth, provenance_items(result, provenance)))
    return written
