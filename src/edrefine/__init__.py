"""edrefine: differentiable dynamical (Bloch-wave) refinement for 3D electron diffraction.

The public API, by layer (see ARCHITECTURE.md):

* crystal model: :class:`Cell`, :class:`Crystal`, :class:`SiteParameters`, :func:`build_crystal`,
  :func:`perturb`, :func:`coordinate_rmsd`; CIF I/O :func:`read_crystal`, :func:`write_crystal`;
* scattering: :func:`load_scattering_factors`, :func:`structure_factors`,
  :func:`potential_coefficients`; the beam: :func:`wavelength`, :func:`lorentz_factor`;
* Bloch waves: :func:`structure_matrix`, :func:`absorptive_matrix`, :func:`propagate`,
  :func:`orientation_amplitudes`, beam sets :func:`select_beams`, :func:`pad_beam_sets`;
* data: :func:`read_pets`, :func:`write_pets`, :func:`frame_orientations`;
* the 3D-ED measurement: :func:`score_dataset` with :class:`CalculationSettings`;
* refinement: :func:`refine` with :class:`RefinementSettings` (returns a :class:`RefinementResult`,
  written by :func:`write_outputs`), refinable thickness models :func:`make_thickness_model`.

Precision is chosen by the caller (``jax.config.update("jax_enable_x64", True)`` for float64);
importing edrefine changes no JAX setting.
"""

from .beams import BeamSets, centring_vectors, lattice_points, pad_beam_sets, select_beams
from .bloch import absorptive_matrix, propagate, structure_matrix, thickness_phase
from .cif import read_crystal, read_crystal_with_uncertainties, write_crystal
from .crystal import AtomsInCell, Cell, Crystal, SiteParameters, build_crystal, coordinate_rmsd, perturb
from .diffraction import crystal_potential, incident_geometry, orientation_amplitudes
from .electron import energy_from_wavelength, lorentz_factor, wavelength
from .errors import InputError
from .frames import frame_orientations, rotation_axis
from .pattern import Pattern, simulate_pattern
from .pets import PetsData, read_pets, write_pets
from .score import score_dataset
from .simulation import simulate_dataset, synthetic_template
from .learned_thickness import make_thickness_model
from .outputs import write_outputs
from .refine import RefinementResult, refine
from .refine_settings import RefinementSettings
from .settings import CalculationSettings
from .scattering import PARAMETRISATIONS, ScatteringFactors, element_symbol, load_scattering_factors
from .structure_factor import debye_waller, potential_coefficients, structure_factors

__version__ = "0.1.0"

__all__ = [
    "AtomsInCell", "BeamSets", "CalculationSettings", "Cell", "Crystal", "InputError", "PARAMETRISATIONS", "Pattern", "PetsData",
    "ScatteringFactors", "SiteParameters", "absorptive_matrix", "build_crystal", "centring_vectors",
    "coordinate_rmsd", "crystal_potential", "debye_waller", "element_symbol", "energy_from_wavelength",
    "frame_orientations", "incident_geometry", "lattice_points", "load_scattering_factors", "lorentz_factor",
    "orientation_amplitudes", "pad_beam_sets", "perturb", "potential_coefficients", "propagate",
    "read_crystal", "read_crystal_with_uncertainties", "read_pets", "rotation_axis", "select_beams",
    "score_dataset", "simulate_dataset", "simulate_pattern", "synthetic_template", "structure_factors", "structure_matrix", "thickness_phase", "wavelength",
    "write_crystal", "write_pets", "__version__", "RefinementResult", "RefinementSettings", "make_thickness_model",
    "refine", "write_outputs",
]
