"""Site symmetry, orbits and free subspaces (host side)."""

import gemmi
import numpy as np
import pytest

from edrefine import InputError
from edrefine import symmetry

QUARTZ_CELL = (4.9226, 4.9226, 5.4003, 90.0, 90.0, 120.0)
CSPBBR3_CELL = (8.1189, 8.3590, 11.759, 90.0, 90.0, 90.0)
CUBIC_CELL = (5.0, 5.0, 5.0, 90.0, 90.0, 90.0)


def _cartesian_u(u6, cell):
    uc = gemmi.UnitCell(*cell)
    o = np.array(uc.orth.mat.tolist())
    n = np.diag([uc.reciprocal().a, uc.reciprocal().b, uc.reciprocal().c])
    return o @ n @ symmetry.u_matrix(u6) @ n @ o.T


def _cartesian_rotation(rotation, cell):
    uc = gemmi.UnitCell(*cell)
    o = np.array(uc.orth.mat.tolist())
    return o @ rotation @ np.linalg.inv(o)


@pytest.mark.parametrize(
    ("group", "cell", "position", "multiplicity", "n_coordinates", "n_u"),
    [
        ("P 32 2 1", QUARTZ_CELL, (1.0, 0.4718, 0.833333), 3, 1, 4),  # Si on a 2-fold
        ("P 32 2 1", QUARTZ_CELL, (0.4718, 0.0, 1 / 6), 3, 1, 4),
        ("P 32 2 1", QUARTZ_CELL, (0.8558, 0.5857, 0.6177), 6, 3, 6),  # O, general
        ("P b n m", CSPBBR3_CELL, (0.5, 1.0, 0.5), 4, 0, 6),  # Pb, inversion centre
        ("P b n m", CSPBBR3_CELL, (0.51538, 0.55358, 0.75), 4, 2, 4),  # Cs, mirror
        ("P b n m", CSPBBR3_CELL, (0.43856, 0.99353, 0.75), 4, 2, 4),  # Br2, mirror
        ("P b n m", CSPBBR3_CELL, (0.30160, 0.70122, 0.46804), 8, 3, 6),  # Br1, general
        ("F m -3 m", CUBIC_CELL, (0.0, 0.0, 0.0), 4, 0, 1),
        ("F m -3 m", CUBIC_CELL, (0.25, 0.25, 0.25), 8, 0, 1),
        ("F m -3 m", CUBIC_CELL, (0.1, 0.1, 0.1), 32, 1, 2),
        ("F m -3 m", CUBIC_CELL, (0.2, 0.0, 0.0), 24, 1, 2),
        ("F m -3 m", CUBIC_CELL, (0.2, 0.2, 0.0), 48, 1, 3),
        ("P 63/m m c", (3.2, 3.2, 5.2, 90, 90, 120), (1 / 3, 2 / 3, 0.25), 2, 0, 2),
    ],
)
def test_known_site_symmetries(group, cell, position, multiplicity, n_coordinates, n_u):
    site = symmetry.site_symmetry(symmetry.operators_from_name(group), position, cell)
    assert site.multiplicity == multiplicity
    assert site.position_basis.shape == (3, n_coordinates)
    assert site.u_basis.shape == (6, n_u)


def test_quartz_si_u_constraint_is_the_tabulated_one():
    """2-fold along b in a hexagonal cell: U11 = 2 U12, U13 = 2 U23 (ITC Vol. D, 1.2)."""
    site = symmetry.site_symmetry(
        symmetry.operators_from_name("P 32 2 1"), (0.0, 0.4718, 5 / 6), QUARTZ_CELL
    )
    u = site.u_basis @ np.random.default_rng(0).normal(size=4)
    np.testing.assert_allclose(u[0], 2 * u[3], atol=1e-14)
    np.testing.assert_allclose(u[4], 2 * u[5], atol=1e-14)


def test_hexagonal_isotropic_u_is_invariant_on_any_site():
    operators = symmetry.operators_from_name("P 63/m m c")
    site = symmetry.site_symmetry(operators, (1 / 3, 2 / 3, 0.25), (3.2, 3.2, 5.2, 90, 90, 120))
    isotropic = np.array([1.0, 1.0, 1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(site.symmetrise_u(isotropic), isotropic, atol=1e-14)
    projection = site.u_basis @ (site.u_basis.T @ isotropic)
    np.testing.assert_allclose(projection, isotropic, atol=1e-14)


SWEEP_GROUPS = [
    ("P -1", (5.1, 6.2, 7.3, 81.0, 95.0, 102.0)),
    ("P 1 21/c 1", (5.1, 6.2, 7.3, 90.0, 103.0, 90.0)),
    ("C 1 2/c 1", (9.1, 6.2, 7.3, 90.0, 111.0, 90.0)),
    ("P b n m", CSPBBR3_CELL),
    ("P 32 2 1", QUARTZ_CELL),
    ("P 63/m m c", (3.2, 3.2, 5.2, 90.0, 90.0, 120.0)),
    ("R -3 m:H", (4.9, 4.9, 12.1, 90.0, 90.0, 120.0)),
    ("P 42/m n m", (4.6, 4.6, 2.9, 90.0, 90.0, 90.0)),
    ("I a -3 d", (12.0, 12.0, 12.0, 90.0, 90.0, 90.0)),
]
SPECIAL_VALUES = (0.0, 0.5, 0.25, 0.125, 1 / 3, 1 / 6, 0.8333333, 1.0, 0.75)


def _sample_positions(rng, count=40):
    for _ in range(count):
        free = rng.uniform(0.05, 0.45, size=3)
        pick = rng.integers(0, 4, size=3)
        position = []
        for axis in range(3):
            if pick[axis] == 0:
                position.append(free[axis])
            elif pick[axis] == 1 and axis > 0:
                position.append(position[axis - 1])
            else:
                position.append(SPECIAL_VALUES[rng.integers(len(SPECIAL_VALUES))])
        yield np.array(position)


@pytest.mark.parametrize(("group", "cell"), SWEEP_GROUPS)
def test_sites_against_gemmi_and_invariances(group, cell):
    """Multiplicity agrees with gemmi; random θ and U in the free subspaces stay invariant."""
    operators = symmetry.operators_from_name(group)
    small = gemmi.SmallStructure()
    small.cell = gemmi.UnitCell(*cell)
    small.spacegroup_hm = group
    small.determine_and_set_spacegroup("1")
    small.setup_cell_images()
    gemmi_cell = small.cell
    rng = np.random.default_rng(7)
    for position in _sample_positions(rng):
        site = symmetry.site_symmetry(operators, position, cell)
        coincident = gemmi_cell.is_special_position(gemmi.Fractional(*site.position), 1e-3)
        assert site.multiplicity * (1 + coincident) == len(operators)
        assert len(site.stabiliser) * site.multiplicity == len(operators)
        p = site.position_basis
        np.testing.assert_allclose(p.T @ p, np.eye(p.shape[1]), atol=1e-12)
        x = site.position + p @ rng.normal(size=p.shape[1]) * 0.05
        u6 = site.u_basis @ rng.normal(size=site.u_basis.shape[1])
        u_cart = _cartesian_u(u6, cell)
        for index in site.stabiliser:
            rotation = operators.rotations[index]
            image = rotation @ x + operators.translations[index]
            offset = image - x
            np.testing.assert_allclose(offset - np.round(offset), 0.0, atol=1e-12)
            r_cart = _cartesian_rotation(rotation, cell)
            np.testing.assert_allclose(r_cart @ u_cart @ r_cart.T, u_cart, atol=1e-12)
        images = site.orbit_rotations @ site.position + site.orbit_translations
        assert np.all(images >= -1e-9) and np.all(images < 1.0)
        d = images[:, None] - images[None]
        distinct = np.max(np.abs(d - np.round(d)), axis=-1) > 1e-3
        assert np.all(distinct | np.eye(len(images), dtype=bool))


def test_near_special_position_is_snapped():
    operators = symmetry.operators_from_name("P b n m")
    site = symmetry.site_symmetry(operators, (0.51, 0.55, 0.7504), CSPBBR3_CELL)
    assert site.multiplicity == 4
    assert site.position[2] == pytest.approx(0.75, abs=1e-15)
    assert site.snap == pytest.approx(4e-4)
    away = symmetry.site_symmetry(operators, (0.51, 0.55, 0.76), CSPBBR3_CELL)
    assert away.multiplicity == 8
    assert away.snap == 0.0


def test_symmetrise_u_is_a_projection():
    operators = symmetry.operators_from_name("P 32 2 1")
    site = symmetry.site_symmetry(operators, (0.0, 0.47, 5 / 6), QUARTZ_CELL)
    u = np.random.default_rng(3).normal(size=6)
    once = site.symmetrise_u(u)
    np.testing.assert_allclose(site.symmetrise_u(once), once, atol=1e-14)
    np.testing.assert_allclose(site.u_basis @ (site.u_basis.T @ once), once, atol=1e-14)


def test_operators_from_triplets_names_the_group():
    triplets = ["x,y,z", "-y,x-y,z+2/3", "-x+y,-x,z+1/3", "y,x,-z", "x-y,-y,-z+1/3",
                "-x,-x+y,-z+2/3"]
    operators = symmetry.operators_from_triplets(triplets)
    assert operators.name == "P 32 2 1" and operators.number == 154
    assert len(operators) == 6


def test_centred_group_from_full_triplet_list():
    full = symmetry.operators_from_name("F m -3 m")
    again = symmetry.operators_from_triplets(list(full.triplets))
    assert len(again) == 192 and again.name == "F m -3 m"


def test_inverted_operators():
    assert symmetry.inverted_operators(symmetry.operators_from_name("P 32 2 1")).name == "P 31 2 1"
    tetragonal = symmetry.operators_from_name("P 41 21 2")
    assert symmetry.inverted_operators(tetragonal).name == "P 43 21 2"
    assert symmetry.inverted_operators(symmetry.operators_from_name("P b n m")).name == "P b n m"


@pytest.mark.parametrize(
    "triplets", [["x,y,z", "-y,x-y,z+2/3"], ["x,y,z", "x,y,q"], ["x,y"]]
)
def test_bad_operators_raise(triplets):
    with pytest.raises(InputError):
        symmetry.operators_from_triplets(triplets, source="test.cif")


def test_unknown_name_raises():
    with pytest.raises(InputError, match="unknown space group"):
        symmetry.operators_from_name("P 7 2 2")


def test_group_by_hall_and_number():
    assert symmetry.operators_from_name("-P 2yn").name == "P 1 21/n 1"
    assert symmetry.operators_from_name("62").name == "P n m a"
