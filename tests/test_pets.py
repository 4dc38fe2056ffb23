"""PETS2 reader and writer: real files, round trips, and every kind of bad input."""

import dataclasses

import equinox as eqx
import numpy as np
import pytest

from edrefine.errors import InputError
from edrefine.pets import format_pets, parse_pets, read_pets, write_pets

PETS_FILES = {
    "quartz/quartz.cif_pets": (99, 6666),
    "cspbbr3/CsPbBr_P67-crot-050_dyn.cif_pets": (59, 32669),
    "glycine_ccp4/glycine_dyn.cif_pets": (31, 2986),
    "glycine_ccp4/glycine.cif_pets": (159, 1204),
    "malik2026_synthetic/quartz/quartz_paper_data.cif_pets": (99, 3270),
    "malik2026_synthetic/cspbbr3/cspbbr3_paper_data.cif_pets": (59, 29871 - 8),
}

SMALL = """\
data_pets
_cell_length_a        4.9226
_cell_length_b        4.9226
_cell_length_c        5.4003
_cell_angle_alpha   90
_cell_angle_beta    90
_cell_angle_gamma  120
_diffrn_radiation_wavelength 0.02510
_diffrn_orient_matrix_UB_11 -0.07048
_diffrn_orient_matrix_UB_12 -0.02116
_diffrn_orient_matrix_UB_13  0.17811
_diffrn_orient_matrix_UB_21  0.22434
_diffrn_orient_matrix_UB_22  0.14328
_diffrn_orient_matrix_UB_23  0.05362
_diffrn_orient_matrix_UB_31 -0.02954
_diffrn_orient_matrix_UB_32  0.18790
_diffrn_orient_matrix_UB_33 -0.02054
_diffrn_measurement_details
;
data collection geometry: continuous rotation
rotation axis position:    0.484
;

loop_
_diffrn_zone_axis_id
_diffrn_zone_axis_u
_diffrn_zone_axis_v
_diffrn_zone_axis_w
_diffrn_zone_axis_precession_angle
_diffrn_zone_axis_alpha
_diffrn_zone_axis_beta
_diffrn_zone_axis_omega
_diffrn_zone_axis_scale
   1 -1.00000  0.07564 -0.28404     1.000   -49.197    -0.130     0.287     0.748
   2 -1.00000  0.10206 -0.28473     1.000   -48.037    -0.210     0.164     0.788

loop_
_refln_index_h
_refln_index_k
_refln_index_l
_refln_intensity_meas
_refln_intensity_sigma
_refln_zone_axis_id
  -1   2   0     1000.00       31.62     1
   0   1   1      400.00       20.00     1
   1   1   0       -5.00       10.00     2
"""
# line numbers in SMALL: cell a 2, wavelength 8, UB_11 9, rotation axis position 21, frame rows
# 34-35, reflection rows 44-46


def _write(tmp_path, text, name="bad.cif_pets"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _without_source(data):
    return dataclasses.replace(data, source="")


@pytest.fixture(scope="module")
def loaded(shared_data):
    return {name: read_pets(shared_data / name, zero_sigma="drop") for name in PETS_FILES}


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(PETS_FILES))
def test_shared_files_load_with_expected_counts(loaded, name):
    data = loaded[name]
    frames, observations = PETS_FILES[name]
    assert data.frames.id.shape == (frames,)
    assert data.reflections.hkl.shape == (observations, 3)
    assert np.all(data.reflections.sigma > 0)
    assert np.all(np.isin(data.reflections.frame_id, data.frames.id))
    assert data.measurement.geometry == "continuous rotation"
    assert data.wavelength in (0.0251, 0.02508)


@pytest.mark.data
def test_every_shared_cif_pets_is_covered(shared_data):
    found = {str(p.relative_to(shared_data)) for p in shared_data.rglob("*.cif_pets")}
    assert found == set(PETS_FILES)


@pytest.mark.data
def test_quartz_fields(loaded):
    data = loaded["quartz/quartz.cif_pets"]
    np.testing.assert_array_equal(data.cell, [4.9226, 4.9226, 5.4003, 90, 90, 120])
    assert data.ub[0, 2] == 0.17811 and data.ub[2, 1] == 0.18790
    m = data.measurement
    assert (m.dstarmax, m.rc_width, m.mosaicity, m.rotation_axis_position, m.reflection_size) == (
        1.8,
        0.001,
        0.05,
        0.484,
        10.0,
    )
    assert m.virtual_frames is None and data.pets_omega is None
    f = data.frames
    assert (f.id[0], f.half_width[0], f.alpha[0], f.beta[0], f.omega[0], f.scale[0]) == (
        1,
        1.0,
        -49.197,
        -0.13,
        0.287,
        0.748,
    )
    np.testing.assert_array_equal(f.zone_axis[0], [-1.0, 0.07564, -0.28404])
    assert any("s 1 m 2" in c for c in data.comments)


@pytest.mark.data
def test_cspbbr3_virtual_frames_and_pets_omega(loaded):
    data = loaded["cspbbr3/CsPbBr_P67-crot-050_dyn.cif_pets"]
    assert data.measurement.virtual_frames == (6, 4, -1)
    assert data.measurement.rotation_axis_position == 0.162
    assert data.pets_omega == 0.0
    np.testing.assert_array_equal(data.reflections.hkl[-1], [13, 1, -14])


@pytest.mark.data
def test_synthetic_truth_and_orientation_loops(loaded):
    data = loaded["malik2026_synthetic/quartz/quartz_paper_data.cif_pets"]
    truth = data.truth_sites
    assert truth.label == ("Si1", "O1") and truth.type_symbol == ("Si", "O")
    np.testing.assert_array_equal(truth.xyz[1], [0.8558, 0.5857, 0.6177])
    np.testing.assert_array_equal(truth.occupancy, [1.0, 1.0])
    corrections = data.orientation_corrections
    np.testing.assert_array_equal(corrections.rotation_index, np.arange(99))
    assert not np.any(corrections.alpha) and not np.any(corrections.omega)


@pytest.mark.data
def test_zero_sigma_rows_raise_unless_dropped(shared_data):
    path = shared_data / "malik2026_synthetic/cspbbr3/cspbbr3_paper_data.cif_pets"
    with pytest.raises(
        InputError, match=r"cspbbr3_paper_data.cif_pets:\d+: reflection -14 -2 -19 in frame 14: sigma 0"
    ):
        read_pets(path)


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(PETS_FILES))
def test_round_trip(loaded, tmp_path, name):
    data = loaded[name]
    path = tmp_path / "out.cif_pets"
    write_pets(path, data)
    again = read_pets(path)
    assert again.source == str(path)
    assert eqx.tree_equal(_without_source(again), _without_source(data))
    assert format_pets(again) == path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.cif_pets"]


@pytest.mark.data
def test_crlf_and_lf_read_the_same(shared_data):
    crlf = (shared_data / "cspbbr3/CsPbBr_P67-crot-050_dyn.cif_pets").read_bytes()
    assert b"\r\n" in crlf
    lf = crlf.replace(b"\r\n", b"\n").decode()
    assert eqx.tree_equal(parse_pets(crlf.decode()), parse_pets(lf))
    quartz = (shared_data / "quartz/quartz.cif_pets").read_text()
    assert eqx.tree_equal(parse_pets(quartz), parse_pets(quartz.replace("\n", "\r\n")))


def test_small_file_parses():
    data = parse_pets(SMALL, "small")
    assert data.frames.id.tolist() == [1, 2]
    assert data.reflections.intensity.tolist() == [1000.0, 400.0, -5.0]
    assert data.measurement.rotation_axis_position == 0.484
    assert data.measurement.rc_width is None


def test_thickness_loop_round_trip(tmp_path):
    data = parse_pets(SMALL, "small")
    nodes = np.array([[100.0, 200.0, 300.0], [150.0, 250.0, 350.5]])
    weights = np.array([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]])
    thick = dataclasses.replace(data, thickness_nodes=nodes, thickness_weights=weights)
    path = tmp_path / "thick.cif_pets"
    write_pets(path, thick)
    assert "_edrefine_frame_thickness_node" in path.read_text()
    again = read_pets(path)
    np.testing.assert_array_equal(again.thickness_nodes, nodes)
    np.testing.assert_array_equal(again.thickness_weights, weights)
    assert eqx.tree_equal(_without_source(again), _without_source(thick))


def test_arrays_are_read_only():
    data = parse_pets(SMALL, "small")
    with pytest.raises(ValueError):
        data.reflections.sigma[0] = 1.0


def test_extra_items_loops_and_columns_are_kept(tmp_path):
    text = SMALL.replace(
        "_diffrn_measurement_details", "_exptl_crystal_description 'thin plate'\n_diffrn_measurement_details"
    )
    text = text.replace("_refln_zone_axis_id\n", "_refln_zone_axis_id\n_refln_d_spacing\n")
    rows = ["     1\n", "     1\n", "     2\n"]
    for row, d in zip(rows, ("0.91", "1.20", "2.05")):
        text = text.replace(row, row[:-1] + " " + d + "\n", 1)
    text += "\nloop_\n_my_note_id\n_my_note_text\n1 'a b'\n2 c\n"
    data = parse_pets(text, "extra")
    assert data.extra_items == (("_exptl_crystal_description", "'thin plate'"),)
    assert data.reflections.extra_columns == (("_refln_d_spacing", ("0.91", "1.20", "2.05")),)
    assert data.extra_loops[0].rows == (("1", "'a b'"), ("2", "c"))
    path = tmp_path / "extra.cif_pets"
    write_pets(path, data)
    assert eqx.tree_equal(_without_source(read_pets(path)), _without_source(data))
    assert data.reflections.take(np.array([False, True, True])).extra_columns[0][1] == ("1.20", "2.05")


def _drop_line(text, start):
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(start))


BAD_CASES = {
    "missing cell": (lambda t: _drop_line(t, "_cell_length_b"), r"bad.cif_pets: missing _cell_length_b"),
    "missing wavelength": (
        lambda t: _drop_line(t, "_diffrn_radiation"),
        r"missing _diffrn_radiation_wavelength",
    ),
    "missing UB": (
        lambda t: _drop_line(t, "_diffrn_orient_matrix_UB_23"),
        r"missing _diffrn_orient_matrix_UB_23",
    ),
    "missing frames": (
        lambda t: t.replace("_diffrn_zone_axis_", "_zz_axis_"),
        r"missing the _diffrn_zone_axis_\* loop",
    ),
    "missing reflections": (lambda t: t.split("loop_\n_refln")[0], r"missing the _refln_\* loop"),
    "short row": (
        lambda t: t.replace("   0   1   1      400.00", "   0   1      400.00"),
        r":45: _refln_index_h loop: row has 5 values, expected 6",
    ),
    "long row": (
        lambda t: t.replace("0.287     0.748", "0.287  0.748  0.1"),
        r":34: _diffrn_zone_axis_id loop: row has 10 values, expected 9",
    ),
    "non-numeric": (
        lambda t: t.replace("400.00", "4x0.00"),
        r":45: _refln_intensity_meas: non-numeric value '4x0.00'",
    ),
    "unknown value": (
        lambda t: t.replace("-48.037", "?"),
        r":35: _diffrn_zone_axis_alpha: non-numeric value '\?'",
    ),
    "nan": (lambda t: t.replace("20.00", "nan"), r":45: _refln_intensity_sigma: non-finite value 'nan'"),
    "inf": (lambda t: t.replace("1000.00", "inf"), r":44: _refln_intensity_meas: non-finite value 'inf'"),
    "zero sigma": (
        lambda t: t.replace("20.00", "0.00"),
        r":45: reflection 0 1 1 in frame 1: sigma 0 must be positive",
    ),
    "negative sigma": (
        lambda t: t.replace("10.00", "-1.00"),
        r":46: reflection 1 1 0 in frame 2: sigma -1 must be positive",
    ),
    "fractional hkl": (
        lambda t: t.replace("  -1   2   0", "  -1 2.5   0"),
        r":44: _refln_index_k: expected an integer, got '2.5'",
    ),
    "duplicate frame": (lambda t: t.replace("   2 -1.00000", "   1 -1.00000"), r":35: duplicate frame id 1"),
    "unknown frame": (
        lambda t: t.replace("10.00     2", "10.00     7"),
        r":46: reflection 1 1 0 refers to frame 7",
    ),
    "zero volume": (
        lambda t: t.replace("_cell_angle_gamma  120", "_cell_angle_gamma  180"),
        r":2: cell .* has zero volume",
    ),
    "zero length": (
        lambda t: t.replace("_cell_length_c        5.4003", "_cell_length_c 0"),
        r":2: cell .* has zero volume",
    ),
    "zero wavelength": (lambda t: t.replace("0.02510", "0.0"), r":8: wavelength 0 Å must be positive"),
    "negative wavelength": (
        lambda t: t.replace("0.02510", "-0.0251"),
        r":8: wavelength -0.0251 Å must be positive",
    ),
    "bad number item": (
        lambda t: t.replace("_cell_length_a        4.9226", "_cell_length_a abc"),
        r":2: _cell_length_a: non-numeric value 'abc'",
    ),
    "bad details": (
        lambda t: t.replace("position:    0.484", "position:    north"),
        r":21: rotation axis position: non-numeric",
    ),
    "singular UB": (
        lambda t: (
            t.replace("0.22434", "-0.07048").replace(" 0.14328", "-0.02116").replace(" 0.05362", " 0.17811")
        ),
        r":9: orientation matrix UB is singular",
    ),
    "unterminated text": (
        lambda t: t.replace(";\n\nloop_", "\nloop_", 1),
        r"bad.cif_pets:\d+: CIF syntax error",
    ),
    "duplicate tag": (
        lambda t: t.replace(
            "_diffrn_radiation_wavelength 0.02510", "_diffrn_radiation_wavelength 0.02510\n_cell_length_a 3"
        ),
        r":9: CIF syntax error: duplicate tag _cell_length_a",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_input_error(tmp_path, case):
    mutate, pattern = BAD_CASES[case]
    text = mutate(SMALL)
    assert text != SMALL
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match=pattern) as info:
        read_pets(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_zero_sigma_can_be_dropped(tmp_path):
    path = _write(tmp_path, SMALL.replace("20.00", "0.00"))
    data = read_pets(path, zero_sigma="drop")
    assert data.reflections.hkl.tolist() == [[-1, 2, 0], [1, 1, 0]]


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="nothere.cif_pets: cannot read file"):
        read_pets(tmp_path / "nothere.cif_pets")


def test_bad_thickness_loop(tmp_path):
    loop = "\nloop_\n" + "".join(f"_edrefine_frame_thickness_{c}\n" for c in ("frame_id", "node", "weight"))
    uneven = SMALL + loop + "1 100 0.5\n1 200 0.5\n2 100 1.0\n"
    with pytest.raises(InputError, match=r":48: thickness loop must list the same number"):
        read_pets(_write(tmp_path, uneven))
    negative = SMALL + loop + "1 100 0.5\n2 -100 0.5\n"
    with pytest.raises(InputError, match=r":53: thickness row"):
        read_pets(_write(tmp_path, negative))
