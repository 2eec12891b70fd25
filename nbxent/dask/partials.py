"""What the Dask backend runs on one chunk, and the math that combines chunks.

Every function here takes and returns plain chunks (NumPy or CuPy arrays, the
namespace read from the chunk's type) and scalars; none knows about Dask.

- Chunks holding whole rows (the class axis in one chunk) call nbxent's public
  functions, so the dispatcher runs them on the CPU or the GPU backend.
- Chunks holding part of the classes yield per-row partials in float64 (layout
  below), which combine across chunks like vocab-parallel cross-entropy: a
  log-sum-exp of the chunks' log-sum-exps, and sums re-based onto it. The
  gradient and the normalised outputs of a chunk then follow from the
  combined log-sum-exp.

Loss partials, one field per entry of the leading axis (class axis kept, size 1),
in the notation of ``nbxent/reference.py`` ("Notation") over the chunk's classes;
the chunk's lse is SHIFT + LOG_SUM, kept in two parts so that logits near 1e4
lose no digits: x - SHIFT is exact, and LOG_SUM lies in [0, log C].

    SHIFT    m, the chunk's largest (capped) logit, 0 when that is not finite
    LOG_SUM  log s = log(sum_c exp(x_c - SHIFT)) (x soft-capped)
    T_LOGIT  x_t, the target's capped logit, when the target lies in the chunk, else 0
    T_WEIGHT w_t, the target's class weight, when it lies in the chunk, else 0
    MASS     mass = sum_c q~_c, q~ the part of the target distribution summed class
             by class (eps/C * w_c for class indices; ((1 - eps) y_c + eps/C) * w_c
             for probabilities y)
    SPREAD   spread = sum_c q~_c (lse - x_c), with the chunk's lse

A row's cross-entropy is then t_mass (lse - x_t) + spread, that is (1 - eps) *
T_WEIGHT * (SHIFT - T_LOGIT + LOG_SUM) + SPREAD for class indices, SPREAD for
probabilities. Normalise partials are (SHIFT, LOG_SUM, ENTROPY). The 'mean'
denominators are [D, N]: the summed w_t of the counted rows, and their number.

For metrics (``loss_partials``'s ``candidates`` and ``entropy``), M_ENTROPY, the
entropy of the chunk's own softmax (merged as the normalise partials' ENTROPY), and
the chunk's ``candidates`` best classes in ``np.argmax``'s order, best first, each as
(IS_NAN, VALUE, CLASS): 1.0 for a nan, the logit (+inf for a nan), the class. Merged,
they are the row's best: the first is its argmax, and the target is within the k
best exactly when fewer than k classes are ahead of it. Spent places hold IS_NAN -1.
"""

import importlib

import numpy as np

from .. import api
from .._metrics import METRIC_ARGMAX, METRIC_ENTROPY, METRIC_LSE, METRIC_RANK, N_METRICS
from .._plan import index_error

SHIFT, LOG_SUM, T_LOGIT, T_WEIGHT, MASS, SPREAD = range(6)
N_LOSS_FIELDS = 6
# With metrics, more loss partials follow: the chunk's softmax entropy (0 unless asked),
# then the chunk's best classes in np.argmax's order, three fields each (below).
M_ENTROPY = N_LOSS_FIELDS
CANDIDATES = M_ENTROPY + 1
IS_NAN, VALUE, CLASS, PER_CANDIDATE = range(4)
ENTROPY = 2
N_NORMALIZE_FIELDS = 3


def namespace(x):
    """The array module of a chunk: numpy for NumPy chunks, cupy for CuPy chunks."""
    return importlib.import_module(type(x).__module__.partition(".")[0])


def _like(x, a):
    """``a`` in ``x``'s array module (a NumPy target beside CuPy logits, say)."""
    return None if a is None else namespace(x).asarray(a)


def _compute_dtype(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def _along(xp, vector, axis, ndim):
    """A (C,) vector shaped to broadcast along ``axis`` of an ``ndim``-d chunk."""
    return xp.reshape(vector, tuple(-1 if d == axis else 1 for d in range(ndim)))


def check_targets(target, where, n_classes, ignore_index):
    """Raise nbxent's index error for the first bad class index of a target block.

    ``where`` holds the block's slices in the whole target, so the error names
    the global position.
    """
    xp = namespace(target)
    if target.dtype.kind == "u":
        # Compared in the target's own dtype: a uint64 value from 2**63 must not wrap.
        largest = np.iinfo(target.dtype).max
        bad = (target >= target.dtype.type(n_classes) if n_classes <= largest
               else xp.zeros(target.shape, bool))
        if 0 <= ignore_index <= largest:
            bad &= target != target.dtype.type(ignore_index)
    else:
        t = target.astype(xp.int64)
        bad = (t != ignore_index) & ((t < 0) | (t >= n_classes))
    if bool(bad.any()):
        first = int(xp.argmax(bad.ravel()))
        local = np.unravel_index(first, target.shape)
        position = tuple(s.start + int(i) for s, i in zip(where, local))
        raise index_error(position, int(target.ravel()[first]), n_classes, ignore_index)


def mean_scales(denominators):
    """(1/D, 1/N) for 'mean' from [D, N]: inf for a zero, as in memory (0-d arrays)."""
    with np.errstate(divide="ignore"):
        inv_d, inv_n = 1.0 / denominators
    return inv_d, inv_n


def _scalar_or_block(x, grad_output, axis=None):
    """grad_output as a float (scalars, 0-d arrays) or a block in x's namespace,
    with the class axis inserted when ``axis`` is given."""
    if not np.ndim(grad_output):
        return float(grad_output)
    block = _like(x, grad_output)
    return block if axis is None else namespace(x).expand_dims(block, axis)


# ---------------------------------------------------------------- whole rows

def row_cross_entropy(x, target, where, weight, grad_output, denominators, *, axis,
                      options, reduction, want_loss, want_grad, out=None, metrics=None):
    """(loss part or None, gradient or None, metric rows or None) of a chunk of whole rows,
    by nbxent itself (the metric rows: float64, (N_METRICS, *rows), ``metrics`` the names
    asked for, as ``nbxent.cross_entropy``'s).

    The loss part is the per-row loss for 'none', else the chunk's sum as a float64
    array of the loss's ndim. 'mean' runs as 'sum' (the caller divides by D);
    given [D, N], they are folded in: grad_output / D and z_loss * D / N, so
    that sum / D is the mean and the gradient is the mean's. ``out`` is where the
    gradient goes (``x`` itself: in place), as in ``cross_entropy_grad``.
    """
    options = dict(options)
    target, weight = _like(x, target), _like(x, weight)
    if options["validate"] and target.dtype.kind in "iu":
        check_targets(target, where, x.shape[axis], options["ignore_index"])
    call_reduction = "sum" if reduction == "mean" else reduction
    if denominators is not None:
        inv_d, inv_n = mean_scales(_like(x, denominators))
        with np.errstate(invalid="ignore"):
            z_ratio = float(inv_n / inv_d)
        options["z_loss"] *= z_ratio if np.isfinite(z_ratio) else 0.0
        grad_output = grad_output * inv_d
    keywords = dict(options, axis=axis, weight=weight, reduction=call_reduction)
    loss = grad = rows = None
    if metrics:
        keywords.update(backend=None, sample_weight=None, denominator=None, empty="nan")
        loss, grad, rows = api._loss_call(  # noqa: SLF001 - the package's own raw rows
            x, target, keywords, want_loss=want_loss, want_grad=want_grad,
            grad_output=_scalar_or_block(x, grad_output), out=out, metrics=metrics,
            raw_metrics=True)
    elif want_grad:
        keywords.update(grad_output=_scalar_or_block(x, grad_output), out=out)
        if want_loss:
            loss, grad = api.cross_entropy_with_grad(x, target, **keywords)
        else:
            grad = api.cross_entropy_grad(x, target, **keywords)
    else:
        loss = api.cross_entropy(x, target, **keywords)
    if loss is not None and reduction != "none":
        loss = loss.astype(np.float64).reshape((1,) * (x.ndim - 1))
    return loss, grad, rows


def row_normalize(x, *, op, axis, stream):
    """nbxent's ``op`` (logsumexp, log_softmax, softmax, entropy per row) on a chunk."""
    return getattr(api, op)(x, axis=axis, stream=stream)


def denominator_parts(target, weight, *, ignore_index, n_classes):
    """[per-row weight, per-row count] of 'mean' for a block of class indices.

    A row counts when its index is not ignore_index and lies in [0, C); a bad
    index adds nan to the weight, as the in-memory backends do.
    """
    xp = namespace(target)
    t = target.astype(xp.int64)
    valid = t != ignore_index
    in_range = (t >= 0) & (t < n_classes)
    weight = xp.ones(n_classes) if weight is None else _like(target, weight).astype(xp.float64)
    row_weight = xp.where(valid & in_range, weight[xp.where(in_range, t, 0)], 0.0)
    row_weight = xp.where(valid & ~in_range, np.nan, row_weight)
    return xp.stack([row_weight, (valid & in_range).astype(xp.float64)])


def finish_total(ce_total, z_total, denominators, *, reduction, z_loss, loss_dtype):
    """The 0-d loss from the summed cross-entropy and z rows (0-d arrays) and [D, N]."""
    with np.errstate(invalid="ignore"):
        if reduction == "mean":
            inv_d, inv_n = mean_scales(_like(ce_total, denominators))
            total = ce_total * inv_d + (z_loss * z_total * inv_n if z_loss else 0.0)
        else:
            total = ce_total + (z_loss * z_total if z_loss else 0.0)
    return total.astype(loss_dtype)


# ---------------------------------------------------------------- split classes

def _capped(xp, x, softcap):
    """The chunk in its compute dtype (float32 for float16), soft-capped when asked."""
    x = x.astype(_compute_dtype(x.dtype), copy=False)
    return softcap * xp.tanh(x / softcap) if softcap else x


def _chunk_lse(x, axis):
    """(SHIFT, LOG_SUM, x - SHIFT) of a chunk along ``axis``; SHIFT and LOG_SUM float64,
    kept (size 1).

    nbxent's kernel sees the chunk shifted by its max, so its float32 result
    lies in [0, log C] and keeps ~1e-7 absolute accuracy whatever the logits.
    """
    xp = namespace(x)
    row_max = xp.max(x, axis=axis, keepdims=True)
    shift = xp.where(xp.isfinite(row_max), row_max, 0)
    shifted = x - shift
    log_sum = xp.expand_dims(api.logsumexp(shifted, axis=axis), axis)
    return shift.astype(xp.float64), log_sum.astype(xp.float64), shifted


def _merge_lse(xp, shift, log_sum, axis):
    """(SHIFT, LOG_SUM) of the union of chunks along ``axis`` (kept).

    The merged shift is the largest finite chunk max; a chunk of all -inf
    (LOG_SUM -inf) adds nothing, +inf and nan propagate through LOG_SUM. The merged sum
    is taken as its excess over one, each chunk at the shift adding expm1 of its LOG_SUM:
    a confident row's log s, log1p of a tiny excess, keeps its digits.
    """
    top = xp.max(xp.where(log_sum == -np.inf, -np.inf, shift), axis=axis, keepdims=True)
    top = xp.where(xp.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        at_top = (shift == top) & (log_sum != -np.inf)
        terms = xp.where(at_top, xp.expm1(log_sum), xp.exp(shift - top + log_sum))
        excess = xp.sum(terms, axis=axis, keepdims=True) + (
            xp.sum(at_top, axis=axis, keepdims=True) - 1)
        return top, xp.log1p(excess)


def _target_terms(xp, x, target, weight, first_class, *, axis, n_classes, ignore_index,
                  label_smoothing, index_target):
    """(q over the chunk or None, the target's place in the chunk or None, class weights).

    q is what MASS and SPREAD sum (see the module docstring), float64. For class
    indices the place is (index along ``axis`` into the chunk, 0 where absent;
    whether the row's target lies in this chunk), both kept along ``axis``.
    The class weights are a float64 vector.
    """
    eps = label_smoothing
    chunk_classes = x.shape[axis]
    w = xp.ones(chunk_classes) if weight is None else _like(x, weight).astype(xp.float64)
    w_along = _along(xp, w, axis, x.ndim)
    if not index_target:
        q = ((1 - eps) * _like(x, target).astype(xp.float64) + eps / n_classes) * w_along
        return q, None, w
    t = xp.expand_dims(_like(x, target).astype(xp.int64), axis)
    local = t - first_class
    here = (local >= 0) & (local < chunk_classes) & (t != ignore_index)
    return (eps / n_classes * w_along if eps else None), (xp.where(here, local, 0), here), w


def _best_classes(xp, is_nan, value, classes, k, axis):
    """The ``k`` best (IS_NAN, VALUE, CLASS) along ``axis`` in np.argmax's order (a nan
    first, then the larger value, then the smaller class), stacked, best first, each
    kept along ``axis`` (size 1). Where fewer than k are given, IS_NAN is -1."""
    best = []
    for _ in range(k):
        top_nan = xp.max(is_nan, axis=axis, keepdims=True)
        at_top = is_nan == top_nan
        top_value = xp.max(xp.where(at_top, value, -np.inf), axis=axis, keepdims=True)
        at_top &= value == top_value
        first = xp.min(xp.where(at_top, classes, np.inf), axis=axis, keepdims=True)
        best.append(xp.stack([xp.maximum(top_nan, -1.0), top_value, first]))
        spent = classes == first
        is_nan = xp.where(spent, -2.0, is_nan)
        value = xp.where(spent, -np.inf, value)
        classes = xp.where(spent, np.inf, classes)
    return xp.concatenate(best)


def loss_partials(x, target, weight, class_slice, where, *, axis, n_classes, ignore_index,
                  label_smoothing, softcap, validate, metrics=(), candidates=0):
    """The loss partials (module docstring) of a chunk of the classes, float64; with
    ``metrics`` (names), the metrics' partials after them: M_ENTROPY (0 unless asked)
    and ``candidates`` best classes."""
    xp = namespace(x)
    index_target = target.dtype.kind in "iu"
    if validate and index_target:
        check_targets(target, where, n_classes, ignore_index)
    x = _capped(xp, x, softcap)
    shift, log_sum, shifted = _chunk_lse(x, axis)
    zeros = xp.zeros_like(log_sum)
    t_logit = t_weight = mass = spread = zeros
    q, place, w = _target_terms(xp, x, target, weight, class_slice[0].start, axis=axis,
                                n_classes=n_classes, ignore_index=ignore_index,
                                label_smoothing=label_smoothing, index_target=index_target)
    if place is not None:
        index, here = place
        t_logit = xp.where(here, xp.take_along_axis(x, index, axis).astype(xp.float64), 0.0)
        t_weight = xp.where(here, w[index], 0.0)
    if q is not None:
        with np.errstate(invalid="ignore"):
            mass = zeros + xp.sum(q, axis=axis, keepdims=True)
            # spread = mass log s - moment, the moment sum_c q~_c (x_c - SHIFT) <= 0 and
            # LOG_SUM >= 0: two non-negative parts that cannot cancel.
            spread = log_sum * mass - xp.sum(q * shifted, axis=axis, keepdims=True)
    fields = [shift, log_sum, t_logit, t_weight, mass, spread]
    if metrics:
        fields.append(xp.expand_dims(api.entropy(x, axis=axis).astype(xp.float64), axis)
                      if "entropy" in metrics else zeros)
    stacked = xp.stack(fields)
    if not candidates:
        return stacked
    is_nan = xp.isnan(x)
    classes = _along(xp, xp.arange(x.shape[axis], dtype=xp.float64) + class_slice[0].start,
                     axis, x.ndim)
    best = _best_classes(xp, is_nan.astype(xp.float64),
                         xp.where(is_nan, np.inf, x.astype(xp.float64)),
                         xp.broadcast_to(classes, x.shape), candidates, axis)
    return xp.concatenate([stacked, best])


def _one_axis(axis):
    """Dask's reductions pass the axis as a 1-tuple."""
    return axis[0] if isinstance(axis, tuple) else axis


def _rebased(parts, merged_shift, merged_log_sum):
    """lse of the merged chunks minus each chunk's own, without cancellation."""
    return (merged_shift - parts[SHIFT]) + (merged_log_sum - parts[LOG_SUM])


def combine_loss_partials(parts, axis, keepdims):
    """Merge loss partials along the class axis (``axis`` counts the field axis).

    Each SPREAD is re-based from its chunk's lse L_k onto the merged L:
    sum_c q~_c (L - x_c) = SPREAD_k + (L - L_k) * MASS_k.
    """
    xp, axis = namespace(parts), _one_axis(axis)
    shift, log_sum = _merge_lse(xp, parts[SHIFT], parts[LOG_SUM], axis - 1)
    sums = xp.sum(parts[T_LOGIT:MASS + 1], axis=axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        rebase = xp.where(parts[MASS] == 0, 0.0,
                          _rebased(parts, shift, log_sum) * parts[MASS])
        spread = xp.sum(parts[SPREAD] + rebase, axis=axis - 1, keepdims=True)
    merged = [shift[None], log_sum[None], sums, spread[None]]
    if len(parts) > N_LOSS_FIELDS:
        merged.append(_merged_entropy(xp, parts, M_ENTROPY, shift, log_sum, axis - 1)[None])
        per = len(parts[CANDIDATES:]) // PER_CANDIDATE
        if per:
            # Every chunk's candidates side by side along the class axis, then the best.
            chunks = parts[CANDIDATES:].reshape((per, PER_CANDIDATE) + parts.shape[1:])
            side_by_side = [xp.concatenate(list(chunks[:, field]), axis=axis - 1)
                            for field in (IS_NAN, VALUE, CLASS)]
            merged.append(_best_classes(xp, *side_by_side, per, axis - 1))
    merged = xp.concatenate(merged)
    return merged if keepdims else xp.squeeze(merged, axis)


def metric_rows(parts, target, *, n_classes, ignore_index):
    """The metric rows (``nbxent._metrics``: float64, (N_METRICS, *rows)) from merged loss
    partials holding the metrics' (``target`` the block of class indices, None for
    probabilities, whose rank is +inf: it does not count)."""
    xp = namespace(parts)
    rows = xp.empty((N_METRICS,) + parts.shape[1:])
    rows[METRIC_LSE] = lse_rows(parts)
    rows[METRIC_ENTROPY] = parts[M_ENTROPY]
    per = len(parts[CANDIDATES:]) // PER_CANDIDATE
    rows[METRIC_ARGMAX] = parts[CANDIDATES + CLASS] if per else 0.0
    rows[METRIC_RANK] = np.inf
    if target is not None and per:
        t = _like(parts, target).astype(xp.int64)
        rank = xp.full(t.shape, float(per))  # (at least: more are not needed)
        for place in range(per - 1, -1, -1):
            rank = xp.where(parts[CANDIDATES + place * PER_CANDIDATE + CLASS] == t, place, rank)
        counted = (t != ignore_index) & (t >= 0) & (t < n_classes)
        rows[METRIC_RANK] = xp.where(counted, rank, np.inf)
    return rows


def loss_rows(parts, target, *, n_classes, ignore_index, label_smoothing):
    """[cross-entropy, logsumexp**2] per row (float64) from merged loss partials.

    ``target`` is the block of class indices, None for probability targets.
    Ignored rows give 0; class indices outside [0, C) (validate=False) nan.
    """
    xp = namespace(parts)
    with np.errstate(invalid="ignore", over="ignore"):  # lse**2 of logits near 1e300 is inf
        lse_squared = (parts[SHIFT] + parts[LOG_SUM]) ** 2
        if target is None:  # probabilities: q = q~, so ce = spread
            return xp.stack([parts[SPREAD], lse_squared])
        t = _like(parts, target).astype(xp.int64)
        valid = t != ignore_index
        bad = valid & ((t < 0) | (t >= n_classes))
        # ce = sum_c q_c (lse - x_c) = t_mass (lse - x_t) + spread, t_mass = (1 - eps) w_t
        nll = parts[T_WEIGHT] * ((parts[SHIFT] - parts[T_LOGIT]) + parts[LOG_SUM])
        ce = (1 - label_smoothing) * nll + parts[SPREAD]
        rows = xp.stack([xp.where(valid, ce, 0.0), xp.where(valid, lse_squared, 0.0)])
        return xp.where(bad, np.nan, rows)


def _log_p(xp, x, parts, axis):
    """float64 log-softmax of a chunk from the merged (SHIFT, LOG_SUM) of its rows (a new
    array): log p = (x - m) - log s."""
    log_p = x.astype(xp.float64)
    log_p -= xp.expand_dims(parts[SHIFT], axis)
    log_p -= xp.expand_dims(parts[LOG_SUM], axis)
    return log_p


def grad_chunk(x, target, weight, parts, grad_output, denominators, class_slice, *, axis,
               n_classes, ignore_index, label_smoothing, z_loss, softcap, reduction):
    """The gradient over a chunk of the classes from the merged loss partials.

    (p_coef p_j - g_ce q~_j - t_coef [j == t]) cap'_j, as in the notation:
    p = exp(log_softmax) in float64, updated in place (a chunk's float64
    temporaries are the cost of this path).
    """
    xp = namespace(x)
    index_target = target.dtype.kind in "iu"
    capped = _capped(xp, x, softcap)
    with np.errstate(invalid="ignore", over="ignore"):
        log_p = _log_p(xp, capped, parts, axis)
        grad = xp.exp(log_p, out=log_p)
        q, place, w = _target_terms(xp, capped, target, weight, class_slice[0].start,
                                    axis=axis, n_classes=n_classes, ignore_index=ignore_index,
                                    label_smoothing=label_smoothing, index_target=index_target)
        g = _scalar_or_block(x, grad_output, axis)
        g_ce = g_z = g
        if reduction == "mean":
            inv_d, inv_n = mean_scales(_like(x, denominators))
            g_ce, g_z = g * inv_d, g * inv_n
        row_mass = xp.expand_dims(parts[MASS], axis)
        if place is not None:
            t_mass = (1 - label_smoothing) * xp.expand_dims(parts[T_WEIGHT], axis)
            row_mass = row_mass + t_mass
        # d lse / dx_j = p_j, so d ce / dx_j = Q p_j - q_j (Q = row_mass, q_j = q~_j +
        # t_mass [j == t]) and d (z_loss lse**2) / dx_j = 2 z_loss lse p_j.
        p_coef = g_ce * row_mass
        if z_loss:
            p_coef = p_coef + g_z * 2 * z_loss * xp.expand_dims(
                parts[SHIFT] + parts[LOG_SUM], axis)
        grad *= p_coef
        if q is not None:
            grad -= g_ce * q
        if place is not None:
            index, here = place
            classes = _along(xp, xp.arange(x.shape[axis]), axis, x.ndim)
            grad -= xp.where((classes == index) & here, g_ce * t_mass, 0.0)
        if softcap:  # dx/dz = 1 - tanh(z / a)**2
            grad *= 1 - xp.tanh(x.astype(xp.float64) / softcap) ** 2
        if index_target:
            t = xp.expand_dims(_like(x, target).astype(xp.int64), axis)
            valid = t != ignore_index
            bad = valid & ((t < 0) | (t >= n_classes))
            grad = xp.where(valid & ~bad, grad, xp.where(bad, np.nan, 0.0))
    return grad.astype(x.dtype)


def normalize_partials(x, *, axis, entropy):
    """[SHIFT, LOG_SUM, ENTROPY] of a chunk of the classes (ENTROPY 0 unless asked), float64."""
    xp = namespace(x)
    x = _capped(xp, x, None)
    shift, log_sum, _ = _chunk_lse(x, axis)
    h = xp.zeros_like(log_sum)
    if entropy:
        h = xp.expand_dims(api.entropy(x, axis=axis).astype(xp.float64), axis)
    return xp.stack([shift, log_sum, h])


def _merged_entropy(xp, parts, field, shift, log_sum, axis):
    """The entropy of the merged chunks from each one's (``parts[field]``) and the
    merged (shift, log_sum), along ``axis`` (kept).

    With L_k a chunk's lse, L the merged one and a_k = exp(L_k - L) (the chunk's
    share of the probability): H = sum_k a_k * (H_k + L - L_k). A chunk of all
    -inf adds nothing; a merged row of all -inf has nan entropy, as in memory.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        gap = _rebased(parts, shift, log_sum)
        terms = xp.where(parts[LOG_SUM] == -np.inf, 0.0, xp.exp(-gap) * (parts[field] + gap))
        return xp.where(log_sum == -np.inf, np.nan, xp.sum(terms, axis=axis, keepdims=True))


def combine_normalize_partials(parts, axis, keepdims):
    """Merge [SHIFT, LOG_SUM, ENTROPY] along the class axis (``axis`` counts the field
    axis)."""
    xp, axis = namespace(parts), _one_axis(axis)
    shift, log_sum = _merge_lse(xp, parts[SHIFT], parts[LOG_SUM], axis - 1)
    h = _merged_entropy(xp, parts, ENTROPY, shift, log_sum, axis - 1)
    merged = xp.concatenate([shift[None], log_sum[None], h[None]])
    return merged if keepdims else xp.squeeze(merged, axis)


def lse_rows(parts):
    """The merged lse per row, float64."""
    return parts[SHIFT] + parts[LOG_SUM]


def normalized_chunk(x, parts, *, op, axis):
    """log_softmax or softmax of a chunk from the merged partials, in x's dtype."""
    xp = namespace(x)
    with np.errstate(invalid="ignore"):
        log_p = _log_p(xp, x, parts, axis)
        return (log_p if op == "log_softmax" else xp.exp(log_p)).astype(x.dtype)
