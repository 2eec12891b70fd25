"""Metrics from the loss's own pass: what a training loop prints beside the loss.

The kernels that take a row's max and log-sum-exp for the loss also keep, when
asked, four numbers per row (``N_METRICS`` rows, one column per row of the logits, in
the order below; float64, or float32 where the CPU kernel computes in float32): its
logsumexp, its argmax, the target's rank (the classes ahead of the target: when
'top_k' is asked for exact below top_k, else top_k or more; without it 0 or 1; +inf
for a target that does not count) and its softmax's entropy. The logits are read
once. The CPU kernels fill only the rows a call asks for (each costs time); the CUDA
kernels fill all four, the rank exact.
This module checks what a call asks for and turns those rows into the caller's
arrays, with the backend's array module (NumPy, CuPy, Dask).

The order is ``np.argmax``'s on the logits the loss sees (after ``softcap``): larger
first, the first class among equals, every nan above +inf, -0.0 equal to 0.0. A
class is ahead of the target when it comes before it in that order, so the target
is the argmax exactly when its rank is 0, and in the top k when its rank is < k.
"""

import numpy as np

METRICS = ("lse", "argmax", "correct", "top_k", "entropy")
# The kernels' rows of metrics (every backend's).
METRIC_LSE, METRIC_ARGMAX, METRIC_RANK, METRIC_ENTROPY, N_METRICS = range(5)
_NEED_INDEX_TARGETS = ("correct", "top_k")


def check_metrics(metrics, top_k, target_is_index):
    """The names asked for, as a tuple in the caller's order (None when ``metrics`` is
    None); raises TypeError or ValueError naming the argument otherwise."""
    if metrics is None:
        return None
    names = (metrics,) if isinstance(metrics, str) else metrics
    try:
        names = tuple(names)
    except TypeError:
        raise TypeError(f"metrics must be a name or a sequence of names from {METRICS}, "
                        f"got {type(metrics).__name__}") from None
    for name in names:
        if not isinstance(name, str) or name not in METRICS:
            raise ValueError(f"metrics: unknown metric {name!r}; choose from {METRICS}")
    if not names:
        raise ValueError(f"metrics is empty; name at least one of {METRICS}, or pass None")
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)):
        raise TypeError(f"top_k must be an int >= 1, got {type(top_k).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not target_is_index:
        asked = [name for name in names if name in _NEED_INDEX_TARGETS]
        if asked:
            raise ValueError(f"metrics {asked} need class-index targets, not probabilities")
    return tuple(dict.fromkeys(names))


def metric_arrays(xp, rows, names, *, top_k, result_shape, loss_dtype):
    """``{name: array of result_shape}`` from the kernels' ``rows`` (float32 or float64,
    ``N_METRICS`` x rows) in the array module ``xp``.

    lse and entropy (nats) in the loss's dtype; argmax int64; correct and top_k bool,
    False on rows whose target does not count (ignored, or out of range under
    ``validate=False``), to which the kernels give the rank +inf.
    """
    def shaped(row):
        return row.reshape(result_shape)

    arrays = {}
    for name in names:
        if name == "lse":
            arrays[name] = shaped(rows[METRIC_LSE].astype(loss_dtype))
        elif name == "argmax":
            arrays[name] = shaped(rows[METRIC_ARGMAX].astype(xp.int64))
        elif name == "correct":
            arrays[name] = shaped(rows[METRIC_RANK] == 0)
        elif name == "top_k":
            arrays[name] = shaped(rows[METRIC_RANK] < top_k)
        else:
            arrays[name] = shaped(rows[METRIC_ENTROPY].astype(loss_dtype))
    return arrays
