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

Loss partials, one field per entry of the leading axis (class axis kept, size 1);
the chunk's log-sum-exp is SHIFT + LSE, kept in two parts so that logits near
1e4 lose no digits: x - SHIFT is exact, and LSE lies in [0, log C].

    SHIFT    the chunk's largest (capped) logit, 0 when that is not finite
    LSE      log(sum_c exp(x_c - SHIFT)) over the chunk's classes (x soft-capped)
    T_LOGIT  the target's capped logit when the target lies in the chunk, else 0
    T_WEIGHT the target's class weight when it lies in the chunk, else 0
    MASS     sum_c q_c, q the part of the target distribution summed over all
             classes (smoothing eps/C * w_c for class indices; for probabilities
             ((1 - eps) p_c + eps/C) * w_c)
    SPREAD   sum_c q_c * (SHIFT + LSE - x_c): -sum_c q_c log p_c within the chunk

A row's cross-entropy is then (1 - eps) * T_WEIGHT * (SHIFT - T_LOGIT + LSE) +
SPREAD for class indices, SPREAD for probabilities. Normalise partials are
(SHIFT, LSE, ENTROPY).
"""

import importlib

import numpy as np

from .. import api
from .._plan import index_error

SHIFT, LSE, T_LOGIT, T_WEIGHT, MASS, SPREAD = range(6)
N_LOSS_FIELDS = 6
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
    """(1/W, 1/V) for 'mean' from [W, V]: inf for a zero, as in memory (0-d arrays)."""
    with np.errstate(divide="ignore"):
        inv_ce, inv_z = 1.0 / denominators
    return inv_ce, inv_z


def _scalar_or_block(x, grad_output, axis=None):
    """grad_output as a float (scalars, 0-d arrays) or a block in x's namespace,
    with the class axis inserted when ``axis`` is given."""
    if not np.ndim(grad_output):
        return float(grad_output)
    block = _like(x, grad_output)
    return block if axis is None else namespace(x).expand_dims(block, axis)


# ---------------------------------------------------------------- whole rows

def row_cross_entropy(x, target, where, weight, grad_output, denominators, *, axis,
                      options, reduction, want_loss, want_grad):
    """(loss part or None, gradient or None) of a chunk of whole rows, by nbxent itself.

    The loss part is the per-row loss for 'none', else the chunk's sum as a float64
    array of the loss's ndim. 'mean' runs as 'sum' (the caller divides by W);
    given [W, V], they are folded in: grad_output / W and z_loss * W / V, so
    that sum / W is the mean and the gradient is the mean's.
    """
    options = dict(options)
    target, weight = _like(x, target), _like(x, weight)
    if options["validate"] and target.dtype.kind in "iu":
        check_targets(target, where, x.shape[axis], options["ignore_index"])
    call_reduction = "sum" if reduction == "mean" else reduction
    if denominators is not None:
        inv_ce, inv_z = mean_scales(_like(x, denominators))
        with np.errstate(invalid="ignore"):
            z_ratio = float(inv_z / inv_ce)
        options["z_loss"] *= z_ratio if np.isfinite(z_ratio) else 0.0
        grad_output = grad_output * inv_ce
    keywords = dict(options, axis=axis, weight=weight, reduction=call_reduction)
    loss = grad = None
    if want_grad:
        keywords["grad_output"] = _scalar_or_block(x, grad_output)
        if want_loss:
            loss, grad = api.cross_entropy_with_grad(x, target, **keywords)
        else:
            grad = api.cross_entropy_grad(x, target, **keywords)
    else:
        loss = api.cross_entropy(x, target, **keywords)
    if loss is not None and reduction != "none":
        loss = loss.astype(np.float64).reshape((1,) * (x.ndim - 1))
    return loss, grad


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
    """The 0-d loss from the summed cross-entropy and z rows (0-d arrays) and [W, V]."""
    with np.errstate(invalid="ignore"):
        if reduction == "mean":
            inv_ce, inv_z = mean_scales(_like(ce_total, denominators))
            total = ce_total * inv_ce + (z_loss * z_total * inv_z if z_loss else 0.0)
        else:
            total = ce_total + (z_loss * z_total if z_loss else 0.0)
    return total.astype(loss_dtype)


# ---------------------------------------------------------------- split classes

def _capped(xp, x, softcap):
    """The chunk in its compute dtype (float32 for float16), soft-capped when asked."""
    x = x.astype(_compute_dtype(x.dtype), copy=False)
    return softcap * xp.tanh(x / softcap) if softcap else x


def _chunk_lse(x, axis):
    """(SHIFT, LSE, x - SHIFT) of a chunk along ``axis``; SHIFT and LSE float64, kept (size 1).

    nbxent's kernel sees the chunk shifted by its max, so its float32 result
    lies in [0, log C] and keeps ~1e-7 absolute accuracy whatever the logits.
    """
    xp = namespace(x)
    row_max = xp.max(x, axis=axis, keepdims=True)
    shift = xp.where(xp.isfinite(row_max), row_max, 0)
    shifted = x - shift
    lse = xp.expand_dims(api.logsumexp(shifted, axis=axis), axis)
    return shift.astype(xp.float64), lse.astype(xp.float64), shifted


def _merge_lse(xp, shift, lse, axis):
    """(SHIFT, LSE) of the union of chunks along ``axis`` (kept).

    The merged shift is the largest finite chunk max; a chunk of all -inf
    (LSE -inf) adds nothing, +inf and nan propagate through LSE.
    """
    top = xp.max(xp.where(lse == -np.inf, -np.inf, shift), axis=axis, keepdims=True)
    top = xp.where(xp.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return top, xp.log(xp.sum(xp.exp(shift - top + lse), axis=axis, keepdims=True))


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


def loss_partials(x, target, weight, class_slice, where, *, axis, n_classes, ignore_index,
                  label_smoothing, softcap, validate):
    """The loss partials (module docstring) of a chunk of the classes, float64."""
    xp = namespace(x)
    index_target = target.dtype.kind in "iu"
    if validate and index_target:
        check_targets(target, where, n_classes, ignore_index)
    x = _capped(xp, x, softcap)
    shift, lse, shifted = _chunk_lse(x, axis)
    zeros = xp.zeros_like(lse)
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
            # sum q (SHIFT + LSE - x) with x - SHIFT <= 0: two non-negative parts.
            spread = lse * mass - xp.sum(q * shifted, axis=axis, keepdims=True)
    return xp.stack([shift, lse, t_logit, t_weight, mass, spread])


def _one_axis(axis):
    """Dask's reductions pass the axis as a 1-tuple."""
    return axis[0] if isinstance(axis, tuple) else axis


def _rebased(parts, merged_shift, merged_lse):
    """log-sum-exp of the merged chunks minus each chunk's own, without cancellation."""
    return (merged_shift - parts[SHIFT]) + (merged_lse - parts[LSE])


def combine_loss_partials(parts, axis, keepdims):
    """Merge loss partials along the class axis (``axis`` counts the field axis).

    Each SPREAD is re-based from its chunk's log-sum-exp L_k onto the merged L:
    sum_c q_c (L - x_c) = SPREAD_k + (L - L_k) * MASS_k.
    """
    xp, axis = namespace(parts), _one_axis(axis)
    shift, lse = _merge_lse(xp, parts[SHIFT], parts[LSE], axis - 1)
    sums = xp.sum(parts[T_LOGIT:MASS + 1], axis=axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        rebase = xp.where(parts[MASS] == 0, 0.0, _rebased(parts, shift, lse) * parts[MASS])
        spread = xp.sum(parts[SPREAD] + rebase, axis=axis - 1, keepdims=True)
    merged = xp.concatenate([shift[None], lse[None], sums, spread[None]])
    return merged if keepdims else xp.squeeze(merged, axis)


def loss_rows(parts, target, *, n_classes, ignore_index, label_smoothing):
    """[cross-entropy, logsumexp**2] per row (float64) from merged loss partials.

    ``target`` is the block of class indices, None for probability targets.
    Ignored rows give 0; class indices outside [0, C) (validate=False) nan.
    """
    xp = namespace(parts)
    with np.errstate(invalid="ignore", over="ignore"):  # lse**2 of logits near 1e300 is inf
        lse_squared = (parts[SHIFT] + parts[LSE]) ** 2
        if target is None:
            return xp.stack([parts[SPREAD], lse_squared])
        t = _like(parts, target).astype(xp.int64)
        valid = t != ignore_index
        bad = valid & ((t < 0) | (t >= n_classes))
        nll = parts[T_WEIGHT] * ((parts[SHIFT] - parts[T_LOGIT]) + parts[LSE])
        ce = (1 - label_smoothing) * nll + parts[SPREAD]
        rows = xp.stack([xp.where(valid, ce, 0.0), xp.where(valid, lse_squared, 0.0)])
        return xp.where(bad, np.nan, rows)


def _log_p(xp, x, parts, axis):
    """float64 log-softmax of a chunk from the merged (SHIFT, LSE) of its rows (a new array)."""
    log_p = x.astype(xp.float64)
    log_p -= xp.expand_dims(parts[SHIFT], axis)
    log_p -= xp.expand_dims(parts[LSE], axis)
    return log_p


def grad_chunk(x, target, weight, parts, grad_output, denominators, class_slice, *, axis,
               n_classes, ignore_index, label_smoothing, z_loss, softcap, reduction):
    """The gradient over a chunk of the classes from the merged loss partials.

    q_sum * p - q for the cross-entropy (q_sum the row's whole target mass), plus
    2 * z_loss * lse * p, times grad_output (over W and V for 'mean'), times
    1 - tanh(x/c)**2 under a soft cap; p = exp(log_softmax) in float64, updated
    in place (a chunk's float64 temporaries are the cost of this path).
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
        ce_scale = z_scale = g
        if reduction == "mean":
            inv_ce, inv_z = mean_scales(_like(x, denominators))
            ce_scale, z_scale = g * inv_ce, g * inv_z
        mass = xp.expand_dims(parts[MASS], axis)
        if place is not None:
            target_coef = (1 - label_smoothing) * xp.expand_dims(parts[T_WEIGHT], axis)
            mass = mass + target_coef
        row_scale = ce_scale * mass
        if z_loss:
            row_scale = row_scale + z_scale * 2 * z_loss * xp.expand_dims(
                parts[SHIFT] + parts[LSE], axis)
        grad *= row_scale
        if q is not None:
            grad -= ce_scale * q
        if place is not None:
            index, here = place
            classes = _along(xp, xp.arange(x.shape[axis]), axis, x.ndim)
            grad -= xp.where((classes == index) & here, ce_scale * target_coef, 0.0)
        if softcap:
            grad *= 1 - xp.tanh(x.astype(xp.float64) / softcap) ** 2
        if index_target:
            t = xp.expand_dims(_like(x, target).astype(xp.int64), axis)
            valid = t != ignore_index
            bad = valid & ((t < 0) | (t >= n_classes))
            grad = xp.where(valid & ~bad, grad, xp.where(bad, np.nan, 0.0))
    return grad.astype(x.dtype)


def normalize_partials(x, *, axis, entropy):
    """[SHIFT, LSE, ENTROPY] of a chunk of the classes (ENTROPY 0 unless asked), float64."""
    xp = namespace(x)
    x = _capped(xp, x, None)
    shift, lse, _ = _chunk_lse(x, axis)
    h = xp.zeros_like(lse)
    if entropy:
        h = xp.expand_dims(api.entropy(x, axis=axis).astype(xp.float64), axis)
    return xp.stack([shift, lse, h])


def combine_normalize_partials(parts, axis, keepdims):
    """Merge [SHIFT, LSE, ENTROPY] along the class axis (``axis`` counts the field axis).

    With L_k a chunk's log-sum-exp, L the merged one and w_k = exp(L_k - L):
    H = sum_k w_k * (H_k + L - L_k). A chunk of all -inf adds nothing; a merged
    row of all -inf has nan entropy, as in memory.
    """
    xp, axis = namespace(parts), _one_axis(axis)
    shift, lse = _merge_lse(xp, parts[SHIFT], parts[LSE], axis - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        gap = _rebased(parts, shift, lse)
        terms = xp.where(parts[LSE] == -np.inf, 0.0, xp.exp(-gap) * (parts[ENTROPY] + gap))
        h = xp.where(lse == -np.inf, np.nan, xp.sum(terms, axis=axis - 1, keepdims=True))
    merged = xp.concatenate([shift[None], lse[None], h[None]])
    return merged if keepdims else xp.squeeze(merged, axis)


def lse_rows(parts):
    """The merged log-sum-exp per row, float64."""
    return parts[SHIFT] + parts[LSE]


def normalized_chunk(x, parts, *, op, axis):
    """log_softmax or softmax of a chunk from the merged partials, in x's dtype."""
    xp = namespace(x)
    with np.errstate(invalid="ignore"):
        log_p = _log_p(xp, x, parts, axis)
        return (log_p if op == "log_softmax" else xp.exp(log_p)).astype(x.dtype)
