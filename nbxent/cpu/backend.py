"""The CPU backend: NumPy arrays in, Numba kernels, NumPy arrays out.

Turns a ``Plan`` into kernel arguments (flat buffers and element geometry, no
copy of the logits), validates class indices before anything is written,
splits rows over threads, and finishes reductions in float64.
"""

import contextlib
import functools
import math
import threading

import numba
import numpy as np

from .._block_labels import restart_block_labels
from .._config import CPU
from .._dispatch import as_cpu_array
from .._plan import View, index_error
from .arguments import (N_METRICS, WRITE_GRAD, WRITE_LOG_SOFTMAX, WRITE_NOTHING, WRITE_SOFTMAX,
                        Geometry, Options, Shape, TargetKind, Variant)
from .disk_cache import first_call
from .kernels import kernel_for, scan_targets, total_of
from .tile_kernel import takes_rows
from . import recycling

_WRITES = {"log_softmax": WRITE_LOG_SOFTMAX, "softmax": WRITE_SOFTMAX}
_UNUSED = np.zeros(1)
_NO_METRICS = np.zeros((N_METRICS, 1))
_LINE_BYTES = 64  # a cache line on every CPU we meet (x86-64, Arm's Neoverse)


def asarray(x):
    """The NumPy array for an input (lists, scalars, PyTorch/JAX CPU arrays included)."""
    return as_cpu_array(x)


def copy_contiguous(x):
    """A C-contiguous copy, for views the kernels cannot address with one stride."""
    return np.ascontiguousarray(x)


def copy_into(destination, source):
    """Copy ``source`` into the strided array ``destination`` of the same shape."""
    np.copyto(destination, source)


def namespace_of(like):
    """The array module of the training layer's arithmetic (``nbxent._training``)."""
    return np


def to_namespace(x):
    """``x`` as an array of ``namespace_of``'s module (NumPy arrays are)."""
    return x


def from_namespace(y, like, into=None):
    """``y`` in the caller's kind (NumPy), written into ``into`` when given."""
    if into is None:
        return y
    np.copyto(into, y)
    return into


def _forward(view):
    """Whether ``view`` runs forward over a C-contiguous array, as nearly every call's do:
    its arrays are then made without ``as_strided`` (several microseconds a call, which
    small calls feel: benchmarks/RESULTS.md)."""
    return view.array.flags.c_contiguous and min(view.strides, default=0) >= 0


def _strided(view):
    """The NumPy array a ``View`` describes."""
    array = view.array
    strides = tuple(s * array.dtype.itemsize for s in view.strides)
    if _forward(view):  # (NumPy checks that the view fits the buffer)
        return np.ndarray(view.shape, array.dtype, buffer=array, strides=strides)
    return np.lib.stride_tricks.as_strided(array, view.shape, strides)


def _flat(view):
    """(1-D buffer over the view's memory, its ``Geometry``).

    A view is (outer, C, inner) or, per row, (outer, inner) (no class stride).

    Axes with negative strides are flipped so the buffer starts at the lowest
    address; the offset then points at the view's first element. float16
    buffers are reinterpreted as uint16 (Numba's CPU target has no float16).
    """
    array = view.array
    span = 0 if 0 in view.shape else 1 + sum((n - 1) * abs(s) for n, s in zip(view.shape, view.strides))
    if _forward(view):
        flat, offset = array.reshape(-1)[:span], 0
    else:
        flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in view.strides)
        lowest = _strided(view)[flips]
        offset = sum((n - 1) * -s for n, s in zip(view.shape, view.strides) if s < 0 and n > 0)
        flat = np.lib.stride_tricks.as_strided(lowest, (span,), (array.dtype.itemsize,))
    if flat.dtype == np.float16:
        flat = flat.view(np.uint16)
    strides = view.strides if len(view.strides) == 3 else (view.strides[0], 0, view.strides[1])
    return flat, Geometry(offset, *strides)


def _as_float64(view):
    """A per-row ``View`` (outer, inner) as float64: itself, or its values gathered into a
    new buffer (exact from every float and integer dtype), broadcast axes kept broadcast.

    The kernels take one grad_output type, so a float32 or integer grad_output compiles
    no kernel of its own; it is read per row, a small fraction of a call's traffic.
    """
    if view.array.dtype == np.float64:
        return view
    broadcast = tuple(s == 0 for s in view.strides)
    rows = np.ascontiguousarray(
        _strided(view)[tuple(slice(0, 1) if b else slice(None) for b in broadcast)],
        dtype=np.float64)
    return View(rows, view.shape, (0 if broadcast[0] else rows.shape[1], 0 if broadcast[1] else 1))


def _read_only(array):
    """A read-only view of ``array`` (itself when it is one). Numba compiles a kernel
    apart for read-only and writeable arguments: the kernels' inputs always go in
    read-only, so that a variant compiles once whatever the caller's arrays."""
    if not array.flags.writeable:
        return array
    view = array.view()
    view.flags.writeable = False
    return view


_workqueue_lock = threading.Lock()


def _launch_guard():
    """A lock for Numba's workqueue threading layer, which aborts the process when two
    Python threads launch parallel kernels at once; omp and tbb need none."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        layer = "workqueue"
    return _workqueue_lock if layer == "workqueue" else contextlib.nullcontext()


def _class_weights(loss, n_classes, dtype):
    """The class weights as a contiguous array (ones without ``weight=``).

    Unweighted calls read ones rather than compiling kernels twice: the hot
    loops touch a class weight only under smoothing or probability targets.
    """
    if loss.weight is None:
        return _ones(n_classes, dtype)
    return np.ascontiguousarray(loss.weight.array, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _ones(n, dtype):
    """A read-only array of ``n`` ones, kept for the next call of the same size."""
    ones = np.ones(n, dtype)
    ones.flags.writeable = False
    return ones


def _shape(settings, logits):
    """(tiled, split, swap): which kernel shape serves the plan, and how.

    A class axis that is not the last (inner > 1, NCHW) goes to the tile kernel,
    vectorised across neighbouring positions. So do rows of few classes
    (``swap``: the rows become the positions). Long rows go to the row kernel,
    vectorised along the classes, their classes split into work items when rows are
    fewer than ``settings.split_items`` (a constant, so that the split, and the
    result's bits, do not depend on the number of threads).
    ``settings`` is a ``nbxent._config.CpuSettings`` (the thresholds).
    """
    rows = logits.n_rows
    fewest = settings.tile_min_run if logits.inner > 1 else settings.tile_min_width
    tile_width = min(4096, max(fewest, settings.tile_elements // logits.n_classes))
    if logits.inner > 1:
        return True, tile_width, False
    if logits.n_classes <= settings.tile_max_classes and rows >= 2 * tile_width:
        return True, tile_width, True
    if rows == 0 or rows >= settings.split_items:
        return False, 1, False
    return False, max(1, min(-(-settings.split_items // rows),
                             logits.n_classes // settings.split_min_classes)), False


def _rows_as_positions(geom):
    """Geometry with the outer axis moved to the (vectorised) inner one: (N, C) as (1, C, N)."""
    return Geometry(geom.offset, 0, geom.s_class, geom.s_outer)


def _compute_dtype(logits, loss):
    """float64 for float64 logits, and for float32 logits under a soft cap: the capped
    logit a tanh(x / a) rounded to float32 would lose the digits of the cap's slope
    1 - tanh(x / a)**2 near saturation, and the loss's at logits near a; float16 logits
    (float16 results) keep float32."""
    wide = logits.dtype == np.float64 or (logits.dtype == np.float32 and loss.softcap > 0.0)
    return np.float64 if wide else np.float32


def _launch(plan, *, target_kind, write, entropy=False, out=None, row_metrics=None,
            metric_names=(), top_k=1):
    """Run the kernel for ``plan``, filling ``row_metrics`` (``N_METRICS`` x rows, the
    rows ``nbxent.cpu.arguments.METRIC_*``) when given, with what ``metric_names`` asks
    for (each costs time in the kernel): the argmax, the entropy, the target's rank for
    'top_k' (exact below ``top_k``, else ``top_k`` or more; without 'top_k' only whether
    it is 0, for 'correct').

    Returns (row values, row lse, D, n_valid): the per-row cross-entropy (or
    entropy), the per-row logsumexp (0 for ignored rows; written only for the z-loss and
    the logsumexp, else undefined: the writes of a million rows' float64 lse weighed on the
    loss of short rows, benchmarks/RESULTS.md), and the 'mean' denominators of the
    cross-entropy part (D) and of the z-loss part.
    """
    logits, loss = plan.logits, plan.loss
    compute = _compute_dtype(logits, loss)
    settings = CPU.current()
    tiled, split, swap = _shape(settings, logits)
    x_view = logits.view
    if tiled and not _unit_stride(x_view, swap):
        x_view = _contiguous_view(x_view.shape, logits.dtype)
        np.copyto(_strided(x_view), _strided(logits.view))
    x, x_geom = _flat(x_view)
    target, t_geom = _UNUSED, Geometry(0, 0, 0, 0)
    weight = _class_weights(loss, logits.n_classes, compute)
    weight_sum = (float(logits.n_classes) if loss.weight is None
                  else float(np.sum(weight, dtype=np.float64)))
    denominator = n_valid = logits.n_rows
    if target_kind == TargetKind.INDEX:
        target, t_geom, denominator, n_valid = _index_target(logits, loss)
    elif target_kind == TargetKind.PROB:
        target, t_geom = _flat(loss.target)
    inv_ce = inv_z = 1.0
    if plan.reduction == "mean":
        inv_ce = 1.0 / denominator if denominator else math.inf
        inv_z = 1.0 / n_valid if n_valid else math.inf
    grad_output, g_geom = _UNUSED, Geometry(0, 0, 0, 0)
    if plan.grad_output is not None:
        grad_output, g_geom = _flat(_as_float64(plan.grad_output))
    out_buffer, out_geom = _UNUSED.astype(logits.dtype), Geometry(0, 0, 0, 0)
    staged_out = None
    if out is not None:
        # Few long rows are cut into work items (split > 1), one of which reads a row's
        # target logit while another may be writing its exps over it: written over the
        # logits, their results go to an array of their own first.
        over_logits = not tiled and split > 1 and np.may_share_memory(out.array,
                                                                       logits.view.array)
        if (tiled and not _unit_stride(out, swap)) or over_logits:
            staged_out, out = out, _contiguous_view(out.shape, logits.dtype)
        out_buffer, out_geom = _flat(out)
    elif logits.dtype == np.float16:
        out_buffer = out_buffer.view(np.uint16)
    returns_rows = plan.reduction == "none" and plan.op in ("cross_entropy", "entropy")
    row_value = (np.empty(logits.n_rows, logits.loss_dtype) if returns_rows
                 else _scratch("row_value", logits.n_rows, logits.loss_dtype))
    row_lse = _scratch("row_lse", logits.n_rows, np.float64)
    outer, inner = logits.outer, logits.inner
    # (Not for maps whose images fit one tile: there a second, short tile would cost more.)
    aligned_tiles = tiled and not swap and inner > split
    shape = Shape(outer, inner, logits.n_classes, row_split=1 if tiled else split,
                  tile_width=split if tiled else 1,
                  tile_offset=_tile_offset(x, x_geom, split) if aligned_tiles else 0,
                  row_major=0)
    if swap:
        shape = shape._replace(outer=1, inner=outer)
        x_geom, t_geom, g_geom, out_geom = map(_rows_as_positions,
                                               (x_geom, t_geom, g_geom, out_geom))
    variant = Variant(
        tiled=tiled, half=logits.dtype == np.float16, compute64=compute is np.float64,
        widened=compute is np.float64 and logits.dtype == np.float32,
        target=target_kind,
        target_half=target_kind == TargetKind.PROB and target.dtype == np.uint16,
        smoothing=loss.label_smoothing > 0.0, softcap=loss.softcap > 0.0, entropy=entropy,
        write=write, metrics=row_metrics is not None)
    # Rows tiled as they lie are read and written along their classes: only where those
    # lie at a unit stride in the logits and in the result (class-major short rows, as
    # from a transpose, are already laid out as the transposing path's tiles).
    classes_contiguous = x_geom.s_class == 1 and (out is None or out_geom.s_class == 1)
    rows_min_classes = (settings.tile_rows_min_classes if write != WRITE_NOTHING
                        else settings.tile_rows_min_classes_no_writes)
    if (swap and classes_contiguous and logits.n_classes >= rows_min_classes
            and takes_rows(variant)):
        shape = shape._replace(row_major=1, tile_width=max(
            1, settings.tile_row_elements // logits.n_classes))
    options = Options(
        ignore_index=loss.ignore_index, label_smoothing=float(loss.label_smoothing),
        z_loss=float(loss.z_loss), softcap=float(loss.softcap),
        grad_scale=float(plan.grad_scale), inv_ce=float(inv_ce), inv_z=float(inv_z),
        weight_sum=weight_sum, weighted=loss.weight is not None,
        has_grad_output=plan.grad_output is not None,
        rank_limit=top_k if "top_k" in metric_names else 0,
        wants_argmax="argmax" in metric_names,
        wants_entropy="entropy" in metric_names,
        in_place=out is not None and np.may_share_memory(out_buffer, x),
        streams=tiled and out is not None and (
            logits.n_rows * logits.n_classes * out_buffer.itemsize >= settings.stream_min_bytes),
        keeps_lse=loss.z_loss != 0.0 or plan.op == "logsumexp")
    x, target, weight, grad_output = map(_read_only, (x, target, weight, grad_output))
    kernel = kernel_for(variant)
    blocks = kernel.blocks_for(tuple(shape))
    # (``overloads``, not ``signatures``: that property lists them anew, tens of us a call.)
    if not blocks.overloads:  # it compiles or loads: see nbxent/_block_labels.py
        restart_block_labels()
    with _launch_guard(), first_call(blocks):
        # Named tuples travel as plain ones (Numba types a named tuple argument several
        # times slower at every call); the kernels name their fields again.
        kernel(x, tuple(x_geom), target, tuple(t_geom), weight, grad_output, tuple(g_geom),
               out_buffer, tuple(out_geom), row_value, row_lse,
               _NO_METRICS if row_metrics is None else row_metrics, tuple(shape),
               tuple(options))
    if staged_out is not None:
        np.copyto(_strided(staged_out), _strided(out))
    return row_value, row_lse, denominator, n_valid


_scratch_arrays = threading.local()


def _scratch(name, n, dtype):
    """A reused array of ``n`` elements for per-row values that reach the caller only as
    copies.

    Kept per thread, one per name (the largest asked for): a fresh array each call
    costs its page faults, which at a million rows weigh on the whole call. The
    arrays stay allocated while the thread lives.
    """
    arrays = getattr(_scratch_arrays, "arrays", None)
    if arrays is None:
        arrays = _scratch_arrays.arrays = {}
    array = arrays.get(name)
    if array is None or array.size < n or array.dtype != dtype:
        array = arrays[name] = np.empty(max(n, array.size if array is not None else 0), dtype)
    return array[:n]


def _unit_stride(view, swap):
    """True when the tile kernel's copy loops over ``view`` run along a unit stride:
    along the classes when they are contiguous (short rows, transposed as they are
    staged), along the positions otherwise (the rows when ``swap`` makes them the
    positions). The tile kernel takes only such views: any other is staged through a
    contiguous copy, which costs a copy of a rare layout and saves compiling every
    tile kernel twice. (The row kernel's variants do not depend on strides.)"""
    s_outer, s_class, s_inner = view.strides
    return s_class == 1 or (s_outer if swap else s_inner) == 1


def _contiguous_view(shape, dtype, array_shape=None):
    """A fresh C-contiguous array and its (outer, C, inner) view ``shape``; the array has
    ``array_shape`` (the same elements: the caller's shape of a result) when given. Its
    memory may be a dropped result's (``nbxent.cpu.recycling``)."""
    outer, n_classes, inner = shape
    array = recycling.empty(shape if array_shape is None else array_shape, dtype,
                            CPU.current())
    return View(array, shape, (n_classes * inner, inner, 1))


def _tile_offset(x, x_geom, width):
    """``Shape.tile_offset`` for a tile kernel whose positions are contiguous along each
    class (NCHW): tiles then start on a cache line of the logits, and so do the runs
    they read, one per class (vector loads that straddle two lines ran the maps much
    slower: benchmarks/RESULTS.md). From the first run's address: the
    other classes' and images' runs share its alignment where the map's H*W is a whole
    number of lines (a multiple of 16 float32 positions, as the usual crops are). The
    tiles' bounds do not change a position's result, only where its work starts."""
    address = x.ctypes.data + x_geom.offset * x.itemsize
    if address % x.itemsize:
        return 0
    ahead = (-address) % _LINE_BYTES // x.itemsize  # positions before a line starts
    return (width - ahead) % width


def _index_target(logits, loss):
    """(flat int64 targets, their ``Geometry``, D, n_valid), after checking every index.

    Raises the index error before anything is written when ``loss.validate``.
    """
    view = loss.target
    ignore_index = loss.ignore_index
    if view.array.dtype != np.int64:
        # One kernel per index dtype would multiply compile time; rows are cheap to copy.
        view = View(_as_int64(view.array, ignore_index), view.shape, (logits.inner, 1))
    target, t_geom = _flat(view)
    rows = _strided(view).reshape(-1)  # one index per row, in row order (a view if it can be)
    with _launch_guard():
        first_bad, denominator, n_valid = scan_targets(
            rows, logits.n_classes, ignore_index,
            None if loss.weight is None else _class_weights(loss, logits.n_classes,
                                                            np.float64))
    if first_bad >= 0 and loss.validate:
        position = np.unravel_index(first_bad, logits.result_shape)
        value = _strided(loss.target).reshape(-1)[first_bad]  # the caller's, not the copy's
        raise index_error(tuple(int(p) for p in position), int(value),
                          logits.n_classes, loss.ignore_index)
    return target, t_geom, denominator, n_valid


_INT64_MAX = np.iinfo(np.int64).max


def _as_int64(target, ignore_index):
    """A C-contiguous int64 copy of an index target; uint64 values above int64's range
    (never class indices) become int64's largest value, so they do not wrap onto
    ignore_index or a class and stay bad."""
    copy = np.ascontiguousarray(target, dtype=np.int64)
    if target.dtype == np.uint64:
        huge = target > np.uint64(_INT64_MAX)
        if huge.any():
            copy[huge] = _INT64_MAX if ignore_index != _INT64_MAX else _INT64_MAX - 1
    return copy


def _reduce(plan, row_value, row_lse, denominator, n_valid):
    """The loss in the shape and dtype the reduction asks for."""
    logits = plan.logits
    z = plan.loss.z_loss
    if plan.reduction == "none":
        if z:
            row_value += (z * row_lse * row_lse).astype(logits.loss_dtype)
        return row_value.reshape(logits.result_shape)
    ce_total = total_of(row_value)
    z_total = z * np.sum(row_lse * row_lse) if z else 0.0
    if plan.reduction == "sum":
        total = ce_total + z_total
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            total = np.float64(ce_total) / denominator
            if z:
                total += np.float64(z_total) / n_valid
    return np.asarray(total, dtype=logits.loss_dtype)


def _fresh_out(logits):
    """A new C-contiguous array of the logits' shape for the result, and its view."""
    return _contiguous_view((logits.outer, logits.n_classes, logits.inner), logits.dtype,
                            logits.shape)


def _metrics_dtype(plan):
    """The metric rows' dtype: float32 where the kernel computes in float32 and every
    class index is a float32 integer (C <= 2**24), else float64. The rows then cost half
    the writes: at a million rows of 10 classes a float64 row was 8 MB written beside 40
    MB of logits read (benchmarks/RESULTS.md)."""
    narrow = (_compute_dtype(plan.logits, plan.loss) is np.float32
              and plan.logits.n_classes <= 2**24)
    return np.float32 if narrow else np.float64


def cross_entropy(plan, metrics=(), top_k=1):
    """(loss or None, gradient or None) for a cross-entropy plan; with ``metrics`` (the
    names asked for, ``nbxent._metrics``), (loss or None, gradient or None, the
    ``N_METRICS`` x rows metrics (``_metrics_dtype``), the rows not asked for undefined; a
    reused array, valid until the thread's next call). The target's rank is exact below
    ``top_k``: the kernels stop counting the classes ahead of it there."""
    target_kind = TargetKind.INDEX if plan.loss.target_is_index else TargetKind.PROB
    out = None
    if plan.want_grad:
        out = plan.out or _fresh_out(plan.logits)
    row_metrics = _scratch("row_metrics", N_METRICS * plan.logits.n_rows,
                           _metrics_dtype(plan)).reshape(
        N_METRICS, plan.logits.n_rows) if metrics else None
    results = _launch(plan, target_kind=target_kind,
                      write=WRITE_GRAD if plan.want_grad else WRITE_NOTHING, out=out,
                      row_metrics=row_metrics, metric_names=metrics, top_k=top_k)
    loss = _reduce(plan, *results) if plan.want_loss else None
    grad = out.array if out is not None else None
    return (loss, grad, row_metrics) if metrics else (loss, grad)


def normalize(plan):
    """logsumexp / entropy per row, or log_softmax / softmax of the whole array."""
    logits = plan.logits
    if plan.op in _WRITES:
        out = plan.out or _fresh_out(plan.logits)
        _launch(plan, target_kind=TargetKind.NONE, write=_WRITES[plan.op], out=out)
        return out.array
    row_value, row_lse, _, _ = _launch(plan, target_kind=TargetKind.NONE, write=WRITE_NOTHING,
                                       entropy=plan.op == "entropy")
    if plan.op == "logsumexp":
        return row_lse.astype(logits.loss_dtype).reshape(logits.result_shape)
    if plan.reduction == "none":
        return row_value.reshape(logits.result_shape)
    total = total_of(row_value)
    if plan.reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total / np.float64(logits.n_rows)
    return np.asarray(total, dtype=logits.loss_dtype)
