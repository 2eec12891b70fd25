"""What the CPU kernels are given: one declaration per group of arguments.

A kernel call is ``kernel(x, x_geom, target, t_geom, weight, grad_output, g_geom,
out, out_geom, row_value, row_lse, row_metrics, shape, options)``: each array
comes with the ``Geometry`` of its elements, then the per-row outputs, the
``Shape`` of the work and the ``Options`` of the loss. The kernels read every value by its name
(the backend passes plain tuples, which Numba types faster at each call, and
``named`` gives them their names back inside the kernel, at no cost in the
compiled code). What changes the compiled code is the ``Variant``, one compiled
kernel per distinct value.
"""

from typing import NamedTuple

from numba import njit

from .._kinds import TargetKind
from .._metrics import (  # noqa: F401 - the rows of row_metrics, for the kernels
    METRIC_ARGMAX, METRIC_ENTROPY, METRIC_LSE, METRIC_RANK, N_METRICS)

WRITE_NOTHING, WRITE_GRAD, WRITE_LOG_SOFTMAX, WRITE_SOFTMAX = (
    "nothing", "grad", "log_softmax", "softmax")


class Variant(NamedTuple):
    """The compile-time choices of one kernel."""

    tiled: bool         # the tile kernel (across positions), else the row kernel
    half: bool          # float16 logits (and outputs), as uint16 bits
    compute64: bool     # float64 arithmetic (float64 logits, or widened); else float32
    widened: bool       # float32 logits computed in float64 (under softcap: backend.py)
    target: TargetKind  # none, index or probability targets (shared with CUDA)
    target_half: bool   # float16 probability targets
    smoothing: bool     # label_smoothing > 0
    softcap: bool       # softcap > 0
    entropy: bool       # row values are entropies, not cross-entropies
    write: str          # WRITE_NOTHING, WRITE_GRAD, WRITE_LOG_SOFTMAX or WRITE_SOFTMAX
    metrics: bool       # also fill row_metrics (rows METRIC_*), else it is not touched



class Geometry(NamedTuple):
    """Where an array's elements lie in its flat buffer: the element of row
    ``r = o * inner + i`` and class ``c`` is at ``offset + o*s_outer + c*s_class +
    i*s_inner`` (``s_class`` is 0 for per-row arrays: targets, grad_output)."""

    offset: int
    s_outer: int
    s_class: int
    s_inner: int


class Shape(NamedTuple):
    """The work: ``outer * inner`` rows of ``n_classes`` classes."""

    outer: int
    inner: int
    n_classes: int
    row_split: int      # row kernel: work items per row (> 1 when rows are few)
    tile_width: int     # tile kernel: positions per tile
    tile_offset: int    # tile kernel: tiles start this many positions before multiples of
                        # tile_width, each outer slice's first one cut short (``tile_span``)
    row_major: int      # tile kernel: 1 where short rows are tiled as they lie, not
                        # transposed (an int: a tuple of one type types faster)


class Options(NamedTuple):
    """The loss's scalars: the call's options and its reduction's scales."""

    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float
    grad_scale: float
    inv_ce: float           # 1/D for 'mean' (D: the summed weight of counted rows), else 1
    inv_z: float            # 1/(counted rows) for 'mean', else 1
    weight_sum: float       # sum of the class weights
    weighted: bool          # class weights given (else they are ones, not read)
    has_grad_output: bool   # grad_output is an array (else a scalar 1)
    rank_limit: int         # metrics: the target's rank, exact below this (top_k; at
                            # least this above it), 0: only whether it is 0
    wants_argmax: bool      # metrics: the argmax
    wants_entropy: bool     # metrics: the entropy (its sum is taken in the exp pass)
    in_place: bool          # out may overlap the logits (the row kernel then stages them)
    streams: bool           # out is large: the tile kernel writes its whole cache lines by
                            # streaming stores (``bits.copy_streaming``)
    keeps_lse: bool         # the per-row lse reaches the caller (z-loss, logsumexp): else
                            # ``row_lse`` is not written


@njit(inline="always")
def named(x_geom, t_geom, g_geom, out_geom, shape, options):
    """The kernel arguments passed as plain tuples, as their named tuples.

    (Called in the functions a kernel's parallel loop calls, not in the kernel:
    Numba's parallel lowering fails on named tuples made before the loop.)
    """
    return (Geometry(*x_geom), Geometry(*t_geom), Geometry(*g_geom), Geometry(*out_geom),
            Shape(*shape), Options(*options))
