"""What Numba compiles the CPU kernels for: LLVM's CPU name and the features it enables.

``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES`` override the host's, as they do for Numba
(both are needed to build, say, AVX2 code on an AVX-512 machine; ``NUMBA_CPU_NAME=generic``
alone builds the baseline of the architecture, x86-64's SSE2).
"""

import platform

_X86_64 = ("x86_64", "amd64")
_X86 = _X86_64 + ("i386", "i686", "x86")


def cpu_name():
    """LLVM's name of the CPU the kernels are compiled for (``znver4``, ``haswell``)."""
    import llvmlite.binding as llvm
    from numba.core import config

    return config.CPU_NAME or llvm.get_host_cpu_name()


def enabled_features():
    """The LLVM feature names (``avx2``, ``fma``, ...) the kernels are compiled with."""
    import llvmlite.binding as llvm
    from numba.core import config

    features = config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    if platform.machine().lower() in _X86_64:
        enabled |= {"sse", "sse2"}  # x86-64's baseline, which LLVM does not list for "generic"
    return enabled


def fuses_multiply_add():
    """Whether a contracted ``a * b + c`` becomes one instruction with one rounding: on
    x86 only with the ``fma`` feature (Haswell and Piledriver on); AArch64, POWER and
    RISC-V's float extensions always have it.

    >>> fuses_multiply_add() in (True, False)
    True
    """
    if platform.machine().lower() in _X86:
        return "fma" in enabled_features()
    return True
