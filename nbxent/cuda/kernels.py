"""The ``@cuda.jit`` kernels of nbxent: one body for every row operation.

``kernel_for(variant)`` builds (and memoises) the kernel for one ``Variant``:
cross-entropy loss and/or gradient, logsumexp, log_softmax, softmax or
entropy, in one of three layouts chosen by the number of classes C:

* ``warp``: a group of ``group`` <= 32 lanes per row, several rows per block;
  the group reduces with butterfly shuffles. ``group == 1`` (a thread per row)
  serves class-not-last layouts such as NCHW, where neighbouring rows are
  neighbours in memory.
* ``block``: a whole block per row; warps reduce with shuffles, then across
  warps through shared memory.
* ``split``: a row cut into column chunks over ``gridDim.x`` blocks (very
  large C, few rows). Phase ``stats`` writes each chunk's online-softmax
  partial; the last chunk of a row to finish combines them in chunk order.
  Phase ``apply`` (a second launch) writes the gradient / normalised row.

The symbols and names (m, s, lse, q, mass, moment, p_coef, ...) are those of
the "Notation" section of ``nbxent/reference.py``. Per row, the kernel's steps
are: each thread's pass over its classes (``thread_stats``: the running max,
the rescaled sum of exponentials and the sums the loss needs), the merge over
the row's threads (``group_reduce``) and, split, over its chunks
(``merge_chunks``), the row's loss and gradient coefficients (``ce_terms``),
then the gradient or normalised row (``write_row``). The sum of exponentials
travels as its excess over one, s - 1 (-1 for no classes): a confident row's loss
is log1p of that excess, which s itself, 1 + a tiny rest, would round away. Each
thread keeps its logits of the row in registers (``Variant.cache`` per thread), so
when a row fits, the gradient pass reads no logits from memory again.

With ``Variant.metrics`` (cross-entropy) the same pass takes the rows of
``nbxent._metrics``: each thread keeps the first largest logit of its classes in
``np.argmax``'s order (``precedes``), the classes ahead of the target, and the
entropy's moment; the merges over threads and chunks carry them beside the
online-softmax partials. Without it none of that code is compiled.

'sum' and 'mean' are reproducible: the row kernel leaves each row's terms in
its workspace, and ``row_sums_kernel`` adds them over fixed tiles of rows in a
fixed order (``_fixed_sums``), so their bits do not depend on the GPU's number of
SMs nor on the row kernel's grid and block sizes; the 'mean' denominators of the
gradient (``denominator_kernel``) are summed the same way.

Arguments: every array is a flat 1-D view of the caller's memory, followed by
its ``Geometry``; the other integers travel in ``Dims``, the floats in
``Scalars``. The kernels take these as plain tuples and name them on entry
(``Dims(*dims)``), which costs nothing in the compiled code: a named tuple
passed at launch would be typed by Python code at every launch instead.
"""

import math
from functools import lru_cache
from typing import NamedTuple

from numba import cuda, float32, float64, int64

from .._block_labels import restart_block_labels
from .._kinds import TargetKind
from .._metrics import METRIC_ARGMAX, METRIC_ENTROPY, METRIC_LSE, METRIC_RANK
from ._sim import log1p, shfl_xor4


class Geometry(NamedTuple):
    """Where element (o, c, i) of an array lies in its flat buffer, in elements:
    ``offset + o*s_outer + c*s_class + i*s_inner``, for row ``r = o * inner + i``
    and class c. A stride is 0 along an axis the array lacks (s_class of a per-row
    array; s_outer and s_inner of the class weights)."""
    offset: int = 0
    s_outer: int = 0
    s_class: int = 0
    s_inner: int = 0


class Dims(NamedTuple):
    """The integer launch arguments of the row and denominator kernels."""
    n_rows: int
    n_classes: int
    inner: int
    ignore_index: int
    group: int             # threads per row: lanes of a warp (warp), the block (block, split)
    chunk_cols: int        # classes per chunk (split); C otherwise
    n_chunks: int          # chunks per row (split); 1 otherwise
    chunk_base: int        # acc_ws index of the first (row, chunk) partial (split)
    rowc_base: int         # acc_ws index of the first row's coefficients (split)
    rows_base: int         # acc_ws index of the first row's terms ('sum' and 'mean')
    sum_rows: int          # rows per tile of the sums: the partition they are summed over


class Scalars(NamedTuple):
    """The float launch arguments, in the accumulation dtype."""
    eps: float             # label smoothing
    eps_over_c: float      # eps / C
    z_loss: float
    softcap: float         # a (0: no cap)
    inv_softcap: float     # 1 / a
    grad_scale: float      # the constant factor of the upstream gradient g
    is_mean: float         # 1 for reduction 'mean', else 0
    inv_rows: float        # 1 / N for 'mean' of probability targets (D = N), else 1
    log_output: float      # 1: the softmax op writes log_softmax


#: Kernel operations; log_softmax is ``softmax`` with Scalars.log_output = 1.
OPS = ("cross_entropy", "logsumexp", "softmax", "entropy")
LAYOUTS = ("warp", "block", "split")

# acc_ws holds [D, N] (denominator kernel), then 4 partial sums per tile of
# ``Dims.sum_rows`` rows, then (split) CHUNK_PARTIALS online-softmax partials per (row,
# chunk) (with metrics ORDER_PARTIALS more) and ROW_COEFS row coefficients per row, then
# ('sum' and 'mean') ROW_TERMS values per row. int_ws holds [error, target tiles done,
# row tiles done, chunks done per row], then (split, with metrics) ORDER_PARTIALS
# integers per (row, chunk).
SLOT_BASE = 2
CHUNK_PARTIALS = 4
ORDER_PARTIALS = 2
ROW_COEFS = 5
ROW_TERMS = 4
ERROR, TARGET_TILES_DONE, ROW_TILES_DONE, CHUNKS_DONE = 0, 1, 2, 3
#: Threads per block of the sum kernels, on every device: one warp per tile of rows.
SUM_THREADS = 32


class Variant(NamedTuple):
    """Compile-time flags of one kernel; everything else is a launch argument."""
    op: str = "cross_entropy"
    layout: str = "warp"
    phase: str = "fused"          # "fused" (warp/block), "stats" or "apply" (split)
    acc64: bool = False           # accumulate in float64 (float64 logits)
    target: TargetKind = TargetKind.INDEX
    has_weight: bool = False
    softcap: bool = False
    want_loss: bool = True
    want_grad: bool = False
    reduce: bool = False          # 'sum'/'mean': row terms for row_sums_kernel
    has_grad_output: bool = False
    denom_on_device: bool = False  # 'mean' gradient of index targets: D, N from acc_ws[0:2]
    metrics: bool = False         # cross-entropy: the rows of nbxent._metrics too (stats phase)
    cache: int = 16               # logits per thread kept in registers

    @property
    def name(self):
        """The variant as reports name it, e.g. ``softmax-split-apply-k16``."""
        parts = [self.op, self.layout]
        if self.phase != "fused":
            parts.append(self.phase)
        if self.op == "cross_entropy":
            parts.append(self.target.name.lower())
            parts += [flag for flag in ("has_weight", "softcap", "want_loss", "want_grad",
                                        "reduce", "has_grad_output", "denom_on_device",
                                        "metrics")
                      if getattr(self, flag)]
        elif self.reduce:
            parts.append("reduce")
        parts.append(f"k{self.cache}")
        return "-".join(parts)

    @property
    def acc(self):
        """The accumulation dtype (a Numba type)."""
        return float64 if self.acc64 else float32

    @property
    def index_target(self):
        """Cross-entropy with a class index per row."""
        return self.op == "cross_entropy" and self.target == TargetKind.INDEX

    @property
    def prob_target(self):
        """Cross-entropy with a distribution per row."""
        return self.op == "cross_entropy" and self.target == TargetKind.PROB

    @property
    def writes_out(self):
        """Whether a gradient or a normalised row is written."""
        return (self.op == "cross_entropy" and self.want_grad) or self.op == "softmax"


_INT64_MAX = 2**63 - 1


# ---------------------------------------------------------------- helpers of every kernel

@cuda.jit(device=True, inline="always")
def class_index(value):
    """A target element as an int64 class index. A uint64 value from 2**63 on would
    wrap to a negative number (a negative ignore_index, even): it becomes int64's
    largest value instead, out of range like the value itself."""
    t = int64(value)
    return int64(_INT64_MAX) if t < 0 and value > 0 else t


@cuda.jit(device=True, inline="always")
def row_start(geom, o, i):
    """Where row (o, i) of an array starts; its class c lies ``c * geom.s_class`` further."""
    return geom.offset + o * geom.s_outer + i * geom.s_inner


@cuda.jit(device=True, inline="always")
def store_row_coefs(acc_ws, at, row_max, log_sum, p_coef, g_ce, t_coef):
    """Keep what the split layout's apply phase needs of a row, at acc_ws[at:at + 5]."""
    acc_ws[at] = row_max
    acc_ws[at + 1] = log_sum
    acc_ws[at + 2] = p_coef
    acc_ws[at + 3] = g_ce
    acc_ws[at + 4] = t_coef


@cuda.jit(device=True, inline="always")
def load_row_coefs(acc_ws, at):
    """(row_max, log_sum, p_coef, g_ce, t_coef) as ``store_row_coefs`` kept them."""
    return acc_ws[at], acc_ws[at + 1], acc_ws[at + 2], acc_ws[at + 3], acc_ws[at + 4]


@lru_cache(maxsize=None)
def _block_sums(acc64):
    """(finish_tiles, sum_tiles): the tiles' block-wide sums in one accumulation dtype."""
    acc = float64 if acc64 else float32
    zero = acc(0.0)

    @cuda.jit(device=True, inline="always")
    def block_sum4(a, b, c, d):
        """Sums of four values over the block, in a fixed order; valid in thread 0.

        Butterfly shuffles within each warp, then thread 0 adds the warp totals
        in warp order. Every thread of the block must call it.
        """
        offset = 16
        while offset > 0:
            a2, b2, c2, d2 = shfl_xor4(a, b, c, d, offset)
            a += a2
            b += b2
            c += c2
            d += d2
            offset //= 2
        warp_sums = cuda.shared.array(128, acc)
        warp_id = cuda.threadIdx.x // 32
        if cuda.threadIdx.x % 32 == 0:
            warp_sums[4 * warp_id] = a
            warp_sums[4 * warp_id + 1] = b
            warp_sums[4 * warp_id + 2] = c
            warp_sums[4 * warp_id + 3] = d
        cuda.syncthreads()
        if cuda.threadIdx.x == 0:
            for w in range(1, cuda.blockDim.x // 32):
                a += warp_sums[4 * w]
                b += warp_sums[4 * w + 1]
                c += warp_sums[4 * w + 2]
                d += warp_sums[4 * w + 3]
        cuda.syncthreads()
        return a, b, c, d

    @cuda.jit(device=True, inline="always")
    def finish_tiles(acc_ws, int_ws, counter, a, b, c, d):
        """Store this block's (tile's) four sums; True in every thread of the last block.

        The last block to finish (an atomic counter ``int_ws[counter]``, after a
        fence) is the one that may read every tile's slot. Every thread of the
        block must call it.
        """
        slot = SLOT_BASE + 4 * cuda.blockIdx.x
        a, b, c, d = block_sum4(a, b, c, d)
        is_last = cuda.shared.array(1, int64)
        if cuda.threadIdx.x == 0:
            acc_ws[slot] = a
            acc_ws[slot + 1] = b
            acc_ws[slot + 2] = c
            acc_ws[slot + 3] = d
            cuda.threadfence()
            done = cuda.atomic.add(int_ws, counter, 1)
            is_last[0] = 1 if done == cuda.gridDim.x - 1 else 0
        cuda.syncthreads()
        last = is_last[0] == 1
        if last:
            cuda.threadfence()
        return last

    @cuda.jit(device=True, inline="always")
    def sum_tiles(acc_ws):
        """Totals of every tile's four sums, in a fixed order; valid in thread 0."""
        a = b = c = d = zero
        for tile in range(cuda.threadIdx.x, cuda.gridDim.x, cuda.blockDim.x):
            slot = SLOT_BASE + 4 * tile
            a += acc_ws[slot]
            b += acc_ws[slot + 1]
            c += acc_ws[slot + 2]
            d += acc_ws[slot + 3]
        return block_sum4(a, b, c, d)

    return finish_tiles, sum_tiles


@lru_cache(maxsize=None)
def _fixed_sums(acc64, row_terms, counter, finish):
    """A kernel summing four values per row over a fixed partition of the rows.

    Block b sums tile b, rows [b * sum_rows, (b + 1) * sum_rows): lane l of its one
    warp adds ``row_terms`` of rows l, l + 32, ... in order, the lanes combine by
    butterfly; the last block to finish adds the tiles' sums the same way (lane l:
    tiles l, l + 32, ...) and hands the totals to ``finish``. Launched with
    ``SUM_THREADS`` threads and one block per tile on every device, so the result's
    bits depend on the rows and ``sum_rows`` only, never on the GPU's size nor on the
    row kernel's launch shape.
    """
    acc = float64 if acc64 else float32
    zero = acc(0.0)
    finish_tiles, sum_tiles = _block_sums(acc64)

    @cuda.jit
    def kernel(target, t_geom, weight, w_geom, loss, acc_ws, int_ws, dims, scalars):
        t_geom, w_geom = Geometry(*t_geom), Geometry(*w_geom)
        dims, scalars = Dims(*dims), Scalars(*scalars)
        a = b = c = d = zero
        first = cuda.blockIdx.x * dims.sum_rows
        end = min(first + dims.sum_rows, dims.n_rows)
        for row in range(first + cuda.threadIdx.x, end, cuda.blockDim.x):
            a2, b2, c2, d2 = row_terms(target, t_geom, weight, w_geom, acc_ws, int_ws, dims, row)
            a += a2
            b += b2
            c += c2
            d += d2
        if finish_tiles(acc_ws, int_ws, counter, a, b, c, d):
            a, b, c, d = sum_tiles(acc_ws)
            if cuda.threadIdx.x == 0:
                finish(loss, acc_ws, scalars, a, b, c, d)

    return kernel


# ---------------------------------------------------------------- online softmax

@cuda.jit(device=True, inline="always")
def precedes(x, c, y, d):
    """Whether logit x of class c comes before logit y of class d in ``np.argmax``'s
    order: larger first, every nan above +inf, the smaller class among equals (-0.0
    equals 0.0, as float comparison has it)."""
    x_nan, y_nan = x != x, y != y
    if x_nan or y_nan:
        return x_nan and (not y_nan or c < d)
    return x > y or (x == y and c < d)


@lru_cache(maxsize=None)
def _online_softmax(acc64, entropy, block_group, metrics=False):
    """(raise_max, group_reduce, merge_chunks) for partials (row_max, excess, moment,
    mass, order), ``excess`` the sum of exponentials less one.

    ``raise_max`` moves a thread's running partial, its count of logits at the max apart
    from the rest of its sum, onto a larger max; ``group_reduce`` merges the
    partials of a row's threads, ``merge_chunks`` those of a split row's chunks.
    The moment is taken about the max (0 while that is -inf), and moves with it: the
    entropy's sum_c e_c (x_c - m) rescaled with the sum, the spread's linear sum_c q~_c
    (x_c - m) by mass times the step, a step that, like its terms, is at most 0 (terms
    about a fixed logit would cancel in a confident row's loss). ``order`` is
    (top, first, ahead, shannon), the metrics' partial with ``metrics`` (else passed
    through untouched): the first largest logit in ``precedes``' order and its class,
    the classes ahead of the target, and the entropy's moment sum_c e_c (x_c - m).
    """
    acc = float64 if acc64 else float32
    zero, one, neg_inf = acc(0.0), acc(1.0), acc(-math.inf)
    # Partials per (row, chunk) of the split layout: floats in acc_ws, the metrics'
    # class and count in int_ws (exact beyond float32's 2**24).
    parts = CHUNK_PARTIALS + ORDER_PARTIALS * metrics

    @cuda.jit(device=True, inline="always")
    def rescale(m_old, m_new):
        """exp(m_old - m_new); 1 when equal, so a -inf max keeps a zero sum zero."""
        if m_old == m_new:
            return one
        return math.exp(m_old - m_new)

    @cuda.jit(device=True, inline="always")
    def shift_moment(moment, sum_exp, m_old, m_new):
        """Entropy's moment sum_c e_c (x_c - m) about m_new instead (before rescaling)."""
        if sum_exp == zero or m_old == m_new:
            return moment
        return moment + (m_old - m_new) * sum_exp

    @cuda.jit(device=True, inline="always")
    def moment_about(moment, sum_exp, m_old, m_new, scale):
        """An entropy moment about m_new, its e_c rescaled by ``scale`` = rescale(m_old, m_new)."""
        return shift_moment(moment, sum_exp, m_old, m_new) * scale

    @cuda.jit(device=True, inline="always")
    def linear_onto(moment, mass, m_old, m_new):
        """The spread's moment sum_c q~_c (x_c - m_old) about m_new instead (a -inf max
        taken as 0, as where the moment is summed)."""
        if mass == zero or m_old == m_new:
            return moment
        return moment + mass * ((m_old if m_old > neg_inf else zero)
                                - (m_new if m_new > neg_inf else zero))

    @cuda.jit(device=True, inline="always")
    def raise_max(row_max, n_top, rest, moment, mass, shannon, new_max):
        """(row_max, n_top, rest, moment, shannon) about max(row_max, new_max): n_top
        counts the logits at the max (1 each), the rest sums the other exponentials."""
        new_max = new_max if new_max > row_max else row_max
        scale = rescale(row_max, new_max)
        if entropy:
            moment = moment_about(moment, n_top + rest, row_max, new_max, scale)
        else:
            moment = linear_onto(moment, mass, row_max, new_max)
        if metrics:
            shannon = moment_about(shannon, n_top + rest, row_max, new_max, scale)
        if new_max != row_max:  # the old max is below the new one
            n_top, rest = zero, (n_top + rest) * scale
        return new_max, n_top, rest, moment, shannon

    @cuda.jit(device=True, inline="always")
    def merged_excess(m, excess, m2, excess2, row_max, scale, scale2):
        """The excess over one of the union's sum: a partial at the row's max keeps its
        own excess, exactly; one below it adds its whole sum, rescaled."""
        if m2 != row_max:  # (m is at the max, or a nan, which the scales carry)
            return excess + (excess2 + one) * scale2
        if m != row_max:
            return excess2 + (excess + one) * scale
        return (excess + excess2) + one

    @cuda.jit(device=True, inline="always")
    def merge(m, excess, moment, mass, order, m2, excess2, moment2, mass2, order2):
        """The partial of the union of two sets of classes."""
        row_max = m2 if m2 > m else m
        scale, scale2 = rescale(m, row_max), rescale(m2, row_max)
        if entropy:
            moment = (moment_about(moment, excess + one, m, row_max, scale)
                      + moment_about(moment2, excess2 + one, m2, row_max, scale2))
        else:
            moment = linear_onto(moment, mass, m, row_max) + linear_onto(moment2, mass2, m2,
                                                                          row_max)
        if metrics:
            top, first, ahead, shannon = order
            if precedes(order2[0], order2[1], top, first):
                top, first = order2[0], order2[1]
            order = (top, first, ahead + order2[2],
                     moment_about(shannon, excess + one, m, row_max, scale)
                     + moment_about(order2[3], excess2 + one, m2, row_max, scale2))
        return (row_max, merged_excess(m, excess, m2, excess2, row_max, scale, scale2), moment,
                mass + mass2, order)

    @cuda.jit(device=True, inline="always")
    def store_order(floats, f_at, ints, i_at, order):
        """With metrics, keep ``order``'s floats at floats[f_at:f_at + 2], its integers at
        ints[i_at:i_at + 2]."""
        if metrics:
            floats[f_at] = order[0]
            floats[f_at + 1] = order[3]
            ints[i_at] = order[1]
            ints[i_at + 1] = order[2]

    @cuda.jit(device=True, inline="always")
    def load_order(floats, f_at, ints, i_at, order):
        """The order ``store_order`` kept (``order`` itself without metrics)."""
        if metrics:
            order = (floats[f_at], ints[i_at], ints[i_at + 1], floats[f_at + 1])
        return order

    @cuda.jit(device=True, inline="always")
    def group_reduce(m, excess, moment, mass, order, group, lane32, warp_id):
        """Merge the partials of a row's threads; every thread gets the same result.

        A butterfly over ``min(group, 32)`` lanes (commutative, so bitwise
        identical in every lane); block layouts then merge the warps in warp
        order through shared memory. ``lane32`` and ``warp_id`` place this
        thread in its warp and its block. Every thread of the block must call it.
        """
        offset = (group if group < 32 else 32) // 2
        while offset > 0:
            m2, excess2, moment2, mass2 = shfl_xor4(m, excess, moment, mass, offset)
            order2 = order
            if metrics:
                order2 = shfl_xor4(order[0], order[1], order[2], order[3], offset)
            m, excess, moment, mass, order = merge(m, excess, moment, mass, order, m2, excess2,
                                                   moment2, mass2, order2)
            offset //= 2
        if block_group:
            warp_stats = cuda.shared.array(128, acc)
            warp_floats = cuda.shared.array(64, acc)
            warp_ints = cuda.shared.array(64, int64)
            if lane32 == 0:
                warp_stats[4 * warp_id] = m
                warp_stats[4 * warp_id + 1] = excess
                warp_stats[4 * warp_id + 2] = moment
                warp_stats[4 * warp_id + 3] = mass
                store_order(warp_floats, 2 * warp_id, warp_ints, 2 * warp_id, order)
            cuda.syncthreads()
            m, excess, moment, mass = warp_stats[0], warp_stats[1], warp_stats[2], warp_stats[3]
            order = load_order(warp_floats, 0, warp_ints, 0, order)
            for other in range(1, cuda.blockDim.x // 32):
                m, excess, moment, mass, order = merge(
                    m, excess, moment, mass, order, warp_stats[4 * other],
                    warp_stats[4 * other + 1], warp_stats[4 * other + 2], warp_stats[4 * other + 3],
                    load_order(warp_floats, 2 * other, warp_ints, 2 * other, order))
            cuda.syncthreads()
        return m, excess, moment, mass, order

    @cuda.jit(device=True, inline="always")
    def merge_chunks(acc_ws, int_ws, dims, row, chunk, active, m, excess, moment, mass, order):
        """Publish this block's partial of ``row``; the block of the row's last chunk
        to finish merges them all in chunk order.

        Returns (whether this block has the row's whole partial, that partial).
        Every thread of the block must call it.
        """
        is_last = cuda.shared.array(1, int64)
        ints = CHUNKS_DONE + dims.n_rows  # the metrics' integers, after the chunk counters
        part = dims.chunk_base + parts * (row * dims.n_chunks + chunk)
        if cuda.threadIdx.x == 0 and active:
            acc_ws[part] = m
            acc_ws[part + 1] = excess
            acc_ws[part + 2] = moment
            acc_ws[part + 3] = mass
            store_order(acc_ws, part + CHUNK_PARTIALS, int_ws,
                        ints + ORDER_PARTIALS * (row * dims.n_chunks + chunk), order)
            cuda.threadfence()
            done = cuda.atomic.add(int_ws, CHUNKS_DONE + row, 1)
            is_last[0] = 1 if done == dims.n_chunks - 1 else 0
        cuda.syncthreads()
        row_done = active and is_last[0] == 1
        if row_done:
            cuda.threadfence()
            part = dims.chunk_base + parts * row * dims.n_chunks
            m, excess = acc_ws[part], acc_ws[part + 1]
            moment, mass = acc_ws[part + 2], acc_ws[part + 3]
            order = load_order(acc_ws, part + CHUNK_PARTIALS, int_ws,
                               ints + ORDER_PARTIALS * row * dims.n_chunks, order)
            for other in range(1, dims.n_chunks):
                part = dims.chunk_base + parts * (row * dims.n_chunks + other)
                m, excess, moment, mass, order = merge(
                    m, excess, moment, mass, order, acc_ws[part], acc_ws[part + 1],
                    acc_ws[part + 2], acc_ws[part + 3],
                    load_order(acc_ws, part + CHUNK_PARTIALS, int_ws,
                               ints + ORDER_PARTIALS * (row * dims.n_chunks + other), order))
        cuda.syncthreads()
        return row_done, m, excess, moment, mass, order

    return raise_max, group_reduce, merge_chunks


# ---------------------------------------------------------------- the passes over a row

@lru_cache(maxsize=None)
def _class_terms(variant):
    """(load_x, class_q, cap_slope): one logit, one class's share of the target
    distribution, and the soft cap's slope at a logit."""
    v = variant
    acc = v.acc
    one = acc(1.0)
    two, four = acc(2.0), acc(4.0)
    capped = v.op == "cross_entropy" and v.softcap
    weighted = v.op == "cross_entropy" and v.has_weight
    prob_target = v.prob_target

    @cuda.jit(device=True, inline="always")
    def load_x(logits, at, scalars):
        """One logit in the accumulation dtype, soft-capped (x = a tanh(z / a)) when
        the variant caps."""
        x = acc(logits[at])
        if capped:
            x = scalars.softcap * math.tanh(x * scalars.inv_softcap)
        return x

    @cuda.jit(device=True, inline="always")
    def class_q(target, t_at, weight, w_at, scalars):
        """q~_c: class c's target weight without the index target's own term."""
        w_c = acc(weight[w_at]) if weighted else one
        if prob_target:
            return ((one - scalars.eps) * acc(target[t_at]) + scalars.eps_over_c) * w_c
        return scalars.eps_over_c * w_c

    @cuda.jit(device=True, inline="always")
    def cap_slope(logits, at, scalars):
        """dx/dz of the soft cap x = a tanh(z / a): 1 / cosh(z / a)**2 = 4 e / (1 + e)**2
        with e = exp(-2 |z / a|) <= 1, from the logit z itself: 1 - (x / a)**2 of the
        rounded x loses its digits near saturation, and cosh would overflow."""
        e = math.exp(-two * abs(acc(logits[at]) * scalars.inv_softcap))
        return four * e / ((one + e) * (one + e))

    return load_x, class_q, cap_slope


@lru_cache(maxsize=None)
def _stats_pass(variant):
    """``thread_stats``: one thread's pass over its classes of a row."""
    v = variant
    acc = v.acc
    zero, one, neg_inf = acc(0.0), acc(1.0), acc(-math.inf)
    K = v.cache
    entropy = v.op == "entropy"
    logsumexp = v.op == "logsumexp"
    index_target, prob_target = v.index_target, v.prob_target
    metrics = _metrics_pass(v)
    load_x, class_q, _ = _class_terms(v)
    raise_max, _, _ = _online_softmax(v.acc64, entropy, v.layout != "warp", metrics)

    @cuda.jit(device=True, inline="always")
    def thread_stats(logits, x_row, x_geom, target, t_row, t_geom, weight, w_geom, c_first,
                     c_end, step, t_logit, t, scalars, cache):
        """This thread's partial (row_max, excess, moment, mass, order) over the classes
        c_first, c_first + step, ... < c_end of a row (see the notation, and
        ``_online_softmax`` for the excess and for ``order``, which counts the classes
        ahead of class t of logit t_logit).

        Loads K logits before using them (bytes in flight), leaving them in ``cache``.
        """
        has_spread = prob_target or (index_target and scalars.eps > zero)
        row_max = neg_inf
        n_top = rest = moment = mass = shannon = zero
        top, first, ahead = neg_inf, int64(_INT64_MAX), int64(0)
        for base in range(c_first, c_end, step * K):
            chunk_max = neg_inf
            for k in range(K):
                c = base + k * step
                x = neg_inf
                if c < c_end:
                    x = load_x(logits, x_row + c * x_geom.s_class, scalars)
                    if metrics:
                        if precedes(x, c, top, first):
                            top, first = x, c
                        if precedes(x, c, t_logit, t):
                            ahead += 1
                cache[k] = x
                if x > chunk_max:
                    chunk_max = x
            row_max, n_top, rest, moment, shannon = raise_max(row_max, n_top, rest, moment,
                                                              mass, shannon, chunk_max)
            for k in range(K):
                c = base + k * step
                if c < c_end:
                    x = cache[k]
                    # exp(-inf - -inf) is nan: a -inf logit adds exactly nothing. A logit
                    # at the max adds 1 to the count; the logsumexp op counts a +inf max
                    # so too (torch: logsumexp = +inf), while cross-entropy keeps
                    # exp(inf - inf) = nan, as torch's loss does.
                    e = zero
                    if x == row_max and x != neg_inf and (logsumexp or x != -neg_inf):
                        e = one
                        n_top += one
                    elif x != neg_inf:
                        e = math.exp(x - row_max)
                        rest += e
                    if (entropy or metrics) and e != zero:
                        if entropy:
                            moment += e * (x - row_max)
                        else:
                            shannon += e * (x - row_max)
                    if has_spread:
                        q = class_q(target, t_row + c * t_geom.s_class, weight,
                                    w_geom.offset + c * w_geom.s_class, scalars)
                        moment += q * (x - (row_max if row_max > neg_inf else zero))
                        mass += q
        # (n_top - 1) is exact: the excess keeps the rest's digits.
        return row_max, (n_top - one) + rest, moment, mass, (top, first, ahead, shannon)

    return thread_stats


def _metrics_pass(variant):
    """Whether the kernel of ``variant`` takes the metrics (in its statistics pass)."""
    return variant.metrics and variant.op == "cross_entropy" and variant.phase != "apply"


@lru_cache(maxsize=None)
def _ce_terms(variant):
    """``ce_terms``: a cross-entropy row's loss and gradient coefficients."""
    v = variant
    acc = v.acc
    zero, one, two, nan = acc(0.0), acc(1.0), acc(2.0), acc(math.nan)
    index_target = v.index_target
    weighted = v.has_weight

    @cuda.jit(device=True, inline="always")
    def ce_terms(row_max, log_sum, lse, moment, mass, t_logit, t, valid, counted, weight,
                 w_geom, g_ce, g_z, scalars, int_ws, flag):
        """(ce, lse**2 or 0, the row's shares of D and N, p_coef, t_coef) of one row.

        The gradient is then (p_coef p_j - g_ce q~_j - t_coef [j == t]) cap'(x_j).
        An ignored row gives 0; an out-of-range index nan (p_coef = nan), and
        a nonzero ``flag`` (n_rows - row, so the first bad row wins) goes to the
        error flag.
        """
        row_d = row_n = one
        t_coef = zero
        if not index_target:
            # ce = spread = sum_c q_c (lse - x_c) = mass log s - moment: the moment about
            # the max, so two terms of one sign (no cancellation)
            ce = mass * log_sum - moment
            p_coef = g_ce * mass                   # d ce / dx_j = Q p_j - q_j, Q = mass
        elif counted:
            t_weight = acc(weight[w_geom.offset + t * w_geom.s_class]) if weighted else one
            t_mass = (one - scalars.eps) * t_weight
            ce = t_mass * ((row_max - t_logit) + log_sum)   # the target's term: t_mass (lse - x_t)
            row_mass = t_mass
            if scalars.eps > zero:  # mass and moment already carry the eps / C factor
                ce += mass * log_sum - moment               # + spread
                row_mass += mass
            row_d = t_weight
            t_coef = g_ce * t_mass                  # d ce / dx_j = Q p_j - q~_j - t_mass [j == t]
            p_coef = g_ce * row_mass
        else:
            ce = zero if not valid else nan
            p_coef = nan
            row_d = row_n = zero
            if valid and flag:
                cuda.atomic.max(int_ws, ERROR, flag)
        z_value = zero
        if scalars.z_loss > zero and counted:
            z_value = lse * lse
            # d (z_loss lse**2) / dx_j = 2 z_loss lse p_j
            p_coef += two * scalars.z_loss * g_z * lse
        return ce, z_value, row_d, row_n, p_coef, t_coef

    return ce_terms


@lru_cache(maxsize=None)
def _write_pass(variant):
    """``write_row``: one thread's columns of the gradient or normalised row."""
    v = variant
    acc = v.acc
    zero = acc(0.0)
    K = v.cache
    softmax = v.op == "softmax"
    index_target, prob_target = v.index_target, v.prob_target
    capped = v.op == "cross_entropy" and v.softcap
    load_x, class_q, cap_slope = _class_terms(v)

    @cuda.jit(device=True, inline="always")
    def write_row(logits, x_row, x_geom, target, t_row, t_geom, weight, w_geom, out, out_row,
                  out_geom, c_first, c_end, step, cached, row_max, log_sum, p_coef, g_ce, t_coef,
                  t, ignored, scalars, cache):
        """Write the classes c_first, c_first + step, ... < c_end of a row's output.

        p_j = exp((x_j - m) - log s), not exp(x_j - lse): lse rounds at the logits'
        magnitude. Ignored rows get exactly 0. ``cached`` rows come from the
        registers ``thread_stats`` filled; others are read again.
        """
        has_spread = prob_target or (index_target and scalars.eps > zero)
        for base in range(c_first, c_end, step * K):
            for k in range(K):
                c = base + k * step
                if c < c_end:
                    x = cache[k] if cached else load_x(logits, x_row + c * x_geom.s_class,
                                                       scalars)
                    log_p = (x - row_max) - log_sum
                    if softmax:
                        value = log_p if scalars.log_output > zero else math.exp(log_p)
                    elif not ignored:
                        # d loss / dx_j = p_coef p_j - g_ce q~_j - t_coef [j == t]
                        value = p_coef * math.exp(log_p)
                        if has_spread:
                            value -= g_ce * class_q(target, t_row + c * t_geom.s_class, weight,
                                                    w_geom.offset + c * w_geom.s_class, scalars)
                        if index_target and c == t:
                            value -= t_coef
                        if capped:
                            value *= cap_slope(logits, x_row + c * x_geom.s_class, scalars)
                    else:
                        value = zero
                    out[out_row + c * out_geom.s_class] = value

    return write_row


# ---------------------------------------------------------------- the kernels

@lru_cache(maxsize=None)
def kernel_for(variant):
    """The kernel for ``variant`` (see the module docstring), compiled lazily per dtype.

    Longer than a screen on purpose: the variant's flags (compile-time constants to
    Numba, so each kernel keeps only its own branches), then short device functions
    for the steps the kernel itself runs in order: the row's target, the statistics
    pass (``_stats_pass``), the loss terms (``_ce_terms``), the write pass.
    """
    restart_block_labels()  # before this kernel's compilations (nbxent/_block_labels.py)
    v = variant
    acc = v.acc
    zero, one, neg_inf, pos_inf, nan = (acc(0.0), acc(1.0), acc(-math.inf), acc(math.inf),
                                        acc(math.nan))
    K = v.cache
    is_ce = v.op == "cross_entropy"
    index_target = v.index_target
    split = v.layout == "split"
    do_stats = v.phase in ("fused", "stats")
    do_apply = v.phase in ("fused", "apply") and v.writes_out
    store_coefs = split and v.phase == "stats" and v.writes_out
    row_output = v.op in ("logsumexp", "entropy") or (is_ce and v.want_loss)
    write_rows = do_stats and row_output and not v.reduce
    reduce = do_stats and row_output and v.reduce
    use_cache = v.phase == "fused"
    entropy = v.op == "entropy"
    has_grad_output = is_ce and v.has_grad_output
    denom_on_device = v.denom_on_device
    metrics = _metrics_pass(v)
    _, group_reduce, merge_chunks = _online_softmax(v.acc64, entropy, v.layout != "warp",
                                                    metrics)
    load_x, _, _ = _class_terms(v)
    thread_stats = _stats_pass(v)
    ce_terms = _ce_terms(v)
    write_row = _write_pass(v)

    @cuda.jit(device=True, inline="always")
    def block_rows(dims):
        """(chunk, first class, class end, first row, row step) of this thread's block."""
        if split:
            c_begin = cuda.blockIdx.x * dims.chunk_cols
            return (cuda.blockIdx.x, c_begin, min(dims.n_classes, c_begin + dims.chunk_cols),
                    cuda.blockIdx.y, cuda.gridDim.y)
        rows_per_block = cuda.blockDim.x // dims.group
        return (0, 0, dims.n_classes, cuda.blockIdx.x * rows_per_block,
                cuda.gridDim.x * rows_per_block)

    @cuda.jit(device=True, inline="always")
    def row_target(logits, x_row, x_geom, target, t_row, active, dims, scalars):
        """(t, valid, counted, t_logit) of a row: its class index (0 without one),
        whether it is not ignore_index, whether it also lies in [0, C); the target's
        logit x_t, read before any lane writes the row."""
        t = int64(0)
        valid = True
        if index_target and active:
            t = class_index(target[t_row])
            valid = t != dims.ignore_index
        in_range = t >= 0 and t < dims.n_classes
        counted = valid and in_range
        t_logit = zero
        if do_stats and active and index_target and counted:
            t_logit = load_x(logits, x_row + t * x_geom.s_class, scalars)
        return t, valid, counted, t_logit

    @cuda.jit(device=True, inline="always")
    def store_metrics(row_metrics, n_rows, row, row_max, lse, log_sum, sum_exp, order, counted):
        """Row ``row`` of the metrics (``nbxent._metrics``: N_METRICS rows of n_rows):
        its logsumexp (+inf for a row holding +inf and no nan, where the loss's sum is
        nan; the top logit is then that +inf or a nan), argmax, the target's rank (+inf
        for a target that does not count) and entropy (nan for a row of -inf)."""
        top, first, ahead, shannon = order
        row_metrics[METRIC_LSE * n_rows + row] = top if row_max == pos_inf else lse
        row_metrics[METRIC_ARGMAX * n_rows + row] = first
        if counted:
            row_metrics[METRIC_RANK * n_rows + row] = ahead
        else:
            row_metrics[METRIC_RANK * n_rows + row] = math.inf
        row_metrics[METRIC_ENTROPY * n_rows + row] = (log_sum - shannon / sum_exp
                                                      if sum_exp != zero else nan)

    @cuda.jit
    def kernel(logits, x_geom, target, t_geom, weight, w_geom, grad_output, g_geom, loss,
               row_metrics, out, out_geom, acc_ws, int_ws, dims, scalars):
        """Rows of one operation (``variant``); see the module docstring.

        Threads: groups of ``group`` lanes per row (warp), the block per row
        (block), or the block per (chunk = blockIdx.x, row) (split); rows grid-stride.
        ``loss`` is a fresh buffer for a value per row; 'sum' and 'mean' leave each
        row's terms in acc_ws instead, for ``row_sums_kernel``. ``row_metrics`` (float64,
        with ``variant.metrics``) takes the metrics of every row, whatever the reduction.
        """
        x_geom, t_geom, w_geom = Geometry(*x_geom), Geometry(*t_geom), Geometry(*w_geom)
        g_geom, out_geom = Geometry(*g_geom), Geometry(*out_geom)
        dims, scalars = Dims(*dims), Scalars(*scalars)
        tid = cuda.threadIdx.x
        lane32, warp_id = tid % 32, tid // 32
        group_id, lane = divmod(tid, dims.group)
        chunk, c_begin, c_end, first_row, row_step = block_rows(dims)
        cached = use_cache and c_end - c_begin <= dims.group * K
        inv_d = inv_n = scalars.inv_rows
        if denom_on_device:
            inv_d = one / acc_ws[0]
            inv_n = one / acc_ws[1]
        cache = cuda.local.array(K, acc)
        for block_row in range(first_row, dims.n_rows, row_step):
            row = block_row + group_id
            active = row < dims.n_rows
            o = row // dims.inner
            i = row - o * dims.inner
            x_row, t_row = row_start(x_geom, o, i), row_start(t_geom, o, i)
            t, valid, counted, t_logit = row_target(logits, x_row, x_geom, target, t_row,
                                                    active, dims, scalars)
            row_max = log_sum = p_coef = g_ce = t_coef = zero
            if do_stats:
                row_max, excess, moment, mass = neg_inf, -one, zero, zero
                order = (neg_inf, int64(_INT64_MAX), int64(0), zero)
                if active:
                    row_max, excess, moment, mass, order = thread_stats(
                        logits, x_row, x_geom, target, t_row, t_geom, weight, w_geom,
                        c_begin + lane, c_end, dims.group, t_logit, t, scalars, cache)
                row_max, excess, moment, mass, order = group_reduce(
                    row_max, excess, moment, mass, order, dims.group, lane32, warp_id)
                row_done = active
                if split:
                    row_done, row_max, excess, moment, mass, order = merge_chunks(
                        acc_ws, int_ws, dims, row, chunk, active, row_max, excess, moment, mass,
                        order)
                if row_done:
                    sum_exp = excess + one
                    log_sum = log1p(excess)
                    lse = row_max + log_sum
                    value = lse  # the logsumexp op's result
                    z_value = zero
                    row_d = row_n = one
                    if entropy:
                        value = log_sum - moment / sum_exp  # H = log s - sum_c e_c (x_c - m) / s
                    elif is_ce:
                        g = scalars.grad_scale
                        if has_grad_output:
                            g *= acc(grad_output[row_start(g_geom, o, i)])
                        g_ce = g * inv_d
                        value, z_value, row_d, row_n, p_coef, t_coef = ce_terms(
                            row_max, log_sum, lse, moment, mass, t_logit, t, valid, counted,
                            weight, w_geom, g_ce, g * inv_n, scalars, int_ws,
                            dims.n_rows - row if lane == 0 else 0)
                    if lane == 0:
                        if metrics:
                            store_metrics(row_metrics, dims.n_rows, row, row_max, lse, log_sum,
                                          sum_exp, order, counted)
                        if write_rows:
                            loss[row] = value + scalars.z_loss * z_value if is_ce else value
                        if reduce:  # summed by row_sums_kernel, over a fixed partition
                            at = dims.rows_base + ROW_TERMS * row
                            acc_ws[at] = value
                            acc_ws[at + 1] = z_value
                            acc_ws[at + 2] = row_d
                            acc_ws[at + 3] = row_n
                        if store_coefs:
                            store_row_coefs(acc_ws, dims.rowc_base + ROW_COEFS * row, row_max,
                                            log_sum, p_coef, g_ce, t_coef)
            if do_apply and active:
                if not do_stats:
                    row_max, log_sum, p_coef, g_ce, t_coef = load_row_coefs(
                        acc_ws, dims.rowc_base + ROW_COEFS * row)
                write_row(logits, x_row, x_geom, target, t_row, t_geom, weight, w_geom, out,
                          row_start(out_geom, o, i), out_geom, c_begin + lane, c_end, dims.group,
                          cached, row_max, log_sum, p_coef, g_ce, t_coef, t, not valid, scalars,
                          cache)

    return kernel


@lru_cache(maxsize=None)
def _target_terms(acc64, has_weight):
    """A row's share of the 'mean' denominators (w_t, 1) when it counts, and the index
    check: a class index outside [0, C) that is not ignore_index sets the error flag
    as the row kernel does."""
    acc = float64 if acc64 else float32
    zero, one = acc(0.0), acc(1.0)

    @cuda.jit(device=True, inline="always")
    def terms(target, t_geom, weight, w_geom, acc_ws, int_ws, dims, row):
        o = row // dims.inner
        t = class_index(target[row_start(t_geom, o, row - o * dims.inner)])
        d = n = zero
        if t != dims.ignore_index:
            if t >= 0 and t < dims.n_classes:
                d = acc(weight[w_geom.offset + t * w_geom.s_class]) if has_weight else one
                n = one
            else:
                cuda.atomic.max(int_ws, ERROR, dims.n_rows - row)
        return d, n, zero, zero

    return terms


@cuda.jit(device=True, inline="always")
def _store_denominators(loss, acc_ws, scalars, d, n, unused_c, unused_d):
    acc_ws[0] = d
    acc_ws[1] = n


def denominator_kernel(acc64, has_weight):
    """Kernel for the 'mean' denominators of index targets, and the index check:
    acc_ws[0] = D, the sum of w_t over the counted rows, acc_ws[1] = N, their
    number (``_fixed_sums``: launch it with ``SUM_THREADS`` threads and a block per
    tile of ``sum_rows`` rows)."""
    return _fixed_sums(acc64, _target_terms(acc64, has_weight), TARGET_TILES_DONE,
                       _store_denominators)


@cuda.jit(device=True, inline="always")
def _row_terms(target, t_geom, weight, w_geom, acc_ws, int_ws, dims, row):
    at = dims.rows_base + ROW_TERMS * row
    return acc_ws[at], acc_ws[at + 1], acc_ws[at + 2], acc_ws[at + 3]


@lru_cache(maxsize=None)
def _store_loss(acc64):
    """loss[0] = sum ce / D + z_loss * sum lse**2 / N ('mean'; 'sum' without the
    divisions), from the tiles' totals."""
    zero = (float64 if acc64 else float32)(0.0)

    @cuda.jit(device=True, inline="always")
    def store(loss, acc_ws, scalars, ce_sum, z_sum, d_sum, n_sum):
        mean = scalars.is_mean > zero
        total = ce_sum / d_sum if mean else ce_sum
        if scalars.z_loss > zero:
            total += scalars.z_loss * (z_sum / n_sum if mean else z_sum)
        loss[0] = total

    return store


def row_sums_kernel(acc64):
    """Kernel finishing 'sum' and 'mean': loss[0] from the ROW_TERMS values per row
    (loss, z-loss term, D and N shares) the row kernel left in acc_ws
    (``_fixed_sums``: launch it with ``SUM_THREADS`` threads and a block per tile of
    ``sum_rows`` rows)."""
    return _fixed_sums(acc64, _row_terms, ROW_TILES_DONE, _store_loss(acc64))


@lru_cache(maxsize=None)
def copy_kernel(ndim):
    """Kernel copying a strided ``ndim``-D view into a C-contiguous 1-D buffer."""

    @cuda.jit
    def kernel(src, dst, shape, strides, offset):
        """dst[flat] = src[offset + sum(index_d * strides_d)]; a thread per element, grid-stride."""
        for flat in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
            rest = flat
            at = offset
            for d in range(ndim - 1, -1, -1):
                at += (rest % shape[d]) * strides[d]
                rest //= shape[d]
            dst[flat] = src[at]

    return kernel


def _variants():
    """Every compile-time-distinct kernel the backend launches, as (name, Variant).

    The launched flag sets are subsets of these: per layout and phase, the
    cross-entropy variants switch on every feature (weights, soft cap, gradient,
    grad_output, device denominators), once with per-row and once with reduced
    output, and the reduced one once more with the metrics (the default 'mean'
    call's), so compiling them compiles every code path and bounds the registers.
    """
    out = []
    full = dict(has_weight=True, softcap=True, want_grad=True, has_grad_output=True)
    index, prob, none = TargetKind.INDEX, TargetKind.PROB, TargetKind.NONE
    for layout, phase, cache in (("warp", "fused", 16), ("block", "fused", 16),
                                 ("split", "stats", 16), ("split", "apply", 16)):
        common = dict(layout=layout, phase=phase, cache=cache)
        out += [Variant(op="cross_entropy", target=index, **full, **common),
                Variant(op="cross_entropy", target=prob, reduce=True, **full, **common),
                Variant(op="softmax", target=none, want_loss=False, **common)]
        if phase != "apply":
            out += [Variant(op="cross_entropy", target=index, reduce=True,
                            denom_on_device=True, **full, **common),
                    Variant(op="cross_entropy", target=index, reduce=True, denom_on_device=True,
                            metrics=True, **full, **common),
                    Variant(op="logsumexp", target=none, **common),
                    Variant(op="entropy", target=none, reduce=True, **common)]
    return [(v.name, v) for v in out]


#: Every kernel variant the backend launches (name, Variant), for the PTX check.
VARIANTS = _variants()
