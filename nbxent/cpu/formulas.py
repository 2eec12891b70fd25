"""The formulas of one kernel variant: a logit's terms, a row's results, a logit's output.

Both kernels (``row_kernel``, ``tile_kernel``) are loops around these: per logit
``element_terms`` (its exp and its share of the row's sums; ``linear_terms`` the share
that does not take the exp), per row
``row_result`` (the loss, the logsumexp and the target mass Q)
and ``upstream`` (the upstream gradient's scales), then per logit
``element_result`` (what is written), with the target class's own gradient from
``target_gradient``. The notation and the derivations are in nbxent/reference.py.

``formulas(variant)`` returns them as closures over the variant's flags, so each
compiled kernel holds only the branches its variant takes; a helper that does not
depend on the variant is a plain module-level function.
"""

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from .access import loader
from .arguments import WRITE_LOG_SOFTMAX, WRITE_SOFTMAX, TargetKind
from .fastexp import exp64, exp_floor, exp_nonpositive_for, tanh_for


def capper(softcap, use64):
    """``cap_logit(value, cap)``: cap * tanh(value / cap) when ``softcap``, else the
    value; tanh from the kernels' exp (``fastexp.tanh_for``: float64 when ``use64``), so
    that the loops around it vectorise (libm's is a scalar call). Chosen in Python, so
    that an uncapped kernel does not inline tanh's code (``access.loader`` says why).

    The same logit must cap to the same bits wherever it is capped (a row's max, its
    target's logit, a chunk's loop): else the target loses its place at the max (a 1e-5
    relative loss error; the 'correct' metric false for a row whose target was the max).
    Under the kernels' fastmath LLVM chose per loop how to regroup tanh's arithmetic and
    whether to divide or multiply by a reciprocal, so the function has flags of its own
    (as ``difference_plus``): no reassociation, no reciprocals; contraction into fused
    multiply-adds is kept (without it softcap calls ran 17-25 % slower: benchmarks/
    RESULTS.md). The division by the cap is a multiplication by a reciprocal rounded from
    float64.
    """
    if not softcap:
        @njit(inline="always")
        def uncapped(value, cap):
            return value

        return uncapped
    tanh = tanh_for(use64)

    @njit(fastmath={"nsz", "afn", "contract"}, error_model="numpy")
    def capped(value, cap):
        return cap * tanh(value * type(cap)(1.0 / float(cap)))

    return capped


@njit(inline="always")
def shift_of(row_max):
    """The shift of a row's exponentials and moments: its max, or 0 while that is -inf
    (exp(-inf - 0) is 0, where exp(-inf - -inf) would be nan)."""
    return row_max if row_max > -np.inf else type(row_max)(0.0)


@njit(inline="always")
def moment_onto(moment, mass, old_shift, new_shift):
    """A linear moment sum_c m_c (x_c - old_shift), its weights m_c summing to ``mass``,
    taken about ``new_shift`` instead. Where the shift rises, both terms are at most 0: no
    digit cancels. (0 added for no mass: 0 * inf would be nan.)"""
    return moment + (mass * (old_shift - new_shift) if mass != 0.0 else 0.0)


@njit(fastmath=False, error_model="numpy")
def difference_plus(a, b, c):
    """``(a - b) + c``, in that order, where a and b are logits (or a row's max).

    Without fastmath of its own (a Numba callee otherwise inherits its caller's):
    under reassociation LLVM regroups ``(x - max) - log_sum`` into ``x - (max +
    log_sum)``, hoisted out of the loop or shared with ``lse = max + log_sum``,
    which rounds to the ulp of the logits: large logits lose every digit. The
    whole expression must be here: a reassociating caller reaches through a lone
    unflagged subtraction. LLVM still inlines and vectorises it.
    """
    return (a - b) + c


@njit(inline="always")
def entropy_term(value, shift, e, use64):
    """A logit's share of the entropy moment sum e*(x - max), with x - max at the exp's
    floor (where e is 0 or below 1e-38), so that 0 * -inf is 0; the same select as
    exp's own, which the compiler then shares."""
    return e * exp_floor(value - shift, use64)


@njit(fastmath=False, error_model="numpy")
def log_of_sum(n_top, rest):
    """log(n_top + rest) in float64, where n_top counts the logits at the row's max (1
    each) and ``rest`` sums the other exps: log1p((n_top - 1) + rest), whose first sum is
    exact where it matters (n_top = 1), keeps the digits of a confident row's loss, about
    ``rest``, which 1 + rest would round away below 1e-16 (and to 1e-7 relative near
    1e-9). With no logit at the max (a row of -inf, or nan) it is log(rest).

    Without fastmath of its own, as ``difference_plus``: a reassociating caller regroups
    ``(n_top - 1) + rest`` into ``(n_top + rest) - 1``, which is that rounding again."""
    if n_top > 0.0:
        return math.log1p((n_top - 1.0) + rest)
    return math.log(n_top + rest)


@njit(inline="always")
def entropy_of(log_sum, moment, sum_exp):
    """A row's entropy from log sum(e) and the moment sum e*(x - max); a row of all
    -inf sums to 0 and its entropy is nan (Python's division would raise)."""
    return log_sum - (moment / sum_exp if sum_exp != 0.0 else np.nan)


class Formulas(NamedTuple):
    """One variant's formulas (Numba functions, inlined where they are called)."""

    load_logit: object
    linear_terms: object
    element_terms: object
    element_result: object
    target_of: object
    row_result: object
    grad_output_at: object
    upstream: object
    target_gradient: object


def formulas(variant):
    """The ``Formulas`` of ``variant`` (a ``nbxent.cpu.arguments.Variant``).

    A list of small closures rather than one function: each reads on a screen,
    and the factory only binds them to the variant's flags.
    """
    half, compute64, softcap, smoothing, entropy = (
        variant.half, variant.compute64, variant.softcap, variant.smoothing, variant.entropy)
    ftype = np.float64 if compute64 else np.float32
    indexed = variant.target == TargetKind.INDEX
    prob = variant.target == TargetKind.PROB
    target_half = variant.target_half
    writes_log_softmax = variant.write == WRITE_LOG_SOFTMAX
    writes_softmax = variant.write == WRITE_SOFTMAX
    load_x, load_target = loader(half), loader(target_half)
    cap_logit = capper(softcap, compute64)
    exp_nonpositive = exp_nonpositive_for(compute64)

    @njit(inline="always")
    def load_logit(x, idx, cap):
        return cap_logit(load_x(x, idx, ftype), cap)

    @njit(inline="always")
    def class_q(c, t_row, t_class_stride, target, weight, one_minus_eps, eps_over_c):
        """q_c * w_c: the weighted target mass of class c (probability targets)."""
        mass = (one_minus_eps * load_target(target, t_row + c * t_class_stride, ftype)
                + eps_over_c)
        return mass * ftype(weight[c])

    @njit(inline="always")
    def linear_terms(value, shift, c, target, t_row, t_class_stride, weight,
                     one_minus_eps, eps_over_c):
        """(moment, mass) of ``element_terms`` where they do not take the exp (all but
        the entropy): 0 and 0 but under smoothing or probability targets."""
        mass = ftype(0.0)
        if indexed and smoothing:
            mass = ftype(weight[c])
        elif prob:
            mass = class_q(c, t_row, t_class_stride, target, weight, one_minus_eps,
                           eps_over_c)
        linear = (indexed and smoothing) or prob
        return mass * (value - shift) if linear else ftype(0.0), mass

    @njit(inline="always")
    def element_terms(value, shift, c, target, t_row, t_class_stride, weight,
                      one_minus_eps, eps_over_c):
        """One logit's share of the row sums: (is the max, exp(x - max), moment, mass).

        moment: entropy's e*(x - max) (0 * -inf taken as 0), or w*(x - shift) under
        smoothing (the moment without its factor eps/C), or q*w*(x - shift) for
        probability targets; mass: w under smoothing, q*w for probability targets. About
        the shift, every term of the moment is at most 0 (``row_result``); a caller whose
        shift rises moves the moment with ``moment_onto``, by the mass seen so far.
        """
        e = exp_nonpositive(value - shift)
        if entropy:
            return value == shift, e, entropy_term(value, shift, e, compute64), ftype(0.0)
        moment, mass = linear_terms(value, shift, c, target, t_row, t_class_stride, weight,
                                    one_minus_eps, eps_over_c)
        return value == shift, e, moment, mass

    @njit(inline="always")
    def element_result(value, e, shift, log_sum, inv_sum, p_scale, g_ce, c, target, t_row,
                       t_class_stride, weight, one_minus_eps, eps_over_c, cap):
        """What is written for one logit: its gradient, log-probability or probability.

        ``e`` is exp(value - shift). Probabilities are e * inv_sum, never
        exp(x - lse): under fastmath's reassociation LLVM would hoist a float32 lse
        out of the loop and lose its digits for large logits. ``p_scale`` is
        p_coef * inv_sum. The target class's own term is added apart
        (``target_gradient``).
        """
        if writes_log_softmax:
            return ftype(difference_plus(value, shift, -log_sum))
        if writes_softmax:
            return e * inv_sum
        result = p_scale * e
        if indexed and smoothing:
            result -= g_ce * eps_over_c * ftype(weight[c])
        elif prob:
            result -= g_ce * class_q(c, t_row, t_class_stride, target, weight,
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
    def row_result(row_max, sum_exp, log_sum, moment, mass, t_logit, t_weight,
                   weight_sum, one_minus_eps, eps_over_c):
        """(per-row value, lse, Q) from the row statistics, in the type of ``log_sum``
        and the other sums (float64 in the row kernel; the tile kernel's type there, where
        float32 takes twice the vector lanes).

        The value is the cross-entropy (or the entropy); Q = sum_c q_c (``row_mass``),
        the coefficient of softmax in the cross-entropy gradient. The spread
        sum_c q~_c (lse - x_c) is mass log s - moment, the moment about the shift:
        two terms of one sign, which keep a confident row's digits where terms about any
        other reference would cancel; the cross-entropy's (max - x_t) + log s adds two
        terms of one sign too.
        """
        rtype = type(log_sum)
        lse = rtype(row_max) + log_sum
        if entropy:
            return entropy_of(log_sum, moment, sum_exp), lse, rtype(0.0)
        if prob:
            return mass * log_sum - moment, lse, mass
        value = rtype(0.0)
        row_mass = rtype(0.0)
        if indexed:
            value = one_minus_eps * t_weight * difference_plus(row_max, t_logit, log_sum)
            row_mass = one_minus_eps * t_weight
            if smoothing:
                value += eps_over_c * (weight_sum * log_sum - moment)
                row_mass += eps_over_c * weight_sum
        return value, lse, row_mass

    @njit(inline="always")
    def grad_output_at(options, grad_output, g_index):
        """The row's element of an array ``grad_output`` (1 for a scalar one).

        Loaded either way (a scalar grad_output comes as a 1-element placeholder
        with zero strides): a load under the branch keeps the loop scalar.
        """
        value = float(grad_output[np.uint64(g_index)])
        return value if options.has_grad_output else 1.0

    @njit(inline="always")
    def upstream(options, g_row, row_mass, lse):
        """(p_coef, g_ce): the softmax coefficient and the cross-entropy scale of a row's
        gradient, given its ``grad_output`` element ``g_row``."""
        g = options.grad_scale * g_row
        g_ce = g * options.inv_ce
        return g_ce * row_mass + 2.0 * options.z_loss * (g * options.inv_z) * lse, g_ce

    @njit(inline="always")
    def target_gradient(p_coef, g_ce, t_logit, shift, log_sum, t_weight,
                        one_minus_eps, eps_over_c, cap):
        """The target class's gradient, in float64, from the logit read before any write."""
        grad_t = (p_coef * exp64(difference_plus(t_logit, shift, -log_sum))
                  - g_ce * one_minus_eps * t_weight)
        if smoothing:
            grad_t -= g_ce * eps_over_c * t_weight
        if softcap:
            grad_t *= 1.0 - (t_logit / cap) ** 2
        return ftype(grad_t)

    return Formulas(load_logit, linear_terms, element_terms, element_result, target_of,
                    row_result, grad_output_at, upstream, target_gradient)
