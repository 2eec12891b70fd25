"""Which backend serves a call: array-kind detection and the backend registry.

The kind of an array is read from its type, never by importing CuPy, PyTorch,
JAX or Dask: a Dask array (its class comes from ``dask.array``, or has
``__dask_graph__`` and ``chunks``) goes to the Dask backend, an object exposing
``__cuda_array_interface__`` is a GPU array, anything else is a CPU array, read
by ``as_cpu_array``. Classes that declare ``__cuda_array_interface__`` for
every instance but hold some on the host (PyTorch tensors, JAX arrays) also
have ``__dlpack_device__``: for them the instance's device decides. A backend is
a module providing the functions named in ``BACKEND_FUNCTIONS``;
``register_backend`` adds one under a name.
"""

import importlib

import numpy as np

from ._plan import mixed_kinds_error

BACKEND_FUNCTIONS = ("asarray", "copy_contiguous", "copy_into", "cross_entropy", "normalize")
# What the training options (sample_weight, denominator=, empty=) and mean_denominator need
# besides: the array module for arithmetic on the backend's arrays (nbxent._training).
TRAINING_FUNCTIONS = ("namespace_of", "to_namespace", "from_namespace")

_backends = {"cpu": "nbxent.cpu.backend", "cuda": "nbxent.cuda.backend",
             "dask": "nbxent.dask.backend"}
_loaded = {}
_kind_by_type = {}
# Kinds whose backend takes CPU arrays met beside its own and wraps them, as NumPy +
# Dask arithmetic does.
_WRAPS_CPU_ARRAYS = {"dask"}
# The kind of a class whose instances live on the host or the GPU: see _device_kind.
_BY_DEVICE = "by device"
_DLPACK_CPU = 1  # DLPack's kDLCPU

_INSTALL_HINTS = {
    "cuda": "the CUDA backend needs numba-cuda and CuPy: pip install 'nbxent[cuda]'",
    "dask": "the Dask backend needs dask[array] and distributed: pip install 'nbxent[dask]'",
}


def _is_dask_array(cls):
    return cls.__module__.startswith("dask.array") or (
        hasattr(cls, "__dask_graph__") and hasattr(cls, "chunks"))


# (kind, test(type) -> bool), tried in order before the CPU/CUDA detection.
_kind_tests = [("dask", _is_dask_array)]


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
            kind = "cpu" if not is_gpu else (
                _BY_DEVICE if hasattr(cls, "__dlpack_device__") else "cuda")
        _kind_by_type[cls] = kind
    return _device_kind(x) if kind == _BY_DEVICE else kind


def _device_kind(x):
    """'cpu' for an instance on the host by its ``__dlpack_device__``, else 'cuda'.

    A PyTorch CPU tensor or a JAX CPU array declares ``__cuda_array_interface__``
    (its class does) but raises on reading it; its DLPack device says where it is.
    """
    try:
        device_type = int(x.__dlpack_device__()[0])
    except Exception:  # noqa: BLE001 - a broken export: let the GPU path report it
        return "cuda"
    return "cpu" if device_type == _DLPACK_CPU else "cuda"


def as_cpu_array(x):
    """The NumPy array for a CPU input, without a copy where the producer allows one.

    NumPy arrays (subclasses as their base class), then DLPack exporters on the host
    (PyTorch, JAX: ``np.from_dlpack``, a view), then anything ``np.asarray`` takes
    (lists, scalars, ``__array__``, the buffer protocol). Errors are the producer's;
    the public functions turn them into nbxent's ``TypeError`` naming the argument.
    """
    if not isinstance(x, np.ndarray) and hasattr(type(x), "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except Exception:  # noqa: BLE001 - (bfloat16, requires_grad, ...): try __array__
            pass
    return np.asarray(x)


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
    return choose_backend(dict(enumerate(arrays)))


def choose_backend(named):
    """``backend_of`` for ``{argument name: array}``; a mix of kinds names the arguments."""
    chosen = None
    for name, x in named.items():
        if x is None or isinstance(x, (int, float, bool, np.generic)):
            continue
        kind = array_kind(x)
        if chosen is None or (chosen[0] == "cpu" and kind in _WRAPS_CPU_ARRAYS):
            chosen = (kind, x, name)
        elif kind != chosen[0] and not (kind == "cpu" and chosen[0] in _WRAPS_CPU_ARRAYS):
            raise mixed_kinds_error(chosen[1], chosen[0], chosen[2], x, kind, name)
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
