"""Numba's ``inline="always"`` without its defensive copies of the callee's IR: the kernels
compile about a fifth faster, to the same machine code.

At every call site of an ``inline="always"`` function, Numba's ``InlineWorker.inline_function``
builds the callee's IR afresh from its bytecode and hands it to ``inline_ir``, which
deep-copies it twice, block by block, before splicing it in: once to mutate, once to return
unmutated (a return value ``inline_function``'s callers drop). A block's deep copy copies
its scope, which holds every variable of the function, so the copies grow with blocks x
variables, and nested inlining (the kernels' helpers inline helpers) copies a subtree at each
level: about a quarter of a kernel's compile time, by profile. The IR built for one call
site is used there only, so within ``inline_function`` a copy can be the IR itself.

``copies_skipped()`` does that, for the calls of ``inline_function`` made in its context
on its thread, for Numba's inliner or numba-cuda's (the same code), where their source still
reads as described: the package compiles its CPU kernels in it (``nbxent.cpu.launch``) and
launches its CUDA kernels, which compile on their first launch in a process, in it with
``cuda=True`` (``nbxent.cuda.backend``). Elsewhere, and everywhere else (``inline_ir``
called on IR kept by its caller, as typed overload inlining does; a user's own functions),
the copies stay. ``skip_copies()`` skips them for every compile of the process (the test
suite and the PTX report). ``tests/test_numba_inlining.py`` checks that a nest of inlined
helpers compiles to the same machine code either way (for the CPU, and to the same PTX for
CUDA), and that a compile outside the context still copies.
"""

import contextlib
import copy
import functools
import importlib
import inspect
import re
import threading

_INLINERS = ("numba.core.inline_closurecall", "numba.cuda.core.inline_closurecall")  # CPU, CUDA
# depth: how deep in inline_function; scoped: how deep in copies_skipped(); kept:
# copies_kept(). Per thread: another thread's compiles are not the context's.
_inside = threading.local()
_everywhere = False  # skip_copies() was called
_COPY_CALL = re.compile(r"(?<![\w.])copy\.\w+\(")


class _CopyWithinInlineFunction:
    """Stands for the ``copy`` module in an inliner's module: ``deepcopy`` returns its
    argument within ``inline_function`` (the callee's fresh IR) where copies are skipped
    (``skip_copies``, ``copies_skipped``), and copies elsewhere."""

    def __getattr__(self, name):
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value, memo=None):
        if (getattr(_inside, "depth", 0) > 0 and not getattr(_inside, "kept", False)
                and (_everywhere or getattr(_inside, "scoped", 0) > 0)):
            return value
        return copy.deepcopy(value, memo)


def _counted(inline_function):
    @functools.wraps(inline_function)
    def within(self, *args, **kwargs):
        _inside.depth = getattr(_inside, "depth", 0) + 1
        try:
            return inline_function(self, *args, **kwargs)
        finally:
            _inside.depth -= 1

    within.skips_copies = True
    return within


def _reads_as_described(module):
    """Whether the module's inliner builds the callee's IR in ``inline_function`` and
    copies it only in ``inline_ir``, with the module's ``copy``."""
    worker = module.InlineWorker
    try:
        fresh = inspect.getsource(worker.inline_function)
        copies = inspect.getsource(worker.inline_ir)
        rest = inspect.getsource(module).replace(copies, "")
    except (OSError, TypeError):
        return False
    return ("self.run_untyped_passes(function)" in fresh and "self.inline_ir(" in fresh
            and "copy.deepcopy(" in copies and not _COPY_CALL.search(rest))


@functools.lru_cache(maxsize=None)
def _installed(name):
    """Whether the inliner module ``name`` is present, reads as described and has the
    stand-in ``copy`` and the depth count (installed on the first call; memoised)."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return False
    worker = module.InlineWorker
    if not getattr(worker.inline_function, "skips_copies", False):
        if not _reads_as_described(module):
            return False
        module.copy = _CopyWithinInlineFunction()
        worker.inline_function = _counted(worker.inline_function)
    return True


def skip_copies():
    """Skip the copies in every compile of the process, in every inliner present that reads
    as described; returns the modules' names (the idempotent list of those skipping)."""
    global _everywhere
    _everywhere = True
    return [name for name in _INLINERS if _installed(name)]


@contextlib.contextmanager
def copies_skipped(cuda=False):
    """A context in which this thread's compiles skip the copies of Numba's CPU inliner,
    or with ``cuda`` numba-cuda's (where it reads as described; else it copies as before).

    >>> from numba import njit
    >>> with copies_skipped():
    ...     njit(lambda v: v + 1)(1)
    2
    """
    _installed(_INLINERS[1] if cuda else _INLINERS[0])
    _inside.scoped = getattr(_inside, "scoped", 0) + 1
    try:
        yield
    finally:
        _inside.scoped -= 1


@contextlib.contextmanager
def copies_kept():
    """A context in which the inliners copy as Numba wrote them (for the check)."""
    kept = getattr(_inside, "kept", False)
    _inside.kept = True
    try:
        yield
    finally:
        _inside.kept = kept
