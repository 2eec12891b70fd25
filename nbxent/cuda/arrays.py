"""The caller's array kind in and out, and the stream every launch goes on.

Three kinds of device array reach the backend: CuPy arrays, Numba device
arrays (``numba.cuda.to_device``), and the simulator's stand-in for the latter.
Any other ``__cuda_array_interface__`` object is wrapped as a Numba device
array by ``backend.asarray``. Results are allocated in the kind of the logits.

Kernels always receive flat 1-D Numba views of the caller's memory (built from
``__cuda_array_interface__`` without its stream, so nothing is synchronised) and
an element offset into them: strided, broadcast and reversed views all address
the same buffer.
"""

import sys
from functools import lru_cache

import numpy as np
from numba import cuda

from . import _sim


def is_cupy(x):
    """True for a CuPy array; never imports CuPy (a module nobody imported can't be x's type)."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(x, cupy.ndarray)


@lru_cache(maxsize=None)
def _external_stream(ptr):
    return cuda.external_stream(ptr)


def _numba_stream(ptr):
    """The Numba stream for a raw ``cudaStream_t`` pointer; 0 is the legacy default stream."""
    return 0 if ptr == 0 or _sim.SIMULATED else _external_stream(ptr)


class Launch:
    """Where one call allocates and launches: the caller's kind and stream.

    ``stream`` (the plan's): None means the current CuPy stream when CuPy is
    imported, else the legacy default stream; a CuPy stream (``.ptr``), a Numba
    stream (``.handle``) or a raw pointer (int) is used as given.
    """

    def __init__(self, like, stream=None):
        if is_cupy(like):
            self.kind = "cupy"
        elif _sim.is_sim_array(like):
            self.kind = "sim"
        else:
            self.kind = "numba"
        self.cupy_stream = None
        if self.kind == "sim":
            self.stream = 0
            return
        cupy = sys.modules.get("cupy")
        if stream is None:
            ptr = cupy.cuda.get_current_stream().ptr if cupy is not None else 0
            self.stream = _numba_stream(ptr)
        elif hasattr(stream, "ptr"):            # a CuPy stream
            ptr = stream.ptr
            self.stream = _numba_stream(ptr)
        elif hasattr(stream, "handle"):         # a Numba stream
            ptr = int(getattr(stream.handle, "value", stream.handle) or 0)
            self.stream = stream
        else:
            ptr = int(stream)
            self.stream = _numba_stream(ptr)
        if self.kind == "cupy":
            current = cupy.cuda.get_current_stream()
            self.cupy_stream = current if current.ptr == ptr else cupy.cuda.ExternalStream(ptr)

    # ------------------------------------------------------------ allocation

    def _cupy(self, make, shape, dtype):
        with self.cupy_stream:
            return make(shape, dtype)

    def empty(self, shape, dtype):
        """An uninitialised array of the caller's kind, ordered on the launch stream."""
        if self.kind == "cupy":
            return self._cupy(sys.modules["cupy"].empty, shape, dtype)
        if self.kind == "sim":
            return cuda.device_array(shape, dtype)
        return cuda.device_array(shape, dtype, stream=self.stream)

    def zeros(self, shape, dtype):
        """A zero-filled array of the caller's kind (a memset on the launch stream)."""
        if self.kind == "cupy":
            return self._cupy(sys.modules["cupy"].zeros, shape, dtype)
        if self.kind == "sim":
            return _sim.sim_zeros(shape, dtype)
        array = cuda.device_array(shape, dtype, stream=self.stream)
        from numba.cuda.cudadrv.driver import device_memset
        device_memset(array, 0, array.nbytes, stream=self.stream)
        return array

    def full(self, shape, dtype, value):
        """An array filled with ``value`` (edge cases only: empty batches)."""
        if self.kind == "cupy":
            with self.cupy_stream:
                return sys.modules["cupy"].full(shape, value, dtype)
        if self.kind == "sim":
            return _sim.sim_full(shape, dtype, value)
        return cuda.to_device(np.full(shape, value, dtype), stream=self.stream)

    def read(self, array):
        """``array`` on the host, after the launch stream reaches it (a host sync)."""
        if self.kind == "cupy":
            return array.get(stream=self.cupy_stream)
        if self.kind == "sim":
            return array.copy_to_host()
        host = array.copy_to_host(stream=self.stream)
        if self.stream != 0:
            self.stream.synchronize()
        return host

    # ------------------------------------------------------------ kernel views

    def flat(self, array, shape, strides):
        """(1-D Numba view, element offset) covering every element a strided view reaches."""
        dtype = np.dtype(array.dtype)
        lo = sum((n - 1) * s for n, s in zip(shape, strides) if s < 0 and n > 0)
        hi = sum((n - 1) * s for n, s in zip(shape, strides) if s > 0 and n > 0)
        count = hi - lo + 1
        if self.kind == "sim":
            return _sim.sim_flat(array, lo * dtype.itemsize, count, dtype), -lo
        ptr = array.__cuda_array_interface__["data"][0] + lo * dtype.itemsize
        desc = {"shape": (count,), "strides": None, "typestr": dtype.str,
                "data": (ptr, False), "version": 3}
        return cuda.from_cuda_array_interface(desc, owner=array, sync=False), -lo

    def flat_all(self, array):
        """Flat view of a whole array (as allocated here: C-contiguous)."""
        view, _ = self.flat(array, (max(1, int(np.prod(array.shape))),), (1,))
        return view
