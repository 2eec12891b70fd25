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


def interleaved_steady_states(calls, synchronize=lambda: None, samples=None,
                              max_samples=AUTO_SAMPLES[1]):
    """``steady_state`` of several calls, their samples taken in turn (a, b, a, b, ...).

    A load that comes and goes on a shared machine then slows every call alike, so
    the ratio of their medians holds where timings taken one block after the other
    drift apart. Returns one ``SteadyState`` per call, in order.

    Examples
    --------
    >>> fast, slow = interleaved_steady_states(
    ...     [lambda: sum(range(100)), lambda: sum(range(100000))], samples=3)
    >>> fast.samples, fast.median_s < slow.median_s
    (3, True)
    """
    warm_s = []
    for call in calls:
        start = perf_counter()
        call()
        synchronize()
        warm_s.append(max(perf_counter() - start, 1e-9))
    per_sample = [max(1, ceil(MIN_SAMPLE_S / s)) for s in warm_s]
    if samples is None:
        fit = int(BUDGET_S / sum(s * n for s, n in zip(warm_s, per_sample)))
        samples = min(max_samples, max(AUTO_SAMPLES[0], fit))
    seconds = [[] for _ in calls]
    for _ in range(samples):
        for call, count, times in zip(calls, per_sample, seconds):
            start = perf_counter()
            for _ in range(count):
                call()
            synchronize()
            times.append((perf_counter() - start) / count)
    return [SteadyState(median_s=statistics.median(times), best_s=min(times), samples=samples,
                        calls_per_sample=count) for times, count in zip(seconds, per_sample)]
