"""The Dask backend: Dask arrays in, nbxent's kernels on every chunk, lazy Dask arrays out.

Receives a ``nbxent._plan.Plan`` built over Dask arrays (checked like any other;
its strides are nominal and unused) and builds the task graph; nothing is
computed here. Two layouts, picked by how the class axis is chunked:

- whole rows (the class axis in one chunk): each chunk is one call of nbxent's
  public function, which runs it on the CPU (NumPy chunks) or the GPU (CuPy
  chunks). 'mean' runs as 'sum' with the exact denominators D (summed weights
  of the non-ignored targets) and N (non-ignored rows) folded in, computed from
  the targets alone: no second pass over the logits.
- split classes: each chunk yields per-row float64 partials, merged across the
  class chunks by one tree reduction (``partials`` explains the math); losses
  come from the merged partials, gradients and log_softmax/softmax from a
  second pass over each chunk with the merged log-sum-exp.

Results keep the logits' row chunks: a per-row loss is chunked like the rows,
a gradient like the logits, a reduced loss is a 0-d array.
"""

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.layers import ArraySliceDep

from .._dispatch import as_cpu_array
from .._metrics import N_METRICS
from .._plan import immutable_out_error
from . import partials

__all__ = ["asarray", "copy_contiguous", "copy_into", "cross_entropy", "from_namespace",
           "namespace_of", "normalize", "to_namespace"]

# Index letters of the axes the graph adds: partial fields, [cross-entropy, lse**2]
# per row, and the 'mean' denominators [D, N].
_FIELDS, _ROW_PARTS, _DENOMINATORS = "F", "R", "D"


def asarray(x):
    """``x`` when it is a Dask array, else a Dask array over it (a CPU array beside Dask)."""
    return x if isinstance(x, da.Array) else da.asarray(as_cpu_array(x))


def copy_contiguous(x):
    """``x``: a Dask array has no memory layout, the plan's strides are nominal."""
    return x


def copy_into(destination, source):
    """Dask arrays cannot be written: always the ``out=`` TypeError."""
    raise immutable_out_error("Dask")


def namespace_of(like):
    """The array module of the training layer's arithmetic (``nbxent._training``): lazy."""
    return da


def to_namespace(x):
    return x


def from_namespace(y, like, into=None):
    """``y`` itself: Dask arrays are never written into."""
    return y


def _reject_out(plan):
    if plan.out is not None or plan.copy_back is not None:
        raise immutable_out_error("Dask")


def _indices(ndim, axis):
    """(logits' index, the rows' index (no class letter), the class letter) for blockwise."""
    full = "abcdefghijklmnopqrstuvwxyz"[:ndim]
    return full, full[:axis] + full[axis + 1:], full[axis]


def _row_chunks(x, axis):
    return x.chunks[:axis] + x.chunks[axis + 1:]


def _meta(x, ndim, dtype):
    return meta_from_array(x._meta, ndim, dtype)


def _blockwise(function, index, *args, **keywords):
    """``da.blockwise`` on arrays the caller has already chunked alike."""
    return da.blockwise(function, index, *args, concatenate=True, align_arrays=False,
                        **keywords)


def _optional(array, index):
    """A blockwise (argument, index) pair for an array that may be None."""
    return (None, None) if array is None else (array, index)


def _as_is(parts, axis, keepdims):
    return parts


def _merge(parts, combine, axis):
    """One tree reduction of per-chunk partials over the class axis (field axis first)."""
    return da.reduction(parts, _as_is, combine, combine=combine, axis=axis + 1,
                        keepdims=False, concatenate=True, dtype=np.float64,
                        meta=_meta(parts, parts.ndim - 1, np.float64))


def _finish(ce_total, z_total, denominators, *, reduction, z_loss, loss_dtype):
    """The 0-d loss from 0-d totals: divided by [D, N] for 'mean'."""
    return _blockwise(partials.finish_total, "", ce_total, "", z_total,
                      "" if isinstance(z_total, da.Array) else None,
                      *_optional(denominators, _DENOMINATORS), reduction=reduction,
                      z_loss=z_loss, loss_dtype=loss_dtype, dtype=loss_dtype)


# ---------------------------------------------------------------- cross-entropy

def _denominators(plan, target, weight, rows, cls):
    """[D, N] of 'mean' as a lazy (2,) array read from the targets (and weights) only."""
    if not plan.loss.target_is_index:
        return da.from_array(np.full(2, float(plan.logits.n_rows)))
    parts = _blockwise(partials.denominator_parts, _DENOMINATORS + rows, target, rows,
                       *_optional(None if weight is None else weight.rechunk(-1), cls),
                       new_axes={_DENOMINATORS: 2}, ignore_index=plan.loss.ignore_index,
                       n_classes=plan.logits.n_classes, dtype=np.float64,
                       meta=_meta(target, len(rows) + 1, np.float64))
    return parts.sum(axis=tuple(range(1, parts.ndim)))


def _grad_output(plan, row_chunks, rows):
    """(grad_output, its blockwise index): a float, a 0-d array, or chunked like the rows."""
    if plan.grad_output is None:
        return plan.grad_scale, None
    g = plan.grad_output.array
    return (g, "") if g.ndim == 0 else (g.rechunk(row_chunks), rows)


def cross_entropy(plan, metrics=(), top_k=1):
    """(loss or None, gradient or None) for a cross-entropy plan, as lazy Dask arrays; with
    ``metrics`` (names, ``nbxent._metrics``) also the float64 metric rows, lazily, shaped
    (N_METRICS, *rows). Where rows are split across class chunks, the target's rank is
    exact only below ``top_k`` (``top_k`` when it is not: all the metrics need)."""
    _reject_out(plan)
    x, axis = plan.logits.view.array, plan.logits.axis
    full, rows, cls = _indices(x.ndim, axis)
    row_chunks = _row_chunks(x, axis)
    target = plan.loss.target.array.rechunk(row_chunks if plan.loss.target_is_index else x.chunks)
    weight = None if plan.loss.weight is None else plan.loss.weight.array.rechunk((x.chunks[axis],))
    denominators = None
    if plan.reduction == "mean":
        denominators = _denominators(plan, target, weight, rows, cls)
    if x.numblocks[axis] == 1:
        return _whole_rows(plan, x, target, weight, denominators, (full, rows, cls), metrics)
    return _split_classes(plan, x, target, weight, denominators, (full, rows, cls), metrics,
                          top_k)


def _whole_rows(plan, x, target, weight, denominators, indices, metrics):
    full, rows, cls = indices
    row_chunks = _row_chunks(x, plan.logits.axis)
    options = dict(ignore_index=plan.loss.ignore_index, label_smoothing=plan.loss.label_smoothing,
                   z_loss=plan.loss.z_loss, softcap=plan.loss.softcap or None,
                   validate=plan.loss.validate,
                   stream=plan.stream)
    pair = _blockwise(
        partials.row_cross_entropy, rows, x, full,
        target, rows if plan.loss.target_is_index else full, ArraySliceDep(row_chunks), rows,
        *_optional(weight, cls), *_grad_output(plan, row_chunks, rows),
        # Without a gradient or z-loss the chunks' sums do not depend on D and N: the
        # chunks then need not wait for the targets' reduction.
        *_optional(denominators if plan.want_grad or plan.loss.z_loss else None, _DENOMINATORS),
        axis=plan.logits.axis, options=options,
        reduction=plan.reduction, want_loss=plan.want_loss, want_grad=plan.want_grad,
        metrics=metrics or None, meta=np.empty((0,) * len(rows), object))
    loss = grad = None
    if plan.want_grad:
        grad = _blockwise(_item, full, pair, rows, 1, None, new_axes={cls: plan.logits.n_classes},
                          meta=_meta(x, x.ndim, plan.logits.dtype))
    if plan.want_loss:
        reduced = plan.reduction != "none"
        loss = _blockwise(_item, rows, pair, rows, 0, None,
                          adjust_chunks={r: 1 for r in rows} if reduced else None,
                          meta=_meta(x, len(rows),
                                     np.float64 if reduced else plan.logits.loss_dtype))
        if reduced:
            loss = _finish(loss.sum(), 0.0, denominators, reduction=plan.reduction, z_loss=0.0,
                           loss_dtype=plan.logits.loss_dtype)
    if not metrics:
        return loss, grad
    rows_metrics = _blockwise(_item, _FIELDS + rows, pair, rows, 2, None,
                              new_axes={_FIELDS: N_METRICS},
                              meta=_meta(x, len(rows) + 1, np.float64))
    return loss, grad, rows_metrics


def _item(pair, i):
    return pair[i]


def _split_classes(plan, x, target, weight, denominators, indices, metrics, top_k):
    full, rows, cls = indices
    row_chunks = _row_chunks(x, plan.logits.axis)
    t_index = rows if plan.loss.target_is_index else full
    class_slices = ArraySliceDep((x.chunks[plan.logits.axis],))
    # The metrics' best classes: the k best for 'top_k', the best for the argmax or 'correct'.
    candidates = top_k if "top_k" in metrics else int(bool({"argmax", "correct"} & set(metrics)))
    n_fields = partials.N_LOSS_FIELDS
    if metrics:
        n_fields = partials.CANDIDATES + candidates * partials.PER_CANDIDATE
    parts = _blockwise(
        partials.loss_partials, _FIELDS + full, x, full, target, t_index, *_optional(weight, cls),
        class_slices, cls, ArraySliceDep(row_chunks), rows,
        new_axes={_FIELDS: n_fields}, adjust_chunks={cls: 1}, axis=plan.logits.axis,
        n_classes=plan.logits.n_classes, ignore_index=plan.loss.ignore_index,
        label_smoothing=plan.loss.label_smoothing, softcap=plan.loss.softcap,
        validate=plan.loss.validate, metrics=metrics, candidates=candidates,
        dtype=np.float64, meta=_meta(x, x.ndim + 1, np.float64))
    merged = _merge(parts, partials.combine_loss_partials, plan.logits.axis)
    loss = grad = None
    if plan.want_loss:
        per_row = _blockwise(
            partials.loss_rows, _ROW_PARTS + rows, merged, _FIELDS + rows,
            *_optional(target if plan.loss.target_is_index else None, rows),
            new_axes={_ROW_PARTS: 2}, n_classes=plan.logits.n_classes,
            ignore_index=plan.loss.ignore_index,
            label_smoothing=plan.loss.label_smoothing, dtype=np.float64,
            meta=_meta(x, len(rows) + 1, np.float64))
        ce, lse_squared = per_row[0], per_row[1]
        if plan.reduction == "none":
            z_loss = plan.loss.z_loss
            loss = (ce + z_loss * lse_squared if z_loss else ce).astype(plan.logits.loss_dtype)
        else:
            loss = _finish(ce.sum(), lse_squared.sum(), denominators, reduction=plan.reduction,
                           z_loss=plan.loss.z_loss, loss_dtype=plan.logits.loss_dtype)
    if plan.want_grad:
        grad = _blockwise(
            partials.grad_chunk, full, x, full, target, t_index, *_optional(weight, cls),
            merged, _FIELDS + rows, *_grad_output(plan, row_chunks, rows),
            *_optional(denominators, _DENOMINATORS), class_slices, cls, axis=plan.logits.axis,
            n_classes=plan.logits.n_classes, ignore_index=plan.loss.ignore_index,
            label_smoothing=plan.loss.label_smoothing, z_loss=plan.loss.z_loss,
            softcap=plan.loss.softcap,
            reduction=plan.reduction, dtype=plan.logits.dtype,
            meta=_meta(x, x.ndim, plan.logits.dtype))
    if not metrics:
        return loss, grad
    rows_metrics = _blockwise(
        partials.metric_rows, _ROW_PARTS + rows, merged, _FIELDS + rows,
        *_optional(target if plan.loss.target_is_index else None, rows),
        new_axes={_ROW_PARTS: N_METRICS}, n_classes=plan.logits.n_classes,
        ignore_index=plan.loss.ignore_index, dtype=np.float64,
        meta=_meta(x, len(rows) + 1, np.float64))
    return loss, grad, rows_metrics


# ---------------------------------------------------------------- normalize

def normalize(plan):
    """logsumexp / entropy per row (or reduced), or log_softmax / softmax, lazily."""
    _reject_out(plan)
    x, axis, op = plan.logits.view.array, plan.logits.axis, plan.op
    full, rows, cls = _indices(x.ndim, axis)
    rowwise = op in ("logsumexp", "entropy")
    if x.numblocks[axis] == 1:
        keywords = dict(op=op, axis=axis, stream=plan.stream)
        if not rowwise:
            return x.map_blocks(partials.row_normalize, **keywords, dtype=plan.logits.dtype)
        per_row = _blockwise(partials.row_normalize, rows, x, full, **keywords,
                             dtype=plan.logits.loss_dtype,
                             meta=_meta(x, len(rows), plan.logits.loss_dtype))
    else:
        parts = _blockwise(partials.normalize_partials, _FIELDS + full, x, full,
                           new_axes={_FIELDS: partials.N_NORMALIZE_FIELDS},
                           adjust_chunks={cls: 1}, axis=axis, entropy=op == "entropy",
                           dtype=np.float64, meta=_meta(x, x.ndim + 1, np.float64))
        merged = _merge(parts, partials.combine_normalize_partials, axis)
        if not rowwise:
            return _blockwise(partials.normalized_chunk, full, x, full, merged, _FIELDS + rows,
                              op=op, axis=axis, dtype=plan.logits.dtype,
                              meta=_meta(x, x.ndim, plan.logits.dtype))
        per_row = (partials.lse_rows(merged) if op == "logsumexp"
                   else merged[partials.ENTROPY]).astype(plan.logits.loss_dtype)
    if plan.reduction == "none" or op == "logsumexp":
        return per_row
    denominators = da.from_array(np.full(2, float(plan.logits.n_rows)))
    return _finish(per_row.astype(np.float64).sum(), 0.0, denominators,
                   reduction=plan.reduction, z_loss=0.0, loss_dtype=plan.logits.loss_dtype)
