"""Every difference between the CUDA simulator and a real GPU, in one place.

Under ``NUMBA_ENABLE_CUDASIM=1`` numba runs ``@cuda.jit`` kernels as Python,
one OS thread per CUDA thread. It lacks warp shuffles, ``as_cuda_array`` /
``from_cuda_array_interface``, and its device arrays (``FakeCUDAArray``) wrap a
NumPy array without exposing ``__cuda_array_interface__``. The kernels call
``shfl_xor4`` from here; this module gives it a real body on the GPU and a
block-barrier stand-in under the simulator, so the kernel source is the same.

The stand-ins use private parts of the simulator. Under the simulator this
module checks them first (:func:`simulator_problems`): importing it raises a
``RuntimeError`` naming the numba-cuda version and the tested range when the
shuffle stand-in or the device-array views cannot work, and warns when only the
shared-array lock cannot be installed.
"""

import inspect
import math
import threading
import types

import numpy as np
from numba import config, cuda

from .._versions import describe, warn_once

SIMULATED = bool(config.ENABLE_CUDASIM)

_FULL_MASK = 0xFFFFFFFF


def simulator_problems():
    """What numba-cuda's simulator lacks of what the stand-ins here rely on.

    Returns ``(essential, shared_lock)``, two lists of sentences, empty when all
    is as expected. Essential (the shuffle stand-in and the device-array views
    need them): ``FakeCUDAArray(ary)`` keeps ``ary`` as ``_ary``; a simulated
    thread is a ``BlockThread(f, manager, blockIdx, threadIdx, debug)`` with
    ``_manager``, a linear ``thread_id`` and ``syncthreads()``. For the
    thread-safe shared arrays: ``FakeCUDAShared(dynshared_size).array(shape,
    dtype, alignment=None)`` keeps its allocations in the dict ``_allocations``.
    Static checks; :func:`probe` runs the stand-ins in a simulated kernel.
    """
    essential, shared_lock = [], []
    try:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as array_class
        from numba.cuda.simulator.kernel import BlockThread
        from numba.cuda.simulator.kernelapi import FakeCUDAShared
    except ImportError as exc:
        return [f"the simulator's classes do not import ({exc})"], []
    host = np.zeros(2)
    if getattr(array_class(host), "_ary", None) is not host:
        essential.append("FakeCUDAArray(ary) no longer keeps ary as _ary")
    if _parameters(BlockThread.__init__) != ["self", "f", "manager", "blockIdx", "threadIdx",
                                              "debug"]:
        essential.append(f"BlockThread takes {_parameters(BlockThread.__init__)}, expected "
                         "(f, manager, blockIdx, threadIdx, debug)")
    else:
        manager = types.SimpleNamespace(_block_dim=(4, 2, 1))
        try:
            thread = BlockThread(lambda: None, manager, (0, 0, 0), (1, 1, 0), False)
        except Exception as exc:  # noqa: BLE001 - any failure means the class changed
            essential.append(f"BlockThread cannot be made as expected ({exc!r})")
        else:
            if getattr(thread, "_manager", None) is not manager:
                essential.append("BlockThread no longer keeps its block in _manager")
            if getattr(thread, "thread_id", None) != 5:
                essential.append("BlockThread.thread_id is no longer the linear thread index")
            if not callable(getattr(thread, "syncthreads", None)):
                essential.append("BlockThread has no syncthreads()")
    if _parameters(getattr(FakeCUDAShared, "array", None)) != ["self", "shape", "dtype",
                                                                "alignment"]:
        shared_lock.append("FakeCUDAShared.array no longer takes (shape, dtype, alignment)")
    try:
        allocations = FakeCUDAShared(0)._allocations
    except Exception:  # noqa: BLE001 - any failure means the class changed
        allocations = None
    if not isinstance(allocations, dict):
        shared_lock.append("FakeCUDAShared no longer keeps its allocations in _allocations")
    return essential, shared_lock


def _parameters(function):
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


def _unsupported(problems):
    return (f"{'; '.join(problems)} in {describe('numba-cuda')} with {describe('numba')}")


if SIMULATED:
    _essential, _shared_lock = simulator_problems()
    if _essential:
        raise RuntimeError(
            "nbxent cannot run its CUDA kernels in this CUDA simulator "
            f"(NUMBA_ENABLE_CUDASIM=1): {_unsupported(_essential)}. Install a tested "
            "numba-cuda, or run without the simulator.")

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
    def log1p(x):
        """log(1 + x) with IEEE results (log1p(-1) = -inf), as on the GPU; Python's raises."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return type(x)(np.log1p(x)) if isinstance(x, np.generic) else np.log1p(x)
else:
    @cuda.jit(device=True, inline="always")
    def log1p(x):
        """log(1 + x) (libdevice)."""
        return math.log1p(x)


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


def probe():
    """Run the simulator stand-ins in a small simulated kernel; raise AssertionError
    when a result is wrong. (For the tests: it launches a kernel.)"""
    threads = 8

    @cuda.jit
    def exchange(out, shared_out):
        lane = cuda.threadIdx.x
        a, b, c, d = shfl_xor4(lane, 10 * lane, 100 * lane, 1000 * lane, 3)
        out[lane, 0] = a
        out[lane, 1] = b
        out[lane, 2] = c
        out[lane, 3] = d
        shared = cuda.shared.array(8, np.int64)
        shared[lane] = lane
        cuda.syncthreads()
        shared_out[lane] = shared[(lane + 1) % 8]

    out = cuda.to_device(np.zeros((threads, 4), np.int64))
    shared_out = cuda.to_device(np.zeros(threads, np.int64))
    exchange[1, threads](out, shared_out)
    partner = np.arange(threads) ^ 3
    expected = partner[:, None] * np.array([1, 10, 100, 1000])
    got = out.copy_to_host()
    assert (got == expected).all(), f"shfl_xor4 stand-in: got {got.tolist()}"
    got = shared_out.copy_to_host()
    assert (got == (np.arange(threads) + 1) % threads).all(), (
        f"shared array: got {got.tolist()}")
    view = sim_flat(cuda.to_device(np.arange(6.0)), 8, 3, np.float64)
    assert is_sim_array(view) and view.copy_to_host().tolist() == [1.0, 2.0, 3.0], (
        "sim_flat view")


if SIMULATED:
    if _shared_lock:
        warn_once("simulator-shared-lock", (
            "nbxent: the CUDA simulator's shared arrays are left unlocked: "
            f"{_unsupported(_shared_lock)}. Simulated kernels may race on "
            "cuda.shared.array and give wrong results."))
    else:
        _lock_shared_allocation()
