"""Sample weights, a given 'mean' denominator and ``empty=``: one layer over every backend.

None of these needs a kernel of its own. A call with them runs the backend's
fused ``reduction='none'`` pass with a per-row upstream gradient

    g_r = grad_output_r * sample_weight_r / D        (1 / D only under 'mean')

and finishes the loss from the per-row losses: ``sum_r sample_weight_r * loss_r / D``.
All of it is array arithmetic in the backend's array module (NumPy, CuPy, Dask;
NumPy on the host for Numba device arrays), the same code for every backend.

'mean' denominators, in the notation of ``nbxent/reference.py`` with sample weights s:
D = sum of s_r * w_t over the counted rows (s_r for probability targets) divides the
cross-entropy, N = sum of s_r over the counted rows divides the z-loss. D == N without
class weights or with probability targets; otherwise, with a z-loss, the pass at
g_r = s_r / D takes the z-loss coefficient z D/N when D/N is a host number (NumPy), and
on a device (or lazily, Dask) two passes are combined instead of reading D/N back (the
gradient is linear in the z-loss coefficient): (1 - D/N) G(0) + (D/N) G(z). A given
``denominator`` replaces both D and N.
"""

from functools import partial

import numpy as np

from ._plan import empty_batch_error


def wanted(sample_weight, denominator, empty, reduction):
    """Whether a call needs this layer (else the backend's own path serves it as today)."""
    return sample_weight is not None or (
        reduction == "mean" and (denominator is not None or empty != "nan"))


def _gather(w, index):
    """``w[index]`` for an index array of any shape (Dask indexes with 1-D arrays only)."""
    return w[index.reshape(-1)].reshape(index.shape)


def row_weights(xp, target, weight, *, ignore_index, n_classes, target_is_index, rows_shape,
                sample_weight):
    """(per-row share of D, per-row share of N), float64 arrays of the rows' shape.

    A row counts when its class index is not ``ignore_index`` (every row of a
    probability target counts). A class index outside [0, C) adds nan to D, as
    the backends' own 'mean' does with ``validate=False``.
    """
    if target_is_index:
        t = target.astype(xp.int64)
        counted = t != ignore_index
        in_range = (t >= 0) & (t < n_classes)
        if weight is None:
            class_weight = xp.where(in_range, 1.0, np.nan)
        else:
            w = weight.astype(xp.float64)
            class_weight = xp.where(in_range, _gather(w, xp.where(in_range, t, 0)), np.nan)
        share_d = xp.where(counted, class_weight, 0.0)
        share_n = counted.astype(xp.float64)
    else:
        share_d = share_n = xp.ones(rows_shape, dtype=xp.float64)
    if sample_weight is not None:
        share_d, share_n = share_d * sample_weight, share_n * sample_weight
    return share_d, share_n


def _quietly(function, *scalars):
    """``function`` of 0-d arrays or numbers with nan/inf warnings off: 1/0 and 0*inf are
    'mean''s nan of an empty batch. A Dask array computes later, so there the function
    runs inside its task."""
    if any(hasattr(x, "map_blocks") for x in scalars):
        import dask.array as da
        return da.map_blocks(partial(_errstate_call, function), *scalars, dtype=np.float64)
    return _errstate_call(function, *scalars)


def _errstate_call(function, *args):
    with np.errstate(divide="ignore", invalid="ignore"):
        return function(*args)


def _reciprocal(x):
    return 1.0 / x


def _is_host_number(x):
    return isinstance(x, (int, float, np.integer, np.floating))


def weighted_loss(module, plan, run, *, sample_weight, denominator, empty, grad_output):
    """(loss or None, grad or None) of a call with the training options: per-row values
    weighted by the sample weights and reduced over the chosen denominator.

    ``plan`` is the checked plan of the call as given (its reduction, its grad_output);
    ``run(z_loss, grad_output, fresh_out)`` runs the backend with ``reduction='none'``
    and returns (per-row losses or None, gradient or None), the gradient into a fresh
    array when ``fresh_out`` (else into the caller's ``out=`` when given). The per-row
    losses may be the backend's or arrays of ``namespace_of``'s module. The information
    measures (``nbxent._information``) come here too: an entropy's plan (no target: every
    row counts) and rows, a KL divergence's rows (a cross-entropy's plus a target term).
    """
    logits, loss_options = plan.logits, plan.loss
    like = logits.view.array
    xp = module.namespace_of(like)
    host = module.to_namespace
    s = None if sample_weight is None else host(sample_weight).astype(xp.float64)
    g = grad_output if _is_host_number(grad_output) else host(grad_output).astype(xp.float64)
    z_loss = loss_options.z_loss
    mean = plan.reduction == "mean"
    inv_d, ratio = 1.0, None
    if mean:
        if denominator is not None:
            d = n = (np.float64(denominator) if _is_host_number(denominator)
                     else host(denominator).astype(xp.float64))
            is_empty = d == 0
        else:
            weight = None if loss_options.weight is None else host(loss_options.weight.array)
            index_target = (host(loss_options.target.array) if loss_options.target_is_index
                            else None)  # every row of probabilities (or of an entropy) counts
            share_d, share_n = row_weights(
                xp, index_target, weight,
                ignore_index=loss_options.ignore_index, n_classes=logits.n_classes,
                target_is_index=loss_options.target_is_index, rows_shape=logits.result_shape,
                sample_weight=s)
            d = share_d.sum()
            same = weight is None or not loss_options.target_is_index
            n = d if same else share_n.sum()
            is_empty = n == 0
            if z_loss and not same:
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = xp.where(n == 0, 1.0, d / xp.where(n == 0, 1.0, n))
                if xp is np:  # on the host: one pass, the z-loss scaled from 1/D to 1/N
                    z_loss, ratio = z_loss * float(ratio), None
        if empty == "raise" and bool(is_empty):  # a read of one value: a sync on a GPU
            raise empty_batch_error(logits.shape)
        inv_d = _quietly(_reciprocal, d)
        if empty == "zero":
            inv_d = xp.where(is_empty, 0.0, inv_d)
    scale = g
    if s is not None:
        scale = scale * s
    if mean:
        with np.errstate(invalid="ignore"):
            scale = scale * inv_d
    if plan.want_grad and not _is_host_number(scale):
        scale = module.from_namespace(xp.asarray(scale, dtype=xp.float64), like)

    if ratio is None:
        rows, grad = run(z_loss, scale, False)
        rows = None if rows is None else host(rows).astype(xp.float64)
    else:
        # The gradient is linear in the z-loss coefficient: (1 - D/N) G(0) + (D/N) G(z).
        rows_ce, grad_ce = run(0.0, scale, True)
        rows, grad = run(z_loss, scale, False)
        if rows is not None:
            rows_ce = host(rows_ce).astype(xp.float64)
            rows = rows_ce + ratio * (host(rows).astype(xp.float64) - rows_ce)
        if grad is not None:
            combined = (host(grad).astype(xp.float64) * ratio
                        + host(grad_ce).astype(xp.float64) * (1.0 - ratio))
            grad = module.from_namespace(combined.astype(logits.dtype), like, into=grad)
    if not plan.want_loss:
        return None, grad
    with np.errstate(invalid="ignore"):
        if s is not None:
            rows = rows * s
        if plan.reduction == "none":
            loss = rows
        else:
            loss = rows.sum()
            if mean:
                loss = _quietly(np.multiply, loss, inv_d)
    loss = xp.asarray(loss).astype(logits.loss_dtype)
    return module.from_namespace(loss, like), grad
