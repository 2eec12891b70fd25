"""What the benchmark runs on: versions, CPU, threads, the GPU, and Numba's on-disk cache.

Everything here works without any CUDA package installed: the GPU probe says
why no GPU is usable instead of failing.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
from pathlib import Path

# Distributions reported, by import name; CuPy's distribution name carries the CUDA version.
VERSIONED_MODULES = ("nbxent", "numpy", "numba", "numba_cuda", "cupy", "torch", "jax", "optax",
                     "rich", "matplotlib")


def versions():
    """Installed version of each module in ``VERSIONED_MODULES`` (None when absent), and Python's."""
    dists = importlib.metadata.packages_distributions()
    found = {"python": platform.python_version()}
    for module in VERSIONED_MODULES:
        found[module] = None
        for dist in dists.get(module, [module.replace("_", "-")]):
            try:
                found[module] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    if found["nbxent"] is None:    # a source checkout that was not pip-installed
        import nbxent
        found["nbxent"] = nbxent.__version__
    return found


def cpu_name():
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# LLVM feature names of vector instruction sets, widest first, with the name users know.
_VECTOR_ISAS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sve", "SVE"),
                ("neon", "NEON"), ("sse2", "SSE2"))


def cpu_target():
    """What Numba compiles the CPU kernels for: LLVM's CPU name (``znver4``,
    ``haswell``) and the widest vector instruction set among its features.

    ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES`` override the host's, as they do for
    Numba (``nbxent.cpu.target``).
    """
    from nbxent.cpu import target

    enabled = target.enabled_features()
    isa = next((label for flag, label in _VECTOR_ISAS if flag in enabled), "no vector ISA")
    return {"name": target.cpu_name(), "vector_isa": isa}


def numba_threads():
    """Numba's threads in use and available, and the threading layer it runs parallel code on.

    The layer is only known once a parallel kernel has run: this runs the
    (cached) bandwidth probe on a tiny buffer to find out.
    """
    import numba
    import numpy as np

    from nbxent.bench.roofline import _sum_kernel

    _sum_kernel(np.ones(8))
    return {"numba": numba.get_num_threads(), "numba_max": numba.config.NUMBA_NUM_THREADS,
            "threading_layer": numba.threading_layer()}


def largest_cache_bytes(sysfs="/sys/devices/system/cpu"):
    """The size in bytes of the largest CPU cache Linux reports (the last-level cache,
    shared by the cores), or None where it reports none (other systems, some VMs).

    Data smaller than it may stay in it from one call to the next: the bandwidth probe
    sizes its buffers from it (``nbxent.bench.roofline``).

    >>> size = largest_cache_bytes()
    >>> size is None or size >= 1 << 10
    True
    """
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    largest = None
    for path in Path(sysfs).glob("cpu[0-9]*/cache/index[0-9]*/size"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if match:
            size = int(match[1]) * units.get(match[2], 1)
            largest = size if largest is None else max(largest, size)
    return largest


def load_average():
    """The 1-minute load average (processes running or waiting for a core), or None."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):     # not on Windows
        return None


def machine():
    """The machine: OS, CPU model and compile target, logical cores, its largest cache,
    load, how the C allocator treats large freed blocks, and the GPU (or why none is
    usable)."""
    from nbxent import allocator

    gpu, why_no_gpu = probe_gpu()
    return {"platform": platform.platform(), "cpu": cpu_name(), "cpu_target": cpu_target(),
            "cpu_count": os.cpu_count(), "cache_bytes": largest_cache_bytes(),
            "load_average": load_average(),
            "allocator": allocator.policy(), "gpu": gpu, "why_no_gpu": why_no_gpu}


def probe_gpu():
    """``(gpu, None)`` with the GPU's name, memory and compute capability, or ``(None, reason)``."""
    install = "pip install 'nbxent[cuda]'"
    if importlib.util.find_spec("numba_cuda") is None:
        return None, f"numba-cuda is not installed ({install})"
    if importlib.util.find_spec("cupy") is None:
        return None, f"CuPy is not installed ({install})"
    try:
        import cupy

        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
    except Exception as exc:      # CuPy raises several kinds when no driver or device is present
        return None, f"CuPy finds no usable GPU: {_first_line(exc)}"
    from numba import cuda

    if not cuda.is_available():
        return None, "numba-cuda finds no usable GPU (run `numba -s` for details)"
    return {"name": props["name"].decode(), "memory_bytes": int(props["totalGlobalMem"]),
            "compute_capability": f"{props['major']}.{props['minor']}"}, None


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ------------------------------------------------------------------ Numba's cache

def _cache_dirs(module_file):
    """The directories Numba may keep ``module_file``'s cached kernels in, in its lookup order."""
    import numba
    from numba.misc.appdirs import AppDirs

    source_dir = os.path.dirname(os.path.abspath(module_file))
    # Numba names a module's cache subdirectory "<dir name>_<sha1 of dir path>".
    subpath = f"{os.path.basename(source_dir)}_{hashlib.sha1(source_dir.encode()).hexdigest()}"
    dirs = [os.path.join(source_dir, "__pycache__"),
            os.path.join(AppDirs(appname="numba", appauthor=False).user_cache_dir, subpath)]
    if numba.config.CACHE_DIR:
        dirs.insert(0, os.path.join(numba.config.CACHE_DIR, subpath))
    return dirs


def first_calls():
    """Call nbxent once (float32 loss, then loss+grad, on 8 rows) and see what Numba did.

    Returns ``(seconds, compiled)``: the time both calls took and the name of
    each kernel Numba compiled for them, once per compilation (empty when
    every kernel came from the on-disk cache or was compiled earlier in this
    process).
    """
    from time import perf_counter

    import numpy as np
    from numba.core import event

    import nbxent

    logits = np.zeros((8, 5), np.float32)
    target = np.zeros(8, np.int64)
    start = perf_counter()
    with event.install_recorder("numba:compile") as recorder:
        nbxent.cross_entropy(logits, target)
        nbxent.cross_entropy_with_grad(logits, target)
    seconds = perf_counter() - start
    compiled = []
    for _, compile_event in recorder.buffer:
        py_func = compile_event.data["dispatcher"].py_func
        name = f"{py_func.__module__}.{py_func.__qualname__}"
        if compile_event.is_start and name.startswith("nbxent."):
            compiled.append(name)
    return seconds, compiled


def kernel_cache():
    """Numba's on-disk cache of nbxent's kernels, per source module that has any.

    A module's index files (``*.nbi``) are counted, and called stale when
    older than the module's source (Numba would then compile again).

    Returns a dict ``{module: {"index_files": n, "stale": n, "dir": path}}``.
    """
    import nbxent

    package_dir = Path(nbxent.__file__).parent
    found = {}
    for source in sorted(package_dir.rglob("*.py")):
        for directory in _cache_dirs(source):
            index_files = list(Path(directory).glob(f"{source.stem}.*.nbi"))
            if index_files:
                source_mtime = source.stat().st_mtime
                module = ".".join(source.relative_to(package_dir.parent).with_suffix("").parts)
                found[module] = {
                    "index_files": len(index_files),
                    "stale": sum(f.stat().st_mtime < source_mtime for f in index_files),
                    "dir": directory,
                }
                break
    return found
