"""The CPU backend's Numba kernels: softmax cross-entropy, its gradient, and the
normalisations (logsumexp, log_softmax, softmax, entropy), one body for all.

``kernel_for(variant)`` compiles (memoised, cached on disk) the kernel of one
``Variant`` (nbxent/cpu/arguments.py: what a kernel is given, by name): the row
kernel (nbxent/cpu/row_kernel.py) vectorises along the classes of a row, the
tile kernel (nbxent/cpu/tile_kernel.py) across neighbouring rows. Both are
loops around the variant's formulas (nbxent/cpu/formulas.py), so a variant pays
only for what it uses, in blocks that nbxent/cpu/launch.py runs over the threads. ``scan_targets`` checks class indices before a kernel runs.

Sums that do not involve exp (smoothing, probability targets) are taken about the
row's running max, so that their terms share one sign and nothing cancels, neither
large equal logits nor a confident row's tiny loss.
"""

import numpy as np
from numba import njit, prange

from .arguments import WRITE_NOTHING, TargetKind
from .disk_cache import cached, way_key
from .formulas import formulas
from .launch import BlockKernel
from .row_kernel import build_row_kernel
from .tile_kernel import build_tile_kernel


# Rows per block of ``scan_targets``: a fixed partition, whatever the threads.
_SCAN_BLOCK = 1 << 16


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _scan_block(rows, n_classes, ignore_index, weight):
    """(Rows counted, bad rows, summed weight of those counted: 0 without ``weight``) of
    a block of at most 2**31 rows: one branch-free loop, whose 32-bit counts vectorise
    as wide as the indices allow."""
    n_valid = np.int32(0)
    n_bad = np.int32(0)
    weight_sum = 0.0
    for r in range(rows.size):
        t = rows[r]
        counted = t != ignore_index
        in_range = (t >= 0) & (t < n_classes)
        n_valid += np.int32(counted & in_range)
        n_bad += np.int32(counted & (not in_range))
        if weight is not None:
            class_weight = weight[np.uint64(t if in_range else 0)]
            weight_sum += class_weight if counted & in_range else 0.0
    return n_valid, n_bad, weight_sum


@njit(cache=True, parallel=True, error_model="numpy")
def scan_targets(rows, n_classes, ignore_index, weight):
    """(First bad row or -1, summed weight of the non-ignored rows, their count).

    ``rows`` holds one int64 class index per row, in row order; ``weight`` the class
    weights, or None for none (the summed weight is then the count: no gather). A row is
    bad when its index is neither ``ignore_index`` nor in [0, n_classes); a bad row
    makes the summed weight nan.

    Blocks of ``_SCAN_BLOCK`` rows go over the threads (``_scan_block``; a running
    minimum for the first bad row made the scan three times slower: only a call holding
    a bad row reads the rows again, for the first). The weights are summed per block,
    then the blocks' sums in order: the same bit for bit whatever the threads.
    """
    n_blocks = (rows.size + _SCAN_BLOCK - 1) // _SCAN_BLOCK
    block_weights = np.zeros(n_blocks)
    n_valid = 0
    n_bad = 0
    for b in prange(n_blocks):
        block_valid, block_bad, block_weights[b] = _scan_block(
            rows[b * _SCAN_BLOCK:(b + 1) * _SCAN_BLOCK], n_classes, ignore_index, weight)
        n_valid += block_valid
        n_bad += block_bad
    weight_sum = float(n_valid)
    if weight is not None:
        weight_sum = 0.0
        for b in range(n_blocks):
            weight_sum += block_weights[b]
    if n_bad == 0:
        return -1, weight_sum, n_valid
    first_bad = 0
    while rows[first_bad] == ignore_index or 0 <= rows[first_bad] < n_classes:
        first_bad += 1
    return first_bad, np.nan, n_valid


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
    """The kernel for one ``Variant`` (memoised): a ``BlockKernel`` whose block functions
    each compile on their first call (cached on disk).

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
        ways, plan, pick = build(variant, formulas(variant), sum_at_inf)
        kernel = _kernels[variant] = BlockKernel(
            tuple(cached(way_key(variant, way), block) for way, (block, _, _) in enumerate(ways)),
            tuple(None if body is None else cached(way_key(variant, way), body)
                  for way, (_, body, _) in enumerate(ways)),
            tuple(body_types for _, _, body_types in ways), plan, pick)
    return kernel
