"""``report``: PNG figures and one self-contained ``report.html`` for a finished refinement.

:func:`write_figures` draws the fit (|Fo| against k|Fc|), R(obs) per frame, the learned thickness
distributions, the convergence history and the orientation corrections; :func:`write_html`
writes the figures of merit, settings, refined sites, events and those figures into one page.
Angles are in degrees, thicknesses in Å, U in Å², R values are shown as percentages.
matplotlib is imported only when figures are drawn (Agg canvas, no pyplot state).
"""

from __future__ import annotations

import html
import json
import math
import os
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .refine import RefinementResult

DPI = 110
CAPTIONS = {
    "fo_fc.png": "Observed |Fo| against scaled model k|Fc|, all frames (filled: I > 3σ).",
    "r_per_frame.png": "R(obs) of the refined model per frame.",
    "thickness.png": "Learned thickness per frame: mean ± width, and the distribution nodes (size ∝ weight).",
    "convergence.png": "Loss per epoch (log scale) and R(obs) where it was evaluated.",
    "orientation.png": "Refined orientation corrections per frame.",
}
CSS = ("body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}"
       "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px}"
       "th{background:#eee}td.n{text-align:right;font-family:monospace}"
       "figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:90%}")


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, folder: pathlib.Path, name: str) -> str:
    try:
        fig.savefig(folder / name, dpi=DPI)
    finally:
        fig.clear()
    return name


def _datasets(frames: list[dict]) -> dict[str, list[dict]]:
    """Frames grouped by dataset (first-appearance order), each sorted by α."""
    groups: dict[str, list[dict]] = {}
    for f in frames:
        groups.setdefault(str(f["dataset"]), []).append(f)
    return {k: sorted(v, key=lambda f: f["alpha"]) for k, v in groups.items()}


def _column(frames: list[dict], key: str) -> np.ndarray:
    return np.asarray([f[key] for f in frames], dtype=float)


def _fo_fc(folder: pathlib.Path, result: RefinementResult) -> str:
    fig, ax = _figure(5.5, 5.2)
    top = 1.0
    for i, (name, frames) in enumerate(_datasets(result.frames).items()):
        fo, fc = (np.concatenate([np.asarray(f[k], dtype=float) for f in frames]) for k in ("fo", "fc"))
        obs = np.concatenate([np.asarray(f["observed"], dtype=bool) for f in frames])
        colour = f"C{i}"
        ax.scatter(fc[obs], fo[obs], s=6, color=colour, alpha=0.6, lw=0, label=f"{name}: I > 3σ")
        ax.scatter(fc[~obs], fo[~obs], s=8, facecolors="none", edgecolors=colour, alpha=0.5, lw=0.6,
                   label=f"{name}: weak")
        if fo.size:
            top = max(top, float(np.nanmax(fo)), float(np.nanmax(fc)))
    ax.plot([0, top * 1.05], [0, top * 1.05], color="k", lw=0.8, label="y = x")
    ax.set(xlim=(0, top * 1.05), ylim=(0, top * 1.05), aspect="equal",
           xlabel="k|Fc| (scaled model, arb. units)", ylabel="|Fo| (arb. units)",
           title=f"R(obs) = {100 * result.metrics['R_obs']:.2f} %  ({result.metrics['n_obs']} obs / "
                 f"{result.metrics['n_all']} all)")
    ax.legend(fontsize="small", markerscale=2)
    return _save(fig, folder, "fo_fc.png")


def _r_per_frame(folder: pathlib.Path, result: RefinementResult) -> str:
    fig, ax = _figure()
    for i, (name, frames) in enumerate(_datasets(result.frames).items()):
        ax.plot(_column(frames, "alpha"), 100 * _column(frames, "R_obs"), "o-", ms=3, lw=1, color=f"C{i}",
                label=name)
    m = result.metrics
    ax.axhline(100 * m["R_obs_frame_mean"], color="k", ls="--", lw=0.8, label="frame mean, refined")
    if "start" in m:
        ax.axhline(100 * m["start"]["R_obs_frame_mean"], color="grey", ls=":", lw=1, label="frame mean, start")
    ax.set(xlabel="frame α [deg]", ylabel="R(obs) [%]", title="R(obs) per frame (refined model)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return _save(fig, folder, "r_per_frame.png")


def _thickness(folder: pathlib.Path, result: RefinementResult, truth: dict | None) -> str:
    from matplotlib.colors import to_rgba

    fig, ax = _figure()
    for i, (name, frames) in enumerate(_datasets(result.frames).items()):
        alpha, mean, width = (_column(frames, k) for k in ("alpha", "thickness_mean", "thickness_width"))
        ax.fill_between(alpha, mean - width, mean + width, color=f"C{i}", alpha=0.15, lw=0)
        ax.plot(alpha, mean, color=f"C{i}", lw=1.2, label=f"{name}: mean ± width")
        nodes = [np.asarray(f["thickness_nodes"], dtype=float) for f in frames]
        weights = [np.asarray(f["thickness_weights"], dtype=float) for f in frames]
        x = np.concatenate([np.full(n.size, a) for n, a in zip(nodes, alpha)]) if nodes else np.zeros(0)
        t, w = (np.concatenate(v) if v else np.zeros(0) for v in (nodes, weights))
        keep = w > 1e-3 * (w.max() if w.size else 1.0)
        rel = w[keep] / w[keep].max() if keep.any() else w[keep]
        colours = np.tile(to_rgba(f"C{i}"), (rel.size, 1))
        colours[:, 3] = 0.15 + 0.85 * rel
        ax.scatter(x[keep], t[keep], s=3 + 40 * rel, c=colours, lw=0)
    if truth is not None:
        order = np.argsort(np.asarray(truth["alpha"], dtype=float))
        ax.plot(np.asarray(truth["alpha"], dtype=float)[order], np.asarray(truth["mean"], dtype=float)[order],
                "k--", lw=1, label="true mean")
    ax.set(xlabel="frame α [deg]", ylabel="thickness [Å]", title="Learned thickness distribution per frame")
    ax.legend(fontsize="small")
    return _save(fig, folder, "thickness.png")


def _convergence(folder: pathlib.Path, result: RefinementResult) -> str:
    fig, ax = _figure()
    history = result.history
    if not history:
        ax.text(0.5, 0.5, "no optimiser epochs recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel="epoch", ylabel="loss")
        return _save(fig, folder, "convergence.png")
    epoch, loss = _column(history, "epoch"), _column(history, "loss")
    ax.plot(epoch, loss, color="C0", lw=1.2, label="training loss")
    validated = [h for h in history if "validation_loss" in h]
    if validated:
        ax.plot(_column(validated, "epoch"), _column(validated, "validation_loss"), color="C1", lw=1.2,
                label="validation loss")
    values = np.concatenate([loss, _column(validated, "validation_loss")]) if validated else loss
    if np.all(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss")
    lines, labels = ax.get_legend_handles_labels()
    scored = [h for h in history if "R_obs" in h]
    if scored:
        right = ax.twinx()
        right.plot(_column(scored, "epoch"), 100 * _column(scored, "R_obs"), "s-", color="C2", ms=4, lw=1,
                   label="R(obs)")
        right.set_ylabel("R(obs) [%]")
        more = right.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    ax.legend(lines, labels, fontsize="small")
    ax.set_title(f"Convergence ({len(history)} epochs, {sum(h['seconds'] for h in history):.1f} s)")
    return _save(fig, folder, "convergence.png")


def _orientation(folder: pathlib.Path, result: RefinementResult) -> str:
    fig, ax = _figure()
    styles = ("-", "--", ":", "-.")
    for i, (name, frames) in enumerate(_datasets(result.frames).items()):
        alpha = _column(frames, "alpha")
        for j, (key, symbol) in enumerate((("d_alpha_deg", "Δα"), ("d_beta_deg", "Δβ"), ("d_omega_deg", "Δω"))):
            ax.plot(alpha, _column(frames, key), styles[i % 4], marker=".", ms=4, lw=1, color=f"C{j}",
                    label=f"{name}: {symbol}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="frame α [deg]", ylabel="orientation correction [deg]", title="Orientation corrections per frame")
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, folder, "orientation.png")


def write_figures(folder: pathlib.Path, result: RefinementResult, truth_thickness: dict | None = None) -> list[str]:
    """Write the PNG figures into ``folder``; return their file names (relative) in display order.

    Args:
        truth_thickness: optional ``{"alpha": [frame] deg, "mean": [frame] Å}`` drawn over the thickness.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [_fo_fc(folder, result), _r_per_frame(folder, result), _thickness(folder, result, truth_thickness),
            _convergence(folder, result), _orientation(folder, result)]


def _su(value: float, su: float) -> str:
    """``value(su)`` in crystallographic notation (two s.u. digits when the first is 1); 4 decimals if no s.u."""
    if not np.isfinite(su) or su <= 0:
        return f"{value:.4f}"
    exponent = int(np.floor(np.log10(su)))
    places = min(max(0, -exponent + (1 if su / 10.0**exponent < 2 else 0)), 10)
    return f"{value:.{places}f}({round(su * 10**places):d})"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{_text(value[0])}, {_text(value[1])}, …, {_text(value[-1])}] ({len(value)} values)"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if j else ""}>{html.escape(_text(c))}</td>'
                                    for j, c in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


def _summary(result: RefinementResult, truth: dict | None) -> str:
    m, s = result.metrics, result.metrics.get("start", {})

    def pair(key: str, percent: bool) -> list[str]:
        return ["–" if key not in d else f"{100 * d[key]:.2f} %" if percent else
                "undefined" if isinstance(d[key], float) and not math.isfinite(d[key]) else _text(d[key]) for d in (s, m)]

    rows = [[label, *pair(key, percent)] for label, key, percent in (
        ("R(obs)", "R_obs", True), ("wR(all)", "wR_all", True), ("GoF", "GoF", False),
        ("R(obs), frame mean", "R_obs_frame_mean", True), ("wR, frame mean", "wR_frame_mean", True),
        ("reflections observed (I > 3σ)", "n_obs", False), ("reflections, all", "n_all", False),
        ("refined parameters (every network weight counts)", "n_parameters", False))]
    names = [str(n) for n in getattr(result, "datasets", ())] or list(_datasets(result.frames))
    rows += [["wall time [s]", "", f"{result.seconds:.1f}"], ["datasets", "", ", ".join(names)],
             ["frames", "", len(result.frames)], ["optimiser epochs", "", len(result.history)]]
    rows += [[str(k), "", v] for k, v in (truth or {}).items()]
    settings = [[f"{section}.{key}", value] for section, table in result.settings.items() for key, value in
                (table.items() if isinstance(table, dict) else [("", table)])]
    return (_table(["", "start", "refined"], rows) + "<h2>Settings</h2>\n" + _table(["setting", "value"], settings))


def _sites(result: RefinementResult) -> str:
    crystal, su = result.crystal, result.uncertainties
    x, x0 = np.asarray(crystal.positions(), dtype=float), np.asarray(result.start.positions(), dtype=float)
    u, su_x, su_u = np.asarray(crystal.u_iso(), dtype=float), np.asarray(su.positions), np.asarray(su.u)
    step = x - x0 - np.round(x - x0)
    shift = np.linalg.norm(step @ np.asarray(crystal.cell.orthogonalisation(), dtype=float).T, axis=1)
    rows = [[label, element, *(_su(x[i, k], su_x[i, k]) for k in range(3)), _su(u[i], su_u[i, 0]),
             f"{shift[i]:.4f}"] for i, (label, element) in enumerate(zip(crystal.labels, crystal.elements))]
    return _table(["site", "element", "x", "y", "z", "U_iso / U_eq [Å²]", "shift from start [Å]"], rows)


def write_html(folder: pathlib.Path, result: RefinementResult, figures: list[str],
               truth: dict | None = None, provenance: dict[str, str] | None = None) -> pathlib.Path:
    """Write ``folder/report.html`` (atomically) and return its path.

    The page holds the figures of merit (start and refined, R as %), wall time, settings, the refined
    sites (fractional coordinates, U [Å²] with s.u.s, shift [Å]), the events and every figure, linked by
    its relative name. ``truth``: optional extra summary rows, e.g. ``{"coordinate RMSD before [Å]": 0.15}``.
    ``provenance``: name → text rows (version, seed, input checksums) shown under "Provenance".
    """
    folder = pathlib.Path(folder)
    events = "".join(f"<li>{html.escape(str(e))}</li>\n" for e in result.events)
    images = "".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}">'
                     f"<figcaption>{html.escape(CAPTIONS.get(name, name))}</figcaption></figure>\n" for name in figures)
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>edrefine refinement report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>edrefine refinement report</h1>\n<h2>Summary</h2>\n{_summary(result, truth)}"
            f"<h2>Refined sites</h2>\n{_sites(result)}"
            f"<h2>Events</h2>\n" + (f"<ul>\n{events}</ul>\n" if events else "<p>none</p>\n")
            + f"<h2>Figures</h2>\n{images}"
            + (f"<h2>Provenance</h2>\n{_table(['', 'value'], [[k, v] for k, v in provenance.items() if k != 'settings'])}"
               if provenance else "")
            + "</body>\n</html>\n")
    path, tmp = folder / "report.html", folder / "report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
