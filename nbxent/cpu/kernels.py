"""The CPU backend's Numba kernels: softmax cross-entropy, its gradient, and the
normalisations (logsumexp, log_softmax, softmax, entropy), one body for all.

``kernel_for(variant)`` compiles (memoised, cached on disk) the kernel of one
``Variant`` (nbxent/cpu/arguments.py: what a kernel is given, by name): the row
kernel (nbxent/cpu/row_kernel.py) vectorises along the classes of a row, the
tile kernel (nbxent/cpu/tile_kernel.py) across neighbouring rows. Both are
loops around the variant's formulas (nbxent/cpu/formulas.py), so a variant pays
only for what it uses, in blocks that nbxent/cpu/launch.py runs over the threads. ``scan_targets`` checks class indices before a kernel runs.

Sums that do not involve exp (smoothing, probability targets) are taken relative
to a per-row reference logit, so large equal logits do not cancel.
"""

import numpy as np
from numba import njit, prange

from .arguments import WRITE_NOTHING, TargetKind
from .disk_cache import cached
from .formulas import formulas
from .launch import BlockKernel
from .row_kernel import build_row_kernel
from .tile_kernel import build_tile_kernel


@njit(cache=True, parallel=True, fastmath={"reassoc"}, error_model="numpy")
def scan_targets(rows, n_classes, ignore_index, weight):
    """First bad row (or -1), summed weight and count of the non-ignored rows.

    ``rows`` holds one int64 class index per row, in row order. A row is bad when
    its index is neither ``ignore_index`` nor in [0, n_classes); bad rows add nan
    to the summed weight. (Branch-free, so the loop vectorises; the order of the
    weight sum is free.)
    """
    n_rows = rows.size
    first_bad = n_rows
    weight_sum = 0.0
    n_valid = 0
    for r in prange(n_rows):
        t = rows[r]
        counted = t != ignore_index
        in_range = 0 <= t < n_classes
        class_weight = weight[np.uint64(t if in_range else 0)]
        weight_sum += (class_weight if in_range else np.nan) if counted else 0.0
        n_valid += 1 if counted and in_range else 0
        first_bad = min(first_bad, r if counted and not in_range else n_rows)
    return (first_bad if first_bad < n_rows else -1), weight_sum, n_valid


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def total_of(values):
    """The sum of ``values`` (one per row) in float64, in an order fixed by their count
    alone, whatever the threads: one loop, which LLVM splits over vector lanes.
    (NumPy's float32 -> float64 sum casts in buffered pieces, several times slower:
    benchmarks/RESULTS.md.)"""
    total = 0.0
    for r in range(values.size):  # (an iterator over the array did not vectorise)
        total += float(values[r])
    return total


_kernels = {}


def kernel_for(variant):
    """The kernel for one ``Variant`` (memoised): a ``BlockKernel`` whose block function
    compiles on its first call (cached on disk).

    Both kernels take ``(x, x_geom, target, t_geom, weight, grad_output, g_geom,
    out, out_geom, row_value, row_lse, shape, options)`` (see
    nbxent/cpu/arguments.py): they fill ``row_value`` (cross-entropy or entropy
    per row) and ``row_lse`` (logsumexp per row, 0 for ignored rows) and write the
    gradient or normalised logits into ``out``.
    """
    kernel = _kernels.get(variant)
    if kernel is None:
        # A +inf logit: logsumexp is +inf (as in torch and SciPy); every probability,
        # and so the cross-entropy, log_softmax and entropy, is nan (exp(inf - inf)).
        only_lse = (variant.target == TargetKind.NONE and not variant.entropy
                    and variant.write == WRITE_NOTHING)
        sum_at_inf = np.inf if only_lse else np.nan
        build = build_tile_kernel if variant.tiled else build_row_kernel
        blocks, plan = build(variant, formulas(variant), sum_at_inf)
        kernel = _kernels[variant] = BlockKernel(cached(variant, blocks), plan)
    return kernel
