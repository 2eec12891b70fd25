"""Tunables, one place. Each reads an ``NBXENT_*`` environment variable at call
time (so tests and benchmarks can move thresholds without reloading modules)."""

import os


def cpu_split_min_classes():
    """Fewest classes per work item when a row's classes are split over threads.

    Below it, the partial statistics and the second pass cost more than the
    idle threads they put to work. ``NBXENT_CPU_SPLIT_MIN_CLASSES``.
    """
    return int(os.environ.get("NBXENT_CPU_SPLIT_MIN_CLASSES", 16384))
