"""The oracle: softmax cross-entropy in plain float64 NumPy, written for clarity.

Every kernel of nbxent is tested against these functions. They follow PyTorch's
``torch.nn.functional.cross_entropy`` on every option the two share, with
``axis`` in place of torch's class dimension 1, and add ``z_loss`` and
``softcap`` as README.md ("Semantics") defines them. Nothing here imports from nbxent, and
nothing here is fast: whole N×C temporaries are fine.

Notation
--------
The symbols of one row, with the names the kernels of every backend give them:

=============  ===========  ================================================================
m              row_max      max_c x_c, the shift of the exponentials (0 where not finite)
e_c                         exp(x_c - m)
s, log s       sum_exp,     sum_c e_c, and its log
               log_sum
lse            lse          m + log s = log sum_c exp(x_c)
p_c            p            e_c / s = exp((x_c - m) - log s), the softmax
w_c            weight       class weights (1 without ``weight``)
t, w_t, x_t    t, t_weight, the target class index, its weight and its logit
               t_logit
q_c            q            target distribution: ((1 - eps)[c == t] + eps/C) w_c for an
                            index t, ((1 - eps) y_c + eps/C) w_c for probabilities y
               t_mass       (1 - eps) w_t, the index target's own term of q (0 for y)
q~_c           class_q      q_c - t_mass [c == t]: the part of q summed class by class
               mass         sum_c q~_c
               moment       sum_c q~_c (x_c - m); for the entropy, sum_c e_c (x_c - m)
               spread       sum_c q~_c (lse - x_c) = mass log s - moment
Q              row_mass     sum_c q_c = t_mass + mass
D, N                        'mean' denominators: the summed w_t of the counted rows (the
                            row count for probabilities), and the number of counted rows
g, g_ce, g_z   g, g_ce, g_z upstream gradient (grad_output times a constant scale); g / D
                            and g / N under 'mean', else g
               p_coef,      g_ce Q + 2 z_loss g_z lse, and g_ce t_mass
               t_coef
=============  ===========  ================================================================

A counted row has a target that is not ``ignore_index`` and lies in [0, C); other
rows give 0. Soft cap a: the raw logits z become x_c = a tanh(z_c / a) first.

- loss: log p_c = x_c - lse, so ce = -sum_c q_c log p_c = sum_c q_c (lse - x_c)
  = t_mass ((m - x_t) + log s) + spread; spread is taken as mass log s - moment, two
  terms of one sign (moment <= 0): neither large logits nor a confident row's tiny loss
  lose digits to a cancellation.
- gradient: d lse / dx_j = p_j, so d ce / dx_j = Q p_j - q_j.
- z-loss: z_loss lse**2, so its gradient is 2 z_loss lse p_j.
- the gradient the kernels write: (p_coef p_j - g_ce q~_j - t_coef [j == t]) cap'_j, where
  cap'_j = dx_j / dz_j = 1 - tanh(z_j / a)**2 = 1 - (x_j / a)**2 (1 without a cap).
- entropy: H = -sum_c p_c log p_c = sum_c p_c (lse - x_c) = log s - moment / s; in base b,
  H / log b.
- KL divergence of a target distribution y from the softmax: sum_c w_c y_c (log y_c - log p_c)
  = ce (probability target y, no smoothing) + sum_c w_c y_c log y_c; the gradient is ce's.
- online softmax: for a larger max m', s becomes s exp(m - m') and the entropy's moment
  (moment + (m - m') s) exp(m - m'), the cross-entropy's moment + mass (m - m'), a
  term of its terms' sign; partials over two sets of classes merge so, and their masses add.
- 'sum' adds the rows; 'mean' divides the cross-entropy sum by D and the z-loss sum by N.
"""

import numpy as np


def _to_class_last(x, axis):
    """float64 copy of ``x`` with the class axis moved last."""
    return np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)


def _capped(logits, softcap):
    return logits if softcap is None else softcap * np.tanh(logits / softcap)


def _log_sum(shifted):
    """log s = log sum_c exp(shifted_c) over the last axis (keepdims), shifted = x - m.

    The classes at the max give exactly 1 each: they are counted apart from the rest, so
    that a confident row's log(1 + rest) keeps its digits (log1p) where rest is tiny.
    """
    at_max = shifted == 0
    n_top = np.sum(at_max, axis=-1, keepdims=True)
    rest = np.sum(np.where(at_max, 0.0, np.exp(shifted)), axis=-1, keepdims=True)
    return np.log1p((n_top - 1) + rest)


def _shifted_logsumexp(x):
    """logsumexp over the last axis of float64 ``x``; nan for a row holding +inf."""
    row_max = np.max(x, axis=-1, keepdims=True)
    # A row of all -inf has max -inf: shift by 0 there so exp gives 0, log gives -inf.
    shift = np.where(np.isneginf(row_max), 0.0, row_max)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (shift + _log_sum(x - shift))[..., 0]


def logsumexp(x, axis=-1):
    """log(sum(exp(x))) along ``axis``, stabilised by the row max.

    A row holding +inf (and no nan) gives +inf, as in PyTorch and SciPy.
    """
    x = _to_class_last(x, axis)
    row_max = np.max(x, axis=-1)
    return np.where(np.isposinf(row_max), np.inf, _shifted_logsumexp(x))


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``; a row holding +inf or nan is all nan, as in PyTorch."""
    x64 = _to_class_last(x, axis)
    row_max = np.max(x64, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        # x - max first: subtracting a whole lse from logits near 1e4 loses digits.
        shifted = x64 - np.where(np.isneginf(row_max), 0.0, row_max)
        return np.moveaxis(shifted - _log_sum(shifted), -1, axis)


def softmax(x, axis=-1):
    """exp(log_softmax(x)) along ``axis``."""
    with np.errstate(invalid="ignore"):
        return np.exp(log_softmax(x, axis))


def _p_log_p(p, logp):
    """p log p elementwise; 0 log 0 counts as 0."""
    with np.errstate(invalid="ignore"):
        # p == 0 (not p > 0): a nan probability must stay nan, as in PyTorch.
        return np.where(p == 0, 0.0, p * logp)


def entropy(logits, axis=-1, reduction="none", base=None, sample_weight=None, empty="nan"):
    """Entropy of softmax(logits), -sum p log p, in nats (in ``base`` when given: bits for
    2); 0 log 0 counts as 0.

    ``sample_weight`` (the rows' shape) multiplies each row's entropy; 'mean' then divides
    by the summed sample weights (every row counts, as for probability targets), and
    ``empty`` decides when there is nothing to average, as in ``cross_entropy``.
    """
    logp = _to_class_last(log_softmax(logits, axis), axis)
    per_row = -np.sum(_p_log_p(np.exp(logp), logp), axis=-1)
    if base is not None:
        per_row = per_row / np.log(base)
    if sample_weight is None and empty == "nan":
        return _reduce(per_row, reduction, per_row.size)
    with np.errstate(invalid="ignore"):
        rows = per_row * _sample_weights(sample_weight, per_row.shape)
    if reduction != "mean":
        return _reduce(rows, reduction, None)
    # The logits stand for a probability target: every row counts.
    inv_d, _ = _mean_scales(logits, axis, None, -100, sample_weight, None, empty, rows.shape)
    with np.errstate(invalid="ignore"):
        return np.sum(rows) * inv_d


def metrics(logits, target, axis=-1, ignore_index=-100, softcap=None, top_k=5):
    """What a training loop prints beside the loss, per row (logits' shape without
    ``axis``): {'lse', 'argmax', 'correct', 'top_k', 'entropy'}.

    The order of classes is ``np.argmax``'s on the logits the loss sees (after
    ``softcap``): larger first, among equal logits the smaller index, every nan above
    +inf, -0.0 equal to 0.0. The target's rank is the number of classes ahead of it
    in that order; 'correct' is rank 0 (the target is the argmax), 'top_k' rank <
    ``top_k``, both False where the target does not count (``ignore_index`` or out of
    [0, C)); ``target`` None (probabilities) leaves them out. lse and entropy as
    ``logsumexp`` and ``entropy`` (nats).
    """
    x = _capped(_to_class_last(logits, axis), softcap)
    argmax = np.argmax(x, axis=-1)
    found = {"lse": logsumexp(x), "argmax": argmax, "entropy": entropy(x)}
    if target is None:
        return found
    n_classes = x.shape[-1]
    t = np.asarray(target).astype(np.int64)
    counted = (t != ignore_index) & (t >= 0) & (t < n_classes)
    t_logit = np.take_along_axis(x, np.where(counted, t, 0)[..., None], axis=-1)
    nan = np.isnan(x)
    t_nan = np.isnan(t_logit)
    with np.errstate(invalid="ignore"):
        # Greater in argmax's order: nan above everything; equal counts when earlier.
        greater = np.where(t_nan, False, nan | (x > t_logit))
        equal = np.where(t_nan, nan, x == t_logit)
    earlier = np.arange(n_classes) < np.where(counted, t, 0)[..., None]
    rank = np.sum(greater | (equal & earlier), axis=-1)
    found["correct"] = counted & (rank == 0)
    found["top_k"] = counted & (rank < top_k)
    return found


def conditional_entropy(logits, axis=-1, base=None, sample_weight=None, empty="nan"):
    """H(Y|X) = sum_r s_r H_r / sum_r s_r: the rows' entropies (each row the distribution
    of Y given one x) averaged with the sample weights s (uniform without them)."""
    return entropy(logits, axis, "mean", base, sample_weight, empty)


def _kl_target(target, axis, log_target):
    """(p, log p), classes last: the target's probabilities, softmax(target) when
    ``log_target`` (log-probabilities or logits)."""
    if log_target:
        logp = _to_class_last(log_softmax(target, axis), axis)
        return np.exp(logp), logp
    p = _to_class_last(target, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return p, np.log(p)


def kl_divergence(logits, target, axis=-1, log_target=False, weight=None, reduction="mean",
                  sample_weight=None, denominator=None, empty="nan"):
    """KL(p || softmax(logits)) = sum_c w_c (p_c log p_c - p_c log q_c) per row, q the
    softmax of the logits, p the target (softmax(target) when ``log_target``); 0 log 0
    counts as 0, a negative p_c gives nan.

    Reductions, ``sample_weight``, ``denominator`` and ``empty`` as in ``cross_entropy``
    with probability targets: 'mean' divides by the number of rows (torch's
    ``kl_div(reduction='batchmean')`` for 2-D logits) or the summed sample weights.
    """
    p, logp = _kl_target(target, axis, log_target)
    logq = _to_class_last(log_softmax(logits, axis), axis)
    w = np.ones(p.shape[-1]) if weight is None else np.asarray(weight, np.float64)
    with np.errstate(invalid="ignore"):
        rows = np.sum(w * (_p_log_p(p, logp) - p * logq), axis=-1)
    if sample_weight is None and denominator is None and empty == "nan":
        return _reduce(rows, reduction, rows.size)
    with np.errstate(invalid="ignore"):
        rows = rows * _sample_weights(sample_weight, rows.shape)
    if reduction != "mean":
        return _reduce(rows, reduction, None)
    inv_d, _ = _mean_scales(target, axis, None, -100, sample_weight, denominator, empty,
                            rows.shape)
    with np.errstate(invalid="ignore"):
        return np.sum(rows) * inv_d


def kl_divergence_grad(logits, target, axis=-1, log_target=False, weight=None,
                       reduction="mean", grad_output=1.0, sample_weight=None, denominator=None,
                       empty="nan"):
    """d(kl_divergence)/d(logits): p log p does not depend on the logits, so it is the
    gradient of the cross-entropy against the probability target p."""
    p = np.moveaxis(_kl_target(target, axis, log_target)[0], -1, axis)
    return cross_entropy_grad(logits, p, axis, weight, reduction=reduction,
                              grad_output=grad_output, sample_weight=sample_weight,
                              denominator=denominator, empty=empty)


def _reduce(per_row, reduction, denominator):
    if reduction == "none":
        return per_row
    total = np.sum(per_row)
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / denominator


def _terms(logits, target, axis, weight, ignore_index, label_smoothing, softcap):
    """Per-row pieces shared by the loss and its gradient (class axis last).

    Returns (logp, q, valid, row_weight): log-softmax of the capped logits, the
    weighted target distribution q (loss_row = -sum_c q_c logp_c), the mask of rows
    that count, and each row's share of PyTorch's 'mean' denominator.
    """
    x = _capped(_to_class_last(logits, axis), softcap)
    n_classes = x.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    logp = _to_class_last(log_softmax(x, -1), -1)
    eps = label_smoothing
    if np.issubdtype(np.asarray(target).dtype, np.integer):
        t = np.asarray(target).astype(np.int64)
        valid = t != ignore_index
        onehot = np.zeros(x.shape)
        safe_t = np.where(valid, t, 0)
        np.put_along_axis(onehot, safe_t[..., None], 1.0, axis=-1)
        q = (1 - eps) * onehot * w
        if eps > 0:
            q = q + eps / n_classes * w
        q = q * valid[..., None]
        row_weight = np.where(valid, w[safe_t], 0.0)
    else:
        p_target = _to_class_last(target, axis)
        if eps > 0:
            p_target = (1 - eps) * p_target + eps / n_classes
        q = p_target * w
        valid = np.ones(x.shape[:-1], bool)
        row_weight = np.ones(x.shape[:-1])
    return logp, q, valid, row_weight


def _z_rows(logits, axis, softcap, valid):
    return np.where(valid, logsumexp(_capped(_to_class_last(logits, axis), softcap)), 0.0)


def _sample_weights(sample_weight, shape):
    return np.ones(shape) if sample_weight is None else np.asarray(sample_weight, np.float64)


def mean_denominator(target, weight=None, ignore_index=-100, sample_weight=None, axis=-1,
                     n_classes=None):
    """'mean''s denominator: the summed combined weights of the counted targets.

    For class indices, sum over rows whose target is not ``ignore_index`` of
    ``weight[t] * sample_weight``; for probability targets (``n_classes`` unused,
    the class axis ``axis``) the summed sample weights (the row count without them).
    """
    target = np.asarray(target)
    if np.issubdtype(target.dtype, np.integer):
        t = target.astype(np.int64)
        valid = t != ignore_index
        w = (np.ones(max(int(t.max(initial=0)) + 1, n_classes or 0)) if weight is None
             else np.asarray(weight, np.float64))
        row_weight = np.where(valid, w[np.where(valid, t, 0)], 0.0)
    else:
        rows = np.moveaxis(target, axis, -1).shape[:-1]
        row_weight = np.ones(rows)
    return np.sum(row_weight * _sample_weights(sample_weight, row_weight.shape))


def _counted(target, ignore_index, rows_shape, sample_weight):
    """The z-loss's 'mean' denominator: the summed sample weights of the counted rows."""
    target = np.asarray(target)
    valid = (np.asarray(target).astype(np.int64) != ignore_index
             if np.issubdtype(target.dtype, np.integer) else np.ones(rows_shape, bool))
    return np.sum(np.where(valid, _sample_weights(sample_weight, rows_shape), 0.0))


def _mean_scales(target, axis, weight, ignore_index, sample_weight, denominator, empty,
                 rows_shape):
    """(1/D, 1/N) for 'mean': D and N as in the notation with sample weights, both the
    given ``denominator`` when there is one; ``empty`` decides when there is nothing to
    average (N == 0, or the given denominator is 0)."""
    if denominator is not None:
        d = n = float(denominator)
        is_empty = d == 0
    else:
        d = mean_denominator(target, weight, ignore_index, sample_weight, axis,
                             n_classes=None)
        n = _counted(target, ignore_index, rows_shape, sample_weight)
        is_empty = n == 0
    if is_empty and empty == "raise":
        raise ValueError("reduction='mean' of a batch with no counted target and empty='raise'")
    if is_empty and empty == "zero":
        return 0.0, 0.0
    with np.errstate(divide="ignore"):
        return np.float64(1.0) / d, np.float64(1.0) / n


def cross_entropy(logits, target, axis=-1, weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                  sample_weight=None, denominator=None, empty="nan"):
    """Softmax cross-entropy with PyTorch's semantics, in float64.

    loss_row = -sum_c q_c * log_softmax(x)_c + z_loss * logsumexp(x)**2 for each
    non-ignored row, where q is the (smoothed, class-weighted) target distribution
    and x the (optionally soft-capped) logits. 'mean' divides the cross-entropy part
    by the summed weights of the non-ignored targets (the row count for probability
    targets) and the z-loss part by the number of non-ignored rows.

    ``sample_weight`` (the loss's shape) multiplies each row's loss, z-loss included,
    and each row's share of both denominators. ``denominator`` replaces both. When
    there is nothing to average (no counted weight, or ``denominator`` 0), ``empty``
    gives nan ('nan', PyTorch's answer), 0 ('zero') or a ValueError ('raise').
    """
    logp, q, valid, row_weight = _terms(logits, target, axis, weight, ignore_index,
                                        label_smoothing, softcap)
    n_classes = logp.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    eps = label_smoothing
    with np.errstate(invalid="ignore"):
        if np.issubdtype(np.asarray(target).dtype, np.integer):
            # PyTorch's own split: nll_loss picks the target's log-probability alone (a
            # -inf elsewhere is harmless), the smoothing term sums over every class.
            t = np.where(valid, np.asarray(target).astype(np.int64), 0)
            nll = -w[t] * np.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
            ce_rows = (1 - eps) * nll
            if eps > 0:
                ce_rows = ce_rows + eps / n_classes * -np.sum(logp * w, axis=-1)
        else:
            ce_rows = -np.sum(q * logp, axis=-1)
    ce_rows = np.where(valid, ce_rows, 0.0)
    z_rows = _z_rows(logits, axis, softcap, valid) ** 2 if z_loss else np.zeros_like(ce_rows)
    if sample_weight is not None or denominator is not None or empty != "nan":
        s = _sample_weights(sample_weight, ce_rows.shape)
        with np.errstate(invalid="ignore"):
            ce_rows, z_rows = ce_rows * s, z_rows * s
        if reduction == "mean":
            inv_d, inv_n = _mean_scales(target, axis, weight, ignore_index, sample_weight,
                                        denominator, empty, ce_rows.shape)
            with np.errstate(invalid="ignore"):
                return np.sum(ce_rows) * inv_d + z_loss * np.sum(z_rows) * inv_n
    if reduction == "none":
        return ce_rows + z_loss * z_rows
    ce = _reduce(ce_rows, reduction, np.sum(row_weight))
    if not z_loss:
        return ce
    return ce + z_loss * _reduce(z_rows, reduction, np.sum(valid))


def cross_entropy_grad(logits, target, axis=-1, weight=None, ignore_index=-100,
                       reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                       grad_output=1.0, sample_weight=None, denominator=None, empty="nan"):
    """d(cross_entropy)/d(logits) times grad_output, in float64, by the closed form.

    For one row: sum(q) * softmax(x) - q from the cross-entropy part, plus
    2 * z_loss * lse * softmax(x) from the z-loss, times (1 - tanh(x/c)**2) under a
    soft cap c; rows scaled by grad_output (and sample_weight) and divided by the
    'mean' denominators.
    """
    logp, q, valid, row_weight = _terms(logits, target, axis, weight, ignore_index,
                                        label_smoothing, softcap)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.exp(logp)
        g = np.asarray(grad_output, np.float64)
        ce_scale = np.broadcast_to(g, valid.shape).astype(np.float64)
        if sample_weight is not None:
            ce_scale = ce_scale * np.asarray(sample_weight, np.float64)
        z_scale = ce_scale.copy()
        if reduction == "mean":
            if sample_weight is not None or denominator is not None or empty != "nan":
                inv_d, inv_n = _mean_scales(target, axis, weight, ignore_index, sample_weight,
                                            denominator, empty, valid.shape)
            else:
                inv_d, inv_n = 1 / np.sum(row_weight), 1 / np.sum(valid)
            ce_scale = ce_scale * inv_d
            z_scale = z_scale * inv_n
        grad = (np.sum(q, axis=-1, keepdims=True) * p - q) * ce_scale[..., None]
        if z_loss:
            lse = _z_rows(logits, axis, softcap, valid)
            grad = grad + (2 * z_loss * lse * z_scale)[..., None] * p
        if softcap is not None:
            x = _to_class_last(logits, axis)
            grad = grad * (1 - np.tanh(x / softcap) ** 2)
        # Ignored rows exactly 0, a nan logit's among them (after the cap's slope, nan there).
        grad = np.where(valid[..., None], grad, 0.0)
    return np.moveaxis(grad, -1, axis)
