"""Relativistic beam quantities against published values (physics.md §1)."""

import pytest

from edrefine.electron import REST_ENERGY_KEV, energy_from_wavelength, lorentz_factor, wavelength


def test_wavelength_published_values():
    assert wavelength(200.0) == pytest.approx(0.02508, abs=5e-6)
    assert wavelength(120.0) == pytest.approx(0.03349, abs=5e-6)
    assert wavelength(300.0) == pytest.approx(0.01969, abs=5e-6)


def test_energy_inverts_wavelength_and_lorentz_factor():
    for energy in (60.0, 120.0, 200.0, 300.0):
        assert energy_from_wavelength(wavelength(energy)) == pytest.approx(energy, rel=1e-12)
    assert REST_ENERGY_KEV == pytest.approx(510.99895, abs=1e-4)
    assert lorentz_factor(200.0) == pytest.approx(1.39139, abs=1e-5)


def test_non_relativistic_limit():
    """At 10 eV, λ = h / sqrt(2 m e E) = 3.8783 Å (relativistic correction ~1e-5)."""
    assert wavelength(0.01) == pytest.approx(3.87831, rel=2e-5)


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan")])
def test_bad_energy(bad):
    with pytest.raises(ValueError):
        wavelength(bad)
