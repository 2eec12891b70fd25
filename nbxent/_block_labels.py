"""Numba's block labels, kept short however many kernels a process compiles.

Numba numbers the basic blocks of the functions it compiles from one
process-wide counter (numba-cuda keeps a second one). Inlining a function
declared ``inline="always"`` adds the counter to the inlinee's labels, and an
inlinee that inlined others already has labels near the counter: the counter
doubles. A CPU kernel nests such inlining some sixty times, so after about fifty
kernels compiled in one process (a test run, a long training job trying options)
the labels are a thousand digits long and LLVM refuses the IR ("name is too long
which can result in name collisions"). Labels need only be distinct within the
function being compiled, so before a kernel's first compilation, while nothing
compiles, :func:`restart_block_labels` sets the counters back to where a fresh
process starts them.

The counters are private to Numba; where one is missing (another Numba
version), it is left alone and nothing else changes.
"""

import sys

from numba.core.compiler_lock import global_compiler_lock

# numba-cuda's compilations take Numba's lock too, so one lock covers both counters.
_COUNTER_MODULES = ("numba.core.ir_utils", "numba.cuda.core.ir_utils")


def restart_block_labels():
    """Set Numba's block-label counters to 0 unless this thread is compiling.

    The counters are reset under Numba's compiler lock, which every compilation
    holds, so no compilation is under way in any thread; inside one (this thread
    holds the lock) the labels in use must stay distinct from new ones, and
    nothing changes.
    """
    if global_compiler_lock.is_locked():
        return
    with global_compiler_lock:
        for name in _COUNTER_MODULES:
            counter = getattr(sys.modules.get(name), "_the_max_label", None)
            if hasattr(counter, "_value"):
                counter._value = 0
