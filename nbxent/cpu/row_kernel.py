"""The row kernel: one row (or a segment of one) per work item, vectorised along its classes.

For rows long enough to fill vectors, with the class axis last. Per row, one
pass over the logits in chunks of ``CHUNK`` classes keeps the running max and
the sum of exp(x - max) rescaled when the max grows (online softmax at chunk
granularity: a chunk is read from memory once, then twice from L1). exp is
evaluated in the compute type (float32 for float16/float32) and summed in
float64, so a loss near 0 keeps its relative precision and summation error
does not grow with C. When a write follows (gradient, softmax), the statistics
pass stores each exp where the result goes and the write pass rescales it: one
exp per logit.

With ``shape.row_split > 1`` (few rows: ``CpuSettings.split_items``) each row's classes are
split over that many work items: all items take their statistics, then each
combines its row's and writes its own classes.
"""

import math

import numpy as np
from numba import njit, prange

from .access import load, store
from .arguments import WRITE_GRAD, WRITE_NOTHING, WRITE_SOFTMAX, TargetKind, named
from .bits import from_order_key, order_key
from .fastexp import exp_nonpositive
from .formulas import capped, difference_plus

# No nnan/ninf: nan must propagate and -inf logits must stay -inf. The kernels also
# compile with error_model="numpy" (inherited by the helpers they call): a float
# division is then IEEE, not a branch raising ZeroDivisionError, which keeps LLVM
# from vectorising the loop around it. Every division is guarded where it matters.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
CHUNK = 1024

# Rows of the per-item partial statistics.
_MAX, _SUM, _MOMENT, _MASS, _REF, _T_LOGIT, _N_PARTS = range(7)


@njit(inline="always")
def row_start(geom, o, i):
    """Index of class 0 of row ``(o, i)`` in an array of geometry ``geom``."""
    return geom.offset + o * geom.s_outer + i * geom.s_inner


@njit(inline="always")
def chunk_max(x, base, stride, c0, c1, half, ftype):
    """Max of the raw logits [c0, c1) of a row.

    Taken over integer order keys: a float max reduction does not vectorise
    without fastmath's nnan, which nan propagation forbids. A nan may win
    here or not; either way it makes the row's sum of exponentials nan.
    """
    top = order_key(ftype(-np.inf))
    for c in range(c0, c1):
        top = max(top, order_key(load(x, base + c * stride, half, ftype)))
    return from_order_key(top)


def build_row_kernel(variant, f, sum_at_inf):
    """The row kernel of ``variant``, from its ``Formulas`` ``f``.

    ``sum_at_inf`` is the sum of exponentials a row holding +inf reports.

    Longer than a screen on purpose: it is a list of short steps, each a closure
    over the variant's flags (compile-time constants to Numba, so each compiled
    kernel keeps only its own branches), read top to bottom in the order they run.
    """
    half, softcap, entropy, compute64 = (variant.half, variant.softcap, variant.entropy,
                                         variant.compute64)
    ftype = np.float64 if compute64 else np.float32
    writes = variant.write != WRITE_NOTHING
    writes_target_gradient = variant.write == WRITE_GRAD and variant.target == TargetKind.INDEX
    # Not through float16 (it would round the exps) nor under softcap or log_softmax
    # (their writes need the logit itself).
    keep_exps = variant.write in (WRITE_GRAD, WRITE_SOFTMAX) and not half and not softcap
    load_logit, element_terms, element_result, target_of = (
        f.load_logit, f.element_terms, f.element_result, f.target_of)
    row_result, grad_output_at, upstream, target_gradient = (
        f.row_result, f.grad_output_at, f.upstream, f.target_gradient)
    finite_or_zero = f.finite_or_zero

    @njit
    def segment_stats(x, base, s_class, lo, hi, cap, ref, target, t_row, t_class_stride,
                      weight, one_minus_eps, eps_over_c, out, out_base, o_sc, chunk_shifts,
                      item):
        """(row_max, sum_exp, moment, mass) over classes [lo, hi) of one row.

        With ``keep_exps``, each exp(x - shift) goes to ``out`` and each chunk's
        shift to ``chunk_shifts[item]``.
        """
        row_max = ftype(-np.inf)
        sum_exp = 0.0
        rest_sum = 0.0  # only to let a nan logit through when the max is +inf
        moment = 0.0
        mass = 0.0
        for c0 in range(lo, hi, CHUNK):
            c1 = min(c0 + CHUNK, hi)
            # tanh is monotonic: the max of the capped logits is the capped max.
            top = capped(chunk_max(x, base, s_class, c0, c1, half, ftype), cap, softcap)
            if top > row_max:
                if sum_exp > 0.0:
                    rescale = math.exp(float(row_max - top))
                    if entropy:
                        moment = rescale * (moment + float(row_max - top) * sum_exp)
                    sum_exp *= rescale
                row_max = top
            # While every value seen is -inf, shift by 0: exp(-inf) is 0, not nan.
            shift = row_max if row_max > -np.inf else ftype(0.0)
            if keep_exps:
                chunk_shifts[item, (c0 - lo) // CHUNK] = shift
            # Values equal to the shift add exactly 1 each. Summing the rest apart keeps
            # float32 from rounding 1 + (small rest), the whole loss of a confident row;
            # their count is what the plain total adds beyond the rest. (Measured: a
            # count kept in the loop, or a second select, stops it from vectorising.)
            total = ftype(0.0)
            rest = ftype(0.0)
            chunk_moment = ftype(0.0)
            chunk_mass = ftype(0.0)
            for c in range(c0, c1):
                at_top, e, moment_term, mass_term = element_terms(
                    load_logit(x, base + c * s_class, cap), shift, ref, c, target, t_row,
                    t_class_stride, weight, one_minus_eps, eps_over_c)
                if keep_exps:
                    store(out, out_base + c * o_sc, e, half)
                total += e
                rest += ftype(0.0) if at_top else e
                chunk_moment += moment_term
                chunk_mass += mass_term
            sum_exp += math.floor(float(total - rest) + 0.5) + float(rest)
            rest_sum += float(rest)
            moment += chunk_moment
            mass += chunk_mass
        if row_max == np.inf:
            sum_exp = sum_at_inf + 0.0 * rest_sum
        return row_max, sum_exp, moment, mass

    @njit
    def item_stats(item, x, x_geom, target, t_geom, weight, g_geom, out, out_geom, shape,
                   options, part, chunk_shifts):
        """Statistics of one work item (a row, or one of its ``row_split`` segments).

        Also keeps the row's reference and target logits: with several items per
        row and an in-place gradient, another item may overwrite them later.
        """
        x_geom, t_geom, _, out_geom, shape, options = named(
            x_geom, t_geom, g_geom, out_geom, shape, options)
        one_minus_eps = 1.0 - options.label_smoothing
        eps_over_c = options.label_smoothing / shape.n_classes
        cap = ftype(options.softcap)
        n_seg = shape.row_split
        seg_len = (shape.n_classes + n_seg - 1) // n_seg
        r = item // n_seg
        lo = (item - r * n_seg) * seg_len
        o = r // shape.inner
        i = r - o * shape.inner
        base = row_start(x_geom, o, i)
        t_row = row_start(t_geom, o, i)
        ref = finite_or_zero(load_logit(x, base, cap))
        part[_REF, item] = ref
        part[_T_LOGIT, item] = target_of(x, base, x_geom.s_class, target, t_row,
                                         shape.n_classes, 0, weight, cap)[2]
        part[_MAX, item], part[_SUM, item], part[_MOMENT, item], part[_MASS, item] = \
            segment_stats(x, base, x_geom.s_class, lo, min(lo + seg_len, shape.n_classes),
                          cap, ref, target, t_row, t_geom.s_class, weight, one_minus_eps,
                          eps_over_c, out, row_start(out_geom, o, i), out_geom.s_class,
                          chunk_shifts, item)

    @njit(inline="always")
    def combined_stats(part, first, n_seg):
        """(row_max, shift, sum_exp, moment, mass) of a row from its items' statistics."""
        row_max = ftype(part[_MAX, first])
        for k in range(first + 1, first + n_seg):
            row_max = max(row_max, ftype(part[_MAX, k]))
        shift = row_max if row_max > -np.inf else ftype(0.0)
        sum_exp = 0.0
        moment = 0.0
        mass = 0.0
        for k in range(first, first + n_seg):
            if part[_SUM, k] != 0.0:  # empty and all -inf segments add nothing (nan does)
                # (Equal maxima rescale by 1: a +inf max minus itself would be nan.)
                rescale = 1.0 if part[_MAX, k] == shift else math.exp(part[_MAX, k] - shift)
                sum_exp += rescale * part[_SUM, k]
                if entropy:
                    moment += rescale * (part[_MOMENT, k] + (part[_MAX, k] - shift) * part[_SUM, k])
            if not entropy:
                moment += part[_MOMENT, k]
            mass += part[_MASS, k]
        return row_max, shift, sum_exp, moment, mass

    @njit
    def finish_item(item, x, x_geom, target, t_geom, weight, grad_output, g_geom, out,
                    out_geom, row_value, row_lse, shape, options, part, chunk_shifts):
        """Combine a row's statistics; write its value, lse and the item's classes."""
        x_geom, t_geom, g_geom, out_geom, shape, options = named(
            x_geom, t_geom, g_geom, out_geom, shape, options)
        n_classes, n_seg = shape.n_classes, shape.row_split
        seg_len = (n_classes + n_seg - 1) // n_seg
        one_minus_eps = 1.0 - options.label_smoothing
        eps_over_c = options.label_smoothing / n_classes
        cap = ftype(options.softcap)
        r = item // n_seg
        seg = item - r * n_seg
        o = r // shape.inner
        i = r - o * shape.inner
        base = row_start(x_geom, o, i)
        t_row = row_start(t_geom, o, i)
        row_max, shift, sum_exp, moment, mass = combined_stats(part, r * n_seg, n_seg)
        valid, t, _, t_weight = target_of(x, base, x_geom.s_class, target, t_row,
                                          n_classes, options.ignore_index, weight, cap)
        t_logit = ftype(part[_T_LOGIT, item])
        log_sum = math.log(sum_exp)
        value, lse, row_mass = row_result(row_max, sum_exp, log_sum, moment, mass,
                                          ftype(part[_REF, item]), t_logit, t_weight,
                                          options.weight_sum, one_minus_eps, eps_over_c)
        if seg == 0:
            row_value[r] = value if valid else 0.0
            row_lse[r] = lse if valid else 0.0
        if not writes:
            return
        lo = seg * seg_len
        hi = min(lo + seg_len, n_classes)
        out_base = row_start(out_geom, o, i)
        o_sc = out_geom.s_class
        if not valid:
            for c in range(lo, hi):
                store(out, out_base + c * o_sc, ftype(0.0), half)
            return
        p_coef, g_ce = upstream(options, grad_output_at(options, grad_output,
                                                        row_start(g_geom, o, i)), row_mass, lse)
        inv_sum = ftype(math.exp(-log_sum))
        p_scale = ftype(p_coef) * inv_sum
        if keep_exps:  # the stored exps become probabilities: e * to_p, and p * 1
            inv_sum, p_scale = ftype(1.0), ftype(p_coef)
        for c0 in range(lo, hi, CHUNK):
            if keep_exps:
                # exp((chunk shift - shift) - log_sum), summed in this order: as two exps
                # multiplied, LLVM's reassociation would fold them into one exp of
                # chunk shift - (shift + log_sum), which loses log_sum's digits beside a
                # large shift (a float64 softmax of logits near 1e12 was off by 3e-5).
                to_p = ftype(math.exp(difference_plus(chunk_shifts[item, (c0 - lo) // CHUNK],
                                                      shift, -log_sum)))
            for c in range(c0, min(c0 + CHUNK, hi)):
                if keep_exps:
                    value = ftype(0.0)  # not read by these writes
                    e = load(out, out_base + c * o_sc, half, ftype) * to_p
                else:
                    value = load_logit(x, base + c * x_geom.s_class, cap)
                    e = exp_nonpositive(value - shift, compute64)
                result = element_result(value, e, shift, log_sum, inv_sum, p_scale,
                                        ftype(g_ce), c, target, t_row, t_geom.s_class, weight,
                                        ftype(one_minus_eps), ftype(eps_over_c), cap)
                store(out, out_base + c * o_sc, result, half)
        if writes_target_gradient and lo <= t < hi:
            store(out, out_base + t * o_sc,
                  target_gradient(p_coef, g_ce, t_logit, shift, log_sum, t_weight,
                                  one_minus_eps, eps_over_c, cap), half)

    @njit(fastmath=FASTMATH, error_model="numpy", parallel=True)
    def row_kernel(x, x_geom, target, t_geom, weight, grad_output, g_geom, out, out_geom,
                   row_value, row_lse, shape, options):
        outer, inner, n_classes, split, _ = shape
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
                    item_stats(item, x, x_geom, target, t_geom, weight, g_geom, out, out_geom,
                               shape, options, part, chunk_shifts)
                if phase == 1 or split == 1:
                    finish_item(item, x, x_geom, target, t_geom, weight, grad_output, g_geom,
                                out, out_geom, row_value, row_lse, shape, options, part,
                                chunk_shifts)

    return row_kernel
