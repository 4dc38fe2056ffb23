"""PETS2 ``.cif_pets`` and ``_dyn.cif_pets`` files: read, validate, write.

A PETS2 export is one CIF data block: the cell, the wavelength λ [Å], the orientation matrix
UB [Å⁻¹] (``_diffrn_orient_matrix_UB_ij``, columns a*, b*, c* in the lab frame), a free-text
``_diffrn_measurement_details`` field, a loop of (virtual) frames ``_diffrn_zone_axis_*`` and
a loop of reflections ``_refln_*``. Files re-exported by other programs may add an
``_orientation_*`` loop (per-frame orientation corrections, degrees) and an ``_atom_site_*``
loop (the structure used to simulate them). edrefine adds an optional per-frame thickness
distribution loop ``_edrefine_frame_thickness_{frame_id,node,weight}`` (node in Å, one row per
frame and node).

Values are host-side numpy arrays (read-only); angles stay in degrees as in the file. Every
problem with a file raises :class:`edrefine.errors.InputError` naming the file and line.
The orientation geometry lives in :mod:`edrefine.frames`.
"""

from ._pets_model import (
    ExtraLoop,
    Frames,
    Measurement,
    OrientationCorrections,
    PetsData,
    Reflections,
    TruthSites,
    VirtualFrameSettings,
)
from ._pets_read import parse_pets, read_pets
from ._pets_write import format_pets, write_pets

__all__ = ["ExtraLoop", "Frames", "Measurement", "OrientationCorrections", "PetsData", "Reflections", "TruthSites",
           "VirtualFrameSettings", "format_pets", "parse_pets", "read_pets", "write_pets"]
