"""The C library's allocator: large freed blocks kept for reuse, not unmapped.

glibc (Linux) serves a block above its mmap threshold (128 KiB, raised as such blocks
are freed, up to 32 MiB) with new pages from the operating system and unmaps it when
it is freed. An array of a gradient's size allocated anew at every training step then
costs a page fault per page, each page zeroed by the operating system, at every step.
nbxent's own results avoid that (``nbxent.cpu.recycling``), but not arrays that other
libraries allocate: JAX's outputs on the CPU (XLA's buffers, among them the gradient
``nbxent.jax`` writes) and PyTorch's CPU tensors (benchmarks/RESULTS.md measures both).
``keep_freed_memory`` asks glibc to keep such blocks in the process for reuse, as a
caching allocator (tcmalloc, jemalloc) would; the same settings can come from the
environment before Python starts (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``).
"""

import ctypes
import os
import platform

# mallopt's parameters (malloc.h) and the values set: blocks up to 1 GiB come from the
# heap, and up to 2 GiB of freed memory at the heap's top is kept (mallopt takes an int).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = (1 << 31) - 1
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES",
                "LD_PRELOAD")

_kept = False  # whether keep_freed_memory() has applied its settings in this process


def keep_freed_memory():
    """Have the C library keep large freed blocks in this process for reuse, for the
    rest of the process; glibc only (Linux).

    Worth it where arrays of the logits' size are allocated at every step by code
    that does not reuse them: ``nbxent.jax`` under ``jax.jit`` (XLA allocates each
    call's gradient), PyTorch's CPU tensors. What it costs: memory freed stays with
    the process, so its resident size stays near its peak (blocks above 1 GiB are
    still returned). It changes no result.

    Returns True where the settings were applied, False where the C library is not
    glibc (musl, macOS, Windows), where nothing is changed.

    Examples
    --------
    >>> import nbxent
    >>> nbxent.keep_freed_memory()  # doctest: +SKIP
    True
    """
    global _kept
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the process's own C library
    applied = (libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
               and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1)
    _kept = _kept or applied
    return applied


def policy():
    """How this process's C allocator treats large freed blocks, in words (for reports):
    kept by ``keep_freed_memory``, set by the environment, or the C library's default."""
    if _kept:
        return "large freed blocks kept for reuse (nbxent.keep_freed_memory)"
    settings = [f"{name}={os.environ[name]}" for name in _ENVIRONMENT if os.environ.get(name)]
    if settings:
        return "as the environment sets it (" + ", ".join(settings) + ")"
    return f"{platform.libc_ver()[0] or 'the C library'}'s default (large freed blocks unmapped)"
