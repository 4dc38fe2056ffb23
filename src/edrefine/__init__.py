"""edrefine: differentiable dynamical refinement for 3D electron diffraction."""

from .errors import InputError

__version__ = "0.1.0"

__all__ = ["InputError", "__version__"]
