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

from .bits import float_to_half, half_to_float

# No nnan/ninf: nan must propagate and -inf logits must stay -inf.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
CHUNK = 1024

NO_TARGET, INDEX_TARGET, PROB_TARGET = 0, 1, 2
WRITE_NOTHING, WRITE_GRAD, WRITE_LOG_SOFTMAX, WRITE_SOFTMAX = 0, 1, 2, 3

Variant = namedtuple("Variant", "half compute64 target target_half weighted smoothing "
                                "softcap entropy write")


@njit(inline="always")
def _load(buf, idx, half, ftype):
    if half:
        return ftype(half_to_float(buf[idx]))
    return ftype(buf[idx])


@njit(inline="always")
def _store(buf, idx, value, half):
    if half:
        buf[idx] = float_to_half(value)
    else:
        buf[idx] = value


@njit(inline="always")
def _cap(value, cap, softcap):
    if softcap:
        return cap * math.tanh(value / cap)
    return value


@njit(cache=True)
def scan_targets(target, t_geom, outer, inner, n_classes, ignore_index, weight, weighted):
    """First bad row (or -1), summed weight and count of the non-ignored rows.

    A row is bad when its class index is neither ``ignore_index`` nor in
    [0, n_classes); bad rows add nan to the summed weight.
    """
    offset, s_outer, s_inner = t_geom
    n_rows = outer * inner
    first_bad = n_rows
    weight_sum = 0.0
    n_valid = 0
    for r in prange(n_rows):
        o = r // inner
        t = np.int64(target[offset + o * s_outer + (r - o * inner) * s_inner])
        if t != ignore_index:
            if 0 <= t < n_classes:
                weight_sum += weight[t] if weighted else 1.0
                n_valid += 1
            else:
                weight_sum += np.nan
                first_bad = min(first_bad, r)
    return (first_bad if first_bad < n_rows else -1), weight_sum, n_valid


_kernels = {}


def row_kernel(variant):
    """The compiled kernel for one ``Variant`` (memoised; cached on disk).

    ``kernel(x, x_geom, n_seg, outer, inner, n_classes, target, t_geom, weight,
    weight_total, scalars, grad_output, g_geom, out, out_geom, row_value,
    row_lse)`` fills ``row_value`` (cross-entropy or entropy per row) and
    ``row_lse`` (logsumexp per row, 0 for ignored rows) and writes the gradient
    or normalised logits into ``out``. ``n_seg > 1`` splits each row's classes
    over that many work items (for fewer rows than threads): partial row
    statistics are combined before the write pass.
    """
    kernel = _kernels.get(variant)
    if kernel is None:
        kernel = _kernels[variant] = _build(*variant)
    return kernel


def _build(half, compute64, target_kind, target_half, weighted, smoothing, softcap,
           entropy, write):
    ftype = np.float64 if compute64 else np.float32
    indexed = target_kind == INDEX_TARGET
    prob = target_kind == PROB_TARGET
    sums_vs_ref = (indexed and smoothing) or prob
    neg_inf = -np.inf

    @njit(inline="always")
    def load_logit(x, idx, cap):
        return _cap(_load(x, idx, half, ftype), cap, softcap)

    @njit(inline="always")
    def class_target_weight(c, t_row, t_class_stride, target, weight, one_minus_eps,
                            eps_over_c):
        """q_c * w_c: the weighted target mass of class c (probability targets)."""
        mass = one_minus_eps * _load(target, t_row + c * t_class_stride, target_half,
                                     ftype) + eps_over_c
        return mass * ftype(weight[c]) if weighted else mass

    @njit(inline="always")
    def segment_stats(x, base, s_class, lo, hi, cap, ref, target, t_row, t_class_stride,
                      weight, one_minus_eps, eps_over_c):
        """(row_max, sum_exp, aux, mass) over classes [lo, hi) of one row.

        aux: entropy's sum of e*(x - row_max), or sum of w*(x - ref) (smoothing) or
        q*w*(x - ref) (probability targets); mass: sum of q*w (probability targets).
        """
        row_max = ftype(neg_inf)
        sum_exp = 0.0
        aux = 0.0
        mass = 0.0
        for c0 in range(lo, hi, CHUNK):
            c1 = min(c0 + CHUNK, hi)
            chunk_max = ftype(neg_inf)
            for c in range(c0, c1):
                chunk_max = max(chunk_max, _load(x, base + c * s_class, half, ftype))
            chunk_max = _cap(chunk_max, cap, softcap)  # tanh is monotonic
            if chunk_max > row_max:
                if sum_exp > 0.0:
                    rescale = math.exp(float(row_max - chunk_max))
                    if entropy:
                        aux = rescale * (aux + float(row_max - chunk_max) * sum_exp)
                    sum_exp *= rescale
                row_max = chunk_max
            # While every value seen is -inf, shift by 0: exp(-inf) is 0, not nan.
            shift = row_max if row_max > neg_inf else ftype(0.0)
            chunk_sum = 0.0
            chunk_aux = 0.0
            chunk_mass = 0.0
            for c in range(c0, c1):
                value = load_logit(x, base + c * s_class, cap)
                e = math.exp(value - shift)
                chunk_sum += e
                if entropy:
                    chunk_aux += e * (value - shift) if e > 0 else 0.0
                elif indexed and smoothing:
                    chunk_aux += (ftype(weight[c]) * (value - ref) if weighted
                                  else value - ref)
                elif prob:
                    q = class_target_weight(c, t_row, t_class_stride, target, weight,
                                            one_minus_eps, eps_over_c)
                    chunk_aux += q * (value - ref)
                    chunk_mass += q
            sum_exp += chunk_sum
            aux += chunk_aux
            mass += chunk_mass
        return row_max, sum_exp, aux, mass

    @njit(inline="always")
    def write_segment(x, base, s_class, lo, hi, cap, out, out_base, out_class_stride,
                      row_max, log_sum, coef, g_ce, target, t_row, t_class_stride, weight,
                      one_minus_eps, eps_over_c):
        """Write the gradient (or log_softmax / softmax) of classes [lo, hi).

        ``coef`` multiplies softmax. Probabilities are exp(x - row_max) / sum_exp,
        never exp(x - lse): under fastmath's reassociation, LLVM would hoist a
        float32 lse out of the loop and lose its digits for large logits.
        """
        inv_sum = ftype(math.exp(-log_sum))
        scaled_coef = ftype(coef) * inv_sum
        for c in range(lo, hi):
            value = load_logit(x, base + c * s_class, cap)
            centered = value - row_max
            if write == WRITE_LOG_SOFTMAX:
                result = float(centered) - log_sum
            elif write == WRITE_SOFTMAX:
                result = math.exp(centered) * inv_sum
            else:
                result = scaled_coef * math.exp(centered)
                if indexed and smoothing:
                    result -= g_ce * eps_over_c * (ftype(weight[c]) if weighted else ftype(1.0))
                elif prob:
                    result -= g_ce * class_target_weight(c, t_row, t_class_stride, target,
                                                         weight, one_minus_eps, eps_over_c)
                if softcap:
                    result *= ftype(1.0) - (value / cap) * (value / cap)
            _store(out, out_base + c * out_class_stride, ftype(result), half)

    @njit(inline="always")
    def row_result(row_max, sum_exp, aux, mass, ref, target_logit, target_weight,
                   weight_total, one_minus_eps, eps_over_c):
        """(per-row value, lse, log(sum_exp), A) from the row statistics.

        The value is the cross-entropy (or the entropy); A = sum_c q_c w_c, the
        coefficient of softmax in the cross-entropy gradient.
        """
        log_sum = math.log(sum_exp)
        lse = float(row_max) + log_sum
        if entropy:
            return log_sum - aux / sum_exp, lse, log_sum, 0.0
        from_ref = float(row_max - ref) + log_sum  # lse - ref without cancellation
        if prob:
            return mass * from_ref - aux, lse, log_sum, mass
        value = 0.0
        coef = 0.0
        if indexed:
            value = one_minus_eps * target_weight * (float(row_max - target_logit) + log_sum)
            coef = one_minus_eps * target_weight
            if smoothing:
                value += eps_over_c * (weight_total * from_ref - aux)
                coef += eps_over_c * weight_total
        return value, lse, log_sum, coef

    @njit(inline="always")
    def item_stats(item, n_seg, seg_len, x, x_geom, inner, n_classes, target, t_geom, weight,
                   cap, one_minus_eps, eps_over_c, part_max, part_sum, part_aux, part_mass):
        """Statistics of one work item (a row, or one of its ``n_seg`` segments)."""
        x_off, x_so, x_sc, x_si = x_geom
        t_off, t_so, t_sc, t_si = t_geom
        r = item // n_seg
        lo = (item - r * n_seg) * seg_len
        o = r // inner
        i = r - o * inner
        base = x_off + o * x_so + i * x_si
        part_max[item], part_sum[item], part_aux[item], part_mass[item] = segment_stats(
            x, base, x_sc, lo, min(lo + seg_len, n_classes), cap, row_reference(x, base, cap),
            target, t_off + o * t_so + i * t_si, t_sc, weight, one_minus_eps, eps_over_c)

    @njit(inline="always")
    def row_reference(x, base, cap):
        """The row's first logit if finite, else 0: the shift of the non-exp sums."""
        ref = load_logit(x, base, cap)
        return ref if abs(ref) < np.inf else ftype(0.0)

    @njit(inline="always")
    def finish_item(item, n_seg, seg_len, x, x_geom, inner, n_classes, target, t_geom,
                    weight, weight_total, scalars, grad_output, g_geom, out, out_geom,
                    part_max, part_sum, part_aux, part_mass, row_value, row_lse):
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
        row_max = part_max[first]
        for k in range(first + 1, first + n_seg):
            row_max = max(row_max, part_max[k])
        shift = row_max if row_max > neg_inf else ftype(0.0)
        sum_exp = 0.0
        aux = 0.0
        mass = 0.0
        for k in range(first, first + n_seg):
            if part_sum[k] != 0.0:  # empty and all -inf segments add nothing (nan does)
                rescale = math.exp(float(part_max[k] - shift))
                sum_exp += rescale * part_sum[k]
                if entropy:
                    aux += rescale * (part_aux[k] + float(part_max[k] - shift) * part_sum[k])
            if not entropy:
                aux += part_aux[k]
            mass += part_mass[k]
        valid = True
        target_logit = ftype(0.0)
        target_weight = 1.0
        t = np.int64(-1)
        if indexed:
            t = np.int64(target[t_row])
            valid = t != np.int64(scalars[0])
            if 0 <= t < n_classes:
                target_logit = load_logit(x, base + t * x_sc, cap)
                target_weight = float(weight[t]) if weighted else 1.0
            else:  # an invalid index (validate=False): the row becomes nan
                target_weight = np.nan
        value, lse, log_sum, coef = row_result(
            row_max, sum_exp, aux, mass, row_reference(x, base, cap), target_logit,
            target_weight, weight_total, one_minus_eps, eps_over_c)
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
        g = scalars[4]
        if scalars[7] != 0.0:
            g *= grad_output[g_off + o * g_so + i * g_si]
        g_ce = g * scalars[5]
        coef = g_ce * coef + 2.0 * scalars[2] * (g * scalars[6]) * lse
        write_segment(x, base, x_sc, lo, hi, cap, out, out_base, o_sc, shift, log_sum,
                      coef, ftype(g_ce), target, t_row, t_sc, weight,
                      ftype(one_minus_eps), ftype(eps_over_c))
        if indexed and write == WRITE_GRAD and lo <= t < hi:
            # The target class, from the logit read before any write (in place safe),
            # in the compute type before rounding.
            log_p = float(target_logit - shift) - log_sum
            grad_t = coef * math.exp(log_p) - g_ce * one_minus_eps * target_weight
            if smoothing:
                grad_t -= g_ce * eps_over_c * target_weight
            if softcap:
                grad_t *= 1.0 - (target_logit / cap) ** 2
            _store(out, out_base + t * o_sc, ftype(grad_t), half)

    @njit(cache=True, fastmath=FASTMATH, parallel=True)
    def kernel(x, x_geom, n_seg, outer, inner, n_classes, target, t_geom, weight,
               weight_total, scalars, grad_output, g_geom, out, out_geom, row_value,
               row_lse):
        one_minus_eps = 1.0 - scalars[1]
        eps_over_c = scalars[1] / n_classes
        cap = ftype(scalars[3])
        n_items = outer * inner * n_seg
        seg_len = (n_classes + n_seg - 1) // n_seg
        part_max = np.empty(n_items, ftype)
        part_sum = np.empty(n_items)
        part_aux = np.empty(n_items)
        part_mass = np.empty(n_items)
        if n_seg == 1:
            # Whole rows: statistics then writes while the row is still in cache.
            for item in prange(n_items):
                item_stats(item, 1, seg_len, x, x_geom, inner, n_classes, target, t_geom,
                           weight, cap, one_minus_eps, eps_over_c, part_max, part_sum,
                           part_aux, part_mass)
                finish_item(item, 1, seg_len, x, x_geom, inner, n_classes, target, t_geom,
                            weight, weight_total, scalars, grad_output, g_geom, out,
                            out_geom, part_max, part_sum, part_aux, part_mass, row_value,
                            row_lse)
        else:
            for item in prange(n_items):
                item_stats(item, n_seg, seg_len, x, x_geom, inner, n_classes, target,
                           t_geom, weight, cap, one_minus_eps, eps_over_c, part_max,
                           part_sum, part_aux, part_mass)
            for item in prange(n_items):
                finish_item(item, n_seg, seg_len, x, x_geom, inner, n_classes, target,
                            t_geom, weight, weight_total, scalars, grad_output, g_geom, out,
                            out_geom, part_max, part_sum, part_aux, part_mass, row_value,
                            row_lse)

    return kernel
