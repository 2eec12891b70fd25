"""Tunables, one place. Each reads an ``NBXENT_*`` environment variable at call
time (so tests and benchmarks can move thresholds without reloading modules)."""

import os


def cpu_split_min_classes():
    """Fewest classes per work item when a row's classes are split over threads.

    Below it, the partial statistics and the second pass cost more than the
    idle threads they put to work. ``NBXENT_CPU_SPLIT_MIN_CLASSES``.
    """
    return int(os.environ.get("NBXENT_CPU_SPLIT_MIN_CLASSES", 16384))


def cpu_tile_max_classes():
    """Most classes for which rows (class axis last) go to the tile kernel.

    Shorter rows cost more in per-row work than vectorising along them saves.
    Measured (2-core EPYC, float32, 25 M logits): the tile kernel is 1.2-2.9x
    faster up to C = 128, the row kernel from C = 192 on.
    ``NBXENT_CPU_TILE_MAX_CLASSES``.
    """
    return int(os.environ.get("NBXENT_CPU_TILE_MAX_CLASSES", 128))


def cpu_tile_elements():
    """Logits per tile of the tile kernel: a tile is staged once, then re-read from
    L2 by each pass. Measured (2-core EPYC, NCHW 8x21x512x512): 4096 costs 15-20 %
    more than 16384, where it levels off; 10-class rows do not care.

    ``NBXENT_CPU_TILE_ELEMENTS``.
    """
    return int(os.environ.get("NBXENT_CPU_TILE_ELEMENTS", 16384))
