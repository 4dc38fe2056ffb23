"""Electron scattering factors: published coefficients, physics limits, derivatives."""

import importlib.resources

import equinox as eqx
import gemmi
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from edrefine.errors import InputError
from edrefine.scattering import (
    PARAMETRISATIONS,
    ScatteringFactors,
    element_symbol,
    load_scattering_factors,
)

A0 = 0.529177210903  # Bohr radius [Å], CODATA 2018
GMAX = {"lobato": 12.0, "kirkland": 12.0, "peng": 4.0}  # fit ranges in |g| [Å⁻¹]
COVERAGE = {"lobato": 103, "kirkland": 103, "peng": 98}


def _table_symbols(name):
    """Element symbols of a table in Z order, read from the CSV directly."""
    files = {"lobato": "lobato2014.csv", "kirkland": "kirkland2010.csv", "peng": "peng1996.csv"}
    text = (importlib.resources.files("edrefine") / "data" / files[name]).read_text()
    rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
    return [(int(row[0]), row[1]) for row in rows[1:]]


def _mott_bethe(symbol, s):
    """Mott–Bethe f_e(s) = (Z − f_x(s)) / (8π² a₀ s²) [Å].

    f_x from ITC Vol. C Table 6.1.1.4 (X-ray, as shipped by gemmi as ``it92``).
    """
    element = gemmi.Element(symbol)
    f_x = element.it92.calculate_sf(s * s)
    return (element.atomic_number - f_x) / (8 * np.pi**2 * A0 * s * s)


def _hydrogen(g):
    """Exact f_e of the hydrogen 1s atom [Å].

    Mott–Bethe with f_x = (1 + u)⁻², u = π² a₀² g², gives (a₀/2)(2 + u)/(1 + u)².
    """
    u = (np.pi * A0 * g) ** 2
    return A0 / 2 * (2 + u) / (1 + u) ** 2


# --- published coefficients, quoted by hand ------------------------------------------
# Si, Lobato & Van Dyck (2014), Acta Cryst. A70, 636: f = Σ a (2 + b g²)/(1 + b g²)².
LOBATO_SI = (
    [2.87189142611612, -2.06173501195173, 2.17114024204478, -0.0663073633058801,
     0.00301070709670513],
    [5.08487103642989, 0.429178185305126, 0.366485434192162, 0.119710611296903,
     0.0143994536128397],
)
# C, same paper (16 digits as printed in the authors' MULTEM code).
LOBATO_C = (
    [1.244660886213433e02, -2.203528570789638e02, 1.952353522804791e02, -9.810793612697997e01,
     1.420230412136232e-02],
    [2.421208492560056, 2.305379437524258, 2.048519321065642, 1.933525529175474,
     7.689768184783397e-02],
)
# Si and C, Kirkland (2010), Advanced Computing in Electron Microscopy, App. C:
# f = Σ a/(q² + b) + Σ c exp(−d q²).
KIRKLAND_SI = (
    [1.06543892, 0.120143691, 0.180915263],
    [1.04118455, 68.7113368, 0.0887533926],
    [1.12065620, 0.0305452816, 1.59963502],
    [3.70062619, 0.214097897, 9.99096638],
)
KIRKLAND_C = (
    [0.212080767, 0.199811865, 0.168254385],
    [0.208605417, 0.208610186, 5.57870773],
    [0.142048360, 0.363830672, 8.35012044e-4],
    [1.33311887, 3.80800263, 4.03982620e-2],
)
# Si, C, O, Peng et al. (1996), Acta Cryst. A52, 257, Table 1 = ITC Vol. C Table 4.3.2.2:
# f = Σ a exp(−b s²).
PENG = {
    "Si": ([0.2519, 0.6372, 1.3795, 2.5082, 1.0500], [0.3075, 2.0174, 9.6746, 29.3744, 80.4732]),
    "C": ([0.0893, 0.2563, 0.7570, 1.0487, 0.3575], [0.2465, 1.7100, 6.4094, 18.6113, 50.2523]),
    "O": ([0.0974, 0.2921, 0.6910, 0.6990, 0.2039], [0.2067, 1.3815, 4.6943, 12.7105, 32.4726]),
}


def _by_hand(name, coefficients, s):
    g = 2 * s
    if name == "lobato":
        a, b = map(np.array, coefficients)
        return float(np.sum(a * (2 + b * g**2) / (1 + b * g**2) ** 2))
    if name == "kirkland":
        a, b, c, d = map(np.array, coefficients)
        return float(np.sum(a / (g**2 + b)) + np.sum(c * np.exp(-d * g**2)))
    a, b = map(np.array, coefficients)
    return float(np.sum(a * np.exp(-b * s**2)))


HAND_CASES = [
    ("lobato", "Si", LOBATO_SI),
    ("lobato", "C", LOBATO_C),
    ("kirkland", "Si", KIRKLAND_SI),
    ("kirkland", "C", KIRKLAND_C),
    *[("peng", symbol, coefficients) for symbol, coefficients in PENG.items()],
]


@pytest.mark.parametrize(("name", "symbol", "coefficients"), HAND_CASES)
def test_matches_formula_from_published_coefficients(name, symbol, coefficients):
    s = np.array([0.0, 0.25, 0.5, 1.0, 1.5])
    expected = [_by_hand(name, coefficients, x) for x in s]
    got = load_scattering_factors([symbol], name)(jnp.asarray(2 * s))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("name", PARAMETRISATIONS)
def test_tables_cover_published_range(name):
    rows = _table_symbols(name)
    assert [z for z, _ in rows] == list(range(1, COVERAGE[name] + 1))
    assert all(symbol == gemmi.Element(z).name for z, symbol in rows)


def test_f0_agrees_between_parametrisations():
    """f(0) of H, C, O, Si, Pb: the three fits agree within 5 % (measured: ≤ 3.8 %, Pb/Peng)."""
    symbols = ["H", "C", "O", "Si", "Pb"]
    f0 = np.array([load_scattering_factors(symbols, name)(0.0) for name in PARAMETRISATIONS])
    np.testing.assert_allclose(f0, np.broadcast_to(f0.mean(0), f0.shape), rtol=0.05)
    np.testing.assert_allclose(f0[:, 0], A0, rtol=2e-3)  # hydrogen: f_e(0) = a₀ exactly


@pytest.mark.parametrize(
    ("name", "gmax", "rtol"),
    [("lobato", 12.0, 1e-8), ("kirkland", 4.0, 3e-3), ("peng", 2.0, 1.5e-2)],
)
def test_hydrogen_matches_exact_1s_atom(name, gmax, rtol):
    g = np.linspace(0.0, gmax, 49)
    got = load_scattering_factors(["H"], name)(jnp.asarray(g))[0]
    np.testing.assert_allclose(got, _hydrogen(g), rtol=rtol)


@pytest.mark.parametrize("name", PARAMETRISATIONS)
@pytest.mark.parametrize("symbol", ["C", "O", "Si", "Pb"])
def test_mott_bethe_with_itc_xray_factors(name, symbol):
    """Mott–Bethe from an independent X-ray table agrees within 1.5 % for s = 0.5–1.5 Å⁻¹."""
    s = np.array([0.5, 0.75, 1.0, 1.25, 1.5])
    got = load_scattering_factors([symbol], name)(jnp.asarray(2 * s))[0]
    np.testing.assert_allclose(got, [_mott_bethe(symbol, x) for x in s], rtol=0.015)


@pytest.mark.parametrize("name", PARAMETRISATIONS)
def test_edge_of_fit_range_is_mott_bethe(name):
    """At the largest fitted g every table is within 5 % of Mott–Bethe (ITC X-ray f_x)."""
    symbols = ["C", "O", "Si", "Pb"]
    s = GMAX[name] / 2 if name == "peng" else 2.0  # it92 f_x is valid to s = 2 Å⁻¹
    got = load_scattering_factors(symbols, name)(2 * s)
    np.testing.assert_allclose(got, [_mott_bethe(x, s) for x in symbols], rtol=0.05)


@pytest.mark.parametrize(("name", "rtol"), [("lobato", 1e-4), ("kirkland", 3e-2)])
def test_large_g_limit_is_bare_nucleus(name, rtol):
    """f → Z / (2π² a₀ g²): exact by construction for Lobato, about 2 % for Kirkland."""
    symbols = ["H", "C", "O", "Si", "Pb"]
    z = np.array([gemmi.Element(x).atomic_number for x in symbols])
    for g in (200.0, 1000.0):
        got = load_scattering_factors(symbols, name)(g)
        np.testing.assert_allclose(got * 2 * np.pi**2 * A0 * g**2, z, rtol=rtol)


@pytest.mark.parametrize("name", PARAMETRISATIONS)
def test_positive_and_decreasing_for_every_element(name):
    symbols = [symbol for _, symbol in _table_symbols(name)]
    f = load_scattering_factors(symbols, name)(jnp.linspace(0.0, GMAX[name], 601))
    assert np.all(f > 0)
    assert np.all(np.diff(f, axis=1) < 0)


@pytest.mark.parametrize("name", PARAMETRISATIONS)
def test_increases_roughly_with_z(name):
    symbols = [symbol for _, symbol in _table_symbols(name)]
    f = load_scattering_factors(symbols, name)
    f0, f_wide = np.asarray(f(0.0)), np.asarray(f(3.0))
    ranks = np.argsort(np.argsort(f0))
    assert np.corrcoef(ranks, np.arange(len(symbols)))[0, 1] > 0.8  # shells make f(0) jump
    if name != "peng":  # at wide angles the nucleus dominates: strictly increasing in Z
        assert np.all(np.diff(f_wide) > 0)
    assert np.corrcoef(np.argsort(np.argsort(f_wide)), np.arange(len(symbols)))[0, 1] > 0.99


@pytest.mark.parametrize("name", PARAMETRISATIONS)
def test_gradient_matches_central_differences(name):
    f = load_scattering_factors(["H", "O", "Si", "Pb"], name)
    g = jnp.array([0.0, 0.3, 1.1, 2.7])
    h = 1e-6
    jac = jax.jit(jax.vmap(jax.jacfwd(f), in_axes=0, out_axes=1))(g)
    grad = jax.jit(jax.grad(lambda x: f(x).sum()))(g)
    fd = (f(g + h) - f(g - h)) / (2 * h)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad, fd.sum(0), rtol=1e-6, atol=1e-9)
    assert jnp.all(jac[:, 0] == 0)  # f is even in g
    check_grads(jax.jit(lambda x: f(x)), (g[1:],), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", PARAMETRISATIONS)
def test_jit_vmap_and_batch_shapes(name):
    f = load_scattering_factors(["Si", "O"], name)
    g = jnp.linspace(0.0, 2.0, 12).reshape(3, 4)
    direct = f(g)
    assert direct.shape == (2, 3, 4)
    np.testing.assert_allclose(eqx.filter_jit(f)(g), direct, rtol=1e-14)
    np.testing.assert_allclose(jax.jit(lambda model, x: model(x))(f, g), direct, rtol=1e-14)
    np.testing.assert_allclose(jax.vmap(f, out_axes=1)(g), direct, rtol=1e-14)
    assert f(1.0).shape == (2,)


@pytest.mark.parametrize("name", PARAMETRISATIONS)
def test_float32_follows_input_dtype(name):
    f = load_scattering_factors(["H", "He", "C", "Si", "Pb"], name)
    g = np.linspace(0.0, 4.0, 41)
    f32 = f(jnp.asarray(g, dtype=jnp.float32))
    assert f32.dtype == jnp.float32
    assert f(jnp.asarray(g)).dtype == jnp.float64
    # Lobato's coefficients cancel strongly (He: 3.1 − 62 + 64 − 5.0): ~1e-4 in float32.
    np.testing.assert_allclose(f32, f(jnp.asarray(g)), rtol=5e-4)


def test_rows_follow_requested_order_and_aliases():
    f = load_scattering_factors(["O2-", "SI", "si4+", "Fe3+"], "Lobato")
    assert f.elements == ("O", "Si", "Si", "Fe")
    assert f.parametrisation == "lobato"
    np.testing.assert_array_equal(f.coefficients[1], f.coefficients[2])
    for alias in ("peng", "ITC", "c4322"):
        assert load_scattering_factors(["C"], alias).parametrisation == "peng"
    assert load_scattering_factors(["C"]).coefficients.shape == (1, 2, 5)
    assert load_scattering_factors(["C"], "kirkland").coefficients.shape == (1, 4, 3)


@pytest.mark.parametrize(
    ("label", "symbol"),
    [("Si", "Si"), ("SI", "Si"), ("O2-", "O"), ("O-2", "O"), ("Fe3+", "Fe"), ("Fe+3", "Fe"),
     ("O1A", "O"), ("Ow", "O"), ("Ca1", "Ca"), ("CL1", "Cl"), ("H12b", "H"), ("D", "H"),
     ("Dy1", "Dy"), (" Pb ", "Pb"), ("Lr", "Lr")],
)
def test_element_symbol(label, symbol):
    assert element_symbol(label) == symbol


@pytest.mark.parametrize("label", ["", "123", "Qq", "X", "+2"])
def test_element_symbol_rejects_nonsense(label):
    with pytest.raises(InputError, match="element symbol"):
        element_symbol(label)


def test_unknown_element_names_it():
    with pytest.raises(InputError, match="Qz"):
        load_scattering_factors(["Si", "Qz"])


def test_element_missing_from_table_names_element_and_table():
    load_scattering_factors(["Es"], "lobato")
    with pytest.raises(InputError, match=r"Es.*peng"):
        load_scattering_factors(["Es"], "peng")


def test_unknown_parametrisation_and_empty_list():
    with pytest.raises(InputError, match="doyle"):
        load_scattering_factors(["Si"], "doyle")
    with pytest.raises(InputError, match="no elements"):
        load_scattering_factors([])


def test_module_is_a_frozen_pytree():
    f = load_scattering_factors(["Si", "O"])
    leaves = jax.tree_util.tree_leaves(f)
    assert len(leaves) == 1 and leaves[0].shape == (2, 2, 5)
    with pytest.raises(AttributeError):
        f.parametrisation = "peng"
    with pytest.raises(ValueError, match="parametrisation"):
        ScatteringFactors(jnp.zeros((1, 2, 5)), "doyle", ("Si",))
