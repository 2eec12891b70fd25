"""Tunables of the CUDA backend: launch parameters and variant thresholds.

``CUDA.current()`` is a frozen ``Settings``, read once at the first launch with
``NBXENT_CUDA_*`` environment overrides (e.g. ``NBXENT_CUDA_WARP_MAX_C=64``);
``CUDA.override(warp_max_c=8)`` changes it within a block. The simulator tests
use that to reach every kernel variant with tiny shapes and small blocks. How
settings are read and overridden is described in ``nbxent/_config.py``.
"""

from dataclasses import dataclass

from .._config import Tunables


@dataclass(frozen=True)
class Settings:
    """Launch parameters and variant thresholds (see the module docstring)."""
    #: threads per block of the warp layout (several rows per block).
    threads: int = 256
    #: threads per block of the block and split layouts (one row, or a chunk of one, per block).
    block_threads: int = 512
    #: the same for float64 logits (twice the registers per value: 256 keeps them <= 255).
    block_threads_f64: int = 256
    #: largest C served by the warp layout (a warp or less per row).
    warp_max_c: int = 1024
    #: smallest C for which a row may be split across blocks ...
    split_min_c: int = 65536
    #: ... when there are fewer rows than this (0: the number of SMs).
    split_max_rows: int = 0
    #: columns per block in the split layout (a multiple of block_threads * block_cache).
    split_cols: int = 16384
    #: logits kept in registers per thread: warp layout, block/split layouts.
    warp_cache: int = 16
    block_cache: int = 16
    #: grid cap for the grid-stride loops (0: 16 blocks per SM).
    max_blocks: int = 0
    #: rows per tile of the 'sum' and 'mean' reductions: the fixed partition their sums
    #: are taken over (the one setting here that changes a result's last bits).
    sum_rows: int = 1024


#: Defaults under the CUDA simulator, which runs an OS thread per CUDA thread and
#: the blocks one after another: small blocks and grids keep a launch short.
SIMULATOR_DEFAULTS = dict(threads=32, block_threads=64, block_threads_f64=64, max_blocks=2)


def _defaults():
    """``SIMULATOR_DEFAULTS`` under the simulator (variables still win), else none."""
    from ._sim import SIMULATED
    return dict(SIMULATOR_DEFAULTS) if SIMULATED else {}


CUDA = Tunables(Settings, "NBXENT_CUDA_", _defaults)
