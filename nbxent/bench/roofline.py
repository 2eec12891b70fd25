"""The memory-bandwidth limit, measured on the device being benchmarked, in the same run.

Two probes per backend, each over buffers far larger than any cache (on the CPU: 4
times the largest one Linux reports, at least 256 MiB):

- read: sum a buffer (bytes counted: the buffer once). The limit of op "loss",
  which reads the logits and writes next to nothing.
- copy: copy one buffer into another (bytes counted: read + written). The limit
  of op "loss+grad", which reads the logits and writes a gradient as large.

CPU probes are parallel Numba kernels run on the threads the benchmark uses;
GPU probes are CuPy's copy and sum, timed with CUDA events. Each figure is the
best of several runs: the bandwidth the machine can give, not its average.

Numba turns the CPU copy loop into ``memcpy``, which on large buffers streams
its stores past the cache. A kernel that writes with ordinary stores also
reads each destination line before writing it (3 bytes moved per 2 counted),
so on such CPUs about 67 % of the copy figure is its practical ceiling.
"""

import os
from dataclasses import dataclass
from time import perf_counter

import numba
import numpy as np

from . import machine


@dataclass(frozen=True)
class Bandwidth:
    """Measured bandwidth of one device, in GB/s (1e9 bytes per second)."""
    read_GBps: float
    copy_GBps: float
    buffer_bytes: int
    runs: int

    def limit_for(self, op):
        """The bandwidth that bounds ``op``: read for "loss", copy for "loss+grad"."""
        return self.read_GBps if op == "loss" else self.copy_GBps


@numba.njit(parallel=True, cache=True)
def _copy_kernel(source, destination):
    for i in numba.prange(source.size):
        destination[i] = source[i]


# reassoc lets LLVM keep several partial sums in vector registers: without it
# one dependent add chain per thread, not memory, would set the speed.
@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "nsz"})
def _sum_kernel(source):
    total = 0.0
    for i in numba.prange(source.size):
        total += source[i]
    return total


def _best_seconds(run, runs, clock):
    return min(clock(run) for _ in range(runs))


def _host_seconds(run):
    start = perf_counter()
    run()
    return perf_counter() - start


def measure_cpu(buffer_bytes=256 << 20, runs=5):
    """Read and copy bandwidth of this machine's memory on Numba's current threads.

    Examples
    --------
    >>> bw = measure_cpu(buffer_bytes=16 << 20, runs=2)
    >>> bw.read_GBps > 0 and bw.copy_GBps > 0
    True
    """
    source = np.ones(buffer_bytes // 8)
    destination = np.zeros_like(source)       # zeros: touch the pages before timing
    _copy_kernel(source, destination)         # compiles (or loads the cache), warms up
    _sum_kernel(source)
    copy_s = _best_seconds(lambda: _copy_kernel(source, destination), runs, _host_seconds)
    read_s = _best_seconds(lambda: _sum_kernel(source), runs, _host_seconds)
    return Bandwidth(read_GBps=source.nbytes / read_s / 1e9,
                     copy_GBps=2 * source.nbytes / copy_s / 1e9,
                     buffer_bytes=source.nbytes, runs=runs)


def measure_cuda(buffer_bytes=1 << 30, runs=10):
    """Read and copy bandwidth of the current GPU's memory, by CuPy kernels and CUDA events."""
    import cupy

    source = cupy.ones(buffer_bytes // 8, dtype=cupy.float64)
    destination = cupy.empty_like(source)
    total = cupy.empty((), dtype=cupy.float64)

    def event_seconds(run):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        run()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) / 1e3

    def copy():
        cupy.copyto(destination, source)

    def read():
        cupy.sum(source, out=total)

    copy()
    read()
    copy_s = _best_seconds(copy, runs, event_seconds)
    read_s = _best_seconds(read, runs, event_seconds)
    return Bandwidth(read_GBps=source.nbytes / read_s / 1e9,
                     copy_GBps=2 * source.nbytes / copy_s / 1e9,
                     buffer_bytes=source.nbytes, runs=runs)


def cpu_buffer_bytes(cache_bytes, memory_bytes):
    """The CPU probe's buffer size: 256 MiB, or 4 times the largest cache where that is
    more (a server's last-level cache holds hundreds of MiB: a buffer not far larger
    stays partly in it between runs and reads up to 1.7 times faster than memory), but
    at most an eighth of the memory (the copy holds two buffers).

    >>> cpu_buffer_bytes(32 << 20, 64 << 30) >> 20, cpu_buffer_bytes(300 << 20, 64 << 30) >> 20
    (256, 1200)
    """
    buffer = max(256 << 20, 4 * (cache_bytes or 0))
    return min(buffer, memory_bytes // 8) if memory_bytes else buffer


def _memory_bytes():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):   # not on Windows
        return None


def measure(backend, quick=False):
    """Bandwidth of ``backend`` ("cpu" or "cuda"); ``quick`` uses smaller buffers (which
    a large cache may hold) and fewer runs."""
    if backend == "cuda":
        return measure_cuda(buffer_bytes=(256 << 20) if quick else (1 << 30))
    if quick:
        return measure_cpu(buffer_bytes=64 << 20, runs=3)
    buffer = cpu_buffer_bytes(machine.largest_cache_bytes(), _memory_bytes())
    return measure_cpu(buffer_bytes=buffer, runs=5)
