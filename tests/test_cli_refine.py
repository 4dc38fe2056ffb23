"""The refine command: outputs, refusal to overwrite, resume, one-line errors."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def run(*args):
    return subprocess.run([sys.executable, "-m", "edrefine", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refine")
    data = folder / "sim.cif_pets"
    result = run("simulate", "--structure", str(EXAMPLES / "quartz.cif"), "--alpha-range", "-12", "12", "--step",
                 "6", "--half-width", "0.5", "--thickness", "wedge:200,400", "--gmax", "1.2", "--tilts", "3",
                 "--counts", "1e5", "--out", str(data))
    assert result.returncode == 0, result.stderr
    return data


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--thickness-model", "banana"], "thickness_model"),
        (["--refine", "positions,spin"], "refine"),
        (["--epochs", "0"], "epochs"),
        (["--learning-rate", "positions"], "learning-rate"),
        (["--thickness-min", "900", "--thickness-max", "100"], "thickness_min"),
        (["--omega-step", "2"], "omega_step"),
        (["--nn-width", "0"], "nn_width"),
        (["--tilts", "6", "--tilt-segments", "4"], "tilt_segments"),
    ],
)
def test_bad_settings_give_one_line(dataset, tmp_path, extra, message):
    result = run("refine", "--structure", str(EXAMPLES / "quartz.cif"), "--data", str(dataset), "--out",
                 str(tmp_path / "x"), *extra)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_every_refinement_setting_is_a_flag_and_reaches_the_settings():
    import dataclasses
    import inspect

    from edrefine.cli_refine import refine
    from edrefine.refine_settings import RefinementSettings

    flags = set(inspect.signature(refine).parameters)
    renamed = {"refine": "refine_groups", "learning_rates": "learning_rate"}
    missing = [f.name for f in dataclasses.fields(RefinementSettings) if renamed.get(f.name, f.name) not in flags]
    assert missing == []
    source = inspect.getsource(refine)
    assert all(f"{f.name}={renamed.get(f.name, f.name)}" in source or f.name == "learning_rates"
               for f in dataclasses.fields(RefinementSettings))


def test_bad_config_names_the_file(dataset, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[refinement]\nepochz = 3\n")
    result = run("refine", "--structure", str(EXAMPLES / "quartz.cif"), "--data", str(dataset), "--out",
                 str(tmp_path / "y"), "--config", str(config))
    assert result.returncode == 2 and str(config) in result.stderr and "epochz" in result.stderr


def test_outputs_refusal_to_overwrite_ctrl_c_kill_and_resume(dataset, tmp_path):
    """One uninterrupted run (every output file); then the same run stopped by SIGINT after its first
    checkpoint (exit 130, checkpoint and report written), resumed and killed with SIGKILL after a
    later checkpoint, and resumed again: it ends bit-identical to the uninterrupted run."""
    import random

    common = ["refine", "--structure", str(EXAMPLES / "quartz.cif"), "--data", str(dataset), "--gmax", "1.2",
              "--tilts", "3", "--tilt-rule", "gauss", "--epochs", "200", "--polish-steps", "2",
              "--thickness-model", "neural", "--batch-frames", "3"]
    whole = tmp_path / "whole"
    result = run(*common, "--out", str(whole))
    assert result.returncode == 0, result.stderr
    for name in ("refined.cif", "reflections.csv", "frames.csv", "metrics.json", "report.html", "fo_fc.png",
                 "thickness.png", "convergence.png", "checkpoint.json"):
        assert (whole / name).is_file(), name
    metrics = json.loads((whole / "metrics.json").read_text())
    for key in ("R_obs", "wR_all", "GoF", "R_obs_frame_mean", "wR_frame_mean", "n_obs", "n_all", "seconds",
                "history", "start", "edrefine_version", "inputs", "seed"):
        assert key in metrics, key
    assert 0 < len(metrics["history"]) <= 200
    # stderr is a pipe here: the progress is plain lines, one per stage and epoch, as they happen
    log = result.stderr.splitlines()
    assert any("starting thickness search" in line for line in log), result.stderr
    assert sum("epoch " in line and "/200" in line for line in log) == len(metrics["history"])
    assert any("standard uncertainties" in line for line in log)
    header = (whole / "reflections.csv").read_text().splitlines()[0]
    assert header == "dataset,h,k,l,frame,Io,sigma,Ic,observed"
    refined = (whole / "refined.cif").read_text()
    assert "_computing_structure_refinement" in refined and f"input_sha256 {dataset}" in refined
    assert metrics["inputs"][str(dataset)] in refined and "Provenance" in (whole / "report.html").read_text()
    from edrefine.cif import read_crystal

    assert read_crystal(whole / "refined.cif").labels == read_crystal(EXAMPLES / "quartz.cif").labels
    again = run(*common, "--out", str(whole))
    assert again.returncode == 2 and "not empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1

    out = tmp_path / "stopped"
    stop_at_the_first_checkpoint(signal.SIGINT, *common, "--out", str(out))
    stopped_at = _checkpoint_epoch(out)
    deadline = time.time() + 600

    process = subprocess.Popen([sys.executable, "-m", "edrefine", *common, "--out", str(out), "--resume"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while time.time() < deadline and process.poll() is None and _checkpoint_epoch(out) < stopped_at + 10:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.5))
    process.kill()
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert _checkpoint_epoch(out) > stopped_at
    resumed = run(*common, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_outputs(out, whole)


def start_with_default_sigint(*args) -> subprocess.Popen:
    """``edrefine *args`` in a child whose SIGINT is the default even when this process ignores it
    (a shell starts background jobs, such as a CI run, with SIGINT ignored, and Python then never
    raises KeyboardInterrupt)."""
    bootstrap = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "sys.argv[0] = 'edrefine'; runpy.run_module('edrefine', run_name='__main__')")
    return subprocess.Popen([sys.executable, "-c", bootstrap, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def stop_at_the_first_checkpoint(signum: int, *args) -> None:
    """Start ``edrefine *args`` (whose last argument is the output folder), send ``signum`` once
    its first checkpoint exists, and check that it stops with 130, no traceback and its outputs."""
    out = pathlib.Path(args[-1])
    process = start_with_default_sigint(*args)
    deadline = time.time() + 600
    while not (out / "checkpoint.json").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert (out / "report.html").is_file() and (out / "refined.cif").is_file()


def test_sigterm_stops_a_run_like_ctrl_c(dataset, tmp_path):
    """SIGTERM (a batch scheduler's warning before it kills a job) writes the checkpoint and the
    outputs of the best state and exits with 130, as Ctrl-C does."""
    out = tmp_path / "terminated"
    stop_at_the_first_checkpoint(signal.SIGTERM, "refine", "--structure", str(EXAMPLES / "quartz.cif"), "--data",
                                 str(dataset), "--gmax", "1.2", "--tilts", "3", "--tilt-rule", "gauss", "--epochs",
                                 "500", "--patience", "0", "--polish-steps", "0", "--thickness-model", "perframe",
                                 "--out", str(out))
    assert 0 < _checkpoint_epoch(out) < 500


def _checkpoint_epoch(folder: pathlib.Path) -> int:
    try:
        return json.loads((folder / "checkpoint.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return -1


def _without_times(value):
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def assert_same_outputs(folder: pathlib.Path, reference: pathlib.Path) -> None:
    """Every result file bit-identical; metrics.json identical but for wall times."""
    for name in ("refined.cif", "reflections.csv", "frames.csv"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    metrics, expected = (json.loads((f / "metrics.json").read_text()) for f in (folder, reference))
    assert _without_times(metrics) == _without_times(expected)


def test_check_reports_the_segments_of_each_frame(dataset, tmp_path):
    result = run("refine", "--structure", str(EXAMPLES / "quartz.cif"), "--data", str(dataset), "--out",
                 str(tmp_path / "x"), "--gmax", "1.2", "--tilts", "6", "--tilt-segments", "3", "--check")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if f" {dataset.stem} " in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[5:8] == ["6", "3", "2"]
    assert not (tmp_path / "x").exists()
