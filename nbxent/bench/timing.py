"""Wall-clock timing of one contender: the first call apart, then the steady state.

The first call includes whatever a library does once (Numba's JIT compile or
cache load, XLA's compile). The steady state starts after one more warm-up
call and is reported as the median and the best of several samples.
"""

import statistics
from dataclasses import dataclass
from math import ceil
from time import perf_counter

# Samples shorter than this are dominated by timer and loop noise: a sample
# repeats the call until it lasts at least this long and reports the mean.
MIN_SAMPLE_S = 0.002
# Without an explicit sample count, take up to AUTO_SAMPLES[1] samples, at least
# AUTO_SAMPLES[0], stopping once BUDGET_S of sampling is spent: slow peers then
# cost seconds, not minutes, and their median is still of several samples.
AUTO_SAMPLES = (3, 5)
BUDGET_S = 1.0


@dataclass(frozen=True)
class SteadyState:
    """Seconds per call after warm-up: median and best of ``samples`` samples."""
    median_s: float
    best_s: float
    samples: int
    calls_per_sample: int


def first_call(call, synchronize=lambda: None):
    """``(seconds, result)`` of the first ``call()``, waiting for the device with ``synchronize``."""
    synchronize()
    start = perf_counter()
    result = call()
    synchronize()
    return perf_counter() - start, result


def steady_state(call, synchronize=lambda: None, samples=None, max_samples=AUTO_SAMPLES[1]):
    """Time ``call()`` after one warm-up call.

    ``samples`` fixes the number of samples; by default it is chosen between
    ``AUTO_SAMPLES[0]`` and ``max_samples`` to fit ``BUDGET_S``.

    Examples
    --------
    >>> timing = steady_state(lambda: sum(range(1000)), samples=3)
    >>> timing.samples, timing.best_s <= timing.median_s
    (3, True)
    """
    start = perf_counter()
    call()
    synchronize()
    warm_call_s = max(perf_counter() - start, 1e-9)
    calls_per_sample = max(1, ceil(MIN_SAMPLE_S / warm_call_s))
    if samples is None:
        fit = int(BUDGET_S / (warm_call_s * calls_per_sample))
        samples = min(max_samples, max(AUTO_SAMPLES[0], fit))
    seconds = []
    for _ in range(samples):
        start = perf_counter()
        for _ in range(calls_per_sample):
            call()
        synchronize()
        seconds.append((perf_counter() - start) / calls_per_sample)
    return SteadyState(median_s=statistics.median(seconds), best_s=min(seconds),
                       samples=samples, calls_per_sample=calls_per_sample)
