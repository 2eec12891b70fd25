"""Shared test machinery: Numba cache location, rng, assert_close, the backend fixture.

Helpers that tests import (``assert_close``, ``loss_dtype``) live here; the
shape/dtype/option matrix lives in ``_cases.py``.
"""

import hashlib
import importlib.util
import os
import pathlib
import sys
import tempfile
import zlib

# --------------------------------------------------------------- Numba cache
# Numba's on-disk cache keys a kernel on its own file only: an edit in a helper
# module it inlines (nbxent/cpu/fastexp.py, say) would be served stale. Key the cache
# directory on every source file of the package under test and on the versions
# of the compilers, before numba loads.


def _package_dir():
    spec = importlib.util.find_spec("nbxent")
    if spec is not None and spec.submodule_search_locations:
        return pathlib.Path(list(spec.submodule_search_locations)[0])
    return pathlib.Path(__file__).resolve().parent.parent / "nbxent"


# Modules no kernel imports: edits there must not throw the compiled kernels away.
_NOT_KERNEL_SOURCES = ("bench", "dask", "cli.py", "__main__.py", "torch.py", "jax.py",
                       "_jax_ffi.py", "linear.py", "_training.py", "_information.py")


def _source_hash(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] in _NOT_KERNEL_SOURCES:
            continue
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _versions_tag():
    """The versions that compiled code depends on, read without importing them: two
    environments (say the newest and the oldest supported Numba) never share a cache."""
    import importlib.metadata

    tag = []
    for name in ("numba", "llvmlite", "numpy", "numba-cuda"):
        try:
            tag.append(f"{name}{importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return "-".join(tag)


NUMBA_CACHE_DIR = os.path.join(
    tempfile.gettempdir(),
    f"nbxent-numba-cache-{_source_hash(_package_dir())}-{_versions_tag()}")
os.environ["NUMBA_CACHE_DIR"] = NUMBA_CACHE_DIR
if "numba" in sys.modules:  # a plugin got there first: make numba re-read the variable
    sys.modules["numba"].core.config.reload_config()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nbxent import _numba_inlining as numba_inlining  # noqa: E402

# Numba's inliner without its copies of each callee's fresh IR in every compile, not only
# those the package makes (nbxent/_numba_inlining.py, test_numba_inlining.py): the same
# machine code, about a fifth sooner.
numba_inlining.skip_copies()

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if SIMULATOR:
    # The simulator runs one OS thread per CUDA thread; switch between them often.
    sys.setswitchinterval(1e-4)


# --------------------------------------------------------------- test order
# Modules whose items run long alone (the PTX report compiles every CUDA kernel; the
# hypothesis searches). pytest-xdist hands out items in collection order, so at the end
# of the collection they finished alone on one core while the other idled: first, they
# run beside the thousands of short items instead.
_LONG_ITEMS_FIRST = ("test_ptx.py", "test_properties.py")


def _run_first_rank(item):
    name = item.path.name
    return _LONG_ITEMS_FIRST.index(name) if name in _LONG_ITEMS_FIRST else len(_LONG_ITEMS_FIRST)


# --------------------------------------------------------------- the simulator's share
# Under the CUDA simulator (a Python thread per CUDA thread) an item costs about as much
# as compiling a CPU kernel. Of the items that take all three reductions as a parameter
# (or both gradient functions, which run one kernel), the simulator runs one in three
# (one in two): the value whose position equals the sum of the positions of the item's
# other parameters' values, modulo their count (a Latin square: each reduction meets every
# value of a parameter wherever another parameter has at least three values, as the dtypes
# and the CUDA layouts do). The CPU and a real GPU run every item.
_THINNED = {"reduction": ("none", "mean", "sum"), "function": ("grad", "with_grad")}


def _on_simulator(item):
    callspec = getattr(item, "callspec", None)
    return callspec is not None and (callspec.params.get("backend") == "cudasim" or (
        SIMULATOR and item.path.name == "test_cuda_kernels.py"))


def _thinned_parameter(item):
    """The name of the item's parameter that the simulator thins, or None."""
    for mark in item.iter_markers("parametrize"):
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if len(names) == 1 and list(mark.args[1]) == list(_THINNED.get(names[0], ())):
            return names[0]
    return None


def _simulator_skips(items):
    """Whether each item is one the simulator leaves to the CPU and GPU runs."""
    # A value's position among its parameter's values, in collection order (pytest's own
    # indices count the combinations of stacked parametrizations, not the values).
    seen = {}

    def position(item, name):
        values = seen.setdefault((item.path, item.originalname, name), [])
        value = item.callspec.params[name]
        for k, known in enumerate(values):
            if known is value:
                return k
        values.append(value)
        return len(values) - 1

    def skips(item):
        thinned = _thinned_parameter(item) if _on_simulator(item) else None
        if thinned is None:
            return False
        params = item.callspec.params
        others = sum(position(item, name) for name in params if name not in ("backend", thinned))
        values = _THINNED[thinned]
        return values.index(params[thinned]) != others % len(values)

    return [skips(item) for item in items]


def pytest_collection_modifyitems(config, items):
    items.sort(key=_run_first_rank)  # stable: the order within each module is kept
    skips = _simulator_skips(items)
    if any(skips):
        config.hook.pytest_deselected(items=[item for item, skip in zip(items, skips) if skip])
        items[:] = [item for item, skip in zip(items, skips) if not skip]


# --------------------------------------------------------------- tolerances
# (rtol, atol) by the dtype a result is held in. float16 logits are computed in
# float32 (so their float32 losses get float32 tolerances) and only results held
# in float16 (gradient, log_softmax, softmax) get the float16 ones: half an ulp
# of float16 is 2**-11 ~ 4.9e-4 relative, so 1e-3 relative plus a small floor.
TOLERANCES = {
    ("loss", np.dtype(np.float64)): (1e-12, 1e-13),
    ("loss", np.dtype(np.float32)): (1e-5, 1e-6),
    ("grad", np.dtype(np.float64)): (1e-12, 1e-14),
    ("grad", np.dtype(np.float32)): (1e-6, 1e-6),   # absolute 1e-6 up to |g| = 1
    ("grad", np.dtype(np.float16)): (1e-3, 1e-5),
}


def loss_dtype(dtype):
    """The dtype of a loss (and logsumexp, entropy) for logits of ``dtype``."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def tolerance(dtype, what="grad"):
    """(rtol, atol) for a result of ``what`` ("loss" or "grad") from logits of ``dtype``."""
    held_in = loss_dtype(dtype) if what == "loss" else np.dtype(dtype)
    return TOLERANCES[(what, held_in)]


def assert_close(actual, expected, dtype, what="grad", *, rtol=None, atol=None,
                 check_dtype=True, err_msg=""):
    """Assert ``actual`` matches the float64 ``expected`` for logits of ``dtype``.

    ``what`` is "loss" (held in the loss dtype: loss, logsumexp, entropy) or
    "grad" (held in the logits' dtype: gradient, log_softmax, softmax). Shapes
    must agree; nan, +inf and -inf must sit at exactly the same positions; the
    finite values must satisfy |actual - expected| <= max(atol, rtol * |expected|):
    absolute near 0 and up to 1, relative above.
    With ``check_dtype`` the result's dtype must be the one README.md ("Semantics",
    dtypes) promises: ``loss_dtype`` for "loss", the logits' dtype for "grad".
    """
    default_rtol, default_atol = tolerance(dtype, what)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    actual_np = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    if check_dtype:
        want = loss_dtype(dtype) if what == "loss" else np.dtype(dtype)
        assert actual_np.dtype == want, f"{err_msg} dtype {actual_np.dtype}, expected {want}"
    assert actual_np.shape == expected.shape, (
        f"{err_msg} shape {actual_np.shape}, expected {expected.shape}")
    a = actual_np.astype(np.float64)
    for name, test in (("nan", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        mismatch = test(a) != test(expected)
        if mismatch.any():
            where = tuple(int(i) for i in np.argwhere(mismatch)[0]) if a.ndim else ()
            raise AssertionError(
                f"{err_msg} {name} positions differ: {int(mismatch.sum())} of {a.size}, first at "
                f"{where}: got {a[where]!r}, expected {expected[where]!r}")
    finite = np.isfinite(expected)
    with np.errstate(invalid="ignore"):
        err = np.where(finite, np.abs(a - expected), 0.0)
    bound = np.maximum(atol, rtol * np.abs(expected))
    bad = finite & ~(err <= bound)
    if bad.any():
        idx = np.argwhere(bad)
        worst = tuple(int(i) for i in idx[np.argmax((err - bound)[bad])]) if a.ndim else ()
        raise AssertionError(
            f"{err_msg} {int(bad.sum())} of {a.size} values outside rtol={rtol}, atol={atol}; "
            f"worst at {worst}: got {a[worst]!r}, expected {expected[worst]!r}, "
            f"|diff|={err[worst]:.3g}")


def assert_calls_raise(backend, calls, logits, target, keywords, error, message):
    """Each of ``calls`` (a loss, then its gradient and the fused pair, which also get an
    ``out=`` except on Dask) raises ``error`` matching ``message`` on the backend's
    ``logits`` and ``target``, and ``out=`` is left as it was."""
    out = (None if backend.name == "dask"
           else backend.to_backend(np.full(logits.shape, 7.0, logits.dtype)))
    for call in calls:
        extra = {} if call is calls[0] or out is None else dict(out=out)
        with pytest.raises(error, match=message):
            call(logits, target, **keywords, **extra)
    if out is not None:
        np.testing.assert_array_equal(backend.to_numpy(out), 7.0)


# --------------------------------------------------------------- fixtures

@pytest.fixture
def rng(request):
    """A fresh Generator per test, seeded from the test's id (reproducible, no global seed).

    Set NBXENT_TEST_SEED to draw other numbers in every test.
    """
    salt = os.environ.get("NBXENT_TEST_SEED", "0")
    return np.random.default_rng(zlib.crc32(f"{salt}:{request.node.nodeid}".encode()))


class Backend:
    """How a test hands arrays to one backend and reads its results back.

    ``to_backend(np_array)`` gives the backend's kind of array; ``to_numpy(result)``
    checks that ``result`` is of that kind (a reduced loss too) and returns a
    NumPy copy; ``view(np_base, fn)`` applies the view ``fn`` (a slice, a
    transpose) to both the NumPy base and a backend copy of it, so strided inputs
    reach the backend as views of its own memory. ``small`` asks for tiny shapes.
    """

    def __init__(self, name, small, to_backend, to_numpy, kind):
        self.name = name
        self.small = small
        self._to_backend = to_backend
        self._to_numpy = to_numpy
        self._kind = kind

    def __repr__(self):
        return f"Backend({self.name!r})"

    def is_kind(self, x):
        return isinstance(x, self._kind)

    def to_backend(self, x):
        if x is None:
            return None
        return self._to_backend(np.ascontiguousarray(x) if x.ndim else np.asarray(x))

    def to_numpy(self, result):
        assert isinstance(result, self._kind), (
            f"{self.name} backend returned {type(result).__module__}.{type(result).__qualname__},"
            f" expected {self._kind.__module__}.{self._kind.__qualname__}")
        return self._to_numpy(result)

    def view(self, base, fn):
        """(fn(base), fn(to_backend(base))): the same strided view in both kinds."""
        return fn(base), fn(self.to_backend(base))

    def skip_if_large(self, *sizes, limit=None):
        """Skip under the simulator when the case is not tiny (any dim > 70 or rows > 40)."""
        if self.small and (max(sizes, default=0) > (limit or 70)):
            pytest.skip(f"shape {sizes} too large for the CUDA simulator")


def _cpu_backend():
    return Backend("cpu", False, lambda x: x, np.array, np.ndarray)


def _cudasim_backend():
    if not pathlib.Path(_package_dir(), "cuda", "backend.py").exists():
        pytest.skip("nbxent.cuda.backend does not exist yet")
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"numba.cuda does not import: {exc}")
    kind = type(cuda.to_device(np.zeros(1)))
    return Backend("cudasim", True, cuda.to_device, lambda r: np.array(r.copy_to_host()), kind)


def _cuda_backend():
    try:
        import cupy
    except ImportError:
        pytest.skip("CuPy is not installed: the 'cuda' backend needs a GPU and nbxent[cuda]")
    try:
        available = cupy.cuda.is_available()
    except Exception as exc:  # noqa: BLE001 - any CUDA runtime failure means no GPU
        pytest.skip(f"CuPy cannot reach a GPU: {exc}")
    if not available:
        pytest.skip("no CUDA GPU is available to CuPy")
    return Backend("cuda", False, cupy.asarray, cupy.asnumpy, cupy.ndarray)


_BACKEND_PARAMS = [pytest.param("cpu", id="cpu")]
if SIMULATOR:
    _BACKEND_PARAMS.append(pytest.param("cudasim", id="cudasim"))
_BACKEND_PARAMS.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))

_FACTORIES = {"cpu": _cpu_backend, "cudasim": _cudasim_backend, "cuda": _cuda_backend}


@pytest.fixture(params=_BACKEND_PARAMS)
def backend(request):
    """Each backend the machine can run: "cpu" always, "cudasim" under
    NUMBA_ENABLE_CUDASIM=1, "cuda" (marked ``cuda``) where CuPy sees a GPU."""
    return _FACTORIES[request.param]()


def _dask_backend():
    """Dask arrays split in two along their first axis, computed by the synchronous
    scheduler in this process (no cluster: tests/test_dask.py runs one)."""
    da = pytest.importorskip("dask.array")

    def to_dask(x):
        return da.from_array(x, chunks=tuple(max(1, -(-n // 2)) if i == 0 else n
                                             for i, n in enumerate(x.shape)))

    return Backend("dask", False, to_dask,
                   lambda r: np.array(r.compute(scheduler="synchronous")), da.Array)


_FACTORIES["dask"] = _dask_backend


@pytest.fixture(params=[*_BACKEND_PARAMS, pytest.param("dask", id="dask")])
def any_backend(request):
    """``backend``'s backends and the Dask backend (synchronous scheduler)."""
    return _FACTORIES[request.param]()
