"""The CPU backend's Numba kernels: softmax cross-entropy, its gradient, and the
normalisations (logsumexp, log_softmax, softmax, entropy), one body for all.

Arrays arrive as flat 1-D buffers plus element geometry ``(offset, s_outer,
s_class, s_inner)``: row ``r = o * inner + i`` has class ``c`` at
``offset + o*s_outer + c*s_class + i*s_inner``. float16 buffers arrive as uint16
and go through ``bits``. Each variant (target kind, weights, smoothing, softcap,
what is written) is a compile-time flag of ``row_kernel``, memoised and cached
on disk, so a variant pays only for what it uses.

Numerics: per row, one pass over the logits in chunks of ``CHUNK`` classes keeps
the running max ``row_max`` and the sum of ``exp(x - row_max)`` rescaled when the
max grows (online softmax at chunk granularity: a chunk is read from memory
once, then twice from L1). exp is evaluated in the compute type (float32 for
float16/float32) and summed in float64, so a loss near 0 keeps its relative
precision and summation error does not grow with C.
Sums that do not involve exp (smoothing, probability targets) are taken
relative to a per-row reference logit, so large equal logits do not cancel.
"""

import math
from collections import namedtuple

import numpy as np
from numba import njit, prange

from .bits import float_to_half, from_order_key, half_to_float, order_key, prefetch
from .disk_cache import cached as _cached
from .fastexp import exp64, exp_nonpositive, log1p32, log32

# No nnan/ninf: nan must propagate and -inf logits must stay -inf. The kernels also
# compile with error_model="numpy" (inherited by the helpers they call): a float
# division is then IEEE, not a branch raising ZeroDivisionError, which keeps LLVM
# from vectorising the loop around it. Every division is guarded where it matters.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
CHUNK = 1024

NO_TARGET, INDEX_TARGET, PROB_TARGET = 0, 1, 2
WRITE_NOTHING, WRITE_GRAD, WRITE_LOG_SOFTMAX, WRITE_SOFTMAX = 0, 1, 2, 3

# ``contiguous``: a tile kernel whose copy loops run along a unit stride (always False
# for the row kernel, whose strides are runtime values).
Variant = namedtuple("Variant", "tiled half compute64 target target_half smoothing "
                                "softcap entropy write contiguous")


# Indices are cast to unsigned: Numba then drops its negative-index wraparound
# branch, which otherwise keeps LLVM from vectorising the class loops.
@njit(inline="always")
def _load(buf, idx, half, ftype):
    if half:
        return ftype(half_to_float(buf[np.uint64(idx)]))
    return ftype(buf[np.uint64(idx)])


@njit(inline="always")
def _store(buf, idx, value, half):
    if half:
        buf[np.uint64(idx)] = float_to_half(value)
    else:
        buf[np.uint64(idx)] = value


@njit(inline="always")
def _cell(row, pitch, k):
    """Index of ``tile[row, k]`` in a flat tile with rows ``pitch`` apart (unsigned, as in
    ``_load``)."""
    return np.uint64(row * pitch + k)


@njit(inline="always")
def _cap(value, cap, softcap):
    """cap * tanh(value / cap), rounded the same wherever it is inlined.

    The division is a multiplication by a reciprocal rounded from float64:
    under fastmath a plain ``value / cap`` became a reciprocal multiply in
    some loops and stayed a division elsewhere, so a row's max and its target
    logit, the same value, could differ by an ulp (a 1e-5 relative loss error).
    """
    if softcap:
        return cap * math.tanh(value * type(cap)(1.0 / float(cap)))
    return value


@njit(fastmath=False, error_model="numpy")
def _difference_plus(a, b, c):
    """``(a - b) + c``, in that order, where a and b are logits (or a row's max).

    Without fastmath of its own (a Numba callee otherwise inherits its caller's):
    under reassociation LLVM regroups ``(x - max) - log_sum`` into ``x - (max +
    log_sum)``, hoisted out of the loop or shared with ``lse = max + log_sum``,
    which rounds to the ulp of the logits: large logits lose every digit. The
    whole expression must be here: a reassociating caller reaches through a lone
    unflagged subtraction. LLVM still inlines and vectorises it.
    """
    return (a - b) + c


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


# Rows of the kernels' scratch arrays: the row kernel's per-item partial statistics
# (_MAX .. _T_LOGIT) and the tile kernel's per-position values (all of them).
_MAX, _SUM, _AUX, _MASS, _REF, _T_LOGIT, _N_PARTS = range(7)
_SHIFT, _N_TOP, _REST = _MAX, _SUM, _N_PARTS
_COEF, _G_CE, _LOG_SUM, _VALID, _T_GRAD, _N_SCRATCH = range(_N_PARTS + 1, _N_PARTS + 7)

_kernels = {}


def kernel_for(variant):
    """The compiled kernel for one ``Variant`` (memoised; cached on disk).

    Both kernel shapes take ``(x, x_geom, split, outer, inner, n_classes, target,
    t_geom, weight, weight_total, scalars, grad_output, g_geom, out, out_geom,
    row_value, row_lse)``: they fill ``row_value`` (cross-entropy or entropy per
    row) and ``row_lse`` (logsumexp per row, 0 for ignored rows) and write the
    gradient or normalised logits into ``out``. ``scalars`` is float64
    [ignore_index, label_smoothing, z_loss, softcap, grad_scale, 1/D, 1/n_valid,
    has_grad_output].

    The row kernel (``tiled=False``) vectorises along the classes of a row;
    ``split > 1`` splits each row's classes over that many work items (for
    fewer rows than threads), combining partial statistics before the writes.
    The tile kernel (``tiled=True``) vectorises across ``split`` neighbouring
    rows (positions along ``inner``) at once: for few classes, or a class axis
    that is not the last (NCHW), where a row is too short or too strided. Each
    tile is staged once into class-major scratch (short rows are transposed on
    the way), its exps are kept for the writes, and the results are staged out.
    """
    kernel = _kernels.get(variant)
    if kernel is None:
        kernel = _kernels[variant] = _build(variant)
    return kernel


def _build(variant):
    tiled, half, compute64, target_kind, target_half, smoothing, softcap, entropy, write, \
        contiguous = variant
    ftype = np.float64 if compute64 else np.float32
    indexed = target_kind == INDEX_TARGET
    prob = target_kind == PROB_TARGET
    neg_inf = -np.inf
    # A +inf logit: logsumexp is +inf (as in torch and SciPy); every probability,
    # and so the cross-entropy, log_softmax and entropy, is nan (exp(inf - inf)).
    sum_at_inf = np.inf if target_kind == NO_TARGET and not entropy and write == WRITE_NOTHING \
        else np.nan
    # The row kernel's statistics pass stores each exp where the result goes, and the
    # write pass rescales it: one exp per logit instead of two. Not through float16
    # (it would round the exps) nor under softcap or log_softmax (their writes need
    # the logit itself), nor in float64: there the stored exps lost their digits for
    # logits near 1e12 and beyond (tests/test_offsets.py), cause not yet found.
    keep_exps = write in (WRITE_GRAD, WRITE_SOFTMAX) and not half and not softcap and not compute64

    @njit(inline="always")
    def unit_or(stride):
        """1 as a compile-time constant where a tile's copy loops run along a unit stride.

        (The row kernel takes its class stride as it is: LLVM versions each strided
        loop on the stride being 1, measured as fast as a compile-time 1. In the
        tile's short copy loops that check cost 6-7 % at C = 10.)
        """
        return 1 if contiguous else stride

    @njit(inline="always")
    def load_logit(x, idx, cap):
        return _cap(_load(x, idx, half, ftype), cap, softcap)

    @njit(inline="always")
    def finite_or_zero(value):
        """The reference logit of the non-exp sums: a row's first logit if finite, else 0."""
        return value if abs(value) < np.inf else ftype(0.0)

    @njit(inline="always")
    def reference_logit(x, base, cap):
        """The row's reference logit, read from memory."""
        return finite_or_zero(load_logit(x, base, cap))

    @njit(inline="always")
    def class_target_weight(c, t_row, t_class_stride, target, weight, one_minus_eps,
                            eps_over_c):
        """q_c * w_c: the weighted target mass of class c (probability targets)."""
        mass = one_minus_eps * _load(target, t_row + c * t_class_stride, target_half,
                                     ftype) + eps_over_c
        return mass * ftype(weight[c])

    @njit(inline="always")
    def element_terms(value, shift, ref, c, target, t_row, t_class_stride, weight,
                      one_minus_eps, eps_over_c):
        """One logit's share of the row sums: (is the max, exp(x - max), aux, mass).

        aux: entropy's e*(x - max) (0 * -inf taken as 0), or w*(x - ref) under
        smoothing, or q*w*(x - ref) for probability targets; mass: q*w.
        """
        e = exp_nonpositive(value - shift, compute64)
        aux = ftype(0.0)
        mass = ftype(0.0)
        if entropy:
            aux = e * max(value - shift, ftype(-1e30))
        elif indexed and smoothing:
            aux = ftype(weight[c]) * (value - ref)
        elif prob:
            mass = class_target_weight(c, t_row, t_class_stride, target, weight,
                                       one_minus_eps, eps_over_c)
            aux = mass * (value - ref)
        return value == shift, e, aux, mass

    @njit(inline="always")
    def element_result(value, e, shift, log_sum, inv_sum, scaled_coef, g_ce, c, target, t_row,
                       t_class_stride, weight, one_minus_eps, eps_over_c, cap):
        """What is written for one logit: its gradient, log-probability or probability.

        ``e`` is exp(value - shift). Probabilities are e * inv_sum, never
        exp(x - lse): under fastmath's reassociation LLVM would hoist a float32 lse
        out of the loop and lose its digits for large logits. ``scaled_coef`` is
        coef * inv_sum. The target class's own term is added apart
        (``target_gradient``).
        """
        if write == WRITE_LOG_SOFTMAX:
            return ftype(_difference_plus(value, shift, -log_sum))
        if write == WRITE_SOFTMAX:
            return e * inv_sum
        result = scaled_coef * e
        if indexed and smoothing:
            result -= g_ce * eps_over_c * ftype(weight[c])
        elif prob:
            result -= g_ce * class_target_weight(c, t_row, t_class_stride, target, weight,
                                                 one_minus_eps, eps_over_c)
        if softcap:
            result *= ftype(1.0) - (value / cap) * (value / cap)
        return result

    @njit(inline="always")
    def target_of(x, base, s_class, target, t_row, n_classes, ignore_index, weight, cap):
        """(counts, class index, its logit, its weight) of an index-target row.

        An index outside [0, C) that is not ignored (only with validate=False)
        gets weight nan, which makes the row's loss and gradient nan. Read the
        logit before any write to the row: the gradient may overwrite it.
        """
        if not indexed:
            return True, np.int64(-1), ftype(0.0), 1.0
        t = np.int64(target[np.uint64(t_row)])
        # Loads at a safe class, then selects: a branch around them would make Numba
        # keep reference-count calls on the arrays in every caller's loop.
        in_range = 0 <= t < n_classes
        safe = t if in_range else 0
        logit = load_logit(x, base + safe * s_class, cap)
        class_weight = float(weight[np.uint64(safe)])
        return (t != ignore_index, t, logit if in_range else ftype(0.0),
                class_weight if in_range else np.nan)

    @njit(inline="always")
    def row_result(row_max, sum_exp, log_sum, aux, mass, ref, target_logit, target_weight,
                   weight_total, one_minus_eps, eps_over_c):
        """(per-row value, lse, A) from the row statistics.

        The value is the cross-entropy (or the entropy); A = sum_c q_c w_c, the
        coefficient of softmax in the cross-entropy gradient.
        """
        lse = float(row_max) + log_sum
        if entropy:
            # A row of all -inf sums to 0: its entropy is nan (Python's division would raise).
            mean_term = aux / sum_exp if sum_exp != 0.0 else np.nan
            return log_sum - mean_term, lse, 0.0
        from_ref = _difference_plus(row_max, ref, log_sum)  # lse - ref without cancellation
        if prob:
            return mass * from_ref - aux, lse, mass
        value = 0.0
        coef = 0.0
        if indexed:
            value = one_minus_eps * target_weight * _difference_plus(row_max, target_logit,
                                                                     log_sum)
            coef = one_minus_eps * target_weight
            if smoothing:
                value += eps_over_c * (weight_total * from_ref - aux)
                coef += eps_over_c * weight_total
        return value, lse, coef

    @njit(inline="always")
    def grad_output_at(scalars, grad_output, g_index):
        """The row's element of an array ``grad_output`` (1 for a scalar one).

        Loaded either way (a scalar grad_output comes as a 1-element placeholder
        with zero strides): a load under the branch keeps the loop scalar.
        """
        value = float(grad_output[np.uint64(g_index)])
        return value if scalars[7] != 0.0 else 1.0

    @njit(inline="always")
    def upstream(scalars, g_row, coef, lse):
        """(softmax coefficient, cross-entropy scale) of a row's gradient, given its
        ``grad_output`` element ``g_row``."""
        g = scalars[4] * g_row
        g_ce = g * scalars[5]
        return g_ce * coef + 2.0 * scalars[2] * (g * scalars[6]) * lse, g_ce

    @njit(inline="always")
    def target_gradient(coef, g_ce, target_logit, shift, log_sum, target_weight,
                        one_minus_eps, eps_over_c, cap):
        """The target class's gradient, in float64, from the logit read before any write."""
        grad_t = (coef * exp64(_difference_plus(target_logit, shift, -log_sum))
                  - g_ce * one_minus_eps * target_weight)
        if smoothing:
            grad_t -= g_ce * eps_over_c * target_weight
        if softcap:
            grad_t *= 1.0 - (target_logit / cap) ** 2
        return ftype(grad_t)

    if tiled:
        return _cached(variant, _tile_kernel(
            ftype, half, compute64, indexed, prob, entropy, write, smoothing, softcap, sum_at_inf,
            unit_or, load_logit, finite_or_zero, element_terms, element_result, row_result,
            grad_output_at, upstream, target_gradient))

    @njit(inline="always")
    def chunk_max(x, base, stride, c0, c1):
        """Max of the raw logits [c0, c1) of a row.

        Taken over integer order keys: a float max reduction does not vectorise
        without fastmath's nnan, which nan propagation forbids. A nan may win
        here or not; either way it makes the row's sum of exponentials nan.
        """
        top = order_key(ftype(neg_inf))
        for c in range(c0, c1):
            top = max(top, order_key(_load(x, base + c * stride, half, ftype)))
        return from_order_key(top)

    @njit
    def segment_stats(x, base, s_class, lo, hi, cap, ref, target, t_row, t_class_stride,
                      weight, one_minus_eps, eps_over_c, out, out_base, o_sc, chunk_shifts,
                      item):
        """(row_max, sum_exp, aux, mass) over classes [lo, hi) of one row.

        With ``keep_exps``, each exp(x - shift) goes to ``out`` and each chunk's
        shift to ``chunk_shifts[item]``.
        """
        row_max = ftype(neg_inf)
        sum_exp = 0.0
        rest_sum = 0.0  # only to let a nan logit through when the max is +inf
        aux = 0.0
        mass = 0.0
        for c0 in range(lo, hi, CHUNK):
            c1 = min(c0 + CHUNK, hi)
            top = _cap(chunk_max(x, base, s_class, c0, c1), cap, softcap)  # tanh is monotonic
            if top > row_max:
                if sum_exp > 0.0:
                    rescale = math.exp(float(row_max - top))
                    if entropy:
                        aux = rescale * (aux + float(row_max - top) * sum_exp)
                    sum_exp *= rescale
                row_max = top
            # While every value seen is -inf, shift by 0: exp(-inf) is 0, not nan.
            shift = row_max if row_max > neg_inf else ftype(0.0)
            if keep_exps:
                chunk_shifts[item, (c0 - lo) // CHUNK] = shift
            # Values equal to the shift add exactly 1 each. Summing the rest apart keeps
            # float32 from rounding 1 + (small rest), the whole loss of a confident row;
            # their count is what the plain total adds beyond the rest. (Measured: a
            # count kept in the loop, or a second select, stops it from vectorising.)
            total = ftype(0.0)
            rest = ftype(0.0)
            chunk_aux = ftype(0.0)
            chunk_mass = ftype(0.0)
            for c in range(c0, c1):
                at_top, e, aux_term, mass_term = element_terms(
                    load_logit(x, base + c * s_class, cap), shift, ref, c, target, t_row,
                    t_class_stride, weight, one_minus_eps, eps_over_c)
                if keep_exps:
                    _store(out, out_base + c * o_sc, e, half)
                total += e
                rest += ftype(0.0) if at_top else e
                chunk_aux += aux_term
                chunk_mass += mass_term
            sum_exp += math.floor(float(total - rest) + 0.5) + float(rest)
            rest_sum += float(rest)
            aux += chunk_aux
            mass += chunk_mass
        if row_max == np.inf:
            sum_exp = sum_at_inf + 0.0 * rest_sum
        return row_max, sum_exp, aux, mass

    @njit
    def item_stats(item, n_seg, seg_len, x, x_geom, inner, n_classes, target, t_geom, weight,
                   cap, one_minus_eps, eps_over_c, out, out_geom, part, chunk_shifts):
        """Statistics of one work item (a row, or one of its ``n_seg`` segments).

        Also keeps the row's reference and target logits: with several items per
        row and an in-place gradient, another item may overwrite them later.
        """
        x_off, x_so, x_sc, x_si = x_geom
        t_off, t_so, t_sc, t_si = t_geom
        o_off, o_so, o_sc, o_si = out_geom
        r = item // n_seg
        lo = (item - r * n_seg) * seg_len
        o = r // inner
        i = r - o * inner
        base = x_off + o * x_so + i * x_si
        t_row = t_off + o * t_so + i * t_si
        ref = reference_logit(x, base, cap)
        part[_REF, item] = ref
        part[_T_LOGIT, item] = target_of(x, base, x_sc, target, t_row, n_classes, 0, weight,
                                         cap)[2]
        part[_MAX, item], part[_SUM, item], part[_AUX, item], part[_MASS, item] = \
            segment_stats(x, base, x_sc, lo, min(lo + seg_len, n_classes), cap, ref, target,
                          t_row, t_sc, weight, one_minus_eps, eps_over_c, out,
                          o_off + o * o_so + i * o_si, o_sc, chunk_shifts, item)

    @njit
    def finish_item(item, n_seg, seg_len, x, x_geom, inner, n_classes, target, t_geom,
                    weight, weight_total, scalars, grad_output, g_geom, out, out_geom, part,
                    chunk_shifts, row_value, row_lse):
        """Combine a row's statistics; write its value, lse and the item's classes."""
        x_off, x_so, x_sc, x_si = x_geom
        t_off, t_so, t_sc, t_si = t_geom
        g_off, g_so, g_si = g_geom
        o_off, o_so, o_sc, o_si = out_geom
        one_minus_eps = 1.0 - scalars[1]
        eps_over_c = scalars[1] / n_classes
        cap = ftype(scalars[3])
        r = item // n_seg
        seg = item - r * n_seg
        o = r // inner
        i = r - o * inner
        base = x_off + o * x_so + i * x_si
        t_row = t_off + o * t_so + i * t_si
        first = r * n_seg
        row_max = ftype(part[_MAX, first])
        for k in range(first + 1, first + n_seg):
            row_max = max(row_max, ftype(part[_MAX, k]))
        shift = row_max if row_max > neg_inf else ftype(0.0)
        sum_exp = 0.0
        aux = 0.0
        mass = 0.0
        for k in range(first, first + n_seg):
            if part[_SUM, k] != 0.0:  # empty and all -inf segments add nothing (nan does)
                # (Equal maxima rescale by 1: a +inf max minus itself would be nan.)
                rescale = 1.0 if part[_MAX, k] == shift else math.exp(part[_MAX, k] - shift)
                sum_exp += rescale * part[_SUM, k]
                if entropy:
                    aux += rescale * (part[_AUX, k] + (part[_MAX, k] - shift) * part[_SUM, k])
            if not entropy:
                aux += part[_AUX, k]
            mass += part[_MASS, k]
        valid, t, _, target_weight = target_of(x, base, x_sc, target, t_row, n_classes,
                                               np.int64(scalars[0]), weight, cap)
        target_logit = ftype(part[_T_LOGIT, item])
        log_sum = math.log(sum_exp)
        value, lse, coef = row_result(row_max, sum_exp, log_sum, aux, mass,
                                      ftype(part[_REF, item]), target_logit, target_weight,
                                      weight_total, one_minus_eps, eps_over_c)
        if seg == 0:
            row_value[r] = value if valid else 0.0
            row_lse[r] = lse if valid else 0.0
        if write == WRITE_NOTHING:
            return
        lo = seg * seg_len
        hi = min(lo + seg_len, n_classes)
        out_base = o_off + o * o_so + i * o_si
        if not valid:
            for c in range(lo, hi):
                _store(out, out_base + c * o_sc, ftype(0.0), half)
            return
        coef, g_ce = upstream(scalars, grad_output_at(scalars, grad_output,
                                                      g_off + o * g_so + i * g_si), coef, lse)
        inv_sum = ftype(math.exp(-log_sum))
        scaled_coef = ftype(coef) * inv_sum
        for c0 in range(lo, hi, CHUNK):
            if keep_exps:  # the stored exps were taken with the chunk's shift
                rescale = ftype(math.exp(chunk_shifts[item, (c0 - lo) // CHUNK] - shift))
            for c in range(c0, min(c0 + CHUNK, hi)):
                if keep_exps:
                    value = ftype(0.0)  # not read by these writes
                    e = _load(out, out_base + c * o_sc, half, ftype) * rescale
                else:
                    value = load_logit(x, base + c * x_sc, cap)
                    e = exp_nonpositive(value - shift, compute64)
                result = element_result(value, e, shift, log_sum, inv_sum, scaled_coef,
                                        ftype(g_ce), c, target, t_row, t_sc, weight,
                                        ftype(one_minus_eps), ftype(eps_over_c), cap)
                _store(out, out_base + c * o_sc, result, half)
        if indexed and write == WRITE_GRAD and lo <= t < hi:
            _store(out, out_base + t * o_sc,
                   target_gradient(coef, g_ce, target_logit, shift, log_sum, target_weight,
                                   one_minus_eps, eps_over_c, cap), half)

    @njit(fastmath=FASTMATH, error_model="numpy", parallel=True)
    def row_kernel(x, x_geom, split, outer, inner, n_classes, target, t_geom, weight,
                   weight_total, scalars, grad_output, g_geom, out, out_geom, row_value,
                   row_lse):
        one_minus_eps = 1.0 - scalars[1]
        eps_over_c = scalars[1] / n_classes
        cap = ftype(scalars[3])
        n_items = outer * inner * split
        seg_len = (n_classes + split - 1) // split
        # Partial statistics per work item, in float64 (row maxima of float32 logits
        # are exact in it).
        part = np.empty((_N_PARTS, n_items))
        chunk_shifts = np.empty((n_items, (seg_len + CHUNK - 1) // CHUNK if keep_exps else 0))
        # split == 1: one pass, each row's statistics then its writes while the row is
        # still in cache. split > 1: all statistics, then (phase 1) combine and write.
        for phase in range(1 if split == 1 else 2):
            for prange_item in prange(n_items):
                # One index type for both typings of this body (the kernel's and the
                # parfor's, which is unsigned): each helper then compiles once.
                item = np.int64(prange_item)
                if phase == 0:
                    item_stats(item, split, seg_len, x, x_geom, inner, n_classes, target,
                               t_geom, weight, cap, one_minus_eps, eps_over_c, out, out_geom,
                               part, chunk_shifts)
                if phase == 1 or split == 1:
                    finish_item(item, split, seg_len, x, x_geom, inner, n_classes, target,
                                t_geom, weight, weight_total, scalars, grad_output, g_geom,
                                out, out_geom, part, chunk_shifts, row_value, row_lse)

    return _cached(variant, row_kernel)


def _tile_kernel(ftype, half, compute64, indexed, prob, entropy, write, smoothing, softcap,
                 sum_at_inf, unit_or, load_logit, finite_or_zero, element_terms, element_result,
                 row_result, grad_output_at, upstream, target_gradient):
    """The tile kernel of one variant, built from the variant's shared helpers."""
    neg_inf = -np.inf
    LINE = 64 // np.dtype(ftype).itemsize  # logits per cache line (float16 tiles take none)

    @njit(inline="always")
    def log_of_sum(n_top, rest):
        """log(n_top + rest), precise when rest is small (the confident rows)."""
        if compute64:
            return math.log(n_top + rest)
        with_top = log32(max(n_top, ftype(1.0))) + log1p32(rest / max(n_top, ftype(1.0)))
        return float(with_top if n_top > ftype(0.0) else log32(rest))

    @njit(inline="always")
    def tile_layout(s_class, s_pos, n_classes, n, pitch):
        """Loop nest of a copy between memory and ``tile[c * pitch + k]`` (class c,
        position k): (outer count, inner count, memory strides, tile strides).

        The inner loop runs along whichever memory axis is contiguous, so short
        rows (class axis last) are transposed with contiguous reads and writes.
        """
        if s_class == 1:
            return n, n_classes, s_pos, 1, 1, pitch
        return n_classes, n, s_class, unit_or(s_pos), pitch, 1

    @njit(inline="always")
    def stage(x, base, s_class, s_pos, tile, n_classes, n, pitch, cap, top, target_class,
              t_logit):
        """Load a tile of logits, capped and in the compute type, and take on the way
        each position's max (``top``) and, for index targets, its target logit.

        Short rows (unit class stride) are transposed row by row, the max and the
        target taken per row; class-major tiles (NCHW) are copied along positions,
        the max and the target selected per class in the same vectorised loop.
        """
        if s_class == 1:
            for k in range(n):
                row = base + k * s_pos
                row_top = load_logit(x, row, cap)
                for c in range(n_classes):
                    value = load_logit(x, row + c, cap)
                    tile[_cell(c, pitch, k)] = value
                    row_top = max(row_top, value)
                top[k] = row_top
                if indexed:
                    t = target_class[k]
                    t_logit[k] = tile[_cell(max(t, 0), pitch, k)] if t >= 0 else ftype(0.0)
            return
        s_pos = unit_or(s_pos)
        for k in range(n):
            top[k] = load_logit(x, base + k * s_pos, cap)
            t_logit[k] = ftype(0.0)
        for c in range(n_classes):
            for k in range(n):
                value = load_logit(x, base + c * s_class + k * s_pos, cap)
                tile[_cell(c, pitch, k)] = value
                top[k] = max(top[k], value)
                # (Summed, its one nonzero term selected: a select between two loads
                # keeps LLVM from vectorising the loop.)
                if indexed:
                    t_logit[k] += value if target_class[k] == np.int32(c) else ftype(0.0)

    @njit(inline="always")
    def prefetch_tile(x, base, s_class, s_pos, n_classes, n, pitch):
        """Ask for the next tile's logits while this one is computed: the staging of
        short rows otherwise waits on memory. One hint per row of memory (per cache
        line along long rows); measured, 1000000 x 10 float32: loss 10 %, loss+grad 4-9 %
        faster (one hint per cache line instead: 2 %); NCHW, whose long runs
        the hardware prefetcher follows, unchanged. Not for float16 tiles, whose
        conversions leave time for the memory: there the hints cost 3 %."""
        n_outer, n_inner, s_outer, s_inner, _, _ = tile_layout(
            s_class, s_pos, n_classes, n, pitch)
        for a in range(n_outer):
            for b in range(0, n_inner, LINE):
                prefetch(x, np.int64(base + a * s_outer + b * s_inner))

    @njit(inline="always")
    def unstage(out, base, s_class, s_pos, tile, n_classes, n, pitch):
        """Store a tile of results, rounded to the output's type."""
        n_outer, n_inner, s_outer, s_inner, t_outer, t_inner = tile_layout(
            s_class, s_pos, n_classes, n, pitch)
        for a in range(n_outer):
            for b in range(n_inner):
                _store(out, base + a * s_outer + b * s_inner,
                       tile[_cell(a, t_outer, b * t_inner)], half)

    @njit
    def tile_body(tile_index, tiles_per_outer, width, pitch, x, x_geom, inner, n_classes, target,
                  t_geom, weight, weight_total, scalars, grad_output, g_geom, out, out_geom,
                  row_value, row_lse, scratch, wide_scratch, target_index, target_class, logits,
                  exps):
        x_off, x_so, x_sc, x_si = x_geom
        t_off, t_so, t_sc, t_si = t_geom
        g_off, g_so, g_si = g_geom
        o_off, o_so, o_sc, o_si = out_geom
        one_minus_eps = 1.0 - scalars[1]
        eps_over_c = scalars[1] / n_classes
        cap = ftype(scalars[3])
        o = tile_index // tiles_per_outer
        i0 = (tile_index - o * tiles_per_outer) * width
        n = min(width, inner - i0)
        x_base = x_off + o * x_so + i0 * x_si
        t_base = t_off + o * t_so + i0 * t_si
        # The tile's logits are staged once into ``logits`` (class-major, positions
        # contiguous) and their exps kept in ``exps``: every later pass is a
        # contiguous loop over positions, the vectorised one.
        shift, n_top, rest = scratch[_SHIFT], scratch[_N_TOP], scratch[_REST]
        aux, mass, ref = scratch[_AUX], scratch[_MASS], scratch[_REF]
        t_logit, valid = scratch[_T_LOGIT], scratch[_VALID]
        scale, g_scale, log_sums = scratch[_COEF], scratch[_G_CE], scratch[_LOG_SUM]
        t_grads = scratch[_T_GRAD]
        t_weight, g_rows = wide_scratch[0], wide_scratch[1]
        # The targets first (a contiguous loop), so that the staging picks each
        # position's target logit from the tile: no gather from memory per position.
        if indexed:
            ignore_index = np.int64(scalars[0])
            for k in range(n):
                t = np.int64(target[np.uint64(t_base + k * t_si)])
                in_range = 0 <= t < n_classes
                valid[k] = ftype(1.0) if t != ignore_index else ftype(0.0)
                target_index[k] = t
                target_class[k] = np.int32(t) if in_range else np.int32(-1)
            for k in range(n):
                t = target_index[k]
                in_range = 0 <= t < n_classes
                class_weight = float(weight[np.uint64(t if in_range else 0)])
                t_weight[k] = class_weight if in_range else np.nan
        stage(x, x_base, x_sc, x_si, logits, n_classes, n, pitch, cap, shift, target_class,
              t_logit)
        if not half and i0 + width < inner:
            prefetch_tile(x, x_base + width * x_si, x_sc, x_si, n_classes,
                          min(width, inner - i0 - width), pitch)
        for k in range(n):
            top = shift[k]
            shift[k] = top if top > neg_inf else ftype(0.0)
            n_top[k] = ftype(sum_at_inf) if top == np.inf else ftype(0.0)
            rest[k] = ftype(0.0)
            aux[k] = ftype(0.0)
            mass[k] = ftype(0.0)
            ref[k] = finite_or_zero(logits[_cell(0, pitch, k)]) if smoothing or prob \
                else ftype(0.0)
        for c in range(n_classes):
            for k in range(n):
                at_top, e, aux_term, mass_term = element_terms(
                    logits[_cell(c, pitch, k)], shift[k], ref[k], c, target,
                    t_base + k * t_si, t_sc, weight, one_minus_eps, eps_over_c)
                if write != WRITE_NOTHING:
                    exps[_cell(c, pitch, k)] = e
                n_top[k] += ftype(1.0) if at_top else ftype(0.0)
                rest[k] += ftype(0.0) if at_top else e
                # (Unused sums are not touched: each stored array adds alias checks
                # that can keep LLVM from vectorising the loop.)
                if entropy or smoothing or prob:
                    aux[k] += aux_term
                if prob:
                    mass[k] += mass_term
        if not indexed:
            for k in range(n):
                valid[k] = ftype(1.0)
        if write != WRITE_NOTHING:
            for k in range(n):
                g_rows[k] = grad_output_at(scalars, grad_output,
                                           g_off + o * g_so + (i0 + k) * g_si)
        for k in range(n):
            is_valid = valid[k] != ftype(0.0)
            log_sum = log_of_sum(n_top[k], rest[k])
            value, lse, coef = row_result(
                shift[k], float(n_top[k]) + float(rest[k]), log_sum, float(aux[k]),
                float(mass[k]), ref[k], t_logit[k], t_weight[k], weight_total,
                one_minus_eps, eps_over_c)
            r = np.uint64(o * inner + i0 + k)
            row_value[r] = value if is_valid else 0.0
            row_lse[r] = lse if is_valid else 0.0
            if write != WRITE_NOTHING:
                coef, g_ce = upstream(scalars, g_rows[k], coef, lse)
                inv_sum = exp64(-log_sum)
                scale[k] = inv_sum if write == WRITE_SOFTMAX else coef * inv_sum
                g_scale[k] = g_ce
                log_sums[k] = log_sum
                if indexed and write == WRITE_GRAD:
                    t_grads[k] = target_gradient(coef, g_ce, t_logit[k], shift[k], log_sum,
                                                 t_weight[k], one_minus_eps, eps_over_c, cap)
        if write == WRITE_NOTHING:
            return
        for c in range(n_classes):
            for k in range(n):
                result = element_result(
                    logits[_cell(c, pitch, k)], exps[_cell(c, pitch, k)], shift[k],
                    float(log_sums[k]), scale[k], scale[k], g_scale[k], c, target,
                    t_base + k * t_si, t_sc, weight, ftype(one_minus_eps), ftype(eps_over_c),
                    cap)
                exps[_cell(c, pitch, k)] = result if valid[k] != ftype(0.0) else ftype(0.0)
        if indexed and write == WRITE_GRAD:
            for k in range(n):
                t = target_index[k]
                if valid[k] != ftype(0.0) and 0 <= t < n_classes:
                    exps[_cell(t, pitch, k)] = t_grads[k]
        unstage(out, o_off + o * o_so + i0 * o_si, o_sc, o_si, exps, n_classes, n, pitch)

    # No reassociation here: the tile loops vectorise across positions without it, and
    # with it LLVM regrouped (max - target) + log_sum through a float32 lse (measured:
    # 1e-5 relative error on a 0.02 loss).
    @njit(fastmath=FASTMATH - {"reassoc"}, error_model="numpy", parallel=True)
    def tile_kernel(x, x_geom, split, outer, inner, n_classes, target, t_geom, weight,
                    weight_total, scalars, grad_output, g_geom, out, out_geom, row_value,
                    row_lse):
        width = split
        # Rows of a tile padded off powers of two: at a pitch of 1 KiB the classes of a
        # tile fell into a few L1 sets (measured: C = 64 ran at half the speed of C = 100).
        pitch = (width + 15) // 16 * 16 + 16
        tiles_per_outer = (inner + width - 1) // width
        n_tiles = outer * tiles_per_outer
        # Blocks of consecutive tiles, each with its own scratch; enough blocks to
        # balance any thread count numba.set_num_threads may choose.
        n_blocks = min(n_tiles, 256)
        for block in prange(n_blocks):
            scratch = np.empty((_N_SCRATCH, width), ftype)
            wide_scratch = np.empty((2, width))  # float64 target weights and grad_output
            target_index = np.empty(width, np.int64)
            target_class = np.empty(width, np.int32)  # in [0, C), or -1
            logits = np.empty(n_classes * pitch, ftype)
            exps = np.empty(n_classes * pitch, ftype)
            for tile_index in range(block * n_tiles // n_blocks,
                                    (block + 1) * n_tiles // n_blocks):
                tile_body(tile_index, tiles_per_outer, width, pitch, x, x_geom, inner, n_classes,
                          target, t_geom, weight, weight_total, scalars, grad_output, g_geom,
                          out, out_geom, row_value, row_lse, scratch, wide_scratch, target_index,
                          target_class, logits, exps)

    return tile_kernel
