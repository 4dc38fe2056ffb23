"""Crystal model: cell geometry, constrained parameters, expansion, derivatives."""

import equinox as eqx
import gemmi
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from edrefine import InputError
from edrefine import symmetry
from edrefine.cif import read_crystal
from edrefine.crystal import Cell, build_crystal, coordinate_rmsd, perturb

TRICLINIC = (5.1, 6.2, 7.3, 81.0, 95.0, 102.0)
QUARTZ_OPS = ["x,y,z", "-y,x-y,z+2/3", "-x+y,-x,z+1/3", "y,x,-z", "x-y,-y,-z+1/3",
              "-x,-x+y,-z+2/3"]


def quartz():
    return build_crystal(
        (4.9226, 4.9226, 5.4003, 90, 90, 120), QUARTZ_OPS, ["Si1", "O1"], ["Si", "O"],
        [[1.0, 0.4718, 0.833333], [0.8558, 0.5857, 0.6177]],
        u_aniso=[[0.016, 0.0097, 0.0027, 0.0080, -0.0032, -0.0016],
                 [0.017, 0.020, 0.0178, 0.0125, -0.0023, 0.0046]],
    )


def cspbbr3():
    return build_crystal(
        (8.1189, 8.3590, 11.759, 90, 90, 90), "P b n m", ["Cs1", "Pb1", "Br1", "Br2"],
        ["Cs", "Pb", "Br", "Br"],
        [[0.51538, 0.55358, 0.75], [0.5, 1.0, 0.5], [0.30160, 0.70122, 0.46804],
         [0.43856, 0.99353, 0.75]],
        u_iso=[0.0375, 0.0153, 0.0272, 0.0353],
        u_aniso=[[0.0431, 0.0402, 0.0292, 0.0118, 0, 0],
                 [0.0168, 0.01454, 0.01456, -0.0002, -0.00032, -0.00014],
                 [0.0226, 0.0219, 0.0370, -0.0111, 0.0027, -0.0040],
                 [0.0483, 0.0466, 0.0110, 0.0089, 0, 0]],
        anisotropic=[True, True, False, True],
        occupancy=[1.0, 1.0, 0.9, 1.0],
    )


def randomised(crystal, seed, scale=0.02):
    """Random raw parameters (θ, φ) within each site's free dimensions."""
    rng = np.random.default_rng(seed)
    params = crystal.params
    theta_mask = np.asarray(crystal.parameter_mask().position_free)
    u_mask = np.asarray(crystal.parameter_mask().u_free)
    theta = params.position_free + scale * rng.normal(size=theta_mask.shape) * theta_mask
    u_free = params.u_free + 0.002 * rng.normal(size=u_mask.shape) * u_mask
    return crystal.with_params(eqx.tree_at(lambda p: (p.position_free, p.u_free), params,
                                           (jnp.asarray(theta), jnp.asarray(u_free))))


def toy_structure_factor(crystal, hkl):
    """Point-atom F(h) = Σ occ exp(2πi h·x) exp(−2π² gᵀUg), unit scattering factors."""
    atoms = crystal.expand()
    g = crystal.cell.reciprocal_matrix() @ hkl
    phase = jnp.exp(2j * jnp.pi * jnp.einsum("smi,i->sm", atoms.positions, hkl))
    debye_waller = jnp.exp(-2 * jnp.pi**2 * jnp.einsum("i,smij,j->sm", g, atoms.u_cart, g))
    terms = jnp.where(atoms.mask, phase * debye_waller, 0.0)
    return jnp.sum(atoms.occupancy * jnp.sum(terms, axis=1))


def test_cell_matches_gemmi():
    cell = Cell(*TRICLINIC)
    reference = gemmi.UnitCell(*TRICLINIC)
    np.testing.assert_allclose(cell.orthogonalisation(), reference.orth.mat.tolist(), atol=1e-12)
    np.testing.assert_allclose(cell.reciprocal_matrix(), np.array(reference.frac.mat.tolist()).T,
                               atol=1e-12)
    np.testing.assert_allclose(cell.volume(), reference.volume, rtol=1e-12)
    reciprocal = reference.reciprocal()
    np.testing.assert_allclose(cell.reciprocal_lengths(), [reciprocal.a, reciprocal.b,
                                                           reciprocal.c], rtol=1e-12)


def test_reciprocal_convention():
    """g·r = h·x and |g| = 1/d (no 2π)."""
    cell = Cell(*TRICLINIC)
    hkl, x = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.1, 0.7, 0.3])
    g = cell.reciprocal_matrix() @ hkl
    np.testing.assert_allclose(g @ (cell.orthogonalisation() @ x), hkl @ x, atol=1e-12)
    d = gemmi.UnitCell(*TRICLINIC).calculate_d([1, -2, 3])
    np.testing.assert_allclose(jnp.linalg.norm(g), 1 / d, rtol=1e-12)


def test_u_conventions():
    """U_eq agrees with gemmi's (Fischer & Tillmanns 1988); hexagonal isotropic U."""
    u6 = np.array([0.017, 0.020, 0.0178, 0.0125, -0.0023, 0.0046])
    crystal = build_crystal(TRICLINIC, "P 1", ["O1"], ["O"], [[0.1, 0.2, 0.3]], u_aniso=[u6])
    reference = gemmi.UnitCell(*TRICLINIC).calculate_u_eq(gemmi.SMat33d(*u6))
    np.testing.assert_allclose(crystal.u_iso(), [reference], rtol=1e-12)
    hexagonal = build_crystal((4.9, 4.9, 5.4, 90, 90, 120), "P 1", ["O1"], ["O"],
                              [[0.1, 0.2, 0.3]], u_aniso=[[0.01, 0.01, 0.01, 0.005, 0, 0]])
    np.testing.assert_allclose(hexagonal.u_cart()[0], 0.01 * np.eye(3), atol=1e-15)
    isotropic = build_crystal((4.9, 4.9, 5.4, 90, 90, 120), "P 1", ["O1"], ["O"],
                              [[0.1, 0.2, 0.3]], u_iso=[0.01])
    np.testing.assert_allclose(isotropic.u_cif()[0], [0.01, 0.01, 0.01, 0.005, 0, 0],
                               atol=1e-15)
    np.testing.assert_allclose(isotropic.u_cart()[0], 0.01 * np.eye(3), atol=1e-15)


def test_free_parameter_counts():
    crystal = cspbbr3()
    np.testing.assert_array_equal(crystal.multiplicities(), [4, 4, 8, 4])
    mask = crystal.parameter_mask()
    free_positions = np.sum(mask.position_free, axis=1)
    free_u = np.sum(mask.u_free, axis=1)
    np.testing.assert_array_equal(free_positions, [2, 0, 3, 2])
    np.testing.assert_array_equal(free_u, [4, 6, 1, 4])  # Br1 isotropic: U_iso only


def _lattice_sets_equal(a, b, tol=1e-6):
    a, b = np.asarray(a).reshape(-1, 3), np.asarray(b).reshape(-1, 3)
    assert len(a) == len(b)
    d = a[:, None] - b[None]
    match = np.max(np.abs(d - np.round(d)), axis=-1) < tol
    assert np.all(match.sum(axis=1) == 1) and np.all(match.sum(axis=0) == 1)


@pytest.mark.data
@pytest.mark.parametrize(("name", "count"), [("quartz/enantiomer_1.cif", 9),
                                             ("cspbbr3/cspbbr3.cif", 20)])
def test_expansion_matches_gemmi(shared_data, name, count):
    crystal = read_crystal(shared_data / name)
    atoms = crystal.expand()
    ours = np.asarray(atoms.positions)[np.asarray(atoms.mask)]
    small = gemmi.read_small_structure(str(shared_data / name))
    theirs = [site.fract.tolist() for site in small.get_all_unit_cell_sites()]
    assert len(ours) == count
    _lattice_sets_equal(ours, theirs, tol=1e-5)
    for label in crystal.labels:
        ours_label = [p for p, (s, _) in zip(ours, np.argwhere(np.asarray(atoms.mask)))
                      if crystal.labels[s] == label]
        theirs_label = [site.fract.tolist() for site in small.get_all_unit_cell_sites()
                        if site.label == label]
        _lattice_sets_equal(ours_label, theirs_label, tol=1e-5)


@pytest.mark.parametrize("make", [quartz, cspbbr3])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_parameters_keep_symmetry(make, seed):
    """The expanded cell maps onto itself (positions and U) under every operator."""
    crystal = randomised(make(), seed)
    operators = symmetry.operators_from_triplets(crystal.symops)
    atoms = crystal.expand()
    mask = np.asarray(atoms.mask)
    o = np.asarray(crystal.cell.orthogonalisation())
    for s in range(len(crystal.labels)):
        positions = np.asarray(atoms.positions[s])[mask[s]]
        u = np.asarray(atoms.u_cart[s])[mask[s]]
        _lattice_sets_equal(positions, positions)  # distinct images
        for rotation, translation in zip(operators.rotations, operators.translations):
            moved = positions @ rotation.T + translation
            d = moved[:, None] - positions[None]
            match = np.argmax(np.max(np.abs(d - np.round(d)), axis=-1) < 1e-9, axis=1)
            assert np.all(np.max(np.abs(d - np.round(d)), axis=-1).min(axis=1) < 1e-9)
            r_cart = o @ rotation @ np.linalg.inv(o)
            np.testing.assert_allclose(r_cart @ u @ r_cart.T, u[match], atol=1e-12)
    rebuilt = [symmetry.site_symmetry(operators, x, crystal.cell.parameters()).multiplicity
               for x in np.asarray(crystal.positions())]
    np.testing.assert_array_equal(rebuilt, crystal.multiplicities())


@pytest.mark.parametrize("make", [quartz, cspbbr3])
def test_gradients_match_finite_differences(make):
    crystal = randomised(make(), 3)
    hkl = jnp.array([1.0, -2.0, 2.0])

    @jax.jit
    def loss(params, cell):
        f = toy_structure_factor(crystal.with_params(params).with_cell(cell), hkl)
        return jnp.real(f) ** 2 + jnp.imag(f)

    check_grads(loss, (crystal.params, crystal.cell), order=1, modes=("fwd", "rev"), eps=1e-6)


def test_expand_under_jit_and_grad():
    crystal = quartz()
    value, grads = eqx.filter_jit(eqx.filter_value_and_grad(
        lambda c: jnp.sum(c.expand().u_cart) + jnp.sum(c.expand().positions ** 2)
    ))(crystal)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grads.params.position_free))


def test_invert_conjugates_structure_factors():
    crystal = randomised(quartz(), 5)
    inverted = crystal.invert()
    assert inverted.space_group_name == "P 31 2 1"
    np.testing.assert_allclose(inverted.positions(), np.mod(-np.asarray(crystal.positions())
                                                            + 1e-12, 1.0) - 1e-12, atol=1e-9)
    for hkl in ([1.0, 0.0, 1.0], [1.0, -2.0, 3.0], [2.0, 1.0, -1.0]):
        f = toy_structure_factor(crystal, jnp.array(hkl))
        f_inverted = toy_structure_factor(inverted, jnp.array(hkl))
        np.testing.assert_allclose(f_inverted, np.conj(f), atol=1e-12)
    operators = symmetry.operators_from_triplets(inverted.symops)
    assert operators.name == "P 31 2 1"
    back = inverted.invert()
    assert back.space_group_name == "P 32 2 1"
    assert float(coordinate_rmsd(back, crystal)) < 1e-12


def test_perturb_stays_in_free_subspace():
    crystal = cspbbr3()
    moved = perturb(crystal, jax.random.PRNGKey(0), 0.05)
    np.testing.assert_allclose(coordinate_rmsd(moved, crystal), 0.05, rtol=1e-9)
    np.testing.assert_allclose(moved.positions()[1], crystal.positions()[1], atol=0)
    np.testing.assert_allclose(moved.positions()[[0, 3], 2], 0.75, atol=1e-15)
    np.testing.assert_array_equal(moved.multiplicities(), crystal.multiplicities())


def test_coordinate_rmsd_matches_equivalent_sites():
    crystal = quartz()
    images = crystal.expand().positions
    equivalent = build_crystal(
        crystal.cell, QUARTZ_OPS, ["Si1", "O1"], ["Si", "O"],
        [np.asarray(images[0, 2]) + [1, 0, -1], np.asarray(images[1, 4]) - [0, 1, 0]],
        u_iso=[0.01, 0.01],
    )
    assert float(coordinate_rmsd(equivalent, crystal)) < 1e-9
    shifted = equivalent.with_params(eqx.tree_at(
        lambda p: p.position_free, equivalent.params,
        equivalent.params.position_free.at[1, 2].add(0.01)))
    expected = 0.01 * 5.4003 / np.sqrt(2)
    np.testing.assert_allclose(coordinate_rmsd(shifted, crystal), expected, rtol=1e-9)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(occupancy=[1.2]), "occupancy"),
        (dict(u_iso=[-0.01]), "negative"),
        (dict(u_iso=None, u_aniso=[[0.01, 0.01, -0.02, 0, 0, 0]]), "positive definite"),
        (dict(elements=["Qq"]), "unknown element"),
        (dict(positions=[[0.5, 1.0, 0.5]], u_iso=None,
              u_aniso=[[0.01, 0.01, 0.01, 0.0, 0.0, 0.0]]), None),
        (dict(positions=[[0.1, 0.2, 0.75]], u_iso=None,
              u_aniso=[[0.01, 0.01, 0.01, 0.0, 0.005, 0.0]]), "breaks the site symmetry"),
    ],
)
def test_build_errors_name_the_site(change, message):
    values = dict(cell=(8.1, 8.4, 11.8, 90, 90, 90), operators="P b n m", labels=["X1"],
                  elements=["Br"], positions=[[0.1, 0.2, 0.3]], u_iso=[0.02])
    values.update(change)
    if message is None:
        build_crystal(**values)
        return
    with pytest.raises(InputError, match=f"site X1.*{message}"):
        build_crystal(**values)
