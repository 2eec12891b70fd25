"""The CPU kernels' on-disk cache: Numba's own, keyed on the kernel variant.

Numba keys a closure's cache entries on its pickled cell contents. The kernels
close over helper dispatchers, which pickle differently in every process, so
with ``cache=True`` each process compiled every kernel again. Here a kernel's
entries are keyed instead on what determines it: its bytecode, its variant
(Python scalars) and the source of the modules it inlines.

Processes that share the cache directory (test workers, a node's training ranks)
take turns: one lock file per variant, so that of processes starting together one
compiles a variant while the others wait and then load it (each would otherwise
compile it again), and one lock for the cache's index, which Numba rewrites whole
on every save (two processes saving at once could lose an entry, or pair one's
index entry with the other's data file). Without ``fcntl`` (Windows) each process
compiles what it does not find, as Numba does.

Numba has no public hook for the key, so this subclasses its
``FunctionCache``, overrides the private ``_index_key`` and installs the cache
as the dispatcher's private ``_cache``. :func:`internals_problem` checks those
assumptions (once, on first use) against the installed Numba; when one fails,
the kernels compile in every process, with one :class:`CompatibilityWarning`
naming the Numba version, instead of crashing or serving a stale entry.
"""

import contextlib
import functools
import hashlib
import inspect
import os
import pathlib
import types

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from .._versions import describe, warn_once

# The modules whose code the kernels inline: an edit in any of them must miss the
# cache (Numba itself only notices edits of the file that defines the kernel).
_KERNEL_SOURCES = ("kernels.py", "arguments.py", "formulas.py", "row_kernel.py", "tile_kernel.py",
                   "access.py", "bits.py", "fastexp.py", "launch.py", "../_metrics.py")


def _parameters(function):
    return list(inspect.signature(function).parameters)


def _probe(x):
    return x


@functools.lru_cache(maxsize=None)
def internals_problem():
    """None when Numba's cache internals are what :func:`cached` relies on, else
    a sentence saying what differs.

    Checked: ``numba.core.caching.FunctionCache`` is a ``_Cache`` whose
    ``__init__(self, py_func)``, ``_index_key(self, sig, codegen)``,
    ``load_overload(self, sig, target_context)`` and ``save_overload(self, sig,
    data)`` have those parameters; Numba's own key is ``(sig,
    codegen.magic_tuple(), (bytecode hash, closure hash))``, so replacing the
    last part drops nothing else Numba keys on; a CPU dispatcher holds its cache
    in ``_cache`` and ``Dispatcher.compile`` loads and saves through it; the
    dispatcher reports ``stats.cache_hits`` and ``stats.cache_misses``, and holds what
    it compiled or loaded in the dict ``overloads``.
    """
    try:
        from numba import njit
        from numba.core import caching, dispatcher
        from numba.core.registry import cpu_target
    except ImportError as exc:
        return f"numba's cache modules do not import ({exc})"
    function_cache = getattr(caching, "FunctionCache", None)
    base = getattr(caching, "_Cache", None)
    if not (isinstance(function_cache, type) and isinstance(base, type)
            and issubclass(function_cache, base)):
        return "numba.core.caching.FunctionCache is missing or no longer a _Cache"
    expected = {
        "__init__": ["self", "py_func"],
        "_index_key": ["self", "sig", "codegen"],
        "load_overload": ["self", "sig", "target_context"],
        "save_overload": ["self", "sig", "data"],
    }
    for name, parameters in expected.items():
        method = getattr(function_cache, name, None)
        try:
            found = _parameters(method)
        except (TypeError, ValueError):
            found = None
        if found != parameters:
            return (f"FunctionCache.{name} takes {found}, expected "
                    f"({', '.join(parameters)})")
    try:
        codegen = cpu_target.target_context.codegen()
        magic = codegen.magic_tuple()
        sig = (types.SimpleNamespace(),)
        key = function_cache._index_key(types.SimpleNamespace(_py_func=_probe), sig, codegen)
    except Exception as exc:  # noqa: BLE001 - any failure means the internals changed
        return f"FunctionCache._index_key no longer works as expected ({exc!r})"
    if not (isinstance(key, tuple) and len(key) == 3 and key[0] is sig and key[1] == magic
            and isinstance(key[2], tuple) and len(key[2]) == 2):
        return ("Numba's cache key is no longer (signature, codegen.magic_tuple(), "
                "(bytecode hash, closure hash))")
    probe = njit(_probe)
    if not isinstance(getattr(probe, "_cache", None), base):
        return "a CPU dispatcher no longer keeps its cache in the attribute _cache"
    try:
        compile_source = inspect.getsource(dispatcher.Dispatcher.compile)
    except (OSError, TypeError):
        compile_source = None  # no source installed: the attribute check above stands
    if compile_source is not None and not (
            "self._cache.load_overload" in compile_source
            and "self._cache.save_overload" in compile_source):
        return "Dispatcher.compile no longer loads and saves through self._cache"
    stats = probe.stats
    if not (hasattr(stats, "cache_hits") and hasattr(stats, "cache_misses")):
        return "a dispatcher's stats no longer count cache_hits and cache_misses"
    if not isinstance(getattr(probe, "overloads", None), dict):
        return "a dispatcher no longer keeps what it compiled in the dict overloads"
    return None


@functools.lru_cache(maxsize=None)
def _sources_digest():
    here = pathlib.Path(__file__).parent
    digest = hashlib.sha256()
    for name in _KERNEL_SOURCES:
        digest.update(name.encode())
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _variant_cache_class():
    from numba.core.caching import FunctionCache

    class VariantCache(FunctionCache):
        """Numba's on-disk cache, keyed on the variant instead of the closure's cells."""

        def __init__(self, py_func, variant):
            self._variant = variant
            super().__init__(py_func)

        def _index_key(self, sig, codegen):
            return sig, codegen.magic_tuple(), self._variant_key()

        def _variant_key(self):
            code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
            return code, repr(tuple(self._variant)), _sources_digest()

        def variant_lock(self):
            """The lock file of this variant's first compile."""
            digest = hashlib.sha256(repr(self._variant_key()).encode()).hexdigest()[:24]
            return os.path.join(self.cache_path, f"nbxent-{digest}.lock")

        def save_overload(self, sig, data):
            with _file_lock(os.path.join(self.cache_path, "nbxent-index.lock")):
                super().save_overload(sig, data)

    return VariantCache


@contextlib.contextmanager
def _file_lock(path):
    """An exclusive advisory lock on the file ``path`` for the block; none without
    ``fcntl`` or where the file cannot be opened."""
    try:
        handle = open(path, "a") if fcntl is not None else None
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def first_call(kernel):
    """Around a call of ``kernel`` (from ``cached``): until it has compiled or loaded a
    signature in this process, its variant's lock, so that processes sharing the cache
    compile each variant once (the module docstring)."""
    cache = getattr(kernel, "_cache", None)
    if not isinstance(cache, _variant_cache_class()) or kernel.overloads:
        yield
        return
    with _file_lock(cache.variant_lock()):
        yield


def way_key(variant, way):
    """The key, for ``named_for`` and ``cached``, of a variant's block function number
    ``way`` (``nbxent.cpu.launch.BlockKernel``): the variant itself for the first (the
    only one most kernels have), else the variant and ``way``."""
    return tuple(variant) + ((way,) if way else ())


def named_for(variant):
    """A decorator, under ``@njit``, that gives a kernel function of ``variant`` a name of
    the variant's own: its ``__qualname__`` plus a digest of the variant.

    Numba names a compiled function after its qualified name and a counter of the
    process that compiled it, and a process that loads two cached kernels whose
    functions have one name links both calls to the first it loaded. The variants
    of one kernel share their functions' qualified names, and processes compiling
    in the same order count alike: a loss+grad kernel compiled in one process and a
    loss kernel compiled in another both named their tile body ``tile_body`` number
    10, and a third process that loaded the loss kernel first ran the loss's body for
    the gradient, which it never wrote. Every function a kernel compiles apart (not
    inlined) and builds per variant takes this decorator.
    """
    tag = hashlib.sha256(repr(tuple(variant)).encode()).hexdigest()[:16]

    def rename(function):
        function.__qualname__ = f"{function.__qualname__}_{tag}"
        return function

    return rename


def cached(variant, kernel):
    """``kernel`` (a CPU dispatcher built without ``cache=True``) with its on-disk
    cache keyed on ``variant``; unchanged, after one warning, where that cannot be
    done (it then compiles in every process)."""
    problem = internals_problem()
    if problem is not None:
        warn_once("numba-cache", (
            f"nbxent: the on-disk cache of the CPU kernels is off: {problem} in "
            f"{describe('numba')}. Each process compiles the kernels it uses again "
            "(seconds per kernel); results are unaffected."))
        return kernel
    try:
        kernel._cache = _variant_cache_class()(kernel.py_func, variant)
    except Exception as exc:  # noqa: BLE001 - e.g. no writable cache directory
        warn_once("numba-cache-setup", (
            f"nbxent: the on-disk cache of the CPU kernels is off ({exc}). Each process "
            "compiles the kernels it uses again; set NUMBA_CACHE_DIR to a writable "
            "directory to cache them."))
    return kernel
