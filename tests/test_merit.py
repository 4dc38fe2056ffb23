"""Figures of merit: weights, closed-form scale, R values; and the reflection-selection rule."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from edrefine import merit, selection


def test_weights_follow_the_published_scheme():
    fo, w = merit.amplitudes_and_weights(np.array([400.0, 0.0, -5.0]), np.array([10.0, 4.0, 4.0]))
    np.testing.assert_allclose(fo, [20.0, 0.0, 0.0])
    sigma_f = 10.0 / (2 * 20.0)
    assert w[0] == pytest.approx(1 / (sigma_f**2 + (0.01 * 20.0) ** 2))
    np.testing.assert_allclose(w[1:], 1 / 4.0)  # I ≤ 0: σ(|Fo|) = √σ(I)
    assert np.all(np.isfinite(w)) and np.all(w > 0)


def test_closed_form_scale_is_the_least_squares_optimum():
    rng = np.random.default_rng(1)
    fc = rng.uniform(0.1, 2.0, 40)
    fo = 3.7 * fc + rng.normal(scale=0.2, size=40)
    w = rng.uniform(0.5, 2.0, 40)
    chi2, k = merit.weighted_residual(fo, fc, w)
    numeric = minimize_scalar(lambda s: np.sum(w * (fo - s * fc) ** 2), bracket=(1, 5), tol=1e-12)
    assert float(k) == pytest.approx(numeric.x, rel=1e-7)
    assert float(chi2) == pytest.approx(numeric.fun, rel=1e-9)
    stacked, ks = merit.weighted_residual(fo[None], np.stack([fc, 2 * fc]), w[None])
    np.testing.assert_allclose(ks, [k, k / 2], rtol=1e-12)
    np.testing.assert_allclose(stacked, chi2, rtol=1e-10)
    assert merit.optimal_scale(fo, np.zeros(40), w) == 0.0


def test_r_values_and_summary():
    fo = np.array([10.0, 5.0, 1.0, 0.5])
    w = np.ones(4)
    obs = np.array([True, True, True, False])
    exact = merit.frame_figures(fo, fo, w, obs)
    assert exact["R_obs"] == 0 and exact["wR"] == 0 and exact["n_obs"] == 3 and exact["n_all"] == 4
    off = merit.frame_figures(fo, fo * 1.1, w, obs)
    assert off["R_obs"] == pytest.approx(0.1) and off["wR"] == pytest.approx(0.1)
    other = merit.frame_figures(fo[:2], fo[:2] * 1.3, w[:2], obs[:2])
    summary = merit.summarise([off, other], n_parameters=2)
    assert summary["R_obs_frame_mean"] == pytest.approx((0.1 + 0.3) / 2)
    expected = (0.1 * 16 + 0.3 * 15) / (16 + 15)
    assert summary["R_obs"] == pytest.approx(expected)
    assert summary["n_obs"] == 5 and summary["n_all"] == 6
    gof = np.sqrt((np.sum((0.1 * fo) ** 2) + np.sum((0.3 * fo[:2]) ** 2)) / (6 - 2))
    assert summary["GoF"] == pytest.approx(gof) and summary["n_parameters"] == 2
    assert np.isnan(merit.summarise([off, other], n_parameters=6)["GoF"])
    assert np.isnan(merit.summarise([off, other], n_parameters=7)["GoF"])


def test_swept_range_uses_the_component_perpendicular_to_the_axis():
    axis = np.array([1.0, 0.0, 0.0])
    g = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    hw = np.deg2rad(1.0)
    np.testing.assert_allclose(selection.swept_range(g, axis, hw), [0.0, hw, 0.8 * hw], atol=1e-15)
    np.testing.assert_allclose(selection.swept_range(g, axis, hw, "full"), [0.0, 2 * hw, 1.6 * hw], atol=1e-15)


@pytest.mark.parametrize(
    ("s", "ds", "keep"),
    [
        (0.000, 0.010, True),  # at Bragg, wide sweep
        (0.008, 0.010, True),  # ratio 0.8 < 0.9, margin 0.002 > 0.0015
        (0.0095, 0.010, False),  # ratio 0.95 ≥ RSg
        (-0.0095, 0.010, False),  # sign of S does not matter
        (0.0005, 0.0018, False),  # ratio 0.28 but margin 0.0013 < DSg (near the axis)
        (0.0, 0.0, False),  # on the rotation axis: never swept
    ],
)
def test_excitation_rule_cases(s, ds, keep):
    assert bool(selection.excitation_rule(np.array([s]), np.array([ds]), 0.9, 0.0015)[0]) is keep


def test_frame_selection_applies_resolution_and_rule():
    k = 1 / 0.0251
    orientation = np.eye(3) * 0.5  # g = hkl / 2 Å⁻¹
    hkl = np.array([[0, 2, 0], [2, 0, 0], [0, 6, 0], [0, 0, 0], [0, 2, 1]])
    keep, s = selection.select_frame_reflections(
        hkl, orientation, np.array([1.0, 0.0, 0.0]), np.deg2rad(1.0), k, rsg=0.9, dsg=0.0015, g_max=2.0)
    # (0 2 0): |S| = g²/2K ≈ 0.0125 > 0.9·|g|·δ = 0.0157? no: 0.0125 < 0.0157, margin 0.0050 → kept.
    # (2 0 0) on the axis, (0 6 0) beyond g_max, origin, (0 2 1) far off the Ewald sphere.
    np.testing.assert_array_equal(keep, [True, False, False, False, False])
    assert s[0] == pytest.approx(-1.0 / (2 * k))
    np.testing.assert_array_equal(selection.observed(np.array([3.1, 2.9]), np.array([1.0, 1.0])), [True, False])
