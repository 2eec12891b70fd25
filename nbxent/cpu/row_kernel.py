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
from numba import njit

from .access import loader, storer
from .arguments import (METRIC_ARGMAX, METRIC_ENTROPY, METRIC_LSE, METRIC_RANK, WRITE_GRAD,
                        WRITE_NOTHING, WRITE_SOFTMAX, TargetKind, named)
from .bits import (bitcast, exact_order, from_order_key, larger_of_numbers, order_key,
                   prefetch, rank_key, vectors_at_full_width)
from .fastexp import exp_negative32, exp_nonpositive_for, negative_floor32
from .disk_cache import named_for
from .formulas import (capper, difference_plus, entropy_of, entropy_term, log_of_sum,
                       moment_onto, shift_of)
from .launch import blocks_for

# No nnan/ninf: nan must propagate and -inf logits must stay -inf. The kernels also
# compile with error_model="numpy" (inherited by the helpers they call): a float
# division is then IEEE, not a branch raising ZeroDivisionError, which keeps LLVM
# from vectorising the loop around it. Every division is guarded where it matters.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
CHUNK = 1024
# Classes of the exp pass between two shares of the next chunk's prefetch hints.
BLOCK = 256
# Classes the count of those ahead of the target takes between two looks at its limit.
RANK_BLOCK = 128
# A chunk's argmax while it waits for the pass that finds it (no class is negative).
ARGMAX_PENDING = -1
# float32 -0.0's bits as a signed integer.
_NEGATIVE_ZERO = np.int32(-2**31)

# Rows of the per-item partial statistics (the last four for metrics only).
(_MAX, _N_TOP, _REST, _MOMENT, _MASS, _T_LOGIT, _ENTROPY, _TOP, _ARGMAX, _AHEAD, _NAN,
 _N_PARTS) = range(12)


# Where writes follow, the statistics of rows of this many logits' bytes are taken
# together, then their writes: the rows' logits and exps (twice this) stay in the L2 cache
# of the CPUs we meet. (Measured: groups of 16 KiB to 1 MiB, benchmarks/RESULTS.md.)
GROUP_BYTES = 1 << 18


def compiled_apart(variant, fastmath):
    """``@njit`` for a function of ``variant``'s kernel that Numba compiles apart: named
    for the variant (``disk_cache.named_for``), with the kernels' ``error_model`` and the
    ``fastmath`` flags given (said here: one compiled for a function pointer, from Python,
    inherits none from a caller), and without Numba's reference counts.

    Numba counts a reference to every array a function is given, entering and leaving
    it: an atomic add and subtract per array, unless an LLVM pass proves them paired
    and drops them. It did in the loss's statistics function but not in the larger one with
    metrics, where the counts cost more than the metrics themselves (benchmarks/RESULTS.md).
    The arrays belong to the kernel, which outlives the call, and these functions allocate
    nothing, so they need no counts: Numba's ``_nrt=False`` leaves them out (and refuses to
    compile a function that would allocate).
    """
    def compile_apart(function):
        return njit(_nrt=False, fastmath=fastmath, error_model="numpy")(
            named_for(variant)(function))

    return compile_apart


@njit(inline="always")
def row_start(geom, o, i):
    """Index of class 0 of row ``(o, i)`` in an array of geometry ``geom``."""
    return geom.offset + o * geom.s_outer + i * geom.s_inner


def max_passes(load):
    """``(chunk_max, holds_nan)`` over logits read with ``load`` (``access.loader``)."""

    @njit(inline="always")
    def holds_nan(x, base, stride, c0, c1, ftype):
        """Whether a raw logit in [c0, c1) of a row is nan (where a plain sum of them is
        nan: one of them, or +inf and -inf, or overflows of both signs)."""
        found = False
        for c in range(c0, c1):
            value = load(x, base + c * stride, ftype)
            found |= value != value
        return found

    @njit(inline="always")
    def chunk_max(x, base, stride, c0, c1, ftype, sums):
        """The max's pass over the raw logits [c0, c1) of a row: (their max, their plain
        sum when ``sums`` (a constant where this is called), else 0).

        A nan may win the max or not (``larger_of_numbers``); either way it makes the
        row's sum of exponentials nan, or the plain sum, for the sums that drop nans
        (``exp_negative32``). The sum is nan where the chunk holds a nan (and where it
        holds both infinities, or overflows both ways): the chunks whose order the float
        comparisons of ``chunk_ranks`` cannot be trusted with.
        """
        top = ftype(-np.inf)
        total = ftype(0.0)
        for c in range(c0, c1):
            value = load(x, base + c * stride, ftype)
            top = larger_of_numbers(top, value)
            if sums:
                total += value
        return top, total

    return chunk_max, holds_nan


def first_way(shape):
    """The row kernel's one block function, whatever the shape."""
    return 0


def build_row_kernel(variant, f, sum_at_inf):
    """The row kernel of ``variant``, from its ``Formulas`` ``f``: its block function (one),
    plan and choice of block function (``nbxent.cpu.launch.BlockKernel``).

    ``sum_at_inf`` is the sum of exponentials a row holding +inf reports.

    Longer than a screen on purpose: it is a list of short steps, each a closure
    over the variant's flags (compile-time constants to Numba, so each compiled
    kernel keeps only its own branches), read top to bottom in the order they run.
    """
    half, softcap, entropy, compute64, metrics = (
        variant.half, variant.softcap, variant.entropy, variant.compute64, variant.metrics)
    ftype = np.float64 if compute64 else np.float32
    load_x, store_out = loader(half), storer(half)
    chunk_max, holds_nan = max_passes(load_x)
    cap_logit = capper(softcap, compute64)
    exp_nonpositive = exp_nonpositive_for(compute64)
    writes = variant.write != WRITE_NOTHING
    writes_target_gradient = variant.write == WRITE_GRAD and variant.target == TargetKind.INDEX
    # Not through float16 (it would round the exps) nor under softcap or log_softmax
    # (their writes need the logit itself).
    keep_exps = variant.write in (WRITE_GRAD, WRITE_SOFTMAX) and not half and not softcap
    # The logits at the shift counted in a pass of their own (``chunk_sums``); not where a
    # second pass would convert (float16) or cap (softcap) every logit again.
    ties_apart = not half and not softcap
    # The loss's float32 sums of the rest from ``exp_negative32``: the max's terms left out
    # by an integer minimum instead of a comparison and a select per logit (AVX2 has no
    # mask registers to fold them into the sum). They are the logits at x - shift = +0.0,
    # those that equal the shift once a zero shift is -0.0; a nan, which that exp drops, is
    # found by the max pass's plain sum. Not where the exps are kept, nor for the entropy
    # function, whose moment takes each exp.
    negative_exps = ties_apart and not keep_exps and not entropy and not compute64
    # The spread's moment (smoothing, probability targets), taken about the running shift.
    linear_moment = not entropy and (variant.smoothing or variant.target == TargetKind.PROB)
    load_logit, element_terms, element_result, target_of = (
        f.load_logit, f.element_terms, f.element_result, f.target_of)
    row_result, grad_output_at, upstream, target_gradient = (
        f.row_result, f.grad_output_at, f.upstream, f.target_gradient)

    ordered_chunk = exact_order(load_logit)
    # Logits per cache line.
    LINE = 64 // (2 if half else 4 if variant.widened else np.dtype(ftype).itemsize)

    @njit(inline="always")
    def item_place(item, shape):
        """(row, segment of the row, outer and inner index of the row, first class,
        end class) of a work item.

        Without the divisions where they divide by 1 (whole rows, the class axis last):
        a 64-bit division costs tens of cycles, and this runs three times a row.
        """
        n_seg, inner, n_classes = shape.row_split, shape.inner, shape.n_classes
        if n_seg == 1:
            r, seg, lo, hi = item, 0, 0, n_classes
        else:
            seg_len = (n_classes + n_seg - 1) // n_seg
            r = item // n_seg
            seg = item - r * n_seg
            lo = seg * seg_len
            hi = min(lo + seg_len, n_classes)
        o = r if inner == 1 else r // inner
        return r, seg, o, r - o * inner, lo, hi

    @njit(inline="always")
    def prefetch_share(x, upcoming, n_upcoming, share, n_shares):
        """Ask for share ``share`` of ``n_shares`` equal parts of the logits
        [upcoming, upcoming + n_upcoming) of ``x`` (none when ``n_upcoming`` is 0).

        The exp pass over a chunk reads only L1 and leaves the hardware prefetcher idle,
        so the next chunk's max pass (of this row or the next) would wait on memory;
        the exp pass asks for it part by part between its blocks, so that the loads
        overlap the arithmetic without a burst of hints at once (a burst measured
        slower: benchmarks/RESULTS.md).
        """
        step = ((n_upcoming + n_shares - 1) // n_shares + LINE - 1) // LINE * LINE
        lo = upcoming + share * step
        for a in range(lo, min(lo + step, upcoming + n_upcoming), LINE):
            prefetch(x, np.int64(a))

    @njit(inline="always")
    def exp_source(x, base, s_class, c0, c1, cap, staged, in_place):
        """(array, base, stride) the exp pass reads the chunk [c0, c1) of a row from:
        the logits themselves, or, with ``keep_exps`` and ``in_place``, their copy in
        ``staged`` (CHUNK values of the work items' block).

        LLVM vectorises a loop that reads one array and writes another only after
        checking at run time that they do not overlap; an in-place gradient (``out``
        the logits) failed that check and ran the scalar loop (four times slower:
        benchmarks/RESULTS.md). Where they do not overlap, the copy would only cost time.
        """
        if keep_exps and in_place:
            for c in range(c0, c1):
                staged[c - c0] = load_logit(x, base + c * s_class, cap)
            return staged, -c0, 1
        return x, base, s_class

    @njit(inline="always")
    def chunk_sums(x, base, s_class, c0, c1, cap, shift, target, t_row, t_class_stride,
                   weight, one_minus_eps, eps_over_c, out, out_base, o_sc, with_entropy,
                   logits, upcoming, n_upcoming):
        """The exp pass over classes [c0, c1) of a row, whose logits are
        ``load_logit(x, base + c * s_class, cap)``: (sum of exps, 0 with ``ties_apart``,
        the sum of those below the shift, moment, mass, entropy moment (0 unless
        ``with_entropy``, a constant where this is called, so that the loop without it
        stays as fast)). Between its blocks it asks for the ``n_upcoming`` logits of
        ``logits`` from ``upcoming`` (``prefetch_share``).

        Values equal to the shift add exactly 1 each. Summing the rest apart keeps
        float32 from rounding 1 + (small rest), the whole loss of a confident row.
        Their count is what the plain total adds beyond the rest, or with
        ``ties_apart`` what ``equal_to`` finds after this loop: one accumulator, not
        two, in a loop that with exp's constants already spills AVX2's 16 vector
        registers to the stack (benchmarks/RESULTS.md). (Measured: a count kept in this
        loop, or a second select, stops it from vectorising.)
        """
        total = ftype(0.0)
        rest = ftype(0.0)
        chunk_moment = ftype(0.0)
        chunk_mass = ftype(0.0)
        chunk_entropy = ftype(0.0)
        n_blocks = (c1 - c0 + BLOCK - 1) // BLOCK
        for block in range(n_blocks):
            prefetch_share(logits, upcoming, n_upcoming, block, n_blocks)
            b0 = c0 + block * BLOCK
            for c in range(b0, min(b0 + BLOCK, c1)):
                value = load_logit(x, base + c * s_class, cap)
                at_top, e, moment_term, mass_term = element_terms(
                    value, shift, c, target, t_row, t_class_stride, weight,
                    one_minus_eps, eps_over_c)
                if negative_exps:
                    floored = negative_floor32(value - shift)
                    e = exp_negative32(floored)  # (the floor of a floor: folded away)
                if keep_exps:
                    store_out(out, out_base + c * o_sc, e)
                if not ties_apart:
                    total += e
                rest += e if negative_exps else (ftype(0.0) if at_top else e)
                chunk_moment += moment_term
                chunk_mass += mass_term
                if with_entropy:  # (the max's terms add 0 either way; a nan too, found apart)
                    chunk_entropy += e * floored if negative_exps else entropy_term(
                        value, shift, e, compute64)
        return total, rest, chunk_moment, chunk_mass, chunk_entropy

    @njit(inline="always")
    def equal_to(x, base, s_class, c0, c1, cap, value, finds_first):
        """(How many of the logits [c0, c1) of a row equal ``value``, and when
        ``finds_first`` (a constant where this is called) the first class that does, c1
        if none): one pass over the chunk, in L1 after the max's pass; 32-bit counts and
        a branch-free minimum of 32-bit offsets vectorise as wide as float32."""
        n = np.int32(c1 - c0)
        count = np.int32(0)
        first = n
        for j in range(n):
            equal = load_logit(x, base + (c0 + j) * s_class, cap) == value
            count = np.int32(count + np.int32(equal))
            if finds_first:
                first = min(first, np.int32(j) if equal else n)
        return count, c0 + first

    @njit(inline="always")
    def classes_ahead(x, base, s_class, c0, c1, cap, t_logit, t, limit):
        """How many classes of [c0, c1) of a row come before the target t (a logit greater
        than t's, or equal at a smaller index; float comparisons, so -0.0 equals 0.0):
        exact below ``limit``, else ``limit`` or more.

        In blocks of ``RANK_BLOCK`` classes, stopping at the first block that reaches
        ``limit``: top-k's question is only whether fewer than k come first, and a target
        far from the top (most rows' of an untrained model, the wrong ones of a trained
        one) answers it in a block or two. Each block splits at t into a loop of >= and
        one of >, 32-bit counts that vectorise as wide as float32 keys.
        """
        count = np.int32(0)
        for b0 in range(c0, c1, RANK_BLOCK):
            b1 = min(b0 + RANK_BLOCK, c1)
            split = min(max(t, b0), b1)
            for c in range(b0, split):
                count = np.int32(count + np.int32(
                    load_logit(x, base + c * s_class, cap) >= t_logit))
            for c in range(split, b1):
                count = np.int32(count + np.int32(
                    load_logit(x, base + c * s_class, cap) > t_logit))
            if count >= limit:
                break
        return count

    @njit(inline="always")
    def chunk_ranks(x, base, s_class, c0, c1, cap, top_key, nan_free, t_logit, t, t_low,
                    t_high, fast_order, rank_limit, wants_argmax, best_key, best):
        """The metrics' step for the chunk [c0, c1) of a row, while it holds the logits
        (before its exps are written where they may overwrite them): (the row's best key
        and argmax so far, the classes of the chunk ahead of the target t: exact below
        ``rank_limit`` when that is > 0 (``classes_ahead``), else 1 or 0 for some or
        none).

        Float comparisons with the chunk's max (``top_key``), unless ``fast_order`` is off
        (capped logits, a nan target logit) or the chunk is not ``nan_free``: then the
        integer keys of ``ordered_chunk``. A class before t is ahead when it is >= t's
        logit, one after t when greater; in t's chunk, t is first at the max or not. The
        argmax is searched only when the max grows (strictly: the first chunk wins a tie),
        seldom after the first chunk; with ``ties_apart`` it is left ``ARGMAX_PENDING``
        for the pass that counts the chunk's logits at the shift, then the chunk's max, to
        find in the same loop.
        """
        if not (fast_order and nan_free):
            chunk_key, chunk_first, chunk_ahead = ordered_chunk(x, base, s_class, c0, c1, cap,
                                                                t_logit, t)
            if chunk_key > best_key:
                best_key, best = chunk_key, chunk_first
            return best_key, best, chunk_ahead if rank_limit > 0 else min(chunk_ahead, 1)
        top = from_order_key(top_key)
        t_first = False  # t is the chunk's first class at its max
        if t < c0:
            some_ahead = top_key > t_high
        elif t >= c1:
            some_ahead = top_key >= t_low
        else:
            t_first = top == t_logit and equal_to(x, base, s_class, c0, t + 1, cap, top,
                                                     True)[1] == t
            some_ahead = not t_first
        chunk_ahead = np.int32(1 if some_ahead else 0)
        if some_ahead and rank_limit > 0:
            chunk_ahead = classes_ahead(x, base, s_class, c0, c1, cap, t_logit, t, rank_limit)
        if wants_argmax and rank_key(top) > best_key:
            best_key = rank_key(top)
            if t_first:
                best = t
            elif ties_apart:  # found by the pass that counts the logits at the shift
                best = ARGMAX_PENDING
            else:
                best = equal_to(x, base, s_class, c0, c1, cap, top, True)[1]
        return best_key, best, chunk_ahead

    @compiled_apart(variant, FASTMATH)
    def items_stats(first, last, x, x_geom, target, t_geom, weight, g_geom, out, out_geom,
                    shape, options, part, chunk_shifts, staged):
        """The statistics of the work items [first, last) (rows, or their ``row_split``
        segments [lo, hi)), into ``part``: row_max, n_top, rest, moment, mass (a row's sum
        of exps is n_top, the count of logits at the max, plus the rest), its target's
        logit (read before the exps are written: in place, they overwrite it; the backend
        never writes in place where a row is split over items, which would read each
        other's) and, with ``metrics``, the metrics' sums: entropy moment,
        largest logit, its first class, classes ahead of the target ``t`` (exact below
        ``options.rank_limit``), nan if a logit is nan else 0; each only when wanted (else
        0, lo, and for the classes ahead 1 or 0: some or none).

        With ``keep_exps``, each exp(x - shift) goes to ``out`` and each chunk's shift to
        ``chunk_shifts[item]``. Each item's last chunk's exp pass prefetches the next
        item's first chunk.

        One call for many rows: the chunk loops' constants (the exp's coefficients, the
        masks) are set up once, not at every row. A function called per row set them up,
        and spilled most of them to the stack, at each call: at C = 1000 that cost a
        loss, with metrics or not, 14-19 % of its time (benchmarks/RESULTS.md). (The
        rows' loop is written here, not around an inlined function: Numba types an
        inlined function again in its caller, which for this one took twice the compile
        time.)
        """
        vectors_at_full_width()
        x_geom, t_geom, _, out_geom, shape, options = named(
            x_geom, t_geom, g_geom, out_geom, shape, options)
        one_minus_eps = 1.0 - options.label_smoothing
        eps_over_c = options.label_smoothing / shape.n_classes
        cap = ftype(options.softcap)
        s_class, t_class_stride, o_sc = x_geom.s_class, t_geom.s_class, out_geom.s_class
        rank_limit, wants_argmax = options.rank_limit, options.wants_argmax
        wants_entropy, in_place = options.wants_entropy, options.in_place
        for item in range(first, last):
            _, _, o, i, lo, hi = item_place(item, shape)
            base = row_start(x_geom, o, i)
            t_row = row_start(t_geom, o, i)
            out_base = row_start(out_geom, o, i)
            # The next item's first chunk, for the prefetch hints (the last item's: none).
            _, _, next_o, next_i, next_lo, next_hi = item_place(
                min(item + 1, part.shape[0] - 1), shape)
            next_at = row_start(x_geom, next_o, next_i) + next_lo * s_class
            next_len = min(CHUNK, next_hi - next_lo) if item + 1 < part.shape[0] else 0
            _, t, t_logit, _ = target_of(x, base, s_class, target, t_row, shape.n_classes,
                                         0, weight, cap)
            row_max = ftype(-np.inf)
            n_top = 0.0  # the logits at the running max: exactly 1 each
            rest = 0.0  # the others' exps, apart: 1 + a tiny rest would round in float64 too
            rest_sum = 0.0  # only to let a nan logit through when the max is +inf
            moment = 0.0
            mass = 0.0
            entropy_moment = 0.0
            best_key = rank_key(ftype(-np.inf))
            best = lo
            ahead = 0
            # The metrics' order from float comparisons (``chunk_ranks``), unless the loss's
            # logits are capped (saturation makes ties) or t's logit is nan. Taken after the
            # exps when none are written; else before, with the logits' plain sum telling the
            # chunks that may hold a nan, at the cost of that sum.
            fast_order = metrics and not softcap and t_logit == t_logit
            t_low = order_key(ftype(-0.0) if t_logit == 0.0 else t_logit)
            t_high = order_key(ftype(0.0) if t_logit == 0.0 else t_logit)
            for c0 in range(lo, hi, CHUNK):
                c1 = min(c0 + CHUNK, hi)
                # (The plain sum where the exps drop nans, and where the metrics' order,
                # taken before the exps, needs it.) tanh is monotonic: the max of the capped
                # logits is the capped max.
                top, logit_sum = chunk_max(x, base, s_class, c0, c1, ftype,
                                           negative_exps or (metrics and keep_exps))
                top = cap_logit(top, cap)
                top_key = order_key(top)
                if metrics and keep_exps:
                    nan_free = logit_sum == logit_sum  # (taken where fast_order makes it count)
                    best_key, best, chunk_ahead = chunk_ranks(
                        x, base, s_class, c0, c1, cap, top_key, nan_free, t_logit, t, t_low,
                        t_high, fast_order, max(rank_limit - ahead, 1) if rank_limit else 0,
                        wants_argmax, best_key, best)
                    ahead += chunk_ahead
                if top > row_max:
                    if linear_moment:  # (its terms about the old shift)
                        moment = moment_onto(moment, mass, shift_of(row_max), shift_of(top))
                    sum_exp = n_top + rest
                    if sum_exp > 0.0:
                        rescale = math.exp(float(row_max - top))
                        if entropy:
                            moment = rescale * (moment + float(row_max - top) * sum_exp)
                        if metrics:
                            entropy_moment = rescale * (entropy_moment
                                                        + float(row_max - top) * sum_exp)
                        n_top, rest = 0.0, rescale * sum_exp  # the old max is below the new
                    row_max = top
                shift = shift_of(row_max)
                if negative_exps:  # a zero as -0.0, from which +0.0 and -0.0 are both +0.0 away
                    shift = bitcast(_NEGATIVE_ZERO if bitcast(shift, np.int32) == 0
                                    else bitcast(shift, np.int32), ftype)
                if keep_exps:
                    chunk_shifts[item, (c0 - lo) // CHUNK] = shift
                upcoming, n_upcoming = (base + c1 * s_class, min(CHUNK, hi - c1)) if c1 < hi \
                    else (next_at, next_len)
                source, s_base, s_stride = exp_source(x, base, s_class, c0, c1, cap, staged,
                                                      in_place)
                # (Each case its own loop: a run-time flag inside one would cost every call.)
                if metrics and wants_entropy:
                    total, chunk_rest, chunk_moment, chunk_mass, chunk_entropy = chunk_sums(
                        source, s_base, s_stride, c0, c1, cap, shift, target, t_row,
                        t_class_stride, weight, one_minus_eps, eps_over_c, out, out_base, o_sc,
                        True, x, upcoming, n_upcoming if s_class == 1 else 0)
                else:
                    total, chunk_rest, chunk_moment, chunk_mass, chunk_entropy = chunk_sums(
                        source, s_base, s_stride, c0, c1, cap, shift, target, t_row,
                        t_class_stride, weight, one_minus_eps, eps_over_c, out, out_base, o_sc,
                        False, x, upcoming, n_upcoming if s_class == 1 else 0)
                if negative_exps and logit_sum != logit_sum and holds_nan(x, base, s_class, c0,
                                                                          c1, ftype):
                    chunk_rest = ftype(np.nan)
                if metrics and not keep_exps:  # (a nan makes the rest nan)
                    nan_free = chunk_rest == chunk_rest and top != np.inf
                    best_key, best, chunk_ahead = chunk_ranks(
                        x, base, s_class, c0, c1, cap, top_key, nan_free, t_logit, t, t_low,
                        t_high, fast_order, max(rank_limit - ahead, 1) if rank_limit else 0,
                        wants_argmax, best_key, best)
                    ahead += chunk_ahead
                if ties_apart:  # (none where the chunk's max is below the row's)
                    if top != shift:
                        at_shift = np.int32(0)
                    elif metrics and best == ARGMAX_PENDING:
                        at_shift, best = equal_to(source, s_base, s_stride, c0, c1, cap, shift,
                                                  True)
                    else:
                        at_shift, _ = equal_to(source, s_base, s_stride, c0, c1, cap, shift,
                                               False)
                else:
                    at_shift = math.floor(float(total - chunk_rest) + 0.5)
                n_top += at_shift
                rest += float(chunk_rest)
                rest_sum += float(chunk_rest)
                moment += chunk_moment
                mass += chunk_mass
                entropy_moment += chunk_entropy
            if row_max == np.inf:
                n_top, rest = sum_at_inf, 0.0 * rest_sum
            part[item, _T_LOGIT] = t_logit
            part[item, _MAX] = row_max
            part[item, _N_TOP] = n_top
            part[item, _REST] = rest
            part[item, _MOMENT] = moment
            part[item, _MASS] = mass
            if metrics:
                part[item, _ENTROPY] = entropy_moment
                part[item, _TOP] = from_order_key(best_key)
                part[item, _ARGMAX] = best
                part[item, _AHEAD] = ahead
                part[item, _NAN] = 0.0 * rest_sum

    @njit(inline="always")
    def combined_stats(part, first, n_seg):
        """(row_max, shift, n_top, rest, moment, mass) of a row from its items' statistics:
        n_top counts the logits at the row's max, the rest sums the other exps."""
        row_max = ftype(part[first, _MAX])
        for k in range(first + 1, first + n_seg):
            row_max = max(row_max, ftype(part[k, _MAX]))
        shift = shift_of(row_max)
        n_top = 0.0
        rest = 0.0
        moment = 0.0
        mass = 0.0
        for k in range(first, first + n_seg):
            sum_exp = part[k, _N_TOP] + part[k, _REST]
            if sum_exp != 0.0:  # empty and all -inf segments add nothing (nan does)
                # (Equal maxima rescale by 1: a +inf max minus itself would be nan.)
                at_max = part[k, _MAX] == shift
                rescale = 1.0 if at_max else math.exp(part[k, _MAX] - shift)
                n_top += part[k, _N_TOP] if at_max else 0.0
                rest += part[k, _REST] if at_max else rescale * sum_exp
                if entropy:
                    moment += rescale * (part[k, _MOMENT] + (part[k, _MAX] - shift) * sum_exp)
            if not entropy:
                moment += moment_onto(part[k, _MOMENT], part[k, _MASS],
                                      shift_of(ftype(part[k, _MAX])), shift)
            mass += part[k, _MASS]
        return row_max, shift, n_top, rest, moment, mass

    @njit(inline="always")
    def combined_order(part, first, n_seg, shift, wants_entropy):
        """(entropy moment (0 unless wanted), argmax, classes ahead of the target, nan if
        a logit is nan else 0) of a row from its items'."""
        entropy_moment = 0.0
        best_key = rank_key(ftype(part[first, _TOP]))
        best = part[first, _ARGMAX]
        ahead = 0.0
        nan = 0.0
        for k in range(first, first + n_seg):
            sum_exp = part[k, _N_TOP] + part[k, _REST]
            if wants_entropy and sum_exp != 0.0:
                rescale = 1.0 if part[k, _MAX] == shift else math.exp(part[k, _MAX] - shift)
                entropy_moment += rescale * (part[k, _ENTROPY]
                                             + (part[k, _MAX] - shift) * sum_exp)
            key = rank_key(ftype(part[k, _TOP]))
            if key > best_key:  # strictly: the first item's class wins a tie
                best_key, best = key, part[k, _ARGMAX]
            ahead += part[k, _AHEAD]
            nan += part[k, _NAN]
        return entropy_moment, best, ahead, nan

    @njit(inline="always")
    def finish_item(item, x, x_geom, target, t_geom, weight, grad_output, g_geom, out,
                    out_geom, row_value, row_lse, row_metrics, shape, options, part,
                    chunk_shifts):
        """Combine a row's statistics; write its value, lse (and metrics) and the item's
        classes."""
        x_geom, t_geom, g_geom, out_geom, shape, options = named(
            x_geom, t_geom, g_geom, out_geom, shape, options)
        n_classes, n_seg = shape.n_classes, shape.row_split
        one_minus_eps = 1.0 - options.label_smoothing
        eps_over_c = options.label_smoothing / n_classes
        cap = ftype(options.softcap)
        r, seg, o, i, lo, hi = item_place(item, shape)
        base = row_start(x_geom, o, i)
        t_row = row_start(t_geom, o, i)
        row_max, shift, n_top, rest, moment, mass = combined_stats(part, r * n_seg, n_seg)
        sum_exp = n_top + rest
        valid, t, _, t_weight = target_of(x, base, x_geom.s_class, target, t_row,
                                          n_classes, options.ignore_index, weight, cap)
        t_logit = ftype(part[item, _T_LOGIT])
        log_sum = log_of_sum(n_top, rest)
        value, lse, row_mass = row_result(row_max, sum_exp, log_sum, moment, mass, t_logit,
                                          t_weight, options.weight_sum, one_minus_eps,
                                          eps_over_c)
        if seg == 0:
            row_value[r] = value if valid else 0.0
            if options.keeps_lse:
                row_lse[r] = lse if valid else 0.0
            if metrics:
                entropy_moment, argmax, ahead, nan = combined_order(
                    part, r * n_seg, n_seg, shift, options.wants_entropy)
                # logsumexp's own: +inf for a row holding +inf and no nan.
                row_metrics[METRIC_LSE, r] = lse if row_max != np.inf else np.inf + nan
                row_metrics[METRIC_ARGMAX, r] = argmax
                # (A target that does not count ranks nowhere: never correct nor top-k.)
                row_metrics[METRIC_RANK, r] = ahead if valid and 0 <= t < n_classes else np.inf
                if options.wants_entropy:
                    row_metrics[METRIC_ENTROPY, r] = entropy_of(log_sum, entropy_moment,
                                                                sum_exp)
        if not writes:
            return
        out_base = row_start(out_geom, o, i)
        o_sc = out_geom.s_class
        if not valid:
            for c in range(lo, hi):
                store_out(out, out_base + c * o_sc, ftype(0.0))
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
                    e = load_x(out, out_base + c * o_sc, ftype) * to_p
                else:
                    value = load_logit(x, base + c * x_geom.s_class, cap)
                    e = exp_nonpositive(value - shift)
                result = element_result(value, e, shift, log_sum, inv_sum, p_scale,
                                        ftype(g_ce), c, target, t_row, t_geom.s_class, weight,
                                        ftype(one_minus_eps), ftype(eps_over_c), cap)
                store_out(out, out_base + c * o_sc, result)
        if writes_target_gradient and lo <= t < hi:
            store_out(out, out_base + t * o_sc,
                      target_gradient(p_coef, g_ce, t_logit, shift, log_sum, t_weight,
                                      one_minus_eps, eps_over_c, cap))

    @njit(fastmath=FASTMATH, error_model="numpy", _nrt=False)
    @named_for(variant)
    def row_block(block, n_blocks, phase, no_body, x, x_geom, target, t_geom, weight,
                  grad_output, g_geom, out, out_geom, row_value, row_lse, row_metrics, shape,
                  options, part, chunk_shifts, staged_rows):
        """The work items of block ``block`` of ``n_blocks`` (consecutive items, with a
        staging chunk of their own: ``staged_rows[block]``), for
        ``nbxent.cpu.launch.run_blocks`` (``no_body``: None). split == 1: one phase, the
        statistics of a group of rows (``GROUP_BYTES`` of logits where writes follow, else
        all the block's) then their results and writes, the rows still in cache. split > 1:
        all statistics (phase 0), then each item combines and writes (phase 1).

        Without Numba's reference counts (``_nrt=False``; the plan allocates): with the
        per-item functions inlined, they were counted for every array at every row."""
        vectors_at_full_width()
        split = shape[3]
        n_items = part.shape[0]
        staged = staged_rows[block]
        first, last = block * n_items // n_blocks, (block + 1) * n_items // n_blocks
        group = last - first
        if writes and split == 1:
            group = max(1, GROUP_BYTES // (shape[2] * x.itemsize))
        for g0 in range(first, last, group):
            g1 = min(g0 + group, last)
            if phase == 0:
                items_stats(g0, g1, x, x_geom, target, t_geom, weight, g_geom, out, out_geom,
                            shape, options, part, chunk_shifts, staged)
            if phase == 1 or split == 1:
                for item in range(g0, g1):
                    finish_item(item, x, x_geom, target, t_geom, weight, grad_output, g_geom,
                                out, out_geom, row_value, row_lse, row_metrics, shape,
                                options, part, chunk_shifts)

    def row_plan(shape):
        """(n_blocks, n_phases, part, chunk_shifts, staged) of a call: per work item, its
        partial statistics in float64 (row maxima of float32 logits are exact in it), an
        item's together (as rows of n_items, the rows of a large power-of-two n_items fell
        into one set of the L1 cache), and its chunks' shifts where exps are kept; blocks
        of consecutive items (``nbxent.cpu.launch.blocks_for``), each with a chunk of
        logits to stage where exps are kept (``exp_source``)."""
        outer, inner, n_classes, split, _, _, _ = shape
        n_items = outer * inner * split
        seg_len = (n_classes + split - 1) // split
        part = np.empty((n_items, _N_PARTS if metrics else _ENTROPY))
        chunk_shifts = np.empty((n_items, (seg_len + CHUNK - 1) // CHUNK if keep_exps else 0))
        n_blocks = blocks_for(n_items)
        staged = np.empty((n_blocks, CHUNK if keep_exps else 0), ftype)
        return n_blocks, 1 if split == 1 else 2, part, chunk_shifts, staged

    # No body: ``items_stats`` is called directly, linked into ``row_block``. (Through a
    # pointer, as the tile kernel's body, the loss+grad ran 3-6 % slower on two threads:
    # benchmarks/RESULTS.md.)
    return ((row_block, None, None),), row_plan, first_way
