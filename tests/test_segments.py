"""Frame segments: each consecutive part of a frame's tilts solved with a beam set of its own."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edrefine import InputError, measurement, objective
from edrefine.cif import read_crystal
from edrefine.learned_thickness import Bounds, make_thickness_model
from edrefine.parameters import initial_parameters
from edrefine.problem import prepare_dataset, structure_context
from edrefine.score import score_dataset
from edrefine.settings import CalculationSettings
from edrefine.simulation import simulate_dataset, synthetic_template
from edrefine.thickness import Constant

QUARTZ = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quartz.cif"


@pytest.fixture(scope="module")
def wide_frames():
    """Quartz, four ±1.5° frames: wide enough that a frame's beam set is much larger than a segment's."""
    crystal = read_crystal(QUARTZ)
    template = synthetic_template(crystal.cell, alpha_range=(-9.0, 9.0), step=6.0, half_width=1.5, seed=3,
                                  rotation_axis_position=10.0)
    data = simulate_dataset(crystal, template, Constant(300.0), counts=1e5, seed=1, g_max=1.2, sg_max=0.01, tilts=6,
                            tilt_rule="midpoint")
    return crystal, data


def evaluation_and_gradient(crystal, data, calc, frames=None):
    problem = prepare_dataset(crystal, data, calc, frames=frames)
    context = structure_context(crystal, calc)
    model = make_thickness_model("perframe", problem.data.frames.alpha, np.full(problem.frame_count, 300.0),
                                 Bounds(50.0, 1500.0), key=jax.random.key(0))
    params = initial_parameters(crystal, [model], [problem.frame_count], None)
    frames = jax.tree_util.tree_map(jnp.asarray, problem.frames)
    value, grad = eqx.filter_value_and_grad(objective.chunk_chi2)(params, 0, frames, crystal, context,
                                                                  problem.constants)
    evaluation = objective.chunk_evaluation(params, 0, problem.frames, crystal, context, problem.constants)
    return problem, evaluation, float(value), grad


def leaves(tree):
    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))


@pytest.mark.parametrize("segments", [2, 3])
def test_segments_holding_every_beam_give_the_whole_frame_result(wide_frames, segments):
    """With sg_max so large that every segment holds every beam, cutting the frame changes nothing
    (loss, scales, |Fc| and gradient), which checks the segment sum and its reverse pass."""
    crystal, data = wide_frames
    two = np.arange(2)
    base = CalculationSettings(gmax=0.7, sgmax=1.0, tilts=6)
    whole, whole_eval, whole_value, whole_grad = evaluation_and_gradient(crystal, data, base, two)
    cut, cut_eval, cut_value, cut_grad = evaluation_and_gradient(
        crystal, data, CalculationSettings(gmax=0.7, sgmax=1.0, tilts=6, tilt_segments=segments), two)
    assert cut.frames.segments == segments and cut.frames.tilts_per_segment == 6 // segments
    np.testing.assert_array_equal(cut.frames.beam_counts(), whole.frames.beam_counts())
    assert cut_value == pytest.approx(whole_value, rel=1e-11)
    np.testing.assert_allclose(np.asarray(cut_eval.fc), np.asarray(whole_eval.fc), rtol=1e-10, atol=1e-12)
    for a, b in zip(leaves(cut_grad), leaves(whole_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * float(np.max(np.abs(b)) + 1e-30))


def test_segments_need_fewer_beams_and_keep_every_reflection(wide_frames):
    crystal, data = wide_frames
    whole = prepare_dataset(crystal, data, CalculationSettings(gmax=1.2, sgmax=0.01, tilts=6))
    cut = prepare_dataset(crystal, data, CalculationSettings(gmax=1.2, sgmax=0.01, tilts=6, tilt_segments=3))
    assert np.all(cut.frames.beam_counts() < 0.8 * whole.frames.beam_counts())
    refl_beam, real = np.asarray(cut.frames.refl_beam), np.asarray(cut.frames.refl_mask)
    assert np.all((refl_beam >= 0).any(axis=1)[real])
    for f in range(cut.frames.count):
        for s in range(3):
            present = refl_beam[f, s] >= 0
            beams = np.asarray(cut.frames.beam_hkl)[f, s]
            hkl = data.reflections.hkl[np.asarray(cut.frames.refl_row)[f][present]]
            np.testing.assert_array_equal(beams[refl_beam[f, s][present]], hkl)


def test_refinement_model_and_score_agree_with_segments(wide_frames):
    """The refinement's objective and score_dataset build segments the same way."""
    crystal, data = wide_frames
    calc = CalculationSettings(gmax=1.2, sgmax=0.01, tilts=6, tilt_segments=3)
    problem, evaluation, value, _ = evaluation_and_gradient(crystal, data, calc)
    scored = score_dataset(crystal, data, thickness_search=False, thickness_grid=300.0, **calc.score_arguments())
    np.testing.assert_allclose(np.asarray(evaluation.scale), [row["scale"] for row in scored["frames"]], rtol=1e-9)
    np.testing.assert_allclose(np.sqrt(value / objective.weighted_total(problem.frames)), scored["wR_all"],
                               rtol=1e-9)


def test_segments_converge_to_the_large_beam_set_as_fast_as_whole_frames(wide_frames):
    """Against a reference with every beam of |S_g| ≤ 0.08 Å⁻¹ over the whole frame, segments with
    their own sets err about as little as whole-frame sets of the same sg_max (with fewer beams),
    and less as sg_max grows."""
    crystal, data = wide_frames

    def fc(sgmax, segments):
        calc = CalculationSettings(gmax=1.2, sgmax=sgmax, tilts=6, tilt_segments=segments)
        scored = score_dataset(crystal, data, thickness_search=False, thickness_grid=300.0, details=True,
                               **calc.score_arguments())
        return np.concatenate([row["fc"] / row["scale"] for row in scored["frames"]]), max(scored["beams_per_frame"])

    reference, _ = fc(0.08, 1)
    error = {}
    for sgmax in (0.01, 0.03):
        for segments in (1, 3):
            values, beams = fc(sgmax, segments)
            error[sgmax, segments] = (np.abs(values - reference).sum() / reference.sum(), beams)
    for sgmax in (0.01, 0.03):
        (cut, cut_beams), (whole, whole_beams) = error[sgmax, 3], error[sgmax, 1]
        assert cut < 1.25 * whole and cut_beams < whole_beams
    assert error[0.03, 3][0] < 0.5 * error[0.01, 3][0]


def test_segment_counts_must_divide_the_tilts():
    with pytest.raises(InputError) as error:
        CalculationSettings(tilts=42, tilt_segments=5)
    assert error.value.source == "tilt_segments"
    with pytest.raises(InputError):
        CalculationSettings(tilts=6, tilt_segments=0)
    with pytest.raises(InputError):
        measurement.split_tilts(np.zeros((2, 6)), np.ones((2, 6)) / 6, 4)
    tilts, weights = measurement.split_tilts(np.arange(12.0).reshape(2, 6), np.ones((2, 6)) / 6, 3)
    assert tilts.shape == (2, 3, 2) and np.allclose(weights.sum(axis=(1, 2)), 1.0)
    np.testing.assert_array_equal(tilts[1, 2], [10.0, 11.0])
