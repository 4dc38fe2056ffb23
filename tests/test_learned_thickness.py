"""Refinable thickness models: bounds, normalisation, geometry, pretraining, derivatives."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from edrefine.errors import InputError
from edrefine.learned_thickness import (Bounds, FrameFeatures, PlateThickness, fit_thickness_model,
                                        START_WIDTH, make_thickness_model, mean_and_width)

ALPHA = np.linspace(-40.0, 40.0, 17)
BOUNDS = Bounds(50.0, 1500.0)
FEATURES = FrameFeatures(jnp.arange(ALPHA.size), jnp.asarray(ALPHA), jnp.array([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("kind", ["constant", "perframe", "plate", "neural", "neural-grid"])
def test_distributions_are_normalised_and_inside_the_bounds(kind):
    model = make_thickness_model(kind, ALPHA, np.full(ALPHA.size, 400.0), BOUNDS, key=jax.random.key(1))
    nodes, weights = model(FEATURES)
    assert nodes.shape == weights.shape and nodes.shape[0] == ALPHA.size
    np.testing.assert_allclose(np.sum(weights, axis=1), 1.0, rtol=1e-12)
    assert np.all(nodes >= BOUNDS.t_min) and np.all(nodes <= BOUNDS.t_max)
    mean, _ = mean_and_width(nodes, weights)
    expected = 400.0 / np.cos(np.deg2rad(ALPHA)) if kind == "plate" else 400.0
    np.testing.assert_allclose(mean, expected, rtol=0.03)


def test_the_thickness_grid_spans_the_starting_thicknesses_within_the_bounds():
    start = np.linspace(200.0, 800.0, ALPHA.size)
    grid = make_thickness_model("neural-grid", ALPHA, start, BOUNDS, key=jax.random.key(0)).grid
    np.testing.assert_allclose([grid[0], grid[-1]], [200.0 / 2.5, 1500.0])  # 800 · 2.5 clipped to the bound
    assert len(grid) == 24 and np.all(np.diff(grid) > 0)
    narrow = make_thickness_model("neural-grid", ALPHA, start, BOUNDS, key=jax.random.key(0), grid_span=1.5).grid
    np.testing.assert_allclose([narrow[0], narrow[-1]], [200.0 / 1.5, 1200.0])
    whole = make_thickness_model("neural-grid", ALPHA, start, BOUNDS, key=jax.random.key(0), grid_span=None).grid
    np.testing.assert_allclose([whole[0], whole[-1]], [BOUNDS.t_min, BOUNDS.t_max])
    with pytest.raises(InputError, match="grid_span"):
        make_thickness_model("neural-grid", ALPHA, start, BOUNDS, key=jax.random.key(0), grid_span=0.5)


def test_the_grid_slides_as_a_whole_by_up_to_one_spacing_per_frame():
    model = make_thickness_model("neural-grid", ALPHA, np.full(ALPHA.size, 400.0), BOUNDS, key=jax.random.key(0),
                                 grid_nodes=12)
    grid, h = np.asarray(model.grid), model.grid_spacing()
    np.testing.assert_allclose(h, (1000.0 - 160.0) / 11)
    nodes, weights = model(FEATURES)
    assert np.max(np.abs(np.asarray(nodes) - grid[None, :])) < 0.05 * h  # pretrained without a slide
    last = model.mlp.layers[-1]
    slid = eqx.tree_at(lambda m: (m.mlp.layers[-1].weight, m.mlp.layers[-1].bias), model,
                       (last.weight.at[-1].set(0.0), last.bias.at[-1].set(np.arctanh(0.5))))
    slid_nodes, slid_weights = slid(FEATURES)
    np.testing.assert_allclose(slid_nodes, np.broadcast_to(grid + 0.5 * h, nodes.shape), rtol=1e-12)
    np.testing.assert_allclose(slid_weights, weights, rtol=1e-12)  # the slide leaves the weights alone
    far = eqx.tree_at(lambda m: m.mlp.layers[-1].bias, slid, last.bias.at[-1].set(50.0))
    assert np.max(np.asarray(far(FEATURES)[0]) - grid[None, :]) <= h * (1 + 1e-12)
    # a grid over the whole bounds has its end nodes on them: the pretraining still finds no slide
    whole = make_thickness_model("neural-grid", ALPHA, np.full(ALPHA.size, 400.0), BOUNDS, key=jax.random.key(0),
                                 grid_nodes=12, grid_span=None)
    inner = np.asarray(whole(FEATURES)[0])[:, 1:-1] - np.asarray(whole.grid)[None, 1:-1]
    assert np.max(np.abs(inner)) < 0.05 * whole.grid_spacing()


@pytest.mark.parametrize("kind", ["neural", "neural-grid"])
def test_the_starting_distribution_has_the_width_asked_for(kind):
    start = np.linspace(300.0, 500.0, ALPHA.size)
    default = make_thickness_model(kind, ALPHA, start, BOUNDS, key=jax.random.key(0))
    narrow = make_thickness_model(kind, ALPHA, start, BOUNDS, key=jax.random.key(0), start_width=0.05)
    broad = make_thickness_model(kind, ALPHA, start, BOUNDS, key=jax.random.key(0), start_width=0.25)
    widths = {}
    for name, model in (("default", default), ("narrow", narrow), ("broad", broad)):
        mean, widths[name] = mean_and_width(*model(FEATURES))
        np.testing.assert_allclose(mean, start, rtol=0.05)
    if kind == "neural-grid":
        np.testing.assert_allclose(widths["default"], START_WIDTH[kind] * start, rtol=0.2)
        np.testing.assert_allclose(widths["broad"], 0.25 * start, rtol=0.2)
        assert np.mean(widths["narrow"]) < 0.5 * np.mean(widths["default"])  # a 0.05 start is below the grid spacing
    else:  # the Gaussian form's width is only pulled weakly towards the start width
        np.testing.assert_allclose(np.mean(widths["default"] / start), START_WIDTH[kind], rtol=0.3)
        assert np.mean(widths["narrow"]) < np.mean(widths["default"]) < np.mean(widths["broad"])
    assert START_WIDTH["neural"] < START_WIDTH["neural-grid"]
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(InputError, match="start_width"):
            make_thickness_model(kind, ALPHA, start, BOUNDS, key=jax.random.key(0), start_width=bad)


def test_bounds_hold_for_any_raw_value_and_invert():
    raw = jnp.array([-1e3, -3.0, 0.0, 3.0, 1e3])
    t = BOUNDS.to_thickness(raw)
    assert np.all(t >= 50.0) and np.all(t <= 1500.0)
    np.testing.assert_allclose(BOUNDS.to_thickness(BOUNDS.to_raw(jnp.array([60.0, 700.0, 1400.0]))),
                               [60.0, 700.0, 1400.0], rtol=1e-9)
    with pytest.raises(InputError):
        Bounds(500.0, 100.0)


def test_plate_path_length_is_t0_over_cosine_of_the_tilt_from_the_normal():
    # normal along the beam at α = 0, goniometer axis x: path t0 / cos α
    plate = PlateThickness(BOUNDS.to_raw(300.0), jnp.zeros(2), BOUNDS)
    nodes, _ = plate(FEATURES)
    np.testing.assert_allclose(np.asarray(nodes[:, 0]), 300.0 / np.cos(np.deg2rad(ALPHA)), rtol=1e-6)
    # normal tilted by 20° towards −y at α = 0 (θ = 20°, φ = −90°): it is along the beam at α = −20°
    tilted = PlateThickness(BOUNDS.to_raw(300.0), jnp.array([np.deg2rad(20.0), -np.pi / 2]), BOUNDS)
    nodes, _ = tilted(FEATURES)
    np.testing.assert_allclose(np.asarray(nodes[:, 0]), 300.0 / np.cos(np.deg2rad(ALPHA + 20.0)), rtol=1e-6)


def test_neural_models_learn_a_wedge_and_a_step():
    target = 300.0 + 4.0 * (ALPHA + 40.0)
    gaussian = make_thickness_model("neural", ALPHA, target, BOUNDS, key=jax.random.key(0))
    mean, _ = mean_and_width(*gaussian(FEATURES))
    np.testing.assert_allclose(mean, target, rtol=0.02)
    step = np.where(ALPHA < 0, 300.0, 800.0)
    grid = make_thickness_model("neural-grid", ALPHA, step, BOUNDS, key=jax.random.key(0), grid_nodes=30)
    mean, _ = mean_and_width(*grid(FEATURES))
    far = np.abs(ALPHA) > 10
    np.testing.assert_allclose(np.asarray(mean)[far], step[far], rtol=0.06)


def test_pretraining_reduces_the_misfit():
    model = make_thickness_model("neural", ALPHA, np.full(ALPHA.size, 400.0), BOUNDS, key=jax.random.key(2))
    target = 600.0 - 3.0 * ALPHA
    before = np.abs(mean_and_width(*model(FEATURES))[0] - target).mean()
    after = np.abs(mean_and_width(*fit_thickness_model(model, ALPHA, target)(FEATURES))[0] - target).mean()
    assert after < 0.1 * before


@pytest.mark.parametrize(("kind", "frequencies"), [("constant", 1), ("perframe", 1), ("plate", 1), ("neural", 1),
                                                  ("neural-grid", 1), ("neural-grid", 3)])
def test_model_derivatives_match_finite_differences(kind, frequencies):
    model = make_thickness_model(kind, ALPHA, 300.0 + 5.0 * np.abs(ALPHA), BOUNDS, key=jax.random.key(3),
                                 width=6, depth=1, grid_nodes=8, frequencies=frequencies)
    if kind == "plate":
        model = eqx.tree_at(lambda m: m.normal, model, jnp.array([0.2, 0.4]))
    arrays, static = eqx.partition(model, eqx.is_inexact_array)
    probe = jnp.linspace(0.5, 1.5, ALPHA.size)

    def summary(a):
        nodes, weights = eqx.combine(a, static)(FEATURES)
        return jnp.sum(probe[:, None] * weights * jnp.sin(nodes / 200.0))

    check_grads(summary, (arrays,), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_fourier_features_are_the_input_and_pretraining_fits_alternating_frames():
    """The network's inputs are x and sin, cos(kπx/2) for k = 1 … frequencies; with eight of them
    the pretrained grid model gives runs of frames alternating every 10° their own thickness."""
    alpha = np.linspace(-40.0, 40.0, 33)
    target = np.where((np.floor((alpha + 40.0) / 10.0) % 2) == 0, 300.0, 700.0)
    features = FrameFeatures(jnp.arange(alpha.size), jnp.asarray(alpha), jnp.array([1.0, 0.0, 0.0]))
    for frequencies in (1, 8):
        model = make_thickness_model("neural-grid", alpha, target, BOUNDS, key=jax.random.key(0),
                                     frequencies=frequencies)
        x = alpha / 40.0
        k = np.arange(1, frequencies + 1)
        expected = np.concatenate([x[:, None], np.sin(0.5 * np.pi * x[:, None] * k),
                                   np.cos(0.5 * np.pi * x[:, None] * k)], axis=1)
        np.testing.assert_allclose(model._inputs(jnp.asarray(alpha)), expected, atol=1e-12)
        assert model.mlp.in_size == 1 + 2 * frequencies
    np.testing.assert_allclose(mean_and_width(*model(features))[0], target, rtol=0.02)
    with pytest.raises(InputError, match="nn_frequencies"):
        make_thickness_model("neural", alpha, target, BOUNDS, key=jax.random.key(0), frequencies=0)
