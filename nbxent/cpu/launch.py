"""How a CPU kernel runs on Numba's threads: one ``prange`` loop for every kernel variant.

A variant's kernel runs a *block function* ``block(b, n_blocks, phase, body, *ARGUMENTS)``
that does the work of block ``b`` of ``n_blocks`` (in ``phase``, for kernels that need two
passes over all blocks), the tile kernel's most of it in its *body*, a function compiled
apart that it calls for each tile (the row kernel's body is None: it calls its statistics
directly). ``run_blocks`` calls the block function for every block, each thread running its
share and then helping with the others', through a function pointer (Numba's first-class
functions), so the loop is compiled once per argument types, shared by every variant and
kept in Numba's disk cache; each variant compiles only its block functions and bodies (the
tile kernel has two of each, for two ways of cutting the work, each compiled on its first
call).

A ``prange`` loop of a variant's own cost its first call 2-4 seconds of the 6-14 it took
(benchmarks/RESULTS.md): Numba compiles the loop's body as a function apart, then optimises
it, and the kernel around it, again with everything they call linked in. The tile body
reaches its block function as a pointer too, for the same reason: called directly, it was
linked into the block function and optimised and compiled to machine code a second time
there. (The row kernel's statistics, called so, ran its loss+grad 3-6 % slower on two
threads: it keeps the direct call. benchmarks/RESULTS.md.)
"""

import numba
import numpy as np
from numba import njit, prange
# (Numba's own key for an argument's type, as its dispatcher computes it at every call:
# a microsecond or two for all the kernel's arguments.)
from numba._dispatcher import compute_fingerprint
from numba.core.types.function_type import CompileResultWAP

from .._numba_inlining import copies_skipped
from .bits import fetch_add

# What every kernel is given, in order (nbxent/cpu/arguments.py names them), after
# (b, n_blocks, phase): the row kernel's per-item statistics, chunk shifts and per-block
# staging chunks last (``plan``'s; empty for the tile kernel).
ARGUMENTS = ("x", "x_geom", "target", "t_geom", "weight", "grad_output", "g_geom", "out",
             "out_geom", "row_value", "row_lse", "row_metrics", "shape", "options", "part",
             "chunk_shifts", "staged")
SHAPE = ARGUMENTS.index("shape")
# Blocks a call is cut into per thread (``run_blocks`` says how the threads take them):
# enough that a slow thread's last block is a small share of the call; fewer where a block
# would hold fewer than MIN_BLOCK_ITEMS work items, whose work would then carry the block's
# own setup (its scratch, its first item's cache misses).
BLOCKS_PER_THREAD = 4
MIN_BLOCK_ITEMS = 64


@njit(parallel=True, cache=True)
def run_blocks(block, body, n_blocks, n_phases, n_threads, x, x_geom, target, t_geom, weight,
               grad_output, g_geom, out, out_geom, row_value, row_lse, row_metrics, shape,
               options, part, chunk_shifts, staged):
    """``block(b, n_blocks, phase, body, ...)`` for every b in [0, n_blocks), over ``n_threads``
    threads, for each phase in turn. Thread t runs the blocks of its t-th share, in
    order (those it ran in the call before, whose last data its caches may still hold), then
    those not yet taken of the other shares: Numba's ``prange`` gives each thread its share
    up front, and the call would wait for the slowest (a core busy with other work, or a
    slower core)."""
    # Blocks of each phase's share taken so far, by its thread or another.
    taken = np.zeros((n_phases, n_threads), np.int64)
    for phase in range(n_phases):
        for t in prange(n_threads):
            for other in range(n_threads):
                share = (t + other) % n_threads
                first = share * n_blocks // n_threads
                end = (share + 1) * n_blocks // n_threads
                b = first + fetch_add(taken[phase], share, 1)
                while b < end:
                    block(b, n_blocks, np.int64(phase), body, x, x_geom, target, t_geom, weight,
                          grad_output, g_geom, out, out_geom, row_value, row_lse,
                          row_metrics, shape, options, part, chunk_shifts, staged)
                    b = first + fetch_add(taken[phase], share, 1)


def blocks_for(n_items):
    """Blocks for ``n_items`` work items: up to ``BLOCKS_PER_THREAD`` per thread
    (``numba.get_num_threads()``, as ``numba.set_num_threads`` left it in the calling
    thread) while each holds ``MIN_BLOCK_ITEMS`` items, at least one per thread, one on a
    single thread, at most one per item. A block allocates its scratch once. (The blocks
    group the work items; they do not change them, nor the order of any sum: results do
    not depend on the threads, nor on which thread ran which block.)
    """
    threads = numba.get_num_threads()
    if threads == 1:
        return min(n_items, 1)
    per_thread = min(BLOCKS_PER_THREAD, max(1, n_items // (MIN_BLOCK_ITEMS * threads)))
    return min(n_items, per_thread * threads)


class BlockKernel:
    """A variant's kernel: its block functions ``blocks`` and their ``bodies`` (dispatchers,
    each compiled on its first call, or None for a block function without one), of which
    ``pick(shape)`` chooses the pair a call runs, for the blocks that ``plan(shape)`` gives:
    ``(n_blocks, n_phases, part, chunk_shifts, staged)``. ``body_types[way](argument_types)``
    is the signature of body ``way`` for the types of ``ARGUMENTS``.

    Called with the kernels' arguments up to ``options``.
    """

    def __init__(self, blocks, bodies, body_types, plan, pick):
        self.blocks = blocks
        self.bodies = bodies
        self.body_types = body_types
        self.plan = plan
        self.pick = pick
        self._runs = {}  # (way, argument types) -> (its body's and block's pointers, loop)

    @property
    def functions(self):
        """Every dispatcher of the kernel: block functions and bodies."""
        return self.blocks + tuple(body for body in self.bodies if body is not None)

    def blocks_for(self, shape):
        """The block function that runs ``shape`` (its ``overloads`` and disk cache)."""
        return self.blocks[self.pick(shape)]

    def __call__(self, *arguments):
        way = self.pick(arguments[SHAPE])
        n_blocks, n_phases, part, chunk_shifts, staged = self.plan(arguments[SHAPE])
        arguments += (part, chunk_shifts, staged)
        key = (way,) + tuple(map(compute_fingerprint, arguments))
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = self._compile(way, arguments)
        function, body, loop = run
        loop(function, body, n_blocks, n_phases, min(numba.get_num_threads(), n_blocks),
             *arguments)

    def _compile(self, way, arguments):
        """Block function and body ``way`` for these arguments, as function pointers, and the
        compiled loop's entry point (called directly: dispatching on a function pointer's
        type costs tens of microseconds a call)."""
        argument_types = tuple(map(numba.typeof, arguments))
        with copies_skipped():  # (the same machine code, about a fifth sooner)
            body = None if self.bodies[way] is None else self._pointer(
                self.bodies[way], self.body_types[way](argument_types))
            block_types = (numba.int64,) * 3 + (numba.typeof(body),) + argument_types
            function = self._pointer(self.blocks[way], block_types)
            loop_types = (numba.typeof(function),) + block_types[3:4] + block_types[1:3] + \
                (numba.int64,) + argument_types
            run_blocks.compile(loop_types)
            return function, body, run_blocks.overloads[loop_types].entry_point

    @staticmethod
    def _pointer(dispatcher, types):
        """``dispatcher`` compiled (or loaded) for ``types``, as a function pointer."""
        dispatcher.compile(types)
        return CompileResultWAP(dispatcher.overloads[types])
