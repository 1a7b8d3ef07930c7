"""Array-namespace lookup shared by all kernels (NumPy or CuPy, nothing imported eagerly)."""

from __future__ import annotations

import numpy as np


def array_namespace(*arrays):
    """Return the module (``numpy`` or ``cupy``) that owns ``arrays``.

    CuPy is only imported when an input already is a CuPy array, so CPU-only installs
    never touch it.
    """
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def to_numpy(a) -> np.ndarray:
    """Host NumPy copy of a NumPy or CuPy array (for the driver's d×d algebra)."""
    if array_namespace(a) is not np:
        return a.get()
    return np.asarray(a)
