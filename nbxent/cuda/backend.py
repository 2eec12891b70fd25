"""The CUDA backend: variant choice, launch configuration, workspace, error flag.

Receives a ``nbxent._plan.Plan`` (already checked) and launches the kernels of
``kernels.py`` on the caller's stream. Nothing here waits for the device except
``validate=True`` with class-index targets, which reads the error flag once.

Byte model per call (N rows, C classes, b bytes per logit; see benchmarks/PTX.md):
loss only reads N*C*b; loss+gradient reads N*C*b and writes N*C*b when the
thread's share of a row fits its registers (``Settings.warp_cache`` /
``block_cache`` logits per thread), else it reads the row a second time
(mostly from L2); the split layout always reads twice. ``metrics=`` writes
N_METRICS x 8 bytes per row more.
"""

import numpy as np
from numba import cuda

from .._kinds import TargetKind
from .._numba_inlining import copies_skipped
from .._metrics import N_METRICS
from .._plan import index_error
from . import _sim, kernels
from .arrays import Launch, is_cupy
from .config import CUDA

__all__ = ["asarray", "copy_contiguous", "copy_into", "cross_entropy", "from_namespace",
           "namespace_of", "normalize", "to_namespace"]


# ---------------------------------------------------------------- arrays

def asarray(x):
    """The backend's array for an input.

    Parameters
    ----------
    x : array
        A CuPy array or Numba device array (returned as is), or any object with
        ``__cuda_array_interface__``.

    Returns
    -------
    array
        ``x`` itself, or for a foreign ``__cuda_array_interface__`` object a
        zero-copy Numba device array over its memory (``numba.cuda.as_cuda_array``,
        which waits for the stream the producer exported, per the interface's rules);
        results of such calls come back as Numba device arrays.
    """
    if is_cupy(x) or _sim.is_sim_array(x) or getattr(type(x), "__cuda_ndarray__", False):
        return x
    return cuda.as_cuda_array(x)


def copy_into(destination, source):
    """Copy ``source`` into the strided device array ``destination`` (same shape).

    For an ``out=`` view that no (outer, C, inner) view reaches: the kernels wrote
    ``source``, a fresh array, on the current stream; the copy follows it there.
    """
    if is_cupy(destination):
        import cupy
        cupy.copyto(destination, source)
    else:
        destination[...] = source


def namespace_of(like):
    """The array module of the training layer's arithmetic (``nbxent._training``): CuPy
    for CuPy arrays (on the current stream), NumPy on the host for other device arrays."""
    if is_cupy(like):
        import cupy
        return cupy
    return np


def to_namespace(x):
    """``x`` in ``namespace_of``'s module: a Numba device array is copied to the host."""
    if x is None or is_cupy(x) or isinstance(x, np.ndarray):
        return x
    return x.copy_to_host()


def from_namespace(y, like, into=None):
    """``y`` in the kind of ``like`` (a device copy of a host result), into ``into`` if given."""
    if is_cupy(like):
        if into is None:
            return y
        copy_into(into, y)
        return into
    if into is None:
        return cuda.to_device(np.array(y, order="C"))  # ascontiguousarray makes 0-d 1-d
    into.copy_to_device(np.array(y, order="C"))
    return into


def copy_contiguous(x):
    """A C-contiguous device copy of ``x``, in ``x``'s kind, on the current stream.

    Parameters
    ----------
    x : CuPy or Numba device array
        Any strided view.

    Returns
    -------
    array
        A new C-contiguous array of ``x``'s shape and dtype.
    """
    if is_cupy(x):
        import cupy
        return cupy.ascontiguousarray(x)
    launch = Launch(x)
    dtype = np.dtype(x.dtype)
    shape = tuple(x.shape)
    out = launch.empty(shape, dtype)
    size = int(np.prod(shape))
    if size == 0:
        return out
    strides = tuple(s // dtype.itemsize for s in x.strides)
    src, offset = launch.flat(x, shape, strides)
    threads = 64 if _sim.SIMULATED else 256
    blocks = min(-(-size // threads), 4 if _sim.SIMULATED else 4096)
    with copies_skipped(cuda=True):  # (as ``_run``'s launches)
        kernels.copy_kernel(len(shape))[blocks, threads, launch.stream](
            src, launch.flat_all(out), shape, strides, offset)
    return out


# ---------------------------------------------------------------- launch shape

def _pow2_at_least(n):
    p = 1
    while p < n:
        p *= 2
    return p


def _layout(settings, plan):
    """(layout, threads, group, cache K, chunk columns, chunks) for this plan.

    ``settings`` is a ``nbxent.cuda.config.Settings`` (the thresholds).
    """
    n_classes, n_rows = plan.logits.n_classes, plan.logits.n_rows
    _, s1, s2 = plan.logits.view.strides
    if n_classes <= settings.warp_max_c:
        threads = max(32, settings.threads // 32 * 32)
        if s1 != 1 and s2 == 1 and plan.logits.inner > 1:
            group = 1  # class axis not last: a thread per row, neighbouring rows coalesce
        else:
            group = min(32, _pow2_at_least(-(-n_classes // settings.warp_cache)))
        return "warp", threads, group, settings.warp_cache, n_classes, 1
    block_threads = (settings.block_threads_f64 if plan.logits.dtype == np.float64
                     else settings.block_threads)
    threads = max(32, block_threads // 32 * 32)
    max_rows = settings.split_max_rows or _sim.multiprocessor_count()
    n_chunks = -(-n_classes // max(1, settings.split_cols))
    if n_classes >= settings.split_min_c and n_rows < max_rows and n_chunks > 1:
        return "split", threads, threads, settings.block_cache, settings.split_cols, n_chunks
    return "block", threads, threads, settings.block_cache, n_classes, 1


def _flat(launch, view, strides):
    """(flat buffer, Geometry) of a plan's array view; ``strides`` are its
    (s_outer, s_class, s_inner), 0 along an axis the view lacks."""
    flat, offset = launch.flat(view.array, view.shape, view.strides)
    s_outer, s_class, s_inner = strides
    return flat, kernels.Geometry(int(offset), int(s_outer), int(s_class), int(s_inner))


def _max_blocks(settings):
    return settings.max_blocks or 16 * _sim.multiprocessor_count()


# ---------------------------------------------------------------- entry points

def cross_entropy(plan, metrics=(), top_k=1):
    """Cross-entropy loss and/or gradient of a plan on the GPU, and with ``metrics`` the
    metrics of its rows, taken in the same pass.

    Parameters
    ----------
    plan : nbxent._plan.Plan
        ``op == "cross_entropy"``; ``want_loss`` / ``want_grad`` say what to return.
    metrics : tuple of str
        Names from ``nbxent._metrics.METRICS`` (checked); empty for none. The kernel
        computes all of them whenever any is asked for.
    top_k : int
        Unused: the kernels count every class ahead of the target.

    Returns
    -------
    (loss or None, grad or None), and with ``metrics`` a third item
        loss: ``plan.logits.result_shape`` (reduction 'none') or 0-d, ``plan.logits.loss_dtype``;
        grad: ``plan.logits.shape``, ``plan.logits.dtype``, or ``plan.out.array`` when given;
        the metrics: a new float64 device array (``N_METRICS``, rows), the rows
        ``nbxent._metrics.METRIC_*`` (the target's rank exact, +inf where it does not
        count). All in the caller's kind; nothing waits for the device unless
        ``plan.loss.validate`` with class-index targets (one read of the error flag).

    Raises
    ------
    ValueError
        With ``plan.loss.validate``, for the first row whose class index is outside
        [0, C) and is not ``ignore_index``.
    """
    return _run(plan, bool(metrics))


def normalize(plan):
    """logsumexp, log_softmax, softmax or entropy of a plan on the GPU.

    Parameters
    ----------
    plan : nbxent._plan.Plan
        ``op`` in ("logsumexp", "log_softmax", "softmax", "entropy").

    Returns
    -------
    array
        logsumexp / entropy: per row (``plan.logits.result_shape``, reduced for entropy
        per ``plan.reduction``) in ``plan.logits.loss_dtype``; log_softmax / softmax:
        ``plan.logits.shape`` in ``plan.logits.dtype`` (into ``plan.out.array`` if given).
    """
    loss, out = _run(plan, False)
    return loss if plan.op in ("logsumexp", "entropy") else out


def _run(plan, metrics):
    settings = CUDA.current()
    launch = Launch(plan.logits.view.array, plan.stream)
    is_ce = plan.op == "cross_entropy"
    index_target = is_ce and plan.loss.target_is_index
    want_loss = plan.want_loss
    want_out = plan.want_grad
    reduce = want_loss and plan.reduction != "none" and plan.op != "logsumexp"
    acc_dtype = np.dtype(np.float64 if plan.logits.dtype == np.float64 else np.float32)
    n_rows, n_classes = plan.logits.n_rows, plan.logits.n_classes

    loss = None
    if want_loss:
        loss = launch.empty(() if reduce else plan.logits.result_shape, plan.logits.loss_dtype)
    out = None
    if want_out:
        out = (plan.out.array if plan.out is not None
               else launch.empty(plan.logits.shape, plan.logits.dtype))
    row_metrics = launch.empty((N_METRICS, n_rows), np.float64) if metrics else None
    results = (loss, out, row_metrics) if metrics else (loss, out)
    if n_rows == 0:
        if reduce:  # torch: 'sum' of nothing is 0, 'mean' is 0/0
            loss = launch.full((), plan.logits.loss_dtype,
                               np.nan if plan.reduction == "mean" else 0.0)
        return (loss,) + results[1:]

    if index_target and plan.loss.validate and np.dtype(plan.loss.target.array.dtype) == np.uint64:
        _check_uint64_targets(launch, plan)
    layout, threads, group, cache, chunk_cols, n_chunks = _layout(settings, plan)
    if layout == "warp":
        grid = min(-(-n_rows // (threads // group)), _max_blocks(settings))
    elif layout == "block":
        grid = min(n_rows, _max_blocks(settings))
    else:
        grid = (n_chunks, min(n_rows, max(1, _max_blocks(settings) // n_chunks)))

    # The reproducible sums' tiles (and their slots in acc_ws) do not depend on the grid.
    sum_tiles = -(-n_rows // settings.sum_rows)
    chunk_base = kernels.SLOT_BASE + 4 * sum_tiles
    partials = kernels.CHUNK_PARTIALS + kernels.ORDER_PARTIALS * metrics
    rowc_base = chunk_base + (partials * n_rows * n_chunks if layout == "split" else 0)
    rows_base = rowc_base + (kernels.ROW_COEFS * n_rows if layout == "split" else 0)
    acc_ws = launch.empty((rows_base + (kernels.ROW_TERMS * n_rows if reduce else 0),),
                          acc_dtype)
    # split: chunks done per row, and with metrics the argmax and rank of each (row, chunk)
    split_ints = n_rows * (1 + kernels.ORDER_PARTIALS * n_chunks * metrics)
    int_ws = launch.zeros((kernels.CHUNKS_DONE + (split_ints if layout == "split" else 0),),
                          np.int64)
    acc_flat, int_flat = launch.flat_all(acc_ws), launch.flat_all(int_ws)

    logits, x_geom = _flat(launch, plan.logits.view, plan.logits.view.strides)
    target, t_geom = logits, kernels.Geometry()
    if is_ce:
        s = plan.loss.target.strides
        target, t_geom = _flat(launch, plan.loss.target,
                               (s[0], 0, s[1]) if plan.loss.target_is_index else s)
    weight, w_geom = logits, kernels.Geometry()
    if is_ce and plan.loss.weight is not None:
        weight, w_geom = _flat(launch, plan.loss.weight, (0, plan.loss.weight.strides[0], 0))
    has_grad_output = is_ce and want_out and plan.grad_output is not None
    grad_output, g_geom = logits, kernels.Geometry()
    if has_grad_output:
        s = plan.grad_output.strides
        grad_output, g_geom = _flat(launch, plan.grad_output, (s[0], 0, s[1]))
    out_flat, out_geom = logits, kernels.Geometry()
    if want_out:
        if plan.out is not None:
            out_flat, out_geom = _flat(launch, plan.out, plan.out.strides)
        else:
            out_flat = launch.flat_all(out)
            inner = int(plan.logits.inner)
            out_geom = kernels.Geometry(0, int(n_classes * inner), inner, 1)
    loss_flat = launch.flat_all(loss) if want_loss else acc_flat
    metrics_flat = launch.flat_all(row_metrics) if metrics else acc_flat

    dims = kernels.Dims(n_rows=n_rows, n_classes=n_classes, inner=plan.logits.inner,
                        ignore_index=int(plan.loss.ignore_index), group=group,
                        chunk_cols=chunk_cols, n_chunks=n_chunks, chunk_base=chunk_base,
                        rowc_base=rowc_base, rows_base=rows_base, sum_rows=settings.sum_rows)
    denom_on_device = index_target and plan.reduction == "mean" and want_out
    scalars = _scalars(plan, acc_dtype)
    target_kind = TargetKind.NONE
    if is_ce:
        target_kind = TargetKind.INDEX if plan.loss.target_is_index else TargetKind.PROB
    variant = kernels.Variant(
        op="softmax" if plan.op == "log_softmax" else plan.op, layout=layout,
        phase="stats" if layout == "split" else "fused",
        acc64=acc_dtype == np.float64, target=target_kind,
        has_weight=is_ce and plan.loss.weight is not None, softcap=is_ce and plan.loss.softcap > 0,
        want_loss=want_loss, want_grad=want_out and is_ce, reduce=reduce,
        has_grad_output=has_grad_output, denom_on_device=denom_on_device, metrics=metrics,
        cache=cache)

    # The kernels take their named tuples as plain ones and name them again on entry:
    # Numba types a plain tuple argument in C, a named one in Python, at every launch.
    x_geom, t_geom, w_geom, g_geom, out_geom = map(tuple, (x_geom, t_geom, w_geom, g_geom,
                                                           out_geom))
    dims = tuple(map(int, dims))
    # With out= the caller's buffer must stay untouched on a bad index: check first.
    check_first = index_target and plan.loss.validate and plan.out is not None
    args = (logits, x_geom, target, t_geom, weight, w_geom, grad_output, g_geom, loss_flat,
            metrics_flat, out_flat, out_geom, acc_flat, int_flat, dims, scalars)
    sum_args = (target, t_geom, weight, w_geom, loss_flat, acc_flat, int_flat, dims, scalars)
    sum_launch = (sum_tiles, kernels.SUM_THREADS, launch.stream)
    # (A kernel's first launch in a process compiles it: without the inliner's copies.)
    with copies_skipped(cuda=True):
        if denom_on_device or check_first:
            kernels.denominator_kernel(variant.acc64, variant.has_weight)[sum_launch](*sum_args)
            if check_first:
                _raise_on_bad_index(launch, plan, int_ws, target, t_geom)
        kernels.kernel_for(variant)[grid, threads, launch.stream](*args)
        if layout == "split" and want_out:
            apply = variant._replace(phase="apply", metrics=False)
            kernels.kernel_for(apply)[grid, threads, launch.stream](*args)
        if reduce:
            kernels.row_sums_kernel(variant.acc64)[sum_launch](*sum_args)

    if index_target and plan.loss.validate and not check_first:
        _raise_on_bad_index(launch, plan, int_ws, target, t_geom)
    return results


def _scalars(plan, acc_dtype):
    """The kernels' ``Scalars`` of a plan, as a plain tuple of ``acc_dtype`` values."""
    is_ce = plan.op == "cross_entropy"
    mean = plan.reduction == "mean"
    eps = plan.loss.label_smoothing if is_ce else 0.0
    softcap = plan.loss.softcap if is_ce else 0.0
    scalars = kernels.Scalars(
        eps=eps, eps_over_c=eps / plan.logits.n_classes, z_loss=plan.loss.z_loss if is_ce else 0.0,
        softcap=softcap, inv_softcap=1.0 / softcap if softcap else 0.0,
        grad_scale=plan.grad_scale if is_ce else 1.0, is_mean=1.0 if mean else 0.0,
        inv_rows=(1.0 / plan.logits.n_rows if mean and is_ce and not plan.loss.target_is_index
                  else 1.0),
        log_output=1.0 if plan.op == "log_softmax" else 0.0)
    return tuple(map(acc_dtype.type, scalars))


def _raise_on_bad_index(launch, plan, int_ws, target, t_geom):
    """Read the error flag (n_rows - first bad row, 0 if none) and raise for that row."""
    flag = int(launch.read(int_ws)[kernels.ERROR])
    if flag == 0:
        return
    row = plan.logits.n_rows - flag
    o, i = divmod(row, plan.logits.inner)
    offset, s_outer, _, s_inner = t_geom
    at = offset + o * s_outer + i * s_inner
    value = int(target[at:at + 1].copy_to_host()[0])
    position = np.unravel_index(row, plan.logits.result_shape) if plan.logits.result_shape else ()
    raise index_error(tuple(int(p) for p in position), value, plan.logits.n_classes,
                      plan.loss.ignore_index)


def _check_uint64_targets(launch, plan):
    """Check uint64 class indices on the host, before anything is launched.

    The kernels read class indices as int64, where a uint64 value from 2**63 on
    wraps (onto ignore_index, even) and would be reported wrapped; this rare
    dtype is read back once and checked exactly instead.
    """
    view = plan.loss.target
    flat, offset = launch.flat(view.array, view.shape, view.strides)
    host = np.asarray(launch.read(flat))
    rows = np.lib.stride_tricks.as_strided(
        host[offset:], view.shape, tuple(s * host.dtype.itemsize for s in view.strides))
    rows = rows.reshape(-1)
    bad = rows >= np.uint64(plan.logits.n_classes)
    if plan.loss.ignore_index >= 0:
        bad &= rows != np.uint64(plan.loss.ignore_index)
    if bad.any():
        row = int(np.argmax(bad))
        result_shape = plan.logits.result_shape
        position = np.unravel_index(row, result_shape) if result_shape else ()
        raise index_error(tuple(int(p) for p in position), int(rows[row]), plan.logits.n_classes,
                          plan.loss.ignore_index)
