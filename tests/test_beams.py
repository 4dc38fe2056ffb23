"""Host-side beam selection and the shared coupling table."""

import numpy as np
import pytest

from edrefine.beams import bucket_capacity, centring_vectors, excitation_errors, lattice_points, pad_beam_sets, select_beams
from edrefine.errors import InputError

CUBIC = np.eye(3) / 5.4309


def test_lattice_points_complete_and_ordered():
    hkl = lattice_points(CUBIC, 1.0)
    brute = [h for h in np.ndindex(13, 13, 13) if np.linalg.norm(np.subtract(h, 6) / 5.4309) <= 1.0]
    assert len(hkl) == len(brute)
    assert tuple(hkl[0]) == (0, 0, 0)
    lengths = np.linalg.norm(hkl @ CUBIC.T, axis=1)
    assert np.all(np.diff(lengths) >= -1e-12)


def test_centring_removes_only_lattice_absences():
    fcc = centring_vectors(["x,y,z", "x,y+1/2,z+1/2", "x+1/2,y,z+1/2", "x+1/2,y+1/2,z"])
    hkl = lattice_points(CUBIC, 1.0, fcc)
    mixed = (hkl % 2).sum(axis=1)
    assert np.all((mixed == 0) | (mixed == 3))
    assert len(centring_vectors(["x,y,z", "-x,y+1/2,-z"])) == 1  # a screw axis is not centring


def test_selection_by_excitation_error():
    candidates = lattice_points(CUBIC, 1.5)
    k = np.array([0.0, 0.0, -39.87])
    beams = select_beams(candidates, CUBIC, k, 0.01)
    s = excitation_errors(beams @ CUBIC.T, k)
    assert tuple(beams[0]) == (0, 0, 0) and np.all(np.abs(s) <= 0.01)
    rest = excitation_errors(candidates @ CUBIC.T, k)
    assert np.sum(np.abs(rest) <= 0.01) == len(beams)
    # The union over two wave vectors contains both selections.
    k2 = np.array([0.0, 0.3, -39.87])
    union = select_beams(candidates, CUBIC, np.stack([k, k2]), 0.01)
    both = {tuple(h) for h in beams} | {tuple(h) for h in select_beams(candidates, CUBIC, k2, 0.01)}
    assert {tuple(h) for h in union} == both


def test_coupling_table_indexes_differences():
    rng = np.random.default_rng(0)
    lists = [np.vstack([[0, 0, 0], rng.integers(-4, 5, size=(n, 3))]) for n in (7, 12, 3)]
    sets = pad_beam_sets(lists)
    assert sets.capacity == 16 and list(sets.counts) == [8, 13, 4]
    assert tuple(sets.coupling_hkl[0]) == (0, 0, 0)
    for o, beams in enumerate(lists):
        n = len(beams)
        table = sets.coupling_hkl[sets.coupling_index[o, :n, :n]]
        np.testing.assert_array_equal(table, beams[:, None, :] - beams[None, :, :])
    assert np.all(sets.coupling_index[~(sets.mask[:, :, None] & sets.mask[:, None, :])] == 0)


def test_capacity_and_bad_settings():
    assert bucket_capacity(1) == 16 and bucket_capacity(17) == 32
    with pytest.raises(InputError, match="capacity"):
        pad_beam_sets([np.zeros((20, 3), int)], capacity=16)
    with pytest.raises(InputError, match="g_max"):
        lattice_points(CUBIC, 0.0)
    with pytest.raises(InputError, match="sg_max"):
        select_beams(lattice_points(CUBIC, 1.0), CUBIC, np.array([0, 0, -40.0]), -1.0)
