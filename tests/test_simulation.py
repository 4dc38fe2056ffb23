"""Thickness models and simulated datasets: round trip, simulate-then-score, noise level, seeds."""

import pathlib

import numpy as np
import pytest

from edrefine.cif import read_crystal
from edrefine.errors import InputError
from edrefine.pets import read_pets, write_pets
from edrefine.score import score_dataset
from edrefine.simulation import simulate_dataset, synthetic_template
from edrefine.thickness import Bimodal, Constant, PerFrame, Plate, Wedge, mean_thickness, parse_thickness_model

QUARTZ = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quartz.cif"
SETTINGS = dict(g_max=1.2, sg_max=0.01, tilts=6)
ALPHAS = np.array([-20.0, -10.0, 0.0, 10.0, 20.0])


@pytest.fixture(scope="module")
def crystal():
    return read_crystal(QUARTZ)


@pytest.fixture(scope="module")
def template(crystal):
    return synthetic_template(crystal.cell, alpha_range=(-20.0, 20.0), step=10.0, half_width=1.0, seed=3,
                              rotation_axis_position=20.0)


@pytest.fixture(scope="module")
def noisy(crystal, template):
    return simulate_dataset(crystal, template, Constant(300.0), counts=1e6, seed=0, **SETTINGS)


# ----------------------------------------------------------------------------- thickness models


@pytest.mark.parametrize(
    "model, mean",
    [
        (Constant(400.0), np.full(5, 400.0)),
        (PerFrame([100.0, 200.0, 300.0, 400.0, 500.0]), np.array([100.0, 200.0, 300.0, 400.0, 500.0])),
        (Plate(300.0, 10.0), 300.0 / np.cos(np.deg2rad(ALPHAS - 10.0))),
        (Wedge(200.0, 600.0), 400.0 / np.cos(np.deg2rad(ALPHAS))),
        (Wedge(200.0, 600.0, nodes=3, normal_tilt_deg=-5.0), 400.0 / np.cos(np.deg2rad(ALPHAS + 5.0))),
        (Bimodal(250.0, 700.0, 0.4, 30.0), np.full(5, 0.4 * 250.0 + 0.6 * 700.0)),
    ],
)
def test_distributions_are_normalised_with_documented_means(model, mean):
    nodes, weights = model.distribution(ALPHAS)
    assert nodes.shape == weights.shape and nodes.shape[0] == 5
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(nodes > 0) and np.all(weights >= 0)
    np.testing.assert_allclose(mean_thickness(model, ALPHAS), mean, rtol=1e-12)


def test_wedge_is_uniform_between_its_scaled_ends_and_bimodal_has_its_width():
    nodes, _ = Wedge(200.0, 600.0, nodes=4).distribution([0.0, 60.0])
    np.testing.assert_allclose(nodes[0], [250.0, 350.0, 450.0, 550.0])
    np.testing.assert_allclose(nodes[1], 2.0 * nodes[0])
    nodes, weights = Bimodal(300.0, 300.0, 0.5, 20.0).distribution([0.0])
    variance = np.sum(weights * (nodes - 300.0) ** 2)
    np.testing.assert_allclose(variance, 400.0, rtol=1e-12)


def test_parse_thickness_model(tmp_path):
    assert parse_thickness_model("constant:400") == Constant(400.0)
    assert parse_thickness_model(" Plate: 300, 10 ") == Plate(300.0, 10.0)
    assert parse_thickness_model("plate:300") == Plate(300.0, 0.0)
    assert parse_thickness_model("wedge:200,600") == Wedge(200.0, 600.0, 8)
    assert parse_thickness_model("wedge:200,600,4,15") == Wedge(200.0, 600.0, 4, 15.0)
    assert parse_thickness_model("bimodal:250,700,0.4") == Bimodal(250.0, 700.0, 0.4)
    assert parse_thickness_model("perframe:100,200") == PerFrame((100.0, 200.0))
    path = tmp_path / "t.csv"
    path.write_text("frame,thickness\n# comment\n1,150\n2, 250.5\n")
    assert parse_thickness_model(f"perframe:{path}") == PerFrame((150.0, 250.5))


@pytest.mark.parametrize(
    "text",
    ["", "constant", "constant:", "constant:-5", "constant:0", "constant:abc", "constant:1,2", "sphere:100",
     "plate:300,10,5", "wedge:600,200", "wedge:200", "wedge:200,600,2.5", "bimodal:250,700,1.5",
     "bimodal:250,700,-0.1", "bimodal:250,700", "bimodal:50,700,0.5,40", "perframe:100,-200", "perframe:nan",
     "perframe:/nonexistent/thickness.csv", "constant:inf"],
)
def test_bad_model_strings_raise_input_error(text):
    with pytest.raises(InputError) as info:
        parse_thickness_model(text)
    assert info.value.source == "thickness" or "thickness" in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_geometry_for_a_model_raises_input_error():
    with pytest.raises(InputError):
        Plate(300.0).distribution([85.0])
    with pytest.raises(InputError):
        PerFrame([100.0, 200.0]).distribution(ALPHAS)


# ----------------------------------------------------------------------------- datasets


def test_template_geometry(template):
    f = template.frames
    np.testing.assert_allclose(f.alpha, ALPHAS)
    np.testing.assert_allclose(f.omega, 20.0)
    assert len(template.reflections.hkl) == 0 and template.measurement.rotation_axis_position == 20.0
    np.testing.assert_allclose(np.max(np.abs(f.zone_axis), axis=1), 1.0)


def test_round_trip_keeps_truth_thickness_and_reflections(crystal, template, tmp_path):
    model = Wedge(200.0, 500.0, nodes=3, normal_tilt_deg=5.0)
    data = simulate_dataset(crystal, template, model, counts=1e5, seed=7, **SETTINGS)
    nodes, weights = model.distribution(template.frames.alpha)
    np.testing.assert_allclose(data.thickness_nodes, nodes)
    np.testing.assert_allclose(data.thickness_weights, weights)
    np.testing.assert_allclose(data.frames.scale, 1.0)
    write_pets(tmp_path / "sim.cif_pets", data)
    back = read_pets(tmp_path / "sim.cif_pets")
    np.testing.assert_allclose(back.thickness_nodes, nodes, rtol=1e-5)
    np.testing.assert_allclose(back.thickness_weights, weights, rtol=1e-5)
    truth = back.truth_sites
    assert truth.label == ("Si1", "O1") and truth.type_symbol == ("Si", "O")
    np.testing.assert_allclose(truth.xyz, [[0.4697, 0.0, 0.666667], [0.4135, 0.2669, 0.7858]], atol=1e-5)
    np.testing.assert_allclose(truth.u_iso, [0.006, 0.012], atol=1e-6)
    np.testing.assert_allclose(truth.occupancy, 1.0)
    np.testing.assert_array_equal(back.reflections.hkl, data.reflections.hkl)
    np.testing.assert_allclose(back.reflections.intensity, data.reflections.intensity, rtol=1e-5)
    assert any("simulated by edrefine" in c for c in back.comments)


def test_noiseless_simulation_scores_zero_and_recovers_per_frame_thickness(crystal, template):
    truth = [250.0, 350.0, 300.0, 200.0, 400.0]
    data = simulate_dataset(crystal, template, PerFrame(truth), counts=1e12, noise=False, **SETTINGS)
    assert np.all(data.reflections.intensity >= 1.0)
    np.testing.assert_allclose(data.reflections.sigma, np.sqrt(data.reflections.intensity))
    result = score_dataset(crystal, data, thickness_grid=np.arange(200.0, 401.0, 50.0), **SETTINGS)
    assert result["n_all"] == len(data.reflections.hkl) >= 20
    assert result["R_obs"] < 1e-3 and result["wR_all"] < 1e-3
    np.testing.assert_allclose([f["thickness"] for f in result["frames"]], truth)


def test_poisson_noise_gives_the_expected_r(crystal, noisy):
    refl = noisy.reflections
    assert np.all(refl.intensity >= 1.0) and np.all(refl.intensity == np.round(refl.intensity))
    np.testing.assert_allclose(refl.sigma, np.sqrt(refl.intensity))
    assert 0.5e6 < refl.intensity.max() < 1.5e6
    result = score_dataset(crystal, noisy, thickness_search=False, thickness_grid=[300.0], **SETTINGS)
    obs = refl.intensity > 3 * refl.sigma
    # |Fo| = √I has σ = 1/2 for Poisson counts, E|error| = ½√(2/π).
    expected = obs.sum() * 0.5 * np.sqrt(2 / np.pi) / np.sum(np.sqrt(refl.intensity[obs]))
    assert result["n_obs"] == obs.sum()
    assert expected / 2 < result["R_obs"] < 2 * expected
    assert result["R_obs"] < 0.02


def test_seed_controls_the_noise(crystal, template, noisy):
    again = simulate_dataset(crystal, template, Constant(300.0), counts=1e6, seed=0, **SETTINGS)
    np.testing.assert_array_equal(again.reflections.intensity, noisy.reflections.intensity)
    np.testing.assert_array_equal(again.reflections.hkl, noisy.reflections.hkl)
    other = simulate_dataset(crystal, template, Constant(300.0), counts=1e6, seed=1, **SETTINGS)
    assert other.reflections.intensity.shape != noisy.reflections.intensity.shape or np.any(
        other.reflections.intensity != noisy.reflections.intensity)


def test_bad_counts_raise_input_error(crystal, template):
    with pytest.raises(InputError):
        simulate_dataset(crystal, template, Constant(300.0), counts=0.0, **SETTINGS)
