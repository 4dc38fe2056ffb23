"""The command line: the pattern command, its JSON output and one-line errors."""

import json
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edrefine", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_pattern_json(tmp_path):
    out = tmp_path / "p.json"
    result = run("pattern", "--structure", str(EXAMPLES / "silicon.cif"), "--zone", "1", "1", "0",
                 "--thickness", "0", "250", "--gmax", "1.2", "--sgmax", "0.02", "--json", str(out))
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert set(records[0]) == {"h", "k", "l", "g", "sg", "thickness", "intensity"}
    for t in (0.0, 250.0):
        rows = [r for r in records if r["thickness"] == t]
        assert sum(r["intensity"] for r in rows) == pytest.approx(1.0, abs=1e-9)
    direct = [r for r in records if (r["h"], r["k"], r["l"]) == (0, 0, 0)]
    assert direct[0]["intensity"] == pytest.approx(1.0) and direct[1]["intensity"] < 0.99
    assert "beams" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--zone", "0", "0", "0", "--thickness", "100"], "zone"),
        (["--zone", "1", "1", "0", "--thickness", "-5"], "thickness"),
        (["--zone", "1", "1", "0", "--thickness", "100", "--gmax", "0"], "g_max"),
        (["--zone", "1", "1", "0", "--thickness", "100", "--form-factors", "xray"], "form-factors"),
    ],
)
def test_pattern_bad_settings_give_one_line(args, message):
    result = run("pattern", "--structure", str(EXAMPLES / "silicon.cif"), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_missing_structure_file(tmp_path):
    result = run("pattern", "--structure", str(tmp_path / "none.cif"), "--zone", "1", "0", "0", "--thickness", "10")
    assert result.returncode == 2 and "none.cif" in result.stderr and "Traceback" not in result.stderr




@pytest.mark.data
def test_score_json_and_config(tmp_path, shared_data):
    config = tmp_path / "calc.toml"
    config.write_text("gmax = 1.0\nsgmax = 0.01\ntilts = 6\n[calculation]\nrsg = 0.9\n")
    out = tmp_path / "score.json"
    result = run("score", "--structure", str(shared_data / "quartz" / "enantiomer_1.cif"),
                 "--data", str(shared_data / "quartz" / "quartz.cif_pets"), "--thickness-search",
                 "--config", str(config), "--dsg", "0.0015", "--json", str(out))
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    for key in ("R_obs", "wR_all", "GoF", "R_obs_frame_mean", "wR_frame_mean", "n_obs", "n_all", "seconds"):
        assert key in payload
    assert payload["settings"]["g_max"] == 1.0 and payload["settings"]["dsg"] == 0.0015
    assert len(payload["frames"]) == 99 and 0 < payload["R_obs_frame_mean"] < 0.15


@pytest.mark.data
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--thickness"),
        (["--thickness", "300", "--gmax", "-1"], "gmax"),
        (["--thickness", "300", "--tilts", "0"], "tilts"),
        (["--thickness", "300", "--config", "CONFIG"], "unknown setting 'gmaxx'"),
    ],
)
def test_score_bad_settings(tmp_path, shared_data, extra, message):
    config = tmp_path / "bad.toml"
    config.write_text("gmaxx = 2\n")
    extra = [str(config) if e == "CONFIG" else e for e in extra]
    result = run("score", "--structure", str(shared_data / "quartz" / "enantiomer_1.cif"),
                 "--data", str(shared_data / "quartz" / "quartz.cif_pets"), *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_simulate_then_score(tmp_path):
    data = tmp_path / "sim.cif_pets"
    common = ["--gmax", "1.0", "--tilts", "6"]
    result = run("simulate", "--structure", str(EXAMPLES / "quartz.cif"), "--alpha-range", "-10", "10", "--step", "2",
                 "--half-width", "1", "--thickness", "constant:300", "--counts", "1e9", "--seed", "4",
                 "--out", str(data), *common)
    assert result.returncode == 0, result.stderr
    again = run("simulate", "--structure", str(EXAMPLES / "quartz.cif"), "--alpha-range", "-10", "10",
                "--thickness", "constant:300", "--out", str(data), *common)
    assert again.returncode == 2 and "exists" in again.stderr
    out = tmp_path / "score.json"
    scored = run("score", "--structure", str(EXAMPLES / "quartz.cif"), "--data", str(data), "--thickness", "300",
                 "--json", str(out), *common)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(out.read_text())["R_obs_frame_mean"] < 0.01


@pytest.mark.parametrize("model", ["wedge:600,200", "constant:-3", "cone:5", "bimodal:100,300,1.5"])
def test_simulate_bad_thickness_model(tmp_path, model):
    result = run("simulate", "--structure", str(EXAMPLES / "quartz.cif"), "--alpha-range", "-10", "10",
                 "--thickness", model, "--out", str(tmp_path / "x.cif_pets"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "thickness" in result.stderr and "Traceback" not in result.stderr


def test_usage_error_has_no_traceback():
    result = run("pattern", "--structure", str(EXAMPLES / "quartz.cif"), "--zone", "1", "0", "--thickness", "10")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--zone" in result.stderr
