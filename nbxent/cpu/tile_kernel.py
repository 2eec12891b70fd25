"""The tile kernel: vectorised across neighbouring rows (positions) at once.

For few classes, or a class axis that is not the last (NCHW), where a row is too
short or too strided to fill vectors along its classes. Each tile of
``shape.tile_width`` positions is staged once into class-major scratch (short
rows are transposed on the way, and each position's max and target logit taken
then), its exps are kept for the writes, and the results are staged out. Every
pass between is vectorised along the tile's positions: loops over them, and the exps'
pass in explicit vectors of positions (``lanes``), each through its classes.

Short rows of a few dozen classes and more (``Shape.row_major``, where the variant
allows: ``takes_rows``) are tiled as they lie instead: no transpositions; the max, then
the exps with the sums, then the writes run along each row in explicit vectors
(``lanes``: whole ones, then the row's last classes in one, whose other lanes are masked
off), in groups of rows (``ROW_GROUP_ELEMENTS`` logits, which stay in L1 through the
passes); the per-position steps between are the same.
"""

import numpy as np
from numba import from_dtype, njit, types

from .access import cell, loader, storer
from .arguments import (METRIC_ARGMAX, METRIC_ENTROPY, METRIC_LSE, METRIC_RANK, WRITE_GRAD,
                        WRITE_LOG_SOFTMAX, WRITE_NOTHING, WRITE_SOFTMAX, TargetKind, named)
from .bits import (copy_streaming, copy_transposed, exact_order, larger_of_numbers, lined_empty,
                   prefetch, prefetch_for_write, store_fence, vectors_at_full_width)
from .fastexp import exp64, exp_floor_lanes, exp_nonpositive_lanes, log1p32, log1p64
from .lanes import lanes_for
from .launch import ARGUMENTS, blocks_for
from .disk_cache import named_for, way_key
from .formulas import capper, entropy_of, shift_of
from .row_kernel import FASTMATH, compiled_apart, row_start

# No reassociation in the tile's steps: their loops vectorise across positions without it,
# and with it LLVM regrouped (max - target) + log_sum through a float32 lse (measured: 1e-5
# relative error on a 0.02 loss). (``row_sums``, rows as they lie, reassociates its sums.)
TILE_FASTMATH = FASTMATH - {"reassoc"}
# Rows of a tile's per-position scratch.
(_TOP, _SHIFT, _N_TOP, _REST, _MOMENT, _MASS, _T_LOGIT, _P_SCALE, _G_CE, _LOG_SUM, _VALID,
 _T_GRAD, _ENTROPY, _T_WEIGHT, _LSE, _N_SCRATCH) = range(16)
# Rows of a tile's scratch for the metrics' order: per position, the classes greater
# than the target's logit, those equal to it, and the classes ahead of the target.
_GREATER, _EQUAL, _AHEAD, _N_ORDER = range(4)
# Results of rows tiled as they lie gathered (in L1) before they are streamed out.
STREAMED_ELEMENTS = 2048
# Rows tiled as they lie go through their passes (the max, then the exps and the sums) in
# groups of about this many logits: a group's logits and exps (8 KiB each in
# float32) stay in L1 from the first pass to the last, where passes over the whole tile
# each read it from L2 (benchmarks/RESULTS.md).
ROW_GROUP_ELEMENTS = 2048


@njit(inline="always")
def tile_logit(tile, idx, cap):
    """A staged logit (already capped) of a flat tile."""
    return tile[np.uint64(idx)]


# (argmax, classes ahead of the target) of the tile's position k: its classes lie
# ``pitch`` apart from k.
position_order = exact_order(tile_logit)


@njit(inline="always")
def tiles_per_outer(inner, width, offset):
    """Tiles of each outer slice (see ``tile_span``)."""
    return (inner + offset + width - 1) // width


@njit(inline="always")
def tile_span(tile_index, inner, width, offset):
    """(outer index, first position, positions) of tile ``tile_index``: each outer slice's
    tiles start ``offset`` positions before multiples of ``width``, its first one cut
    short (``Shape.tile_offset``: the backend picks it so that tiles start on a cache
    line of the logits)."""
    per_outer = tiles_per_outer(inner, width, offset)
    o = tile_index // per_outer
    j = tile_index - o * per_outer
    start = max(0, j * width - offset)
    return o, start, min(inner, (j + 1) * width - offset) - start


def takes_rows(variant):
    """Whether the tile kernel of ``variant`` tiles short rows as they lie
    (``Shape.row_major``): not where a logit is converted (float16, float32 widened) or
    capped on its way into the tile, nor for the metrics, the entropy or probability
    targets, whose steps read class-major tiles."""
    return not (variant.half or variant.widened or variant.softcap or variant.metrics
                or variant.entropy or variant.target == TargetKind.PROB)


def build_tile_kernel(variant, f, sum_at_inf):
    """The tile kernel of ``variant``, from its ``Formulas`` ``f``: its block functions,
    plan and choice of block function (``nbxent.cpu.launch.BlockKernel``).

    ``sum_at_inf`` is the sum of exponentials a row holding +inf reports.

    Longer than a screen on purpose: it is a list of short steps, each a closure
    over the variant's flags (compile-time constants to Numba, so each compiled
    kernel keeps only its own branches), read top to bottom in the order they run.
    """
    half, compute64, smoothing, entropy, metrics, softcap = (
        variant.half, variant.compute64, variant.smoothing, variant.entropy, variant.metrics,
        variant.softcap)
    ftype = np.float64 if compute64 else np.float32
    tile_type = from_dtype(np.dtype(ftype))  # (Numba's, for ``body_types``)
    load_x, load_tile, store_out = loader(half), loader(False), storer(half)
    cap_logit = capper(softcap, compute64)
    converts = half or variant.widened  # the tile's type is not the logits'
    indexed = variant.target == TargetKind.INDEX
    prob = variant.target == TargetKind.PROB
    target_half = variant.target_half
    writes = variant.write != WRITE_NOTHING
    writes_softmax = variant.write == WRITE_SOFTMAX
    writes_target_gradient = variant.write == WRITE_GRAD and indexed
    writes_log_softmax = variant.write == WRITE_LOG_SOFTMAX
    log1p = log1p64 if compute64 else log1p32
    LINE = 64 // (4 if variant.widened else np.dtype(ftype).itemsize)  # logits per cache line
    element_result = f.element_result
    # Vectors along the rows tiled as they lie (``lanes``).
    lanes = lanes_for(ftype)
    WIDTH, v_load, v_store, v_splat = lanes.width, lanes.load, lanes.store, lanes.splat
    v_larger, v_largest, v_total = lanes.larger, lanes.largest, lanes.total
    v_where_equal, v_where_less, v_where, v_first = (lanes.where_equal, lanes.where_less,
                                                      lanes.where, lanes.first)
    v_exp, v_exp_floor = exp_nonpositive_lanes(ftype), exp_floor_lanes(ftype)
    row_result, grad_output_at, upstream, target_gradient = (
        f.row_result, f.grad_output_at, f.upstream, f.target_gradient)

    @njit(inline="always")
    def tile_log_of_sum(n_top, rest):
        """``log_of_sum`` at the tile's type, in ``log1p32`` or ``log1p64``, which
        vectorise (``math.log1p`` is a scalar call).

        ``n_top``, the count of logits at the shift, is a whole number, so
        ``(n_top - 1) + rest`` is exact where it matters (n_top = 1). It is 0 only
        where no logit equals the shift: a row of -inf (rest 0) or of nan (rest nan).
        """
        if n_top > ftype(0.0):
            return log1p((n_top - ftype(1.0)) + rest)
        return ftype(-np.inf) if rest == ftype(0.0) else ftype(np.nan)

    @njit(inline="always")
    def tile_layout(s_class, s_pos, n_classes, n, pitch):
        """Loop nest of a copy between memory and ``tile[c * pitch + k]`` (class c,
        position k): (outer count, inner count, memory strides, tile strides).

        The inner loop runs along whichever memory axis is contiguous, so short
        rows (class axis last) are transposed with contiguous reads and writes. The
        backend hands over only arrays with a unit stride along the classes or along
        the positions, so the second is a compile-time 1 where the classes' is not
        (LLVM versions a loop over a run-time stride on it being 1, a check that costs
        time in these short loops at C = 10: benchmarks/RESULTS.md).
        """
        if s_class == 1:
            return n, n_classes, s_pos, 1, 1, pitch
        return n_classes, n, s_class, 1, pitch, 1

    @njit(inline="always")
    def read_targets(target, t_base, t_si, n, n_next, n_classes, ignore_index, weight,
                     weighted, valid, target_index, target_class, t_weight):
        """Each position's target (a contiguous loop): whether it counts, its index, its
        class (-1 when out of range) and its class weight, in the tile's type (nan when out
        of range; read only when ``weighted``: a gather, which does not vectorise). The
        next tile's ``n_next`` targets are hinted to the cache on the way (the logits' own
        hints wait for the exp pass: benchmarks/RESULTS.md)."""
        line = 64 // target.itemsize
        for b in range(0, n_next * t_si, line):
            prefetch(target, np.int64(t_base + n * t_si + b))
        for k in range(n):
            t = np.int64(target[np.uint64(t_base + k * t_si)])
            in_range = 0 <= t < n_classes
            valid[k] = ftype(1.0) if t != ignore_index else ftype(0.0)
            target_index[k] = t
            target_class[k] = np.int32(t) if in_range else np.int32(-1)
        if not weighted:
            for k in range(n):
                t_weight[k] = ftype(1.0) if target_class[k] >= 0 else ftype(np.nan)
            return
        for k in range(n):
            t = target_index[k]
            in_range = 0 <= t < n_classes
            class_weight = ftype(weight[np.uint64(t if in_range else 0)])
            t_weight[k] = class_weight if in_range else ftype(np.nan)

    @njit(inline="always")
    def load_source(source, idx, from_logits):
        """A value of the logits (``from_logits``) or of the tile, in the compute type."""
        return load_x(source, idx, ftype) if from_logits else load_tile(source, idx, ftype)

    @njit(inline="always")
    def scan_classes(source, base, s_class, from_logits, tile, n_classes, n, pitch, cap, top,
                     target_class, t_logit):
        """Copy class-major logits (positions at a unit stride) into the tile, capped and
        in the compute type, and take on the way each position's max (``top``): a
        vectorised loop per class (per pair of classes where nothing is stored). ``source``
        may be the tile itself (``from_logits`` false): then only capped logits are stored
        back. Then, for index targets, each position's target logit from the tile (a
        gather from L1, where a pick per class cost every class a compare, a select and an
        add per position: benchmarks/RESULTS.md)."""
        for k in range(n):
            top[k] = cap_logit(load_source(source, base + k, from_logits), cap)
        # Classes in pairs where nothing is stored (each position's max then loaded and
        # stored once a pair); one at a time where the logits are stored (a second store
        # stream kept LLVM from vectorising the loop).
        step = 1 if from_logits or softcap else 2
        for c0 in range(0, n_classes, step):
            c1 = min(c0 + step - 1, n_classes - 1)
            for k in range(n):
                value0 = cap_logit(load_source(source, base + c0 * s_class + k, from_logits),
                                   cap)
                value1 = cap_logit(load_source(source, base + c1 * s_class + k, from_logits),
                                   cap)
                if from_logits or softcap:
                    tile[cell(c0, pitch, k)] = value0
                top[k] = larger_of_numbers(top[k], larger_of_numbers(value0, value1))
        for k in range(n):
            t = target_class[k] if indexed else np.int32(-1)
            value = tile[cell(max(t, np.int32(0)), pitch, k)]
            t_logit[k] = value if t >= np.int32(0) else ftype(0.0)

    @njit(inline="always")
    def stage(x, base, s_class, s_pos, tile, n_classes, n, pitch, cap, top, target_class,
              t_logit):
        """Load a tile of logits, class-major, capped and in the compute type, and take
        each position's max (``top``) and, for index targets, its target logit.

        Class-major tiles (NCHW) are copied along positions by ``scan_classes``; short
        rows (unit class stride) are transposed first, in blocks of vector shuffles
        (element by element where the types differ, converted on the way), and scanned
        in place.
        """
        if s_class != 1:
            scan_classes(x, base, s_class, True, tile, n_classes, n, pitch, cap, top,
                         target_class, t_logit)
            return
        if converts:
            for k in range(n):
                for c in range(n_classes):
                    tile[cell(c, pitch, k)] = load_x(x, base + k * s_pos + c, ftype)
        else:
            copy_transposed(x, base, s_pos, tile, 0, pitch, n, n_classes)
        scan_classes(tile, 0, pitch, False, tile, n_classes, n, pitch, cap, top, target_class,
                     t_logit)

    @njit(inline="always")
    def stage_targets(target, base, s_class, s_pos, targets, n_classes, n, pitch):
        """Copy a tile's probability targets into ``targets``, class-major as the logits
        (short rows transposed in blocks of vector shuffles where the type allows), in the
        target's own type: the exp pass and the writes then read them along positions, a
        vector at a time, where short rows' targets, C apart, were gathered a lane at a
        time (benchmarks/RESULTS.md)."""
        if s_class == 1 and not target_half:
            copy_transposed(target, base, s_pos, targets, 0, pitch, n, n_classes)
            return
        for c in range(n_classes):
            for k in range(n):
                targets[cell(c, pitch, k)] = target[np.uint64(base + c * s_class + k * s_pos)]

    @njit(inline="always")
    def tile_order(logits, scratch, order, argmax, target_index, n_classes, n, pitch,
                   wants_rank, wants_argmax):
        """Each position's argmax (when ``wants_argmax``) and the classes ahead of its
        target in ``order[_AHEAD]`` (exact when ``wants_rank``, else 1 or 0), after
        ``tile_sums`` (a position's shift is its max, ``_N_TOP`` of its classes equal it).

        Float comparisons in vectorised loops, two classes a step (an odd last class paired
        with the tile's -inf row after its classes: greater than nothing, equal only to a
        -inf target logit or shift, which the exact order settles): the classes greater
        than and equal to the target's logit, the first class at the max (a running
        minimum: a select stored where it was loaded would become a masked store), or for
        'correct' only the max and its count. The positions they cannot settle (a tie
        with the target's logit, a nan or an infinity, which make the sums nan; all -inf,
        which makes them 0) go through ``position_order``.
        """
        shift, n_top, rest = scratch[_SHIFT], scratch[_N_TOP], scratch[_REST]
        t_logit = scratch[_T_LOGIT]
        greater, equal, ahead = order[_GREATER], order[_EQUAL], order[_AHEAD]
        if wants_rank and indexed:
            for k in range(n):
                greater[k] = ftype(0.0)
                equal[k] = ftype(0.0)
            for c in range(0, n_classes, 2):
                for k in range(n):
                    value0, value1 = logits[cell(c, pitch, k)], logits[cell(c + 1, pitch, k)]
                    greater[k] += (ftype(1.0) if value0 > t_logit[k] else ftype(0.0)) + (
                        ftype(1.0) if value1 > t_logit[k] else ftype(0.0))
                    equal[k] += (ftype(1.0) if value0 == t_logit[k] else ftype(0.0)) + (
                        ftype(1.0) if value1 == t_logit[k] else ftype(0.0))
        if wants_argmax:
            none = np.int32(n_classes)
            for k in range(n):
                argmax[k] = none
            for c in range(0, n_classes, 2):
                for k in range(n):
                    first = min(np.int32(c) if logits[cell(c, pitch, k)] == shift[k] else none,
                                np.int32(c + 1) if logits[cell(c + 1, pitch, k)] == shift[k]
                                else none)
                    argmax[k] = min(argmax[k], first)
        for k in range(n):
            # (A nan or +inf logit makes the sum nan, all -inf makes it 0, else it is >= 1;
            # t_logit is 0 without index targets.)
            clear = n_top[k] + rest[k] >= ftype(1.0) and t_logit[k] == t_logit[k]
            if not indexed:  # no target to rank
                count = ftype(0.0)
            elif wants_rank:
                count = greater[k] if equal[k] == ftype(1.0) else ftype(-1.0)
            else:
                alone = n_top[k] == ftype(1.0)  # t's logit the max, t alone at it
                count = ftype(1.0) if t_logit[k] < shift[k] else (
                    ftype(0.0) if alone else ftype(-1.0))
            ahead[k] = count if clear else ftype(-1.0)
        for k in range(n):
            if ahead[k] < ftype(0.0):
                t = target_index[k] if indexed else np.int64(-1)
                _, first, count = position_order(logits, k, pitch, 0, n_classes, 0.0,
                                                 t_logit[k], t)
                argmax[k] = np.int32(first) if wants_argmax else argmax[k]
                ahead[k] = ftype(count) if indexed else ftype(0.0)
        if not indexed:
            return
        # (A target that does not count ranks nowhere: never correct nor top-k.)
        valid = scratch[_VALID]
        for k in range(n):
            counted = valid[k] != ftype(0.0) and 0 <= target_index[k] < n_classes
            ahead[k] = ahead[k] if counted else ftype(np.inf)

    @njit(inline="always")
    def hint_stream(base, s_class, s_pos, n_classes, n):
        """The memory of n positions from ``base`` (class and position strides given), for
        ``hint_step``: (base, stride between its runs, a run's length, end of the runs).
        Runs of contiguous elements: NCHW's of each class; the whole span of contiguous
        short rows; else each row's (none where n is 0)."""
        if s_class != 1:
            return base, s_class, n, n_classes * s_class if n > 0 else 0
        if s_pos == n_classes:
            return base, n * n_classes, n * n_classes, n * n_classes
        return base, s_pos, n_classes, n * s_pos

    @njit(inline="always")
    def hint_step(array, stream, cursor, for_write):
        """Cache hints for the next 2 WIDTH elements of ``stream`` (``hint_stream``) of
        ``array`` from ``cursor`` (where its run starts, the place in the run); returns
        the cursor after them. Sent at each step of two classes of the exp pass
        (``tile_sums``), the memory of the next tile's logits and of this tile's output
        is asked for a line or so at a time while the pass computes (all at once, hints
        measured no faster than none: benchmarks/RESULTS.md), in memory's order: NCHW's
        class runs, each in its own pages, one after the other (hints to a run of each
        class at every step, 150 pages, measured 1.3x slower)."""
        base, run_stride, run_length, runs_end = stream
        run, at = cursor
        for b in range(0, 2 * WIDTH, LINE):
            if run < runs_end and at + b < run_length:
                if for_write:
                    prefetch_for_write(array, np.int64(base + run + at + b))
                else:
                    prefetch(array, np.int64(base + run + at + b))
        at += 2 * WIDTH
        return (run + run_stride, 0) if at >= run_length else (run, at)

    @njit(inline="always")
    def unstage(out, base, s_class, s_pos, tile, n_classes, n, pitch, streams, spare):
        """Store a tile of results, rounded to the output's type (short rows transposed
        in blocks of vector shuffles where the types agree). With ``streams``, the
        output's whole cache lines by streaming stores (``bits.copy_streaming``) where
        its positions lie contiguous (NCHW: a run per class) or its rows do (short rows:
        transposed into ``spare`` first, then stored as one run)."""
        if not converts:  # (a constant: the half kernels' output is not the tile's type)
            if s_class == 1 and streams and s_pos == n_classes:
                copy_transposed(tile, 0, pitch, spare, 0, n_classes, n_classes, n)
                copy_streaming(spare, 0, out, base, n * n_classes)
                return
            if s_class == 1:
                copy_transposed(tile, 0, pitch, out, base, s_pos, n_classes, n)
                return
            if s_pos == 1 and streams:
                for c in range(n_classes):
                    copy_streaming(tile, c * pitch, out, base + c * s_class, n)
                return
        n_outer, n_inner, s_outer, s_inner, t_outer, t_inner = tile_layout(
            s_class, s_pos, n_classes, n, pitch)
        for a in range(n_outer):
            for b in range(n_inner):
                store_out(out, base + a * s_outer + b * s_inner,
                          tile[cell(a, t_outer, b * t_inner)])

    @njit(inline="always")
    def lane_sums(value, shift, n, mass, sums, with_entropy):
        """The share of a vector of logits, of which the first n count, in their rows' sums
        about ``shift``: (their exps, ``sums`` with it). The sums: the count of logits at
        the shift, the rest of the exps, the moment (``formulas.element_terms``: the
        entropy's e (x - shift), 0 * -inf taken as 0, or ``mass`` (x - shift) under
        smoothing and for probability targets), the mass (probability targets': ``mass``)
        and, when ``with_entropy`` (a constant where this is called), the entropy's
        moment."""
        tops, rests, moments, masses, entropies = sums
        d = value - shift
        e = v_first(n, v_exp(d))
        tops += v_first(n, v_where_equal(value, shift, v_splat(1.0), v_splat(0.0)))
        rests += v_where_equal(value, shift, v_splat(0.0), e)
        entropy_terms = e * v_exp_floor(d)
        if entropy:
            moments += entropy_terms
        elif smoothing or prob:
            moments += v_first(n, mass * d)
        if prob:
            masses += mass
        if with_entropy:
            entropies += entropy_terms
        return e, (tops, rests, moments, masses, entropies)

    @njit(inline="always")
    def class_sums(logits, exps, targets, weight, c, at, shift, sums, one_minus_eps,
                   eps_over_c, with_entropy):
        """Class c's share, at ``at`` in the tile, in the sums of a vector of positions
        (``lane_sums``), its exps stored for the writes."""
        mass = v_splat(0.0)
        if smoothing and indexed:
            mass = v_splat(weight[c])
        elif prob:
            mass = (v_load(targets, at, WIDTH, 0.0) * one_minus_eps + eps_over_c) * weight[c]
        e, sums = lane_sums(v_load(logits, at, WIDTH, 0.0), shift, WIDTH, mass, sums,
                            with_entropy)
        if writes:
            v_store(exps, at, WIDTH, e)
        return sums

    @njit(inline="always")
    def hints_step(hints, cursors):
        """``hint_step`` on the next tile's logits and, with writes, this tile's output
        (``hints``: the arrays and their ``hint_stream``)."""
        x, x_stream, out, out_stream = hints
        x_cursor, out_cursor = cursors
        x_cursor = hint_step(x, x_stream, x_cursor, False)
        if writes:  # (no output without)
            out_cursor = hint_step(out, out_stream, out_cursor, True)
        return x_cursor, out_cursor

    @njit(inline="always")
    def tile_sums(logits, exps, scratch, n_classes, n, pitch, targets, weight, one_minus_eps,
                  eps_over_c, with_entropy, hints):
        """Each position's sums over its classes (``lane_sums``; exps kept in ``exps`` for
        the writes), from its max in ``scratch[_TOP]`` (the shift, ``scratch[_SHIFT]``, is
        the max, or 0 if that is -inf); the entropy's sum too when ``with_entropy`` (a
        constant where this is called). ``targets``: the tile's probability targets
        (``stage_targets``).

        A vector of positions at a time (``lanes``), its sums kept in registers through
        its classes, two classes a step into two sets of sums (half the chain of adds),
        with the cache hints of the next steps between (``hint_step``). Whole vectors, the
        last one past the positions: the tile's rows and the scratch's are padded to whole
        vectors and zeroed (``tile_block``), and what lies past the positions is never read
        after. (Loops along the positions, class by class, vectorised by LLVM, loaded and
        stored each position's sums at every class: 1.1-1.45x slower, benchmarks/RESULTS.md.)
        """
        shift_row, n_top, rest = scratch[_SHIFT], scratch[_N_TOP], scratch[_REST]
        moment, mass, entropy_moment = scratch[_MOMENT], scratch[_MASS], scratch[_ENTROPY]
        zero = v_splat(0.0)
        cursors = ((0, 0), (0, 0))  # (``hint_step``'s, of the logits and the output)
        for k in range(0, n, WIDTH):
            top = v_load(scratch[_TOP], k, WIDTH, 0.0)
            shift = v_where_less(v_splat(-np.inf), top, top, zero)  # (``shift_of``)
            sums0 = (v_where_equal(top, v_splat(np.inf), v_splat(sum_at_inf), zero), zero,
                     zero, zero, zero)
            sums1 = (zero, zero, zero, zero, zero)
            for c in range(0, n_classes - 1, 2):
                cursors = hints_step(hints, cursors)
                sums0 = class_sums(logits, exps, targets, weight, c, c * pitch + k, shift,
                                   sums0, one_minus_eps, eps_over_c, with_entropy)
                sums1 = class_sums(logits, exps, targets, weight, c + 1, (c + 1) * pitch + k,
                                   shift, sums1, one_minus_eps, eps_over_c, with_entropy)
            if n_classes % 2:
                c = n_classes - 1
                cursors = hints_step(hints, cursors)
                sums0 = class_sums(logits, exps, targets, weight, c, c * pitch + k, shift,
                                   sums0, one_minus_eps, eps_over_c, with_entropy)
            v_store(shift_row, k, WIDTH, shift)
            v_store(n_top, k, WIDTH, sums0[0] + sums1[0])
            v_store(rest, k, WIDTH, sums0[1] + sums1[1])
            v_store(moment, k, WIDTH, sums0[2] + sums1[2])
            v_store(mass, k, WIDTH, sums0[3] + sums1[3])
            if with_entropy:
                v_store(entropy_moment, k, WIDTH, sums0[4] + sums1[4])

    @njit(inline="always")
    def tile_rows(scratch, order, t_weight, g_rows, lses, row_value, row_lse, row_metrics,
                  first_row, n, options, one_minus_eps, eps_over_c, cap):
        """Each position's value and lse (and metrics), and the scales its writes use. The
        lse goes to ``row_lse`` only where the caller keeps it (``Options.keeps_lse``), from
        ``lses``: a branch in the loop kept it from vectorising."""
        shift, n_top, rest = scratch[_SHIFT], scratch[_N_TOP], scratch[_REST]
        moment, mass = scratch[_MOMENT], scratch[_MASS]
        t_logit, valid = scratch[_T_LOGIT], scratch[_VALID]
        scale, g_scale, log_sums = scratch[_P_SCALE], scratch[_G_CE], scratch[_LOG_SUM]
        t_grads = scratch[_T_GRAD]
        if writes:  # a loop of their own, at float32's width: the writes' float64 steps
            for k in range(n):  # below narrow the loop they are in
                log_sums[k] = tile_log_of_sum(n_top[k], rest[k])
        for k in range(n):
            is_valid = valid[k] != ftype(0.0)
            log_sum = log_sums[k] if writes else tile_log_of_sum(n_top[k], rest[k])
            sum_exp = n_top[k] + rest[k]
            value, lse, row_mass = row_result(
                shift[k], sum_exp, log_sum, moment[k], mass[k], t_logit[k],
                t_weight[k], ftype(options.weight_sum), ftype(one_minus_eps),
                ftype(eps_over_c))
            r = np.uint64(first_row + k)
            row_value[r] = value if is_valid else ftype(0.0)
            lses[k] = lse if is_valid else ftype(0.0)
            if metrics:  # (the entropy undefined unless wanted: written, not read)
                # logsumexp's own: +inf for a row holding +inf and no nan (rest nan).
                row_metrics[METRIC_LSE, r] = lse if shift[k] != np.inf else (
                    np.inf + 0.0 * float(rest[k]))
                row_metrics[METRIC_RANK, r] = order[_AHEAD, k]
                row_metrics[METRIC_ENTROPY, r] = entropy_of(
                    float(log_sum), float(scratch[_ENTROPY, k]), float(sum_exp))
            if writes:
                p_coef, g_ce = upstream(options, g_rows[k], float(row_mass), float(lse))
                inv_sum = exp64(-float(log_sum))
                scale[k] = inv_sum if writes_softmax else p_coef * inv_sum
                g_scale[k] = g_ce
                if writes_target_gradient:
                    t_grads[k] = target_gradient(p_coef, g_ce, t_logit[k], shift[k],
                                                 float(log_sum), float(t_weight[k]),
                                                 one_minus_eps, eps_over_c, cap)
        if options.keeps_lse:
            for k in range(n):
                row_lse[np.uint64(first_row + k)] = lses[k]

    @njit(inline="always")
    def tile_results(logits, exps, scratch, target_index, n_classes, n, pitch, targets, weight,
                     one_minus_eps, eps_over_c, cap):
        """Each logit's output, in place of its exp in ``exps`` (``targets``: the tile's
        probability targets, ``stage_targets``)."""
        shift, valid = scratch[_SHIFT], scratch[_VALID]
        scale, g_scale, log_sums = scratch[_P_SCALE], scratch[_G_CE], scratch[_LOG_SUM]
        for c in range(n_classes):
            for k in range(n):
                result = element_result(
                    logits[cell(c, pitch, k)], exps[cell(c, pitch, k)], shift[k],
                    float(log_sums[k]), scale[k], scale[k], g_scale[k], c, targets, k, pitch,
                    weight, ftype(one_minus_eps), ftype(eps_over_c), cap)
                exps[cell(c, pitch, k)] = result if valid[k] != ftype(0.0) else ftype(0.0)
        if writes_target_gradient:
            t_grads = scratch[_T_GRAD]
            for k in range(n):
                t = target_index[k]
                if valid[k] != ftype(0.0) and 0 <= t < n_classes:
                    exps[cell(t, pitch, k)] = t_grads[k]

    @njit(inline="always")
    def row_top_step(x, row, c, n, top):
        """``top`` with the n logits of a row from class c, vector by vector (``lanes``:
        n is ``WIDTH`` but at the row's end, whose lanes past it are left out)."""
        return v_larger(top, v_load(x, row + c, n, -np.inf))

    @njit(inline="always")
    def exps_step(x, row, exps, at, c, n, shift, weight, sums):
        """The n logits of a row from class c: their exps (of x - shift) into ``exps`` from
        ``at``, and the row ``sums`` of ``row_sums`` with them (``lane_sums``; under
        smoothing, the class weights the moment's)."""
        class_weights = v_load(weight, c, n, 0.0) if smoothing else v_splat(0.0)
        e, sums = lane_sums(v_load(x, row + c, n, 0.0), shift, n, class_weights, sums, False)
        v_store(exps, at + c, n, e)
        return sums

    @njit(inline="always")
    def result_step(out, row, c, n, sources, row_scalars):
        """``formulas.element_result`` for the n logits of a row from class c, a vector at a
        time, written to ``out`` from ``row`` (zeros where the row does not count):
        ``sources`` the logits and exps and where the row starts in each, ``row_scalars``
        what ``row_results`` gives."""
        x, x_row, exps, at = sources
        shift, minus_log_sum, scale, g_ce, weight, eps_over_c, counts = row_scalars
        e = v_load(exps, at + c, n, 0.0)
        if writes_log_softmax:
            result = (v_load(x, x_row + c, n, 0.0) - shift) + minus_log_sum
        else:
            result = e * scale
            if smoothing and not writes_softmax:
                result = result - v_load(weight, c, n, 0.0) * (g_ce * eps_over_c)
        v_store(out, row + c, n, v_where(counts, result, v_splat(0.0)))

    @njit(fastmath=TILE_FASTMATH, error_model="numpy", _nrt=False)
    @named_for(variant)
    def row_sums(x, base, s_pos, weight, scratch, target_class, exps, n_classes, n, n_next):
        """``stage`` and ``tile_sums`` for rows tiled as they lie (``Shape.row_major``):
        each row's max, target logit and sums, its exps kept in ``exps`` (row k's classes
        from k * n_classes); rows in groups of about ``ROW_GROUP_ELEMENTS`` logits, each
        group's maxima, then its exps and sums, while its logits stay in L1. Along a row,
        whole vectors, then its last classes in one (``lanes``). The next ``n_next`` rows'
        logits are hinted to the cache a row at a time during the exps' pass (without the
        hints the max's pass waited on memory: benchmarks/RESULTS.md)."""
        vectors_at_full_width()
        shift, n_top, rest = scratch[_SHIFT], scratch[_N_TOP], scratch[_REST]
        moment, mass, t_logit = scratch[_MOMENT], scratch[_MASS], scratch[_T_LOGIT]
        group = max(1, ROW_GROUP_ELEMENTS // n_classes)
        whole = n_classes - n_classes % WIDTH  # classes in whole vectors
        for g0 in range(0, n, group):
            g1 = min(g0 + group, n)
            for k in range(g0, g1):
                row = base + k * s_pos
                top = v_splat(-np.inf)
                for c in range(0, whole, WIDTH):
                    top = row_top_step(x, row, c, WIDTH, top)
                if whole < n_classes:
                    top = row_top_step(x, row, whole, n_classes - whole, top)
                row_top = v_largest(top)
                shift[k] = shift_of(row_top)
                n_top[k] = ftype(sum_at_inf) if row_top == np.inf else ftype(0.0)
                t = max(target_class[k], np.int32(0)) if indexed else 0
                t_logit[k] = load_x(x, row + t, ftype) if indexed and target_class[k] >= 0 \
                    else ftype(0.0)
            for k in range(g0, g1):
                row, at, row_shift = base + k * s_pos, k * n_classes, v_splat(shift[k])
                if k < n_next:  # (the next tile's row k)
                    for b in range(0, n_classes, LINE):
                        prefetch(x, np.int64(row + n * s_pos + b))
                zero = v_splat(0.0)
                sums = (zero, zero, zero, zero, zero)  # (``lane_sums``')
                for c in range(0, whole, WIDTH):
                    sums = exps_step(x, row, exps, at, c, WIDTH, row_shift, weight, sums)
                if whole < n_classes:
                    sums = exps_step(x, row, exps, at, whole, n_classes - whole, row_shift,
                                     weight, sums)
                tops, rests, moments, masses, _ = sums
                n_top[k] += v_total(tops)
                rest[k] = v_total(rests)
                moment[k] = v_total(moments)
                mass[k] = v_total(masses)

    @compiled_apart(variant, TILE_FASTMATH)
    def row_results(out, base, s_pos, x, x_base, x_si, exps, scratch, target_index, n_classes,
                    k0, k1, weight, eps_over_c):
        """``tile_results`` and ``unstage`` for rows tiled as they lie: each logit's output
        of the tile's rows [k0, k1), written along its row of ``out`` (row k0 from
        ``base``, rows ``s_pos`` apart), whole vectors then the row's last classes
        (``lanes``)."""
        vectors_at_full_width()
        shift, valid = scratch[_SHIFT], scratch[_VALID]
        scale, g_scale, log_sums = scratch[_P_SCALE], scratch[_G_CE], scratch[_LOG_SUM]
        whole = n_classes - n_classes % WIDTH
        for k in range(k0, k1):
            row, at, x_row = base + (k - k0) * s_pos, k * n_classes, x_base + k * x_si
            # (The logits themselves only for log_softmax: a load from the logits, which
            # may be ``out``, is taken before the store of the same vector.)
            sources = (x, x_row, exps, at)
            row_scalars = (v_splat(shift[k]), v_splat(-log_sums[k]), v_splat(scale[k]),
                           g_scale[k], weight, ftype(eps_over_c), valid[k] != ftype(0.0))
            for c in range(0, whole, WIDTH):
                result_step(out, row, c, WIDTH, sources, row_scalars)
            if whole < n_classes:
                result_step(out, row, whole, n_classes - whole, sources, row_scalars)
        if writes_target_gradient:
            t_grads = scratch[_T_GRAD]
            for k in range(k0, k1):
                t = target_index[k]
                if valid[k] != ftype(0.0) and 0 <= t < n_classes:
                    store_out(out, base + (k - k0) * s_pos + t, t_grads[k])

    def block_function(rows):
        """(Block function, its body, the body's signature for the types of
        ``launch.ARGUMENTS``) of the way that tiles short rows as they lie (``rows``:
        ``row_sums``, ``row_results``) or transposes them (``stage``, ``tile_sums``,
        ``tile_results``, ``unstage``), around the steps both share. Each way compiled on
        its first call: a map's kernel compiles none of the row steps, a short row's none
        of the transposition."""
        key = way_key(variant, int(rows))  # (as ``kernels.kernel_for`` caches it)

        @compiled_apart(key, TILE_FASTMATH)
        def tile_body(tile_index, x, x_geom, target, t_geom, weight, grad_output, g_geom,
                      out, out_geom, row_value, row_lse, row_metrics, shape, options, pitch,
                      scratch, g_rows, order, argmax, target_index, target_class,
                      logits, exps, targets):
            vectors_at_full_width()
            x_geom, t_geom, g_geom, out_geom, shape, options = named(
                x_geom, t_geom, g_geom, out_geom, shape, options)
            width, inner, n_classes = shape.tile_width, shape.inner, shape.n_classes
            one_minus_eps = 1.0 - options.label_smoothing
            eps_over_c = options.label_smoothing / n_classes
            cap = ftype(options.softcap)
            o, i0, n = tile_span(tile_index, inner, width, shape.tile_offset)
            x_base = row_start(x_geom, o, i0)
            t_base = row_start(t_geom, o, i0)
            x_sc, x_si = x_geom.s_class, x_geom.s_inner
            t_weight, lses = scratch[_T_WEIGHT], scratch[_LSE]
            # The next tile's positions (of this block of tiles), whose memory is asked for
            # on the way; not for float16 tiles, whose conversions leave the memory time.
            n_next = 0 if half else min(width, inner - i0 - n)
            # The targets first, so that the staging picks each position's target logit
            # from the tile: no gather from memory per position.
            if indexed:
                read_targets(target, t_base, t_geom.s_inner, n, n_next, n_classes,
                             options.ignore_index, weight, options.weighted, scratch[_VALID],
                             target_index, target_class, t_weight)
            else:
                for k in range(n):
                    scratch[_VALID, k] = ftype(1.0)
            if rows:
                row_sums(x, x_base, x_si, weight, scratch, target_class, exps, n_classes, n,
                         n_next)
            else:
                stage(x, x_base, x_sc, x_si, logits, n_classes, n, pitch, cap, scratch[_TOP],
                      target_class, scratch[_T_LOGIT])
                # The next tile's logits asked for during the exp pass, and for short rows
                # longer than two cache lines (measured: benchmarks/RESULTS.md) this tile's
                # output rows, unless streamed (the hints would read them into the caches).
                write_hints = (writes and not half and out_geom.s_class == 1
                               and n_classes > 2 * LINE and not options.streams)
                hints = (x, hint_stream(x_base + n * x_si, x_sc, x_si, n_classes, n_next),
                         out, hint_stream(row_start(out_geom, o, i0), 1, out_geom.s_inner,
                                          n_classes, n if write_hints else 0))
                if prob:
                    stage_targets(target, t_base, t_geom.s_class, t_geom.s_inner, targets,
                                  n_classes, n, pitch)
                if metrics and options.wants_entropy:
                    tile_sums(logits, exps, scratch, n_classes, n, pitch, targets, weight,
                              one_minus_eps, eps_over_c, True, hints)
                else:
                    tile_sums(logits, exps, scratch, n_classes, n, pitch, targets, weight,
                              one_minus_eps, eps_over_c, False, hints)
            if metrics:
                tile_order(logits, scratch, order, argmax, target_index, n_classes, n, pitch,
                           options.rank_limit > 0, options.wants_argmax)
            if writes:
                for k in range(n):
                    g_rows[k] = grad_output_at(options, grad_output,
                                               row_start(g_geom, o, i0 + k))
            tile_rows(scratch, order, t_weight, g_rows, lses, row_value, row_lse, row_metrics,
                      o * inner + i0, n, options, one_minus_eps, eps_over_c, cap)
            if metrics and options.wants_argmax:
                for k in range(n):
                    row_metrics[METRIC_ARGMAX, np.uint64(o * inner + i0 + k)] = argmax[k]
            if not writes:
                return
            out_base = row_start(out_geom, o, i0)
            if rows:
                # Streamed, the results of a few rows at a time go to the spare tile (in L1),
                # then out as one run.
                streams = options.streams and out_geom.s_inner == n_classes
                step = max(1, STREAMED_ELEMENTS // n_classes) if streams else n
                dest, dest_base, dest_si = (logits, 0, n_classes) if streams else (
                    out, out_base, out_geom.s_inner)
                for k0 in range(0, n, step):
                    k1 = min(k0 + step, n)
                    row_results(dest, dest_base, dest_si, x, x_base, x_si, exps, scratch,
                                target_index, n_classes, k0, k1, weight, eps_over_c)
                    if streams:
                        copy_streaming(logits, 0, out, out_base + k0 * n_classes,
                                       (k1 - k0) * n_classes)
                return
            tile_results(logits, exps, scratch, target_index, n_classes, n, pitch, targets,
                         weight, one_minus_eps, eps_over_c, cap)
            unstage(out, out_base, out_geom.s_class, out_geom.s_inner, exps, n_classes, n,
                    pitch, options.streams, logits)

        @njit(fastmath=TILE_FASTMATH, error_model="numpy")
        @named_for(key)
        def tile_block(block, n_blocks, phase, body, x, x_geom, target, t_geom, weight,
                       grad_output, g_geom, out, out_geom, row_value, row_lse, row_metrics,
                       shape, options, part, chunk_shifts, staged):
            """The tiles of block ``block`` of ``n_blocks`` (consecutive tiles, with scratch of
            their own), for ``nbxent.cpu.launch.run_blocks``, each by ``body`` (``tile_body``);
            one phase, no ``part``, ``chunk_shifts`` nor ``staged``."""
            vectors_at_full_width()
            outer, inner, n_classes, _, width, offset, _ = shape
            # Rows of a tile padded off powers of two: at a pitch of 1 KiB the classes of a
            # tile fell into a few L1 sets (C = 64 ran at half the speed of C = 100).
            pitch = (width + 15) // 16 * 16 + 16
            n_tiles = outer * tiles_per_outer(inner, width, offset)
            # Per-position rows in whole vectors (``tile_sums``), zeros past the positions.
            lanes_width = (width + 15) // 16 * 16
            scratch = lined_empty(_N_SCRATCH * lanes_width, ftype).reshape(
                (_N_SCRATCH, lanes_width))
            scratch[:] = 0.0
            g_rows = np.empty(width)  # float64 grad_output elements
            order = np.empty((_N_ORDER if metrics else 0, width), ftype)
            argmax = np.empty(width if metrics else 0, np.int32)
            target_index = np.empty(width, np.int64)
            target_class = np.empty(width, np.int32)  # in [0, C), or -1
            # (Rows tiled as they lie stay in ``exps``. Results on their way to a streamed
            # output, rows tiled as they lie or short rows transposed back, go to ``logits``.)
            logits = lined_empty((n_classes + 1) * pitch, ftype)
            logits[:] = 0.0  # (read past the positions, in whole vectors: no subnormals)
            logits[n_classes * pitch:] = -np.inf  # a class after the last, for pairs
            exps = lined_empty(n_classes * pitch, ftype)
            targets = np.zeros(n_classes * pitch if prob else 0, target.dtype)
            first, last = block * n_tiles // n_blocks, (block + 1) * n_tiles // n_blocks
            for tile_index in range(first, last):
                body(tile_index, x, x_geom, target, t_geom, weight, grad_output, g_geom, out,
                     out_geom, row_value, row_lse, row_metrics, shape, options, pitch, scratch,
                     g_rows, order, argmax, target_index, target_class, logits, exps, targets)
            if writes:
                store_fence()

        def body_types(argument_types):
            """``tile_body``'s signature: the tile's index, the arguments up to ``options``,
            and the pitch and scratch arrays ``tile_block`` makes, as Numba types them (one
            that differs fails to compile, in every test of the tile kernel)."""
            target_type = argument_types[ARGUMENTS.index("target")]
            return ((types.int64,) + argument_types[:ARGUMENTS.index("part")] + (types.int64,)
                    + (types.Array(tile_type, 2, "C"), types.Array(types.float64, 1, "C"),
                       types.Array(tile_type, 2, "C"), types.Array(types.int32, 1, "C"),
                       types.Array(types.int64, 1, "C"), types.Array(types.int32, 1, "C"))
                    + (types.Array(tile_type, 1, "C"),) * 2
                    + (types.Array(target_type.dtype, 1, "C"),))

        return tile_block, tile_body, body_types

    # (Without ``takes_rows`` the backend never sets Shape.row_major.)
    ways = (False, True) if takes_rows(variant) else (False,)
    return tuple(block_function(rows) for rows in ways), tile_plan, way_of_tiling


_NO_PART = np.empty((0, 0))


def way_of_tiling(shape):
    """Which of a tile kernel's block functions runs ``shape``: 1 (rows as they lie) where
    the backend set ``Shape.row_major``, else 0."""
    return shape[6]


def tile_plan(shape):
    """(n_blocks, n_phases, part, chunk_shifts, staged) of a tile kernel's call: blocks of
    consecutive tiles (``nbxent.cpu.launch.blocks_for``)."""
    outer, inner, _, _, width, offset, _ = shape
    n_blocks = blocks_for(outer * tiles_per_outer(inner, width, offset))
    return n_blocks, 1, _NO_PART, _NO_PART, _NO_PART
