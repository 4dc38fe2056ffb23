"""CIF reading and writing."""

import math
import textwrap

import numpy as np
import pytest

from edrefine import InputError
from edrefine.cif import format_value, read_crystal, read_crystal_with_uncertainties, write_crystal

SHARED_CIFS = [
    ("quartz/enantiomer_1.cif", [3, 6]),
    ("quartz/quartz_kinematical.cif", [3, 6]),
    ("cspbbr3/cspbbr3.cif", [4, 4, 8, 4]),
    ("cspbbr3/cspbbr3_paper_table_s5_abs.cif", [4, 4, 8, 4]),
    ("malik2026_synthetic/quartz/quartz_01_displacement.cif", [3, 6]),
    ("malik2026_synthetic/quartz/quartz_02_displacement.cif", [3, 6]),
    ("malik2026_synthetic/quartz/quartz_03_displacement.cif", [3, 6]),
    ("malik2026_synthetic/cspbbr3/cspbbr3_01_displacement.cif", [4, 4, 8, 4]),
    ("malik2026_synthetic/cspbbr3/cspbbr3_02_displacement.cif", [4, 4, 8, 4]),
    ("malik2026_synthetic/cspbbr3/cspbbr3_03_displacement.cif", [4, 4, 8, 4]),
    ("glycine_ccp4/alpha_glycine.cif", [4] * 10),
]

HEADER = """\
data_test
_cell_length_a 8.1189(4)
_cell_length_b 8.3590
_cell_length_c 11.759
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P b n m'
"""
ATOMS = """\
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
_atom_site_occupancy
Cs1 Cs 0.51538(12) 0.55358(9) 0.75 0.0375(3) 1
Br1 Br 0.30160 0.70122 0.46804 0.0272 0.5
"""


def write(tmp_path, text, name="test.cif"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def assert_same_crystal(a, b, atol=1e-6):
    assert a.labels == b.labels and a.elements == b.elements
    assert a.anisotropic == b.anisotropic
    assert a.space_group_name == b.space_group_name
    assert sorted(a.symops) == sorted(b.symops)
    np.testing.assert_allclose(a.cell.parameters(), b.cell.parameters(), atol=atol)
    np.testing.assert_allclose(a.positions(), b.positions(), atol=atol)
    np.testing.assert_allclose(a.u_cif(), b.u_cif(), atol=atol)
    np.testing.assert_allclose(a.params.occupancy, b.params.occupancy, atol=atol)
    np.testing.assert_array_equal(a.multiplicities(), b.multiplicities())


@pytest.mark.data
@pytest.mark.parametrize(("name", "multiplicities"), SHARED_CIFS)
def test_shared_cifs_read_and_round_trip(shared_data, tmp_path, name, multiplicities):
    crystal, uncertainties = read_crystal_with_uncertainties(shared_data / name)
    np.testing.assert_array_equal(crystal.multiplicities(), multiplicities)
    path = tmp_path / "out.cif"
    write_crystal(path, crystal)
    assert_same_crystal(read_crystal(path), crystal)
    write_crystal(path, crystal, uncertainties)
    assert_same_crystal(read_crystal(path), crystal, atol=5e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["out.cif"]


@pytest.mark.data
def test_values_and_uncertainties(shared_data):
    crystal, su = read_crystal_with_uncertainties(shared_data / "quartz/quartz_kinematical.cif")
    np.testing.assert_allclose(crystal.positions()[0], [1.0, 0.4718, 5 / 6], atol=1e-12)
    np.testing.assert_allclose(su.positions[0, 1], 0.0008)
    assert np.isnan(su.positions[0, 0]) and np.isnan(su.cell[0])
    np.testing.assert_allclose(su.u[1], [0.002, 0.003, 0.0017, 0.0018, 0.0017, 0.0019])
    cs, cs_su = read_crystal_with_uncertainties(shared_data / "cspbbr3/cspbbr3.cif")
    np.testing.assert_allclose(cs_su.cell[:3], [0.0004, 0.0004, 0.001])
    np.testing.assert_allclose(cs.u_cif()[0], [0.0431, 0.0402, 0.0292, 0.0118, 0, 0], atol=1e-12)


@pytest.mark.data
def test_aniso_columns_in_any_order(shared_data):
    """enantiomer_1.cif orders U23 U13 U12 and has no aniso type symbol."""
    crystal = read_crystal(shared_data / "quartz/enantiomer_1.cif")
    np.testing.assert_allclose(
        crystal.u_cif()[1], [0.013019, 0.019950, 0.016200, 0.009504, -0.002570, 0.004034],
        atol=1e-12)


def test_b_values_are_converted(tmp_path):
    text = HEADER + """\
    loop_
    _atom_site_label
    _atom_site_fract_x
    _atom_site_fract_y
    _atom_site_fract_z
    _atom_site_B_iso_or_equiv
    Cs1 0.51538 0.55358 0.75 2.0
    Br1 0.30160 0.70122 0.46804 1.5(2)
    loop_
    _atom_site_aniso_label
    _atom_site_aniso_B_33
    _atom_site_aniso_B_11
    _atom_site_aniso_B_22
    _atom_site_aniso_B_23
    _atom_site_aniso_B_13
    _atom_site_aniso_B_12
    Cs1 3.0 2.0 2.5 0 0 0.4
    """
    crystal, su = read_crystal_with_uncertainties(write(tmp_path, text))
    scale = 1 / (8 * math.pi**2)
    assert crystal.elements == ("Cs", "Br") and crystal.anisotropic == (True, False)
    np.testing.assert_allclose(crystal.u_cif()[0], np.array([2.0, 2.5, 3.0, 0.4, 0, 0]) * scale)
    np.testing.assert_allclose(crystal.u_iso()[1], 1.5 * scale)
    np.testing.assert_allclose(su.u[1, 0], 0.2 * scale)


def test_space_group_from_name_defaults_and_types(tmp_path):
    crystal, su = read_crystal_with_uncertainties(write(tmp_path, HEADER + ATOMS))
    assert crystal.space_group_name == "P b n m" and len(crystal.symops) == 8
    np.testing.assert_allclose(crystal.params.occupancy, [1.0, 0.5])
    np.testing.assert_allclose(su.positions[0], [0.00012, 0.00009, np.nan])
    text = HEADER.replace("_symmetry_space_group_name_H-M 'P b n m'",
                          "_space_group_IT_number 62") + ATOMS.replace(" Cs ", " Cs1+ ")
    crystal = read_crystal(write(tmp_path, text))
    assert crystal.space_group_name == "P n m a" and crystal.elements == ("Cs", "Br")


@pytest.mark.parametrize(
    ("value", "su", "expected"),
    [
        (0.47183, 0.00081, "0.4718(8)"),
        (0.00893, 0.0013, "0.0089(13)"),
        (0.0161, 0.0021, "0.016(2)"),
        (0.0161, 0.0019, "0.0161(19)"),
        (8.11894, 0.0004, "8.1189(4)"),
        (11.7592, 0.001, "11.7592(10)"),
        (-0.0032, 0.0012, "-0.0032(12)"),
        (130.2, 60.0, "130(60)"),
        (0.5, math.nan, "0.500000"),
        (0.5, 0.0, "0.500000"),
        (-0.0000001, math.nan, "0.000000"),
    ],
)
def test_format_value(value, su, expected):
    assert format_value(value, su) == expected


def test_write_replaces_existing_file(tmp_path):
    crystal = read_crystal(write(tmp_path, HEADER + ATOMS))
    path = tmp_path / "model.cif"
    path.write_text("old")
    write_crystal(path, crystal, block_name="refined")
    assert path.read_text().startswith("data_refined")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.cif", "test.cif"]


BAD_CIFS = {
    "missing cell": (HEADER.replace("_cell_length_b 8.3590\n", "") + ATOMS, "_cell_length_b"),
    "zero volume": (HEADER.replace("_cell_angle_gamma 90", "_cell_angle_gamma 180") + ATOMS,
                    "volume"),
    "flat cell": (HEADER.replace("_cell_angle_alpha 90", "_cell_angle_alpha 0") + ATOMS,
                  "volume"),
    "no atom_site loop": (HEADER, "_atom_site"),
    "missing coordinate": (HEADER + ATOMS.replace("_atom_site_fract_y\n", "_atom_site_foo\n"),
                           "_atom_site_fract_y"),
    "non-numeric": (HEADER + ATOMS.replace("0.30160", "0.3o160"), "non-numeric"),
    "non-numeric cell": (HEADER.replace("11.759", "big") + ATOMS, "_cell_length_c"),
    "unknown element": (HEADER + ATOMS.replace(" Br ", " Qx "), "unknown element"),
    "occupancy": (HEADER + ATOMS.replace(" 0.5\n", " 1.5\n"), "occupancy"),
    "negative U_iso": (HEADER + ATOMS.replace("0.0272", "-0.0272"), "negative"),
    "missing U_iso": (HEADER + ATOMS.replace("0.0272", "?"), "missing"),
    "unknown space group": (HEADER.replace("'P b n m'", "'P 7 q'") + ATOMS, "space group"),
    "no space group": (HEADER.replace("_symmetry_space_group_name_H-M 'P b n m'\n", "") + ATOMS,
                       "space group"),
    "bad symop": (HEADER + "loop_\n_symmetry_equiv_pos_as_xyz\nx,y,z\n-y,x-y,z+2/3\n" + ATOMS,
                  "group"),
    "not positive definite": (HEADER + ATOMS + """\
        loop_
        _atom_site_aniso_label
        _atom_site_aniso_U_11
        _atom_site_aniso_U_22
        _atom_site_aniso_U_33
        _atom_site_aniso_U_12
        _atom_site_aniso_U_13
        _atom_site_aniso_U_23
        Br1 0.02 0.02 0.02 0.03 0 0
        """, "positive definite"),
    "aniso breaks site symmetry": (HEADER + ATOMS + """\
        loop_
        _atom_site_aniso_label
        _atom_site_aniso_U_11
        _atom_site_aniso_U_22
        _atom_site_aniso_U_33
        _atom_site_aniso_U_12
        _atom_site_aniso_U_13
        _atom_site_aniso_U_23
        Cs1 0.04 0.04 0.03 0.01 0.01 0
        """, "Cs1.*site symmetry"),
    "aniso label unknown": (HEADER + ATOMS + """\
        loop_
        _atom_site_aniso_label
        _atom_site_aniso_U_11
        _atom_site_aniso_U_22
        _atom_site_aniso_U_33
        _atom_site_aniso_U_12
        _atom_site_aniso_U_13
        _atom_site_aniso_U_23
        Xx9 0.04 0.04 0.03 0.01 0 0
        """, "Xx9"),
    "syntax error": ("data_x\nloop_\n_a\n_b\n1 2 3\n'unterminated\n", "parse"),
}


@pytest.mark.parametrize("case", sorted(BAD_CIFS))
def test_bad_cifs_raise_input_error_naming_the_file(tmp_path, case):
    text, fragment = BAD_CIFS[case]
    path = write(tmp_path, text, name="bad_input.cif")
    with pytest.raises(InputError, match=fragment) as info:
        read_crystal(path)
    message = str(info.value)
    assert "bad_input.cif" in message and "\n" not in message


def test_duplicate_labels(tmp_path):
    path = write(tmp_path, HEADER + ATOMS.replace("Br1 Br", "Cs1 Br"), name="dup.cif")
    with pytest.raises(InputError, match="dup.cif.*duplicate site label Cs1"):
        read_crystal(path)


def test_unwritable_path(tmp_path):
    crystal = read_crystal(write(tmp_path, HEADER + ATOMS))
    with pytest.raises(InputError, match="cannot write"):
        write_crystal(tmp_path / "missing_dir" / "out.cif", crystal)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_crystal(tmp_path / "nothing.cif")
