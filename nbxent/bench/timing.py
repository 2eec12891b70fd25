"""Wall-clock timing of one contender: first call apart, warm-up excluded, median and best."""

import statistics
from dataclasses import dataclass
from math import ceil
from time import perf_counter

# Samples shorter than this are dominated by timer and loop noise: a sample
# repeats the call until it lasts at least this long and reports the mean.
MIN_SAMPLE_S = 0.002


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the first call (JIT compile or cache load included) and the steady state."""
    first_call_s: float
    median_s: float
    best_s: float
    samples: int
    calls_per_sample: int


def time_calls(call, repeat, synchronize=lambda: None):
    """Time ``call()``: its first call alone, then ``repeat`` samples after one warm-up call.

    ``synchronize()`` waits for the device (a no-op on the CPU) and is part of
    each sample. Returns ``(Timing, result of the first call)``.

    Examples
    --------
    >>> timing, result = time_calls(lambda: sum(range(1000)), repeat=3)
    >>> result, timing.samples, timing.best_s <= timing.median_s
    (499500, 3, True)
    """
    synchronize()
    start = perf_counter()
    result = call()
    synchronize()
    first_call_s = perf_counter() - start

    start = perf_counter()
    call()
    synchronize()
    warm_call_s = perf_counter() - start

    calls_per_sample = max(1, ceil(MIN_SAMPLE_S / max(warm_call_s, 1e-9)))
    seconds = []
    for _ in range(repeat):
        start = perf_counter()
        for _ in range(calls_per_sample):
            call()
        synchronize()
        seconds.append((perf_counter() - start) / calls_per_sample)
    return Timing(first_call_s=first_call_s, median_s=statistics.median(seconds),
                  best_s=min(seconds), samples=repeat,
                  calls_per_sample=calls_per_sample), result
