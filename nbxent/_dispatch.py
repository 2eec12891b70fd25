"""Which backend serves a call: array-kind detection and the backend registry.

The kind of an array is read from its type, never by importing CuPy or Dask: a
Dask array (its class comes from ``dask.array``, or has ``__dask_graph__`` and
``chunks``) goes to the Dask backend, an object exposing
``__cuda_array_interface__`` is a GPU array, anything else is handed to
``np.asarray`` by the CPU backend. A backend is a module providing the functions
named in ``BACKEND_FUNCTIONS``; ``register_backend`` adds one under a name.
"""

import importlib

import numpy as np

BACKEND_FUNCTIONS = ("asarray", "copy_contiguous", "copy_into", "cross_entropy", "normalize")

_backends = {"cpu": "nbxent.cpu.backend", "cuda": "nbxent.cuda.backend",
             "dask": "nbxent.dask.backend"}
_loaded = {}
_kind_by_type = {}
# Kinds whose backend takes CPU arrays met beside its own and wraps them, as NumPy +
# Dask arithmetic does.
_WRAPS_CPU_ARRAYS = {"dask"}

_INSTALL_HINTS = {
    "cuda": "the CUDA backend needs numba-cuda and CuPy: pip install 'nbxent[cuda]'",
    "dask": "the Dask backend needs dask[array] and distributed: pip install 'nbxent[dask]'",
}


def register_backend(name, module_path, kind_test=None):
    """Register a backend module under ``name``.

    ``module_path`` is imported on first use and must provide every function in
    ``BACKEND_FUNCTIONS``. ``kind_test(type) -> bool``, if given, claims array
    types for this backend ahead of the built-in CPU/CUDA detection.
    """
    _backends[name] = module_path
    _loaded.pop(name, None)
    if kind_test is not None:
        _kind_tests.insert(0, (name, kind_test))
    _kind_by_type.clear()


def _is_dask_array(cls):
    return cls.__module__.startswith("dask.array") or (
        hasattr(cls, "__dask_graph__") and hasattr(cls, "chunks"))


_kind_tests = [("dask", _is_dask_array)]


def array_kind(x):
    """'dask' for Dask arrays, 'cuda' for GPU arrays, 'cpu' for everything NumPy can
    take, or a registered name."""
    cls = type(x)
    kind = _kind_by_type.get(cls)
    if kind is None:
        kind = next((name for name, test in _kind_tests if test(cls)), None)
        if kind is None:
            # The CUDA simulator's device arrays carry __cuda_ndarray__ instead.
            is_gpu = (hasattr(cls, "__cuda_array_interface__")
                      or getattr(cls, "__cuda_ndarray__", False))
            kind = "cuda" if is_gpu else "cpu"
        _kind_by_type[cls] = kind
    return kind


def _describe(x):
    cls = type(x)
    return f"{cls.__module__}.{cls.__qualname__}"


def backend_of(*arrays):
    """Name of the backend the dispatcher picks for these arrays: "cpu", "cuda" or "dask".

    ``None`` entries and Python scalars are ignored. A Dask array beside NumPy
    arrays picks "dask" (the NumPy arrays are wrapped as Dask arrays). Other
    mixes of kinds (a NumPy array with a CuPy array, a Dask array with a CuPy
    array) raise ``TypeError`` naming both.

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> nbxent.backend_of(np.zeros((2, 3)), np.array([0, 1]))
    'cpu'
    """
    chosen = None
    for x in arrays:
        if x is None or isinstance(x, (int, float, bool, np.generic)):
            continue
        kind = array_kind(x)
        if chosen is None or (chosen[0] == "cpu" and kind in _WRAPS_CPU_ARRAYS):
            chosen = (kind, x)
        elif kind != chosen[0] and not (kind == "cpu" and chosen[0] in _WRAPS_CPU_ARRAYS):
            raise TypeError(
                f"cannot mix array kinds: {_describe(chosen[1])} ({chosen[0]}) with "
                f"{_describe(x)} ({kind}); move them to one device first")
    return "cpu" if chosen is None else chosen[0]


def get_backend(name):
    """The backend module registered as ``name``, imported on first use."""
    module = _loaded.get(name)
    if module is not None:
        return module
    if name not in _backends:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(_backends))}")
    try:
        module = importlib.import_module(_backends[name])
    except ImportError as exc:
        if name in _INSTALL_HINTS:
            raise ImportError(f"{_INSTALL_HINTS[name]} ({exc})") from exc
        raise
    _loaded[name] = module
    return module
