"""Refinement report: PNG figures and report.html from a small fake but faithful RefinementResult."""

import pathlib
import subprocess
import sys

import jax
import numpy as np

from edrefine import merit
from edrefine.cif import Uncertainties, read_crystal
from edrefine.crystal import perturb
from edrefine.outputs import metrics_payload
from edrefine.refine import RefinementResult
from edrefine.report import write_figures, write_html

QUARTZ = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quartz.cif"


def _frames(rng, name: str, count: int, first_id: int, bimodal: bool, error: float) -> list[dict]:
    rows = []
    nodes = np.linspace(200.0, 1400.0, 12)
    for i in range(count):
        alpha = -30.0 + 60.0 * i / max(count - 1, 1)
        centre = 600.0 + 4.0 * alpha
        density = np.exp(-0.5 * ((nodes - centre) / 80.0) ** 2)
        if bimodal:
            density += 0.6 * np.exp(-0.5 * ((nodes - centre - 400.0) / 60.0) ** 2)
        weights = density / density.sum()
        mean = float(weights @ nodes)
        n = 40
        fo = rng.gamma(2.0, 20.0, n)
        fc = fo * (1 + error * rng.normal(size=n))
        observed = fo > 15.0
        weight = 1 / (0.05 * fo + 1.0) ** 2
        rows.append({"dataset": name, "id": first_id + i, "alpha": alpha, "scale": 1.0 + 0.01 * i,
                     "thickness_mean": mean, "thickness_width": float(np.sqrt(weights @ (nodes - mean) ** 2)),
                     "thickness_nodes": nodes.tolist(), "thickness_weights": weights.tolist(),
                     "d_alpha_deg": 0.02 * np.sin(i), "d_beta_deg": -0.01 * i / count, "d_omega_deg": 0.005,
                     "rows": np.arange(n), "fo": fo, "fc": fc, "weight": weight, "observed": observed,
                     **merit.frame_figures(fo, fc, weight, observed)})
    return rows


def _result(datasets=("data",), history=True) -> RefinementResult:
    rng = np.random.default_rng(7)
    start = read_crystal(QUARTZ)
    refined = perturb(start, jax.random.PRNGKey(0), 0.02)
    frames, start_frames = [], []
    for d, name in enumerate(datasets):
        frames += _frames(rng, name, 9, 1 + 100 * d, bimodal=d == 1, error=0.08)
        start_frames += _frames(rng, name, 9, 1 + 100 * d, bimodal=d == 1, error=0.25)
    metrics = merit.summarise(frames, 10)
    metrics["start"] = merit.summarise(start_frames, 10)
    records = []
    if history:
        for epoch in range(1, 31):
            record = {"epoch": epoch, "loss": 5.0 * np.exp(-epoch / 8) + 0.1, "seconds": 0.2}
            record["validation_loss"] = record["loss"] * 1.1
            if epoch % 10 == 0:
                record.update(R_obs=0.2 - 0.003 * epoch, wR_all=0.25 - 0.003 * epoch, R_obs_frame_mean=0.21)
            records.append(record)
    n = len(start.labels)
    su_positions = np.full((n, 3), np.nan)
    su_positions[:, 0] = 3e-4
    su_u = np.full((n, 6), np.nan)
    su_u[:, 0] = 1.2e-3
    uncertainties = Uncertainties(np.full(6, np.nan), su_positions, su_u, np.full(n, np.nan))
    settings = {"calculation": {"thickness_grid": list(np.arange(50.0, 500.0, 25.0)), "beams": 80},
                "refinement": {"optimiser": "adam", "epochs": 30, "refine": ["positions", "adp"],
                               "learning_rates": {"positions": 1e-3}}}
    events = ["early stop at epoch 30: no improvement for 5 epochs <test>"] if history else []
    return RefinementResult(refined, start, None, uncertainties, metrics, frames, records, events, settings, 12.5,
                            tuple(datasets))


def _check(folder: pathlib.Path, result: RefinementResult, **kwargs) -> str:
    figures = write_figures(folder, result, **kwargs)
    assert figures == ["fo_fc.png", "r_per_frame.png", "thickness.png", "convergence.png", "orientation.png"]
    for name in figures:
        assert (folder / name).read_bytes().startswith(b"\x89PNG")
    path = write_html(folder, result, figures, truth=kwargs.get("truth"))
    assert path == folder / "report.html" and not (folder / "report.html.tmp").exists()
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for name in figures:
        assert f'<img src="{name}"' in text
    for metrics in (result.metrics, result.metrics["start"]):
        for key in ("R_obs", "wR_all", "R_obs_frame_mean"):
            assert f"{100 * metrics[key]:.2f} %" in text
    for label in result.crystal.labels:
        assert f"<td>{label}</td>" in text
    assert "http" not in text and "<script" not in text
    return text


def test_report_one_dataset_with_truth(tmp_path):
    result = _result()
    truth = {"coordinate RMSD before [Å]": 0.15, "coordinate RMSD after [Å]": 0.012}
    alpha = np.linspace(-30.0, 30.0, 9)
    text = _check(tmp_path, result, truth_thickness={"alpha": alpha, "mean": 600.0 + 4.0 * alpha})
    text = write_html(tmp_path, result, ["fo_fc.png"], truth=truth).read_text(encoding="utf-8")
    assert "coordinate RMSD before [Å]" in text and "0.15" in text and "0.012" in text
    assert "&lt;test&gt;" in text and "<test>" not in text
    assert "(3)</td>" in text and "(12)</td>" in text  # s.u.s of x and U_iso
    assert "refinement.optimiser" in text and "adam" in text


def test_an_undefined_gof_is_reported_as_undefined_and_null(tmp_path):
    result = _result()
    result.metrics.update(GoF=float("nan"), n_parameters=500)
    text = write_html(tmp_path, result, []).read_text(encoding="utf-8")
    assert "undefined" in text and ">nan<" not in text
    assert metrics_payload(result, {})["GoF"] is None


def test_report_empty_history(tmp_path):
    text = _check(tmp_path / "out", _result(history=False))
    assert "<p>none</p>" in text


def test_report_two_datasets(tmp_path):
    result = _result(datasets=("first", "second"))
    text = _check(tmp_path, result)
    assert "first, second" in text


def test_import_does_not_load_matplotlib():
    code = "import sys, edrefine.report; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
