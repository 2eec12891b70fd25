"""Every difference between the CUDA simulator and a real GPU, in one place.

Under ``NUMBA_ENABLE_CUDASIM=1`` numba runs ``@cuda.jit`` kernels as Python,
one OS thread per CUDA thread. It lacks warp shuffles, ``as_cuda_array`` /
``from_cuda_array_interface``, and its device arrays (``FakeCUDAArray``) wrap a
NumPy array without exposing ``__cuda_array_interface__``. The kernels call
``shfl_xor4`` from here; this module gives it a real body on the GPU and a
block-barrier stand-in under the simulator, so the kernel source is the same.
"""

import math
import threading

import numpy as np
from numba import config, cuda

SIMULATED = bool(config.ENABLE_CUDASIM)

_FULL_MASK = 0xFFFFFFFF

if SIMULATED:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    def shfl_xor4(a, b, c, d, offset):
        """Four values of the lane ``lane ^ offset`` (simulator stand-in).

        Implemented with two block barriers: exact for the kernels here, which
        call it uniformly across the whole block (a stronger condition than a
        real shuffle needs, and one the kernels keep on purpose).
        """
        thread = threading.current_thread()
        exchange = thread._manager.__dict__.setdefault("_nbxent_exchange", {})
        me = thread.thread_id
        exchange[me] = (a, b, c, d)
        thread.syncthreads()
        partner = exchange[me ^ offset]
        thread.syncthreads()
        return partner
else:
    FakeCUDAArray = None

    @cuda.jit(device=True, inline="always")
    def shfl_xor4(a, b, c, d, offset):
        """Four values of the lane ``lane ^ offset`` of this warp (butterfly step)."""
        return (cuda.shfl_xor_sync(_FULL_MASK, a, offset),
                cuda.shfl_xor_sync(_FULL_MASK, b, offset),
                cuda.shfl_xor_sync(_FULL_MASK, c, offset),
                cuda.shfl_xor_sync(_FULL_MASK, d, offset))


if SIMULATED:
    def log(x):
        """Natural log with IEEE results (log 0 = -inf), as on the GPU; Python's raises."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return type(x)(np.log(x)) if isinstance(x, np.generic) else np.log(x)
else:
    @cuda.jit(device=True, inline="always")
    def log(x):
        """Natural log (libdevice)."""
        return math.log(x)


def is_sim_array(x):
    """True for the simulator's device array type."""
    return SIMULATED and isinstance(x, FakeCUDAArray)


def sim_flat(x, lo_bytes, count, dtype):
    """A 1-D simulator device array of ``count`` elements at ``data + lo_bytes`` of ``x``."""
    host = x._ary
    ptr = host.__array_interface__["data"][0] + lo_bytes

    class _Buffer:
        __array_interface__ = {"data": (ptr, False), "shape": (count,),
                               "typestr": np.dtype(dtype).str, "version": 3}
        owner = host

    return FakeCUDAArray(np.asarray(_Buffer()))


def sim_zeros(shape, dtype):
    """A zero-filled simulator device array."""
    return cuda.to_device(np.zeros(shape, dtype))


def sim_full(shape, dtype, value):
    """A simulator device array filled with ``value``."""
    return cuda.to_device(np.full(shape, value, dtype))


def multiprocessor_count():
    """SM count of the current device; a small stand-in under the simulator."""
    if SIMULATED:
        return 4
    return cuda.get_current_device().MULTIPROCESSOR_COUNT


def _lock_shared_allocation():
    """Make the simulator's shared-array allocation thread-safe.

    ``FakeCUDAShared.array`` looks an allocation up by the caller's source line
    and creates it when missing, without a lock: two threads arriving together
    can each get a different array (a silent, timing-dependent wrong result that
    a short ``sys.setswitchinterval`` makes frequent). Same lookup, under a lock.
    """
    import sys
    import traceback

    from numba.core import types
    from numba.np import numpy_support
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    if getattr(FakeCUDAShared.array, "_nbxent_locked", False):
        return
    unlocked = FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return unlocked(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]
        with lock:
            allocation = self._allocations.get(caller)
            if allocation is None:
                allocation = self._allocations[caller] = np.empty(shape, dtype)
        return allocation

    array._nbxent_locked = True
    FakeCUDAShared.array = array


if SIMULATED:
    _lock_shared_allocation()
