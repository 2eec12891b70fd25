"""The dependency versions nbxent is tested with, and the warning for the rest.

nbxent reaches into a few private parts of Numba (the on-disk cache of the CPU
kernels) and of numba-cuda's simulator (warp shuffles, shared arrays). Each
such use checks its assumptions before relying on them; when they do not hold
it falls back, or fails, with a message built here that names the installed
version and the tested range. The ranges are the ones ``pyproject.toml``
declares (a test keeps the two in step).
"""

import importlib.metadata
import warnings

#: distribution -> the version range that CI tests (oldest and newest).
TESTED = {
    "numpy": ">=1.24,<2.5",
    "numba": ">=0.60,<0.69",
    "numba-cuda": ">=0.30,<0.31",
}


class CompatibilityWarning(RuntimeWarning):
    """A dependency differs from what nbxent was tested with; a feature is degraded."""


def installed_version(distribution):
    """The installed version of ``distribution``, or "not installed"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe(distribution):
    """'numba 0.70.0 (nbxent is tested with numba>=0.60,<0.69)'."""
    return (f"{distribution} {installed_version(distribution)} "
            f"(nbxent is tested with {distribution}{TESTED[distribution]})")


_warned = set()


def warn_once(key, message, stacklevel=3):
    """Emit ``message`` as a :class:`CompatibilityWarning`, once per process per ``key``."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, CompatibilityWarning, stacklevel=stacklevel)
