"""Fused linear layer and softmax cross-entropy, without the N x C logits.

The logits ``features @ weight.T + bias`` are formed a tile of rows x classes at a
time, in a buffer reused from tile to tile, and never whole. Two layouts, picked
by the tile's width:

- whole rows (a tile holds every class of its rows; the default whenever
  ``_MIN_ROWS`` such rows fit the budget): per block of rows, one GEMM forms the
  logits, nbxent's fused kernel turns them into the gradient in place
  (``cross_entropy_with_grad(out=logits)``: one read, one write; on the CPU half the
  rows in each of ``_in_shares``'s two shares), and two GEMMs carry it to d_features
  and d_weight. Three GEMMs in all, as without fusion.
- split classes (a row of C classes over the budget, or ``chunk=(rows,
  classes)``): per block of rows, a first pass forms each class chunk's logits
  and its exact per-row partials (``nbxent.dask.partials``: the log-sum-exp kept
  as shift + log-sum, the target's logit, the smoothing sums), merged across the
  chunks; a second pass forms them again and writes each chunk's gradient from
  the merged log-sum-exp. The logits cost two GEMMs here: four in all.

Gradients accumulate over the tiles: d_features[rows] over class chunks,
d_weight[classes] and d_bias[classes] over row blocks, each product written
straight into its destination the first time and through a scratch buffer (an
eighth of the budget; d_weight then goes a block of classes at a time) after that.

The code is written over the array module of the features (``numpy`` on the CPU,
``cupy`` on the GPU: NumPy's BLAS or cuBLAS for the GEMMs, nbxent's CPU or CUDA
kernels for the rest). The GPU path has not been run on a GPU (none was
available); its tests run wherever CuPy sees one. Dask arrays: each block of
rows runs this same code, and the blocks' d_weight and d_bias are summed.
"""

import dataclasses

import numpy as np

from . import api
from ._dispatch import choose_backend
from ._plan import make_linear_plan
from .dask import partials

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad", "tile_shape"]

# The default budget for the buffers: this fraction of the N x C logits, and at least
# _MIN_BUDGET bytes (small problems run as one tile). Of a budget, an eighth goes to the
# scratch of the gradients' products, the rest to the logits tile.
_DEFAULT_FRACTION = 12
_SCRATCH_SHARE = 8
_MIN_BUDGET = 4 << 20
# Fewer rows of whole classes than this per tile and the classes are split: GEMMs of a
# handful of rows run far below the BLAS's peak.
_MIN_ROWS = 32
# Bytes per logit of a split tile: the logits, and the float64 temporaries of the
# partials and of the chunk's gradient (nbxent.dask.partials works in float64).
_SPLIT_BYTES_PER_LOGIT = 48


def tile_shape(n_rows, n_features, n_classes, itemsize, *, chunk=None, memory_budget=None):
    """(rows, classes) of the tiles a fused call works in.

    ``chunk`` is (rows, classes or None: all), as checked by the plan; otherwise the
    tile fits ``memory_budget`` bytes (default: 1/12 of the N x C logits, at least
    4 MiB): 7/8 of it for the logits tile (split: the logits and their float64
    temporaries), 1/8 for the scratch of the gradients' products.

    Examples
    --------
    >>> tile_shape(4096, 512, 32768, 4)
    (298, 32768)
    >>> tile_shape(4096, 512, 32768, 4, memory_budget=1 << 20)
    (32, 597)
    """
    if chunk is not None:
        rows, classes = chunk
        return max(1, min(rows, n_rows)), min(classes or n_classes, n_classes)
    budget = memory_budget
    if budget is None:
        budget = max(n_rows * n_classes * itemsize // _DEFAULT_FRACTION, _MIN_BUDGET)
    budget -= budget // _SCRATCH_SHARE
    rows = budget // (itemsize * n_classes)
    if rows >= min(n_rows, _MIN_ROWS):
        return max(1, min(rows, n_rows)), n_classes
    rows = max(1, min(n_rows, _MIN_ROWS))
    return rows, max(1, min(n_classes, budget // (_SPLIT_BYTES_PER_LOGIT * rows)))


# ---------------------------------------------------------------- one tile

def _logits(xp, features, weight, bias, buffer):
    """``features @ weight.T + bias`` into the front of the flat ``buffer``, in shares of
    the classes (``_in_shares``)."""
    out = buffer[:features.shape[0] * weight.shape[0]].reshape(features.shape[0], weight.shape[0])

    def classes(k, n_shares):
        part = _share(weight.shape[0], k, n_shares)
        xp.matmul(features, weight[part].T, out=out[:, part])
        if bias is not None:
            out[:, part] += bias[part]

    _in_shares(xp, classes)
    return out


def _add_product(xp, dest, a, b, scratch, first):
    """``dest = a @ b`` when ``first``, else ``dest += a @ b`` through ``scratch``."""
    if first:
        xp.matmul(a, b, out=dest)
        return
    part = scratch[:dest.size].reshape(dest.shape)
    xp.matmul(a, b, out=part)
    dest += part


def _accumulate(xp, grads, grad, features, weight, rows, classes, scratch, *, first_rows,
                first_classes):
    """Add the gradient of one tile's logits to d_features, d_weight and d_bias.

    ``grad`` is d loss / d logits over (rows, classes); ``features`` and ``weight``
    the tile's rows and classes; ``scratch`` holds a block of d_features (its first
    rows x d elements) and then blocks of d_weight, which goes a block of classes
    at a time. Each share (``_in_shares``) takes its share of the rows of d_features, of
    the classes of d_weight and d_bias, and of the scratch: equal work.
    """
    n_rows, n_features = features.shape
    d_features, d_weight = grads[0][rows], grads[1][classes]
    d_bias = None if grads[2] is None else grads[2][classes]
    features_scratch = None if scratch is None else scratch[:n_rows * n_features]
    weight_scratch = None if scratch is None else scratch[n_rows * n_features:]

    def rows_and_classes(k, n_shares):
        own_rows = _share(n_rows, k, n_shares)
        _add_product(xp, d_features[own_rows], grad[own_rows], weight,
                     None if scratch is None else features_scratch[own_rows.start * n_features:],
                     first_classes)
        own_classes = _share(len(d_weight), k, n_shares)
        own_scratch = (None if scratch is None
                       else weight_scratch[_share(weight_scratch.size, k, n_shares)])
        step = max(1, own_classes.stop - own_classes.start if scratch is None
                   else own_scratch.size // n_features)
        for start in range(own_classes.start, own_classes.stop, step):
            block = slice(start, min(start + step, own_classes.stop))
            _add_product(xp, d_weight[block], grad[:, block].T, features, own_scratch,
                         first_rows)
        if d_bias is not None:
            d_bias[own_classes] += grad[:, own_classes].sum(axis=0)

    _in_shares(xp, rows_and_classes)


def _share(n, k, n_shares):
    """Share ``k`` of ``n_shares`` nearly equal parts of ``range(n)``, as a slice."""
    return slice(k * n // n_shares, (k + 1) * n // n_shares)


def _in_shares(xp, work):
    """``work(k, n_shares)`` for each share k: two at once on the CPU, each GEMM on one
    BLAS thread and each kernel on one Numba thread (NumPy with threadpoolctl installed),
    else one share on the BLAS's and Numba's threads.

    A tile's d_features product contracts its few rows over all C classes: a
    multithreaded BLAS meets at a barrier every few hundred classes, and on a
    loaded machine each barrier waits for a descheduled thread (measured on the
    2-core VM: 0.36 s for 298 x 32768 x 512 on two OpenBLAS threads, 0.11 s on
    one). Two single-threaded GEMMs side by side keep both cores busy without
    barriers. Every GEMM of a call runs so, in equal shares: a multithreaded BLAS
    call before a pair left the BLAS's worker thread spinning, waiting for more work,
    on the core the pair needed (on a quiet machine the pair then ran slower than the
    two products in turn: benchmarks/RESULTS.md).
    """
    if not (xp is np and _blas_controller() is not None):
        work(0, 1)
        return
    limit = _blas_controller().limit(limits=1, user_api="blas")
    try:
        second = _worker().submit(_on_one_kernel_thread, work, 1, 2)
        try:
            _on_one_kernel_thread(work, 0, 2)
        finally:
            second.result()
    finally:
        limit.restore_original_limits()


def _on_one_kernel_thread(work, k, n_shares):
    """``work(k, n_shares)`` with nbxent's CPU kernels on the calling thread alone.

    The shares are the parallelism. A kernel on Numba's threads would leave its
    OpenMP worker spinning for milliseconds after it returns (libgomp's default wait
    policy), on a core the other share's GEMM needs (benchmarks/RESULTS.md, "The linear
    head's kernel on one thread a share"). Numba's thread count is the calling thread's
    own.
    """
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        work(k, n_shares)
    finally:
        numba.set_num_threads(previous)


_shared = {}


def _blas_controller():
    """threadpoolctl's controller of the BLAS libraries, None when it is not installed."""
    if "controller" not in _shared:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _shared["controller"] = None
        else:
            _shared["controller"] = ThreadpoolController()
    return _shared["controller"]


def _worker():
    if "worker" not in _shared:
        from concurrent.futures import ThreadPoolExecutor

        _shared["worker"] = ThreadPoolExecutor(1, thread_name_prefix="nbxent-linear")
    return _shared["worker"]


def scratch_size(tile_rows, tile_classes, n_features, itemsize, *, chunk=None,
                 memory_budget=None, n_logits=0):
    """Elements of the scratch buffer: a block of d_features (tile_rows x d) and an
    eighth of the budget (see ``tile_shape``), at least a row for each of the two
    shares (``_in_shares``), for d_weight."""
    budget = memory_budget
    if chunk is not None:
        budget = tile_rows * tile_classes * itemsize
    elif budget is None:
        budget = max(n_logits * itemsize // _DEFAULT_FRACTION, _MIN_BUDGET)
    return tile_rows * n_features + max(budget // _SCRATCH_SHARE // itemsize, 2 * n_features)


def _class_part(a, classes):
    return None if a is None else a[classes]


def _whole_rows(xp, plan, rows, tile, denominators, grads, first_rows):
    """Loss part of one block of whole rows (module docstring); gradients added."""
    features, buffer, scratch = plan.features[rows], tile[0], tile[1]
    logits = _logits(xp, features, plan.weight, plan.bias, buffer)
    options = dict(ignore_index=plan.ignore_index, label_smoothing=plan.label_smoothing,
                   z_loss=plan.z_loss, softcap=plan.softcap or None, validate=False,
                   stream=None)
    target, grad_output = plan.target[rows], _rows_of(plan.grad_output, rows)
    losses = {}

    def loss_and_gradient(k, n_shares):
        """The loss of the share's rows; their gradient in place of their logits."""
        own = _share(len(logits), k, n_shares)
        losses[k] = partials.row_cross_entropy(
            logits[own], target[own], None, plan.class_weight, _rows_of(grad_output, own),
            denominators, axis=1, options=options, reduction=plan.reduction, want_loss=True,
            want_grad=plan.want_grad, out=logits[own])[0]

    _in_shares(xp, loss_and_gradient)
    if plan.want_grad:
        _accumulate(xp, grads, logits, features, plan.weight, rows, slice(None), scratch,
                    first_rows=first_rows, first_classes=True)
    parts = [losses[k] for k in sorted(losses)]
    if plan.reduction == "none":
        return xp.concatenate(parts)
    return xp.stack([sum(parts[1:], parts[0]).reshape(()), xp.zeros((), np.float64)])


def _split_classes(xp, plan, rows, tile, denominators, grads, first_rows):
    """Loss part of one block of rows whose classes are split (module docstring)."""
    features, buffer, scratch = plan.features[rows], tile[0], tile[1]
    target = plan.target[rows]
    width = tile[2]
    chunks = [slice(start, min(start + width, plan.n_classes))
              for start in range(0, plan.n_classes, width)]

    def chunk_arguments(classes):
        logits = _logits(xp, features, plan.weight[classes], _class_part(plan.bias, classes),
                         buffer)
        chunk_target = target if plan.target_is_index else target[:, classes]
        return logits, chunk_target, _class_part(plan.class_weight, classes), (classes,)

    keywords = dict(axis=1, n_classes=plan.n_classes, ignore_index=plan.ignore_index,
                    label_smoothing=plan.label_smoothing, softcap=plan.softcap)
    merged = None
    for classes in chunks:
        logits, chunk_target, class_weight, where = chunk_arguments(classes)
        parts = partials.loss_partials(logits, chunk_target, class_weight, where, None,
                                       validate=False, **keywords)
        merged = parts if merged is None else partials.combine_loss_partials(
            xp.concatenate([merged, parts], axis=2), 2, True)
    merged = merged[..., 0]
    if plan.want_grad:
        grad_output = _rows_of(plan.grad_output, rows)
        for k, classes in enumerate(chunks):
            logits, chunk_target, class_weight, where = chunk_arguments(classes)
            grad = partials.grad_chunk(logits, chunk_target, class_weight, merged, grad_output,
                                       denominators, where, z_loss=plan.z_loss,
                                       reduction=plan.reduction, **keywords)
            _accumulate(xp, grads, grad, features, plan.weight[classes], rows, classes,
                        scratch, first_rows=first_rows, first_classes=k == 0)
    ce, lse_squared = partials.loss_rows(
        merged, target if plan.target_is_index else None, n_classes=plan.n_classes,
        ignore_index=plan.ignore_index, label_smoothing=plan.label_smoothing)
    if plan.reduction == "none":
        return (ce + plan.z_loss * lse_squared).astype(plan.loss_dtype)
    return xp.stack([ce.sum(), plan.z_loss * lse_squared.sum()])


def _rows_of(grad_output, rows):
    """The rows' part of grad_output: itself when a scalar or 0-d."""
    return grad_output[rows] if np.ndim(grad_output) == 1 else grad_output


# ---------------------------------------------------------------- in memory

def denominators_of(plan):
    """[D, N] of 'mean' (summed weights of the counted targets, their number), float64."""
    xp = partials.namespace(plan.features)
    if not plan.target_is_index:
        return xp.full(2, float(plan.n_rows))
    parts = partials.denominator_parts(plan.target, plan.class_weight,
                                       ignore_index=plan.ignore_index, n_classes=plan.n_classes)
    return parts.sum(axis=1)


def run_rows(plan, denominators, first_row=0):
    """(loss part, d_features, d_weight, d_bias) of a batched plan over in-memory arrays.

    The loss part is the per-row loss for 'none', else float64 [cross-entropy sum,
    z-loss sum], which ``_finish`` turns into the loss (for 'mean' the first is
    divided by D, the second by N: with whole rows the kernel folds the z-loss, as
    z_loss * D / N, into the first, and the second is 0).
    Class indices are checked first, positions counted from ``first_row``.
    """
    xp = partials.namespace(plan.features)
    n_rows, n_classes, n_features = plan.n_rows, plan.n_classes, plan.n_features
    if plan.validate and plan.target_is_index:
        partials.check_targets(plan.target, (slice(first_row, first_row + n_rows),),
                               n_classes, plan.ignore_index)
    rows_per_tile, width = tile_shape(n_rows, n_features, n_classes, plan.dtype.itemsize,
                                      chunk=plan.chunk, memory_budget=plan.memory_budget)
    blocks = [slice(start, min(start + rows_per_tile, n_rows))
              for start in range(0, n_rows, rows_per_tile)]
    split = width < n_classes
    grads = scratch = None
    if plan.want_grad:
        grads = (xp.empty((n_rows, n_features), plan.dtype),
                 xp.zeros((n_classes, n_features), plan.dtype),
                 None if plan.bias is None else xp.zeros(n_classes, plan.dtype))
        if len(blocks) > 1 or split:
            scratch = xp.empty(scratch_size(
                rows_per_tile, width, n_features, plan.dtype.itemsize, chunk=plan.chunk,
                memory_budget=plan.memory_budget, n_logits=n_rows * n_classes), plan.dtype)
    tile = (xp.empty(rows_per_tile * width, plan.dtype), scratch, width)
    block_loss = _split_classes if split else _whole_rows
    parts = [block_loss(xp, plan, rows, tile, denominators, grads, k == 0)
             for k, rows in enumerate(blocks)]
    if plan.reduction == "none":
        loss = xp.concatenate(parts) if parts else xp.empty(0, plan.loss_dtype)
    else:
        loss = sum(parts, xp.zeros(2, np.float64))
    return (loss, *(grads or (None, None, None)))


def _finish(plan, part, denominators):
    """The loss from a block's part: per row, or the reduced 0-d array."""
    if plan.reduction == "none":
        return part
    # z_loss=1: the second sum holds the z-loss already (see run_rows).
    return partials.finish_total(part[0], part[1], denominators, reduction=plan.reduction,
                                 z_loss=1.0, loss_dtype=plan.loss_dtype)


def _in_memory(plan):
    xp = partials.namespace(plan.features)
    unbatched = not plan.batched
    if unbatched:  # one row
        plan = dataclasses.replace(
            plan, features=plan.features[None], target=plan.target[None],
            grad_output=plan.grad_output if np.ndim(plan.grad_output) == 0 else
            xp.reshape(plan.grad_output, (1,)))
    denominators = denominators_of(plan) if plan.reduction == "mean" else None
    part, d_features, d_weight, d_bias = run_rows(plan, denominators)
    loss = _finish(plan, part, denominators)
    if unbatched:
        loss = loss.reshape(())
        d_features = None if d_features is None else d_features[0]
    return loss, d_features, d_weight, d_bias


# ---------------------------------------------------------------- Dask

def _dask_block(plan, features, target, grad_output, weight, bias, class_weight,
                denominators, first_row):
    plan = dataclasses.replace(plan, features=features, target=target, grad_output=grad_output,
                               weight=weight, bias=bias, class_weight=class_weight,
                               n_rows=features.shape[0])
    return run_rows(plan, denominators, first_row)


def _dask_denominators(plan, target_blocks):
    from dask import delayed

    if not plan.target_is_index:
        return np.full(2, float(plan.n_rows))

    def block_sum(target, class_weight):
        return partials.denominator_parts(target, class_weight, ignore_index=plan.ignore_index,
                                          n_classes=plan.n_classes).sum(axis=1)
    return delayed(sum)([delayed(block_sum)(t, plan.class_weight) for t in target_blocks])


def _dask(plan):
    """(loss, d_features, d_weight, d_bias) as lazy Dask arrays: each block of rows is one
    ``run_rows`` call; d_weight and d_bias are the sums of the blocks'."""
    import dask.array as da
    from dask import delayed

    if not plan.batched:
        raise NotImplementedError("Dask features must be batched (N, d); compute a 1-D "
                                  "input with NumPy instead")
    features = da.asarray(plan.features).rechunk({1: -1})
    row_chunks = features.chunks[0]
    target = da.asarray(plan.target).rechunk((row_chunks,) + ((plan.n_classes,) if
                                                              not plan.target_is_index else ()))
    target_blocks = target.to_delayed().ravel()
    if np.ndim(plan.grad_output) == 1:
        grad_blocks = da.asarray(plan.grad_output).rechunk((row_chunks,)).to_delayed().ravel()
    else:
        grad_blocks = [plan.grad_output] * len(row_chunks)
    denominators = _dask_denominators(plan, target_blocks) if plan.reduction == "mean" else None
    # The blocks get the arrays as arguments, so that Dask computes each input once.
    bare = dataclasses.replace(plan, features=None, target=None, grad_output=None, weight=None,
                               bias=None, class_weight=None)
    results, first_row = [], 0
    for f, t, g, n in zip(features.to_delayed().ravel(), target_blocks, grad_blocks, row_chunks):
        results.append(delayed(_dask_block, nout=4)(
            bare, f, t, g, plan.weight, plan.bias, plan.class_weight, denominators, first_row))
        first_row += n
    dtype, n_features, n_classes = plan.dtype, plan.n_features, plan.n_classes
    if plan.reduction == "none":
        loss = da.concatenate([da.from_delayed(r[0], (n,), plan.loss_dtype)
                               for r, n in zip(results, row_chunks)])
    else:
        total = delayed(sum)([r[0] for r in results])
        loss = da.from_delayed(delayed(_finish)(bare, total, denominators), (), plan.loss_dtype)
    if not plan.want_grad:
        return loss, None, None, None
    d_features = da.concatenate([da.from_delayed(r[1], (n, n_features), dtype)
                                 for r, n in zip(results, row_chunks)])
    d_weight = da.stack([da.from_delayed(r[2], (n_classes, n_features), dtype)
                         for r in results]).sum(axis=0)
    d_bias = None
    if plan.bias is not None:
        d_bias = da.stack([da.from_delayed(r[3], (n_classes,), dtype) for r in results]).sum(axis=0)
    return loss, d_features, d_weight, d_bias


# ---------------------------------------------------------------- public functions

def _arrays_for(kind, arrays):
    """The inputs in the array kind of ``kind``'s GEMMs: NumPy, CuPy, or Dask as given."""
    if kind == "cuda":
        import cupy  # cuBLAS's GEMMs; nbxent's CUDA kernels for the rest

        return {name: x if x is None or isinstance(x, (int, float)) else cupy.asarray(x)
                for name, x in arrays.items()}
    if kind == "cpu":
        from ._dispatch import get_backend

        module = get_backend("cpu")
        return {name: x if isinstance(x, (int, float)) else api._as_input(module, x, name)
                for name, x in arrays.items()}
    return arrays


def _call(features, weight, target, options, *, want_grad, grad_output=1.0):
    arrays = dict(features=features, weight=weight, target=target, bias=options.pop("bias"),
                  class_weight=options.pop("class_weight"), grad_output=grad_output)
    backend = options.pop("backend")
    kind = backend if backend is not None else choose_backend(arrays)
    if kind not in ("cpu", "cuda", "dask"):
        raise ValueError(f"backend must be 'cpu', 'cuda' or 'dask'; got {kind!r}")
    arrays = _arrays_for(kind, arrays)
    plan = make_linear_plan(arrays.pop("features"), arrays.pop("weight"), arrays.pop("target"),
                            **arrays, **options, want_grad=want_grad)
    return _dask(plan) if kind == "dask" else _in_memory(plan)


def linear_cross_entropy(features, weight, target, *, bias=None, class_weight=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                         softcap=None, validate=True, chunk=None, memory_budget=None,
                         backend=None):
    """``cross_entropy(features @ weight.T + bias, target)`` without the N x C logits.

    The loss of a classifier head (``torch.nn.functional.linear_cross_entropy``'s
    semantics on every option the two share): the logits are formed a tile at a
    time (a few rows, all classes; or a few rows and a chunk of classes, the
    log-sum-exp then merged exactly across the chunks) and never held whole.

    Parameters
    ----------
    features : array (N, d) or (d,), float32 or float64
        The layer's input (torch's ``input``). NumPy, CuPy or Dask (row-chunked).
    weight : array (C, d), the features' dtype
        The layer's weight (torch's ``linear_weight``).
    target : array
        Class indices (any integer dtype) of shape (N,), or probabilities (N, C).
    bias : array (C,), optional
        The layer's bias (torch's ``linear_bias``).
    class_weight : array (C,), optional
        Per-class weights: ``cross_entropy``'s ``weight`` (torch's ``weight``).
    ignore_index, reduction, label_smoothing, z_loss, softcap, validate
        As in ``nbxent.cross_entropy``. Unlike torch's ``ignore_index=None``, the
        default is -100 for either kind of target (a negative value is accepted
        with probabilities, as in ``cross_entropy``).
    chunk : int or (int, int), optional
        Rows per tile (all classes), or (rows, classes) per tile.
    memory_budget : int, optional
        Bytes for the tile buffers instead of ``chunk``. Default: 1/16 of the N x C
        logits (at least 4 MiB); see ``nbxent.linear.tile_shape``.
    backend : {'cpu', 'cuda', 'dask'}, optional
        Overrides the choice made from the arrays' type.

    Returns
    -------
    loss : array
        (N,) for 'none' (a 0-d array for a 1-D input), else 0-d; float32 for
        float32 features, float64 for float64; in the features' array kind.

    Notes
    -----
    Memory beyond inputs and outputs: the tile buffer (at most ``memory_budget``).
    The GEMMs are NumPy's (its BLAS) on the CPU and CuPy's (cuBLAS) on the GPU; the
    GPU path is the CPU one over CuPy and has not been run on a GPU here.
    ``chunk=(rows, classes)`` narrower than C forms every logit twice when a
    gradient is asked for (two passes: the log-sum-exp, then the gradient).

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((6, 4)).astype(np.float32)
    >>> w = rng.standard_normal((10, 4)).astype(np.float32)
    >>> t = np.array([1, 0, 9, 3, -100, 2])
    >>> loss = nbxent.linear_cross_entropy(x, w, t, chunk=(4, 3))
    >>> bool(np.isclose(loss, nbxent.cross_entropy(x @ w.T, t)))
    True
    """
    options = dict(bias=bias, class_weight=class_weight, ignore_index=ignore_index,
                   reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                   softcap=softcap, validate=validate, chunk=chunk, memory_budget=memory_budget,
                   backend=backend)
    return _call(features, weight, target, options, want_grad=False)[0]


def linear_cross_entropy_with_grad(features, weight, target, *, bias=None, class_weight=None,
                                   ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                   z_loss=0.0, softcap=None, validate=True, grad_output=1.0,
                                   chunk=None, memory_budget=None, backend=None):
    """``linear_cross_entropy`` and its gradients with respect to features, weight and bias.

    Keywords as in ``linear_cross_entropy``, plus ``grad_output`` (a scalar, or for
    ``reduction='none'`` an array of the loss's shape), as in ``cross_entropy_grad``.

    Returns
    -------
    loss, d_features, d_weight, d_bias
        d_features has the features' shape, d_weight (C, d), d_bias (C,) or None
        when ``bias`` is None; all in the features' dtype and array kind.
        Equal to materialising the logits z, ``g = cross_entropy_grad(z, ...)``,
        then ``g @ weight``, ``g.T @ features`` and ``g.sum(0)``.

    Notes
    -----
    Three GEMMs with whole-row tiles (the default), four with split classes.
    d_weight and d_bias accumulate over the blocks of rows in the features'
    dtype. Dask features: one block of rows per task, d_weight and d_bias summed
    across them (each task holds a (C, d) partial).

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((5, 3)), rng.standard_normal((7, 3)), np.zeros(7)
    >>> t = np.array([0, 6, 2, 2, 1])
    >>> loss, dx, dw, db = nbxent.linear_cross_entropy_with_grad(x, w, t, bias=b, chunk=2)
    >>> g = nbxent.cross_entropy_grad(x @ w.T + b, t)
    >>> bool(np.allclose(dx, g @ w) and np.allclose(dw, g.T @ x) and np.allclose(db, g.sum(0)))
    True
    """
    options = dict(bias=bias, class_weight=class_weight, ignore_index=ignore_index,
                   reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                   softcap=softcap, validate=validate, chunk=chunk, memory_budget=memory_budget,
                   backend=backend)
    return _call(features, weight, target, options, want_grad=True, grad_output=grad_output)
