"""nbxent's public functions: check the call, make a plan, hand it to a backend.

Every function here works on NumPy arrays (CPU backend), on CuPy arrays or
any ``__cuda_array_interface__`` object (CUDA backend), and on Dask arrays
(Dask backend, ``nbxent[dask]``: lazy results, nbxent's kernels per chunk;
NumPy arrays passed beside a Dask array are wrapped as Dask arrays, and
``out=`` is a TypeError since Dask arrays are immutable). The backend is picked
from the arrays' type, or named with ``backend=``. Results come back in the
caller's array kind.

Host arrays of other libraries (PyTorch CPU tensors, JAX CPU arrays, anything
exporting DLPack or ``__array__``) run on the CPU backend, read without a copy
where the producer allows it, and their results come back as NumPy arrays
(``out=`` such an array is written through and returned as given). An argument
that cannot be read as an array is a ``TypeError`` naming it.
"""

import numpy as np

from . import _information, _metrics, _training
from ._dispatch import backend_of, choose_backend, get_backend
from ._plan import (check_base, check_kl_target, check_mean_denominator, check_training,
                    conversion_error, make_loss_plan, make_normalize_plan)

__all__ = ["cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad", "logsumexp",
           "log_softmax", "softmax", "entropy", "conditional_entropy", "kl_divergence",
           "kl_divergence_grad", "kl_divergence_with_grad", "backend_of", "mean_denominator"]


def _backend(backend, **arrays):
    return get_backend(backend if backend is not None else choose_backend(arrays))


def _as_input(module, x, name):
    """The backend's array for argument ``name`` (None stays None); a producer's failure
    (a ragged list, a broken ``__array__``) becomes nbxent's TypeError naming it."""
    if x is None:
        return None
    try:
        return module.asarray(x)
    except Exception as exc:  # noqa: BLE001 - whatever the foreign object raised
        raise conversion_error(name, x, exc) from exc


def _as_out(module, out):
    """``out=`` as the backend's array: only array objects (a list would be copied, and
    the result lost), read without a copy (a PyTorch CPU tensor through DLPack)."""
    if out is None or (getattr(out, "shape", None) is None or getattr(out, "dtype", None) is None):
        return out  # the plan's TypeError names what out= must be
    return _as_input(module, out, "out")


def _host_value(x):
    """Whether ``x`` is read on the host whatever the backend: anything but a device or
    Dask array (None, a number, a NumPy array; the plan rejects what is not a number)."""
    return getattr(x, "shape", None) is None or isinstance(x, (np.generic, np.ndarray))


def _loss_call(logits, target, options, *, want_loss, want_grad, grad_output=1.0, out=None,
               log_target=None, metrics=None, top_k=5, raw_metrics=False):
    """(loss or None, grad or None) of a cross-entropy call, or with ``log_target`` True or
    False of a KL divergence (``nbxent._information``): the cross-entropy against the
    target's probabilities, each row's loss plus the target's own term. With ``metrics``
    (names, ``nbxent._metrics``) a third item: the dict of metric arrays, or with
    ``raw_metrics`` the backend's float64 rows, shaped (N_METRICS, *rows' shape) (the
    Dask backend's chunks take these)."""
    training = {name: options.pop(name) for name in ("sample_weight", "denominator", "empty")}
    denominator = training["denominator"]
    module = _backend(options.pop("backend"), logits=logits, target=target,
                      weight=options["weight"], grad_output=grad_output, out=out,
                      sample_weight=training["sample_weight"],
                      denominator=None if _host_value(denominator) else denominator)
    logits = _as_input(module, logits, "logits")
    target = _as_input(module, target, "target")
    if log_target is not None:
        check_kl_target(target, logits, log_target)
    options["weight"] = _as_input(module, options["weight"], "weight")
    if not isinstance(grad_output, (int, float, np.generic)):
        grad_output = _as_input(module, grad_output, "grad_output")
    sample_weight = _as_input(module, training["sample_weight"], "sample_weight")
    if not _host_value(denominator):
        denominator = _as_input(module, denominator, "denominator")
    out_array = _as_out(module, out)

    def make_plan(target, grad_output=grad_output, out=out_array, **changes):
        return make_loss_plan(logits, target, **dict(options, **changes), want_loss=want_loss,
                              want_grad=want_grad, grad_output=grad_output, out=out,
                              copy_contiguous=module.copy_contiguous)

    plan = make_plan(target)
    names = _metrics.check_metrics(metrics, top_k, plan.loss.target_is_index)
    check_training(logits, target, axis=plan.logits.axis, sample_weight=sample_weight,
                   denominator=denominator, empty=training["empty"],
                   reduction=plan.reduction, out=out_array)
    if isinstance(denominator, np.ndarray):
        denominator = float(denominator)
    terms = None
    if log_target is not None:
        target, terms = _information.kl_target(module, plan, log_target=log_target,
                                               want_terms=want_loss)
        if log_target:
            plan = make_plan(target)
    metric_rows = []

    def with_metrics(loss, grad):
        if names is None:
            return loss, grad
        if raw_metrics:  # (a copy: the CPU backend's rows are reused by its next call)
            rows = metric_rows[0].reshape((_metrics.N_METRICS,) + plan.logits.result_shape)
            return loss, grad, rows.astype(np.float64)
        arrays = _metrics.metric_arrays(
            module.namespace_of(logits), metric_rows[0], names, top_k=top_k,
            result_shape=plan.logits.result_shape, loss_dtype=plan.logits.loss_dtype)
        # (in the caller's kind: a Numba device array's metrics were made on the host)
        return loss, grad, {name: module.from_namespace(a, logits) for name, a in arrays.items()}

    def fused(a_plan):
        """The backend's (loss, grad), and the metric rows of the first pass (a second,
        where the training options take one, would give the same)."""
        if names is None or metric_rows:
            return module.cross_entropy(a_plan)
        loss, grad, rows = module.cross_entropy(a_plan, metrics=names, top_k=top_k)
        if not metric_rows:
            metric_rows.append(module.to_namespace(rows))
        return loss, grad

    if terms is None and not _training.wanted(sample_weight, denominator, training["empty"],
                                              plan.reduction):
        loss, grad = fused(plan)
        return with_metrics(loss, _copied_back(module, plan, grad, out))

    def run(z_loss, scale, fresh_out):
        """The backend's fused pass with reduction='none' and per-row grad_output."""
        destination = None if fresh_out else out_array
        rows_plan = make_plan(target, grad_output=scale, out=destination, reduction="none",
                              z_loss=z_loss)
        rows, grad = fused(rows_plan)
        if terms is not None and rows is not None:
            rows = terms + module.to_namespace(rows)
        return rows, _copied_back(module, rows_plan, grad, destination)

    loss, grad = _training.weighted_loss(module, plan, run, sample_weight=sample_weight,
                                         denominator=denominator, empty=training["empty"],
                                         grad_output=grad_output)
    return with_metrics(loss, grad if out is None or grad is None else out)


def _copied_back(module, plan, result, out):
    """``result``, or ``out=`` holding it when no strided view could reach ``out``;
    ``out`` itself (the caller's object, a PyTorch tensor say) whenever it was given."""
    if result is None:
        return result
    if plan.copy_back is not None:
        module.copy_into(plan.copy_back, result)
    return result if out is None else out


def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                  validate=True, backend=None, stream=None, sample_weight=None,
                  denominator=None, empty="nan", metrics=None, top_k=5):
    """Softmax cross-entropy of ``logits`` against ``target``, numerically stable.

    Semantics are PyTorch's ``torch.nn.functional.cross_entropy`` on every option
    the two share, with ``axis`` in place of torch's class dimension 1.

    Parameters
    ----------
    logits : array, float16 / float32 / float64, any number of dimensions >= 1
        Unnormalised scores; the classes lie along ``axis``.
    target : array
        Integer class indices (any integer dtype) of logits' shape without
        ``axis``, or floating class probabilities of logits' shape.
    axis : int
        The class axis (``axis=1`` for NCHW segmentation maps).
    weight : array of shape (C,), optional
        Per-class weights (rescale each class's contribution, as in torch).
    ignore_index : int
        Class-index targets equal to it contribute no loss and no gradient, and
        do not count in 'mean'. Not allowed (>= 0) with probability targets.
    reduction : {'mean', 'sum', 'none'}
        'mean' divides by the summed weights of the non-ignored targets (the
        row count for probability targets); an all-ignored batch gives nan.
    label_smoothing : float in [0, 1]
        Mixes the target with the uniform distribution, PyTorch's formula
        (combined with weights and ignore_index exactly as torch does).
    z_loss : float >= 0
        Adds ``z_loss * logsumexp(row)**2`` to each non-ignored row (PaLM); not
        class-weighted; under 'mean' divided by the number of non-ignored rows.
    softcap : float > 0, optional
        Replaces each logit x by ``softcap * tanh(x / softcap)`` first (Gemma 2).
        float32 logits under a cap are computed in float64 on the CPU (capped
        logits rounded to float32 would cost the loss and the cap's slope their
        digits); the CUDA kernels keep float32 and take the slope
        ``1 / cosh(x / softcap)**2`` from the logit itself.
    validate : bool
        Check that class indices lie in [0, C) (or equal ignore_index) and raise
        ``ValueError`` with the first offending position. On the GPU this reads
        an error flag once after the kernel; ``validate=False`` skips that read
        and such rows give nan. On the CPU indices are always checked before
        anything is written; ``validate=False`` only turns the error into nan rows.
    backend : {'cpu', 'cuda', 'dask'}, optional
        Overrides the choice made from the arrays' type.
    stream : optional
        GPU only: the stream to launch on (default: the caller's current CuPy stream).
    sample_weight : array of the loss's shape, optional
        One weight per row (per pixel for NCHW maps): logits' shape without
        ``axis``, exactly (no broadcasting). Multiplies each row's loss, z-loss
        included, and its gradient; combined with class weights by
        multiplication. Under 'mean' the denominator becomes the summed
        ``weight[t] * sample_weight`` of the non-ignored targets (the summed sample
        weights for probability targets: PyTorch's row count, each row counted with
        its weight), and the z-loss's the summed sample weights of the
        non-ignored rows.
    denominator : float or 0-d array, optional
        'mean' only: replaces the denominator of the cross-entropy and of the
        z-loss alike, so that micro-batches (gradient accumulation, or shards on
        several devices) each called with the whole batch's ``mean_denominator``
        sum to the whole batch's loss and gradient. Must be >= 0 (a 0-d device
        array is not read to check). Without class weights (or with probability
        targets) and without z-loss it gives exactly the default 'mean'; with
        class weights and a z-loss the z-loss is divided by it too.
    empty : {'nan', 'zero', 'raise'}
        What 'mean' gives when there is nothing to average: no target counts
        (every target ignored, no rows, or every counted sample weight 0), or
        ``denominator`` is 0. 'nan' (PyTorch's answer, the default), 'zero' (loss
        and gradient 0), or 'raise' (``ValueError`` before anything is written; on
        the GPU this reads the count back, on Dask it computes it).
    metrics : str or sequence of str, optional
        Per-row metrics taken in the same pass over the logits (no second read),
        returned after the loss as a dict keyed by the names asked for:
        'lse' (each row's logsumexp, ignored rows too), 'argmax' (the predicted
        class: the first index of the largest logit, every nan above +inf, as
        ``np.argmax``; after ``softcap``, which keeps the order but can make large
        logits equal), 'correct' (argmax equals the target), 'top_k' (the target
        is among the ``top_k`` first classes in argmax's order) and 'entropy' (of
        the row's softmax, in nats). 'correct' and 'top_k' need class-index
        targets and are False where the target does not count (ignored): divide
        their sum by ``(target != ignore_index).sum()`` for the accuracy. Each is an
        array of the rows' shape (logits' shape without ``axis``), whatever the
        reduction: int64 argmax, bool correct and top_k, lse and entropy in the
        loss's dtype; in the caller's array kind.
    top_k : int >= 1
        The k of the 'top_k' metric (5: top-5 accuracy).

    Returns
    -------
    loss : array
        Per row (logits' shape without ``axis``) for 'none', else a 0-d array;
        float32 for float16/float32 logits, float64 for float64; NumPy in,
        NumPy out; CuPy in, CuPy out; Dask in, a lazy Dask array out.
    metrics : dict of arrays
        Only with ``metrics=``: ``(loss, metrics)``.

    Notes
    -----
    With ``sample_weight``, ``denominator`` or ``empty`` the backend runs its fused
    ``reduction='none'`` pass with a per-row ``grad_output`` of ``sample_weight / D``
    and the per-row losses are summed by the backend's array module (CuPy, NumPy or
    Dask; NumPy on the host for Numba device arrays). Only 'mean' with class weights,
    a z-loss and no ``denominator`` takes two passes.

    The logits are read once, in one pass per row that keeps the running max and
    the rescaled sum of exponentials (online softmax). nan in the logits gives
    nan; a row whose logits are all -inf gives nan; a -inf at a non-target class
    is fine (unless smoothing, which sums over every class, as in torch).

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    >>> float(nbxent.cross_entropy(logits, np.array([0, 2])))  # doctest: +ELLIPSIS
    0.6699...
    >>> float(nbxent.cross_entropy(logits, np.array([0, 2]), sample_weight=np.array([3.0, 1.0])))
    ... # doctest: +ELLIPSIS
    0.4556...
    >>> float(nbxent.cross_entropy(logits, np.array([-100, -100]), empty="zero"))
    0.0

    Accuracy from the loss's own pass:

    >>> loss, found = nbxent.cross_entropy(logits, np.array([0, 2]),
    ...                                    metrics=("argmax", "correct", "top_k"), top_k=2)
    >>> found["argmax"], found["correct"], found["top_k"]
    (array([0, 0]), array([ True, False]), array([ True, False]))
    """
    options = dict(axis=axis, weight=weight, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                   validate=validate, backend=backend, stream=stream,
                   sample_weight=sample_weight, denominator=denominator, empty=empty)
    result = _loss_call(logits, target, options, want_loss=True, want_grad=False,
                        metrics=metrics, top_k=top_k)
    return result[0] if metrics is None else (result[0], result[2])


def cross_entropy_grad(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                       reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                       validate=True, backend=None, stream=None, grad_output=1.0, out=None,
                       sample_weight=None, denominator=None, empty="nan"):
    """Gradient of ``cross_entropy`` with respect to the logits, times ``grad_output``.

    Takes ``cross_entropy``'s keywords, plus:

    Parameters
    ----------
    grad_output : float or array
        The upstream gradient: a scalar (or 0-d array), or for ``reduction='none'``
        an array of the loss's shape.
    out : array, optional
        Where to write the gradient: an array of logits' shape and dtype, or the
        logits themselves (the gradient then overwrites them in place, with no
        extra N×C buffer).

    Returns
    -------
    grad : array of logits' shape and dtype (``out`` when given)
        Ignored rows get exactly 0. Under a soft cap the factor
        ``1 - tanh(x/softcap)**2`` is included. float16 gradients are computed in
        float32 (the target class's too) and rounded once.

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> logits = np.zeros((1, 4), dtype=np.float32)
    >>> nbxent.cross_entropy_grad(logits, np.array([1]))
    array([[ 0.25, -0.75,  0.25,  0.25]], dtype=float32)
    """
    options = dict(axis=axis, weight=weight, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                   validate=validate, backend=backend, stream=stream,
                   sample_weight=sample_weight, denominator=denominator, empty=empty)
    _, grad = _loss_call(logits, target, options, want_loss=False, want_grad=True,
                         grad_output=grad_output, out=out)
    return grad


def cross_entropy_with_grad(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                            reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                            validate=True, backend=None, stream=None, grad_output=1.0,
                            out=None, sample_weight=None, denominator=None, empty="nan",
                            metrics=None, top_k=5):
    """``(cross_entropy(...), cross_entropy_grad(...))`` in one fused pass.

    Reads the logits from memory once and writes the gradient once; with
    ``out=logits`` the gradient replaces the logits in place. Keywords as in
    ``cross_entropy`` and ``cross_entropy_grad``; with ``metrics=`` the result is
    ``(loss, grad, metrics)``, the metrics taken before the gradient is written (so
    with ``out=logits`` too).

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> logits = np.zeros((2, 3))
    >>> loss, grad = nbxent.cross_entropy_with_grad(logits, np.array([0, 1]), reduction="sum")
    >>> round(float(loss), 6), grad.shape
    (2.197225, (2, 3))

    Gradient accumulation: micro-batches divided by the whole batch's denominator
    sum to the whole batch's mean.

    >>> target = np.array([0, 1, -100, 2])
    >>> logits = np.arange(12, dtype=np.float64).reshape(4, 3) % 5
    >>> total = nbxent.mean_denominator(target)
    >>> parts = [nbxent.cross_entropy_with_grad(logits[i:i + 2], target[i:i + 2],
    ...                                         denominator=total) for i in (0, 2)]
    >>> whole, whole_grad = nbxent.cross_entropy_with_grad(logits, target)
    >>> bool(np.isclose(sum(loss for loss, _ in parts), whole))
    True
    >>> bool(np.allclose(np.concatenate([grad for _, grad in parts]), whole_grad))
    True
    """
    options = dict(axis=axis, weight=weight, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                   validate=validate, backend=backend, stream=stream,
                   sample_weight=sample_weight, denominator=denominator, empty=empty)
    return _loss_call(logits, target, options, want_loss=True, want_grad=True,
                      grad_output=grad_output, out=out, metrics=metrics, top_k=top_k)


def mean_denominator(target, *, weight=None, ignore_index=-100, sample_weight=None, axis=-1,
                     backend=None):
    """The denominator ``reduction='mean'`` divides by for ``target``.

    The summed ``weight[t] * sample_weight`` of the targets that are not
    ``ignore_index`` (the summed sample weights, or the row count, for probability
    targets), as a 0-d float64 array of the target's kind, never read back. Sum it
    over the parts of a batch and pass the total as ``denominator=`` to each part.

    Parameters
    ----------
    target : array
        Class indices (any integer dtype), or probabilities with the classes on ``axis``.
    weight : array of shape (C,), optional
        Class weights; a class index outside [0, C) then adds nan (as ``validate=False``).
    ignore_index : int
        Class indices equal to it count nothing.
    sample_weight : array of the rows' shape, optional
        The target's shape (class indices) or its shape without ``axis`` (probabilities).
    axis : int
        The class axis of a probability target (unused for class indices).
    backend : {'cpu', 'cuda', 'dask'}, optional
        Overrides the choice made from the arrays' type.

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> float(nbxent.mean_denominator(np.array([0, 2, -100]), weight=np.array([1.0, 2.0, 3.0])))
    4.0
    """
    module = _backend(backend, target=target, weight=weight, sample_weight=sample_weight)
    target = _as_input(module, target, "target")
    weight = _as_input(module, weight, "weight")
    sample_weight = _as_input(module, sample_weight, "sample_weight")
    rows_shape, target_is_index, ignore_index = check_mean_denominator(
        target, weight, ignore_index, sample_weight, axis)
    xp = module.namespace_of(target)
    host = module.to_namespace
    share_d, _ = _training.row_weights(
        xp, host(target), None if weight is None else host(weight), ignore_index=ignore_index,
        n_classes=2**63 - 1 if weight is None else weight.shape[0],
        target_is_index=target_is_index, rows_shape=rows_shape,
        sample_weight=None if sample_weight is None else host(sample_weight).astype(xp.float64))
    return module.from_namespace(xp.asarray(share_d.sum(), dtype=xp.float64), target)


def _normalize(op, x, axis, *, out=None, backend=None, stream=None):
    module = _backend(backend, x=x, out=out)
    plan = make_normalize_plan(op, _as_input(module, x, "x"), axis=axis,
                               out=_as_out(module, out), copy_contiguous=module.copy_contiguous,
                               stream=stream)
    return _copied_back(module, plan, module.normalize(plan), out)


def logsumexp(x, axis=-1, *, backend=None, stream=None):
    """``log(sum(exp(x)))`` along ``axis``, stabilised by the row max.

    Returns an array of x's shape without ``axis``, float32 for float16/float32
    input (float16 is computed in float32 and not rounded back), float64 for
    float64. A row of all -inf gives -inf, a row holding +inf gives +inf (as in
    PyTorch and SciPy); nan propagates.

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> nbxent.logsumexp(np.array([[0.0, 0.0], [1000.0, 1000.0]])).round(6).tolist()
    [0.693147, 1000.693147]
    """
    return _normalize("logsumexp", x, axis, backend=backend, stream=stream)


def log_softmax(x, axis=-1, out=None, *, backend=None, stream=None):
    """``x - logsumexp(x)`` along ``axis``, in x's dtype (``out=x`` works in place).

    Computed as ``(x - max) - log(sum(exp(x - max)))``: exact whatever the logits'
    magnitude (``[1e300, 1e300]`` gives ``-log 2``). A row holding +inf (or nan) is
    all nan, as in PyTorch; SciPy's ``log_softmax`` differs there (nan at the +inf,
    -inf elsewhere). A row of all -inf is all nan.

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> nbxent.log_softmax(np.array([0.0, 0.0]))
    array([-0.69314718, -0.69314718])
    """
    return _normalize("log_softmax", x, axis, out=out, backend=backend, stream=stream)


def softmax(x, axis=-1, out=None, *, backend=None, stream=None):
    """``exp(x - logsumexp(x))`` along ``axis``, in x's dtype (``out=x`` works in place).

    A row holding +inf or nan, or of all -inf, is all nan (as in PyTorch and SciPy).

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> nbxent.softmax(np.array([0.0, np.log(3.0)]))
    array([0.25, 0.75])
    """
    return _normalize("softmax", x, axis, out=out, backend=backend, stream=stream)


def entropy(logits, axis=-1, reduction="none", *, base=None, sample_weight=None, empty="nan",
            backend=None, stream=None):
    """Entropy of ``softmax(logits)`` along ``axis``: ``-sum p log p``, in nats or ``base``.

    ``0 log 0`` counts as 0 (a -inf logit is fine); a row holding nan or +inf, or of all
    -inf, gives nan.

    Parameters
    ----------
    logits : array, float16 / float32 / float64, any number of dimensions >= 1
        Unnormalised scores; the classes lie along ``axis``.
    axis : int
        The class axis (``axis=1`` for NCHW maps).
    reduction : {'none', 'mean', 'sum'}
        'none' (the default) gives one entropy per row; 'mean' divides the sum by the
        number of rows, or by the summed ``sample_weight``.
    base : float > 0, not 1, optional
        The logarithm's base: None for nats (the default), 2 for bits, 10 for hartleys
        (the nats divided by ``log(base)``, as ``scipy.stats.entropy(base=)``).
    sample_weight : array of the rows' shape, optional
        One weight per row (per pixel for NCHW maps), logits' shape without ``axis``,
        exactly; multiplies each row's entropy. A row weighted 0 is left out of 'sum'
        and 'mean' (unless its entropy is nan). Under 'mean' the denominator is the
        summed sample weights, as for a cross-entropy with probability targets.
    empty : {'nan', 'zero', 'raise'}
        What 'mean' gives with nothing to average (no rows, or sample weights summing
        to 0), as in ``cross_entropy``.
    backend, stream
        As in ``cross_entropy``.

    Returns
    -------
    array
        Logits' shape without ``axis`` for 'none', else 0-d; float32 for float16/float32
        logits, float64 for float64; in the caller's array kind.

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> nbxent.entropy(np.zeros((1, 4)))
    array([1.38629436])
    >>> nbxent.entropy(np.zeros((2, 4)), base=2, reduction="sum")
    array(4.)
    """
    module = _backend(backend, logits=logits, sample_weight=sample_weight)
    logits = _as_input(module, logits, "logits")
    sample_weight = _as_input(module, sample_weight, "sample_weight")
    plan = make_normalize_plan("entropy", logits, axis=axis, reduction=reduction,
                               copy_contiguous=module.copy_contiguous, stream=stream)
    check_training(logits, None, axis=plan.logits.axis, sample_weight=sample_weight,
                   denominator=None, empty=empty, reduction=plan.reduction)
    return _information.entropy(module, plan, base=check_base(base),
                                sample_weight=sample_weight, empty=empty)


def conditional_entropy(logits, axis=-1, *, sample_weight=None, base=None, empty="nan",
                        backend=None, stream=None):
    """Conditional entropy H(Y|X) of a batch of predictions, a 0-d array.

    Each row is the predicted distribution ``softmax(logits)`` of Y for one x; H(Y|X) is
    the mean of the rows' entropies, weighted by ``sample_weight`` (p(x) up to a
    factor; uniform when None): ``sum_r s_r H_r / sum_r s_r``. It is
    ``entropy(logits, axis, 'mean', sample_weight=sample_weight, base=base)``; the
    keywords are ``entropy``'s.

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> logits = np.array([[0.0, 0.0], [0.0, -np.inf]])    # a fair coin, a certain outcome
    >>> round(float(nbxent.conditional_entropy(logits, base=2,
    ...                                        sample_weight=np.array([3.0, 1.0]))), 12)
    0.75
    """
    return entropy(logits, axis, "mean", base=base, sample_weight=sample_weight, empty=empty,
                   backend=backend, stream=stream)


def _kl_call(logits, target, log_target, *, want_loss, want_grad, grad_output=1.0, out=None,
             **options):
    options.update(ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None,
                   validate=True)
    return _loss_call(logits, target, options, want_loss=want_loss, want_grad=want_grad,
                      grad_output=grad_output, out=out, log_target=log_target)


def kl_divergence(logits, target, *, axis=-1, log_target=False, weight=None, reduction="mean",
                  sample_weight=None, denominator=None, empty="nan", backend=None,
                  stream=None):
    """Kullback-Leibler divergence KL(p || softmax(logits)) of a target distribution p.

    Per row: ``sum_c w_c p_c (log p_c - log softmax(logits)_c)``, with ``0 log 0 = 0``.
    It is the probability-target ``cross_entropy(logits, p)`` minus p's own (weighted)
    entropy, and is computed so: one fused cross-entropy pass, plus array arithmetic
    on the target.

    Parameters
    ----------
    logits : array, float16 / float32 / float64, any number of dimensions >= 1
        Unnormalised scores of the model's distribution q = softmax(logits).
    target : array of logits' shape, float16 / float32 / float64
        The distribution p along ``axis``: probabilities, taken as they are (rows
        need not sum to 1; a negative entry gives nan), or with ``log_target=True``
        log-probabilities or any logits, p = softmax(target) (exp(target) for
        log-probabilities).
    axis : int
        The class axis (``axis=1`` for NCHW maps).
    log_target : bool
        Whether ``target`` holds log-probabilities (logits) instead of probabilities,
        as in ``torch.nn.functional.kl_div``.
    weight : array of shape (C,), optional
        Per-class weights w: each class's term is multiplied by w_c (as in
        ``cross_entropy`` with probability targets).
    reduction : {'mean', 'sum', 'none'}
        'mean' divides the sum by the number of rows (positions for NCHW maps), or by
        the summed ``sample_weight``: for 2-D logits this is PyTorch's
        ``kl_div(..., reduction='batchmean')``; PyTorch's 'mean' divides by every
        element (rows × classes) instead. 'none' gives one divergence per row (torch's
        'none' gives one per element: sum it over the classes).
    sample_weight, denominator, empty
        As in ``cross_entropy`` with probability targets: per-row weights of the loss's
        shape (the 'mean' denominator becomes their sum), a given 'mean' denominator,
        and what 'mean' gives with nothing to average.
    backend, stream
        As in ``cross_entropy``.

    Returns
    -------
    loss : array
        Per row (logits' shape without ``axis``) for 'none', else 0-d; float32 for
        float16/float32 logits, float64 for float64; in the caller's array kind.

    Notes
    -----
    The divergence is the difference of a cross-entropy and an entropy, each about
    log C: its absolute error is theirs (a few float32 ulps of log C), so a divergence
    near 0 from float32 logits is less accurate relative to its size. With
    ``log_target=True`` the target's log_softmax is computed first (one more pass over
    the target); the gradient is with respect to the logits only.

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> logits = np.log(np.array([[0.5, 0.25, 0.25]]))
    >>> p = np.array([[0.25, 0.25, 0.5]])
    >>> round(float(nbxent.kl_divergence(logits, p)), 6)   # 0.25 log 0.5 + 0.5 log 2
    0.173287
    >>> round(float(nbxent.kl_divergence(logits, np.log(p), log_target=True)), 6)
    0.173287
    """
    loss, _ = _kl_call(logits, target, log_target, want_loss=True, want_grad=False, axis=axis,
                       weight=weight, reduction=reduction, sample_weight=sample_weight,
                       denominator=denominator, empty=empty, backend=backend, stream=stream)
    return loss


def kl_divergence_grad(logits, target, *, axis=-1, log_target=False, weight=None,
                       reduction="mean", sample_weight=None, denominator=None, empty="nan",
                       backend=None, stream=None, grad_output=1.0, out=None):
    """Gradient of ``kl_divergence`` with respect to the logits, times ``grad_output``.

    The target's term does not depend on the logits, so this is the probability-target
    ``cross_entropy_grad(logits, p)``: per row ``(sum_c w_c p_c) softmax(logits) - w p``.
    Keywords as in ``kl_divergence``, plus ``grad_output`` and ``out`` as in
    ``cross_entropy_grad`` (``out=logits`` writes the gradient over the logits).

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> nbxent.kl_divergence_grad(np.zeros((1, 2)), np.array([[1.0, 0.0]]))
    array([[-0.5,  0.5]])
    """
    _, grad = _kl_call(logits, target, log_target, want_loss=False, want_grad=True,
                       grad_output=grad_output, out=out, axis=axis, weight=weight,
                       reduction=reduction, sample_weight=sample_weight,
                       denominator=denominator, empty=empty, backend=backend, stream=stream)
    return grad


def kl_divergence_with_grad(logits, target, *, axis=-1, log_target=False, weight=None,
                            reduction="mean", sample_weight=None, denominator=None,
                            empty="nan", backend=None, stream=None, grad_output=1.0, out=None):
    """``(kl_divergence(...), kl_divergence_grad(...))`` from one fused pass over the logits.

    Keywords as in ``kl_divergence`` and ``kl_divergence_grad``.

    Examples
    --------
    >>> import numpy as np, nbxent
    >>> loss, grad = nbxent.kl_divergence_with_grad(np.zeros((2, 2)), np.full((2, 2), 0.5))
    >>> float(loss), grad.tolist()
    (0.0, [[0.0, 0.0], [0.0, 0.0]])
    """
    return _kl_call(logits, target, log_target, want_loss=True, want_grad=True,
                    grad_output=grad_output, out=out, axis=axis, weight=weight,
                    reduction=reduction, sample_weight=sample_weight, denominator=denominator,
                    empty=empty, backend=backend, stream=stream)
