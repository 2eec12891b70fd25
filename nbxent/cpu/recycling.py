"""Result arrays in recycled memory: a large result without its page faults.

A call that returns a gradient or a softmax writes every element of a new array,
and new memory from the operating system costs a page fault per page, each page
zeroed before the kernel may write it: at 16384 x 1000 float32 that is most of the
time of the kernel itself (benchmarks/RESULTS.md). A training loop asks for a
result of the same size at every step and drops the last one first, so the last
few results' buffers are kept here, and a buffer that no array refers to any more
(the caller dropped the result and every view of it) is handed out again for a
result of the same size in bytes.

What this costs: the kept buffers (``CpuSettings.recycled_outputs`` of them, each
at least ``CpuSettings.recycle_min_bytes``; smaller results come from the
allocator's heap without faults) stay allocated after the caller drops its
results, as a caching allocator's would; ``NBXENT_CPU_RECYCLED_OUTPUTS=0`` turns
the recycling off.
"""

import math
import sys
import threading

import numpy as np

_lock = threading.Lock()
_kept = []  # the buffers (uint8 arrays), the most recently handed out last


def _references(buffers, i):
    """References to ``buffers[i]``, counted the same way for every buffer."""
    return sys.getrefcount(buffers[i])


# What ``_references`` counts for a buffer that only the list refers to: every array
# made from a buffer (the result, a view of it) holds a reference to it.
_UNREFERENCED = _references([np.empty(0, np.uint8)], 0)


def empty(shape, dtype, settings):
    """``np.empty(shape, dtype)``, in a kept buffer of the same size that no array refers
    to when there is one; large arrays are kept for reuse (``settings``: a
    ``nbxent._config.CpuSettings``).

    Examples
    --------
    >>> from nbxent._config import CpuSettings
    >>> settings = CpuSettings(recycle_min_bytes=64)
    >>> first = empty((4, 8), np.float32, settings)
    >>> address = first.ctypes.data
    >>> del first
    >>> empty((8, 4), np.float32, settings).ctypes.data == address
    True
    """
    dtype = np.dtype(dtype)
    n_bytes = math.prod(shape) * dtype.itemsize  # (np.prod: 2 us a call, on every call)
    if settings.recycled_outputs <= 0 or n_bytes < settings.recycle_min_bytes:
        return np.empty(shape, dtype)
    with _lock:
        # The most recent first (its pages are likelier to be cached). (By index: a loop
        # variable, or the tuple enumerate reuses, would be one more reference.)
        for i in reversed(range(len(_kept))):
            if _kept[i].nbytes == n_bytes and _references(_kept, i) == _UNREFERENCED:
                buffer = _kept.pop(i)
                break
        else:
            buffer = np.empty(n_bytes, np.uint8)
        _kept.append(buffer)
        del _kept[:-settings.recycled_outputs]
        return buffer.view(dtype).reshape(shape)


def kept_bytes():
    """Bytes held in kept buffers, whether or not results still use them."""
    with _lock:
        return sum(buffer.nbytes for buffer in _kept)
