"""Tunables: one frozen dataclass per backend, read from the environment once.

Each backend keeps its launch parameters and thresholds in a frozen dataclass
(``CpuSettings`` here, ``nbxent.cuda.config.Settings`` for the GPU) behind a
``Tunables`` object. The first call that needs them reads the ``NBXENT_*``
environment variables (``NBXENT_CPU_`` or ``NBXENT_CUDA_`` plus the field name in
capitals, e.g. ``NBXENT_CPU_TILE_MAX_CLASSES=64``) and keeps the result: set the
variables before the first call; later changes to the environment are not seen.
The backend reads ``current()`` once per call and passes the settings to the
functions that size its launches.

Tests and benchmarks move thresholds within a block instead::

    with nbxent._config.CPU.override(tile_max_classes=16):
        ...

``override`` swaps the process-wide settings (not per thread): for tests and
benchmarks, not for code that runs calls from several threads at once.

The figures behind the defaults were measured on the development machine; they
are in benchmarks/RESULTS.md ("Figures moved from docstrings").
"""

import contextlib
import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class CpuSettings:
    """Thresholds of the CPU backend (``NBXENT_CPU_<FIELD>``)."""

    #: Fewest classes per work item when a row's classes are split over threads.
    #: Below it, the partial statistics and the second pass cost more than the
    #: idle threads they put to work.
    split_min_classes: int = 16384
    #: Work items a row's classes may be split into when rows are few: a row gets
    #: ``ceil(split_items / rows)`` of them (at most one per ``split_min_classes``).
    #: A constant, not the thread count, so that a row's partition, and with it every
    #: result bit, is the same whatever ``numba.set_num_threads`` says.
    split_items: int = 16
    #: Most classes for which rows (class axis last) go to the tile kernel: shorter
    #: rows cost more in per-row work than vectorising along them saves; beyond it
    #: the row kernel is faster (see benchmarks/RESULTS.md).
    tile_max_classes: int = 192
    #: Logits per tile of the tile kernel: a tile is staged once, then re-read by each
    #: pass; tiles that stay near L1 ran faster than larger ones on an Intel AVX-512
    #: machine, and on a Zen 3 for C <= 32 (see benchmarks/RESULTS.md).
    tile_elements: int = 4096
    #: Fewest positions per tile, whatever the classes: the tile's loops run along its
    #: positions, and short loops pay their setup and remainder once per class
    #: (rows of more than ``tile_elements // tile_min_width`` classes get larger tiles).
    tile_min_width: int = 96
    #: Fewest classes for which short rows are tiled as they lie (where the variant
    #: allows: ``tile_kernel.takes_rows``, and the classes are contiguous in the logits
    #: and in the result) rather than transposed: from there a row
    #: fills enough vectors that reading along it costs less than the transpositions
    #: (on an Intel AVX-512 server, both ways in explicit vectors: transposed faster at
    #: 32 classes, even at 36, as they lie faster from 40; AVX2's the same; see
    #: benchmarks/RESULTS.md).
    tile_rows_min_classes: int = 36
    #: The same for calls that write no result (the loss, logsumexp): on that server,
    #: transposed faster to 100 classes, even at 104 on two threads, as they lie faster from
    #: 112 (AVX2 the same at 100 and 128; see benchmarks/RESULTS.md).
    tile_rows_min_classes_no_writes: int = 104
    #: Logits per tile of rows tiled as they lie, whose exps are kept in L2 for the
    #: writes: larger tiles ran faster, to a few hundred KiB (see RESULTS.md).
    tile_row_elements: int = 32768
    #: Fewest positions per tile where the classes are not the last axis (NCHW): there
    #: a tile reads one run of positions per class, each from its own place in memory,
    #: and short runs left the kernel waiting on memory (C = 150: see RESULTS.md).
    tile_min_run: int = 256
    #: Smallest result, in bytes, that the tile kernel (few classes, NCHW) writes by
    #: streaming stores, which skip reading each cache line of it before it is written (a
    #: third of a plain write's memory traffic) but leave none of it in the caches:
    #: smaller results stay there for whoever reads them next (the last-level caches of
    #: the CPUs we meet hold 16 to 32 MiB). 0 streams every result the tile kernel can.
    #: (The row kernel writes its exps where its results go while it computes them,
    #: which hides the lines' reads; written apart, then streamed, they ran slower:
    #: benchmarks/RESULTS.md.)
    stream_min_bytes: int = 1 << 24
    #: Buffers of large results kept for reuse once the caller drops the results
    #: (``nbxent.cpu.recycling``): a new result of the same size then costs no page
    #: faults. 0 turns the reuse off.
    recycled_outputs: int = 2
    #: Smallest result, in bytes, whose buffer is kept: smaller ones come from the
    #: allocator's heap, without page faults.
    recycle_min_bytes: int = 1 << 20


def from_environment(settings_class, prefix, defaults=None, environ=os.environ):
    """A ``settings_class`` from ``defaults`` and the ``prefix + FIELD`` variables.

    A variable that is set wins over ``defaults``, which win over the class's own.
    """
    values = dict(defaults or {})
    for field in dataclasses.fields(settings_class):
        raw = environ.get(prefix + field.name.upper())
        if raw is not None:
            values[field.name] = int(raw)
    return settings_class(**values)


class Tunables:
    """One backend's settings, read from the environment at first use and kept.

    Parameters
    ----------
    settings_class : frozen dataclass
        The fields and their defaults.
    prefix : str
        Environment variable prefix, e.g. ``"NBXENT_CPU_"``.
    defaults : callable, optional
        Returns a dict of defaults replacing the class's own, called at first use
        (the CUDA simulator's small blocks, say).
    """

    def __init__(self, settings_class, prefix, defaults=dict):
        self.settings_class = settings_class
        self.prefix = prefix
        self._defaults = defaults
        self._current = None

    def current(self):
        """The settings in force: read at the first call, the same object after."""
        current = self._current
        if current is None:
            current = self._current = from_environment(self.settings_class, self.prefix,
                                                       self._defaults())
        return current

    @contextlib.contextmanager
    def override(self, **fields):
        """Within the block, the current settings with ``fields`` replaced; yields them."""
        previous = self.current()
        self._current = dataclasses.replace(previous, **fields)
        try:
            yield self._current
        finally:
            self._current = previous


CPU = Tunables(CpuSettings, "NBXENT_CPU_")
