"""nbxent inside JAX: a differentiable ``cross_entropy`` for JAX arrays on the CPU.

``nbxent.jax.cross_entropy`` takes optax's argument names (``logits``, ``labels``)
and nbxent's options, and works under ``jax.jit``, ``jax.grad`` / ``jax.value_and_grad``
and ``jax.vmap``. The forward pass is one fused nbxent call that computes the loss
and keeps the gradient (``jax.custom_vjp``); the backward pass only scales that
gradient by the incoming cotangent. Inside traced code nbxent runs as an XLA FFI
custom call that reads and writes XLA's own buffers (``nbxent/_jax_ffi.py``), or, with
``NBXENT_JAX_ROUTE=callback`` or where the FFI is unavailable, as a host callback
(``jax.pure_callback``, which copies; see ``host_route``); a call on concrete arrays,
outside any transformation, runs nbxent directly.

Install with ``pip install 'nbxent[jax]'``. Only JAX's CPU backend is supported: the
kernels read host memory. JAX arrays on a GPU or TPU are a ``TypeError`` (see
``cross_entropy``).

XLA allocates the gradient anew at every call; on Linux, ``nbxent.keep_freed_memory()``
lets glibc reuse that memory instead of faulting in fresh pages at every step.
"""

import dataclasses
import functools
import os

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("nbxent.jax needs JAX: pip install 'nbxent[jax]' "
                      "(or pip install jax)") from exc

from . import _jax_ffi, api
from ._metrics import check_metrics
from ._plan import check_training, make_loss_plan

__all__ = ["cross_entropy", "host_route"]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The static part of one call: options and the unbatched shapes and dtypes."""

    axis: int                 # non-negative, in the unbatched logits
    logits_shape: tuple
    logits_dtype: np.dtype
    loss_shape: tuple         # of the result: () unless reduction='none'
    loss_dtype: np.dtype
    labels_ndim: int
    labels_are_index: bool
    has_weight: bool
    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float
    softcap: object           # None or a float
    has_sample_weight: bool = False
    has_denominator: bool = False   # an array operand
    denominator: object = None      # a number given as such (exact, not an operand)
    empty: str = "nan"
    metrics: tuple = None           # the names asked for, or None
    top_k: int = 5
    argmax_dtype: np.dtype = np.dtype(np.int64)
    inplace_backward: bool = False  # the gradient aliases the logits' buffer (FFI route)

    def options(self, reduction=None):
        return dict(axis=self.axis, ignore_index=self.ignore_index,
                    reduction=self.reduction if reduction is None else reduction,
                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                    softcap=self.softcap)

    def results(self, want_grad):
        """(shape, dtype) of each result of the host function, unbatched: the loss, the
        gradient with ``want_grad``, then one per metric asked for."""
        results = [(self.loss_shape, self.loss_dtype)]
        if want_grad:
            results.append((self.logits_shape, self.logits_dtype))
        rows_shape = self.logits_shape[:self.axis] + self.logits_shape[self.axis + 1:]
        dtypes = {"argmax": self.argmax_dtype, "correct": np.dtype(np.bool_),
                  "top_k": np.dtype(np.bool_)}
        for name in self.metrics or ():
            results.append((rows_shape, dtypes.get(name, self.loss_dtype)))
        return results

    def unpack(self, operands):
        """(logits, labels, weight, sample_weight, denominator) from the operands passed,
        None for those absent."""
        logits, labels, *rest = operands
        rest = iter(rest)
        return (logits, labels) + tuple(
            next(rest) if present else None
            for present in (self.has_weight, self.has_sample_weight, self.has_denominator))


def _is_traced(x):
    return isinstance(x, jax.core.Tracer)


_NOT_ON_CPU = (
    "nbxent.jax.cross_entropy runs on JAX's CPU backend only, and {what}. Place the arrays "
    "on the host (jax.device_put(x, jax.devices('cpu')[0])), or call "
    "nbxent.cross_entropy_with_grad on CuPy arrays for nbxent's CUDA kernels")


def _check_on_cpu(name, x):
    """TypeError for a concrete array held on a device other than the host CPU."""
    if x is None or _is_traced(x):
        return
    devices = getattr(x, "devices", None)
    if not callable(devices):
        return
    platforms = sorted({getattr(d, "platform", "cpu") for d in devices()} - {"cpu"})
    if platforms:
        raise TypeError(_NOT_ON_CPU.format(what=f"{name} is on {', '.join(platforms)}"))


def _host_dummy(shape, dtype):
    """A zero-byte NumPy stand-in of ``shape`` and ``dtype`` for nbxent's checks."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _make_spec(logits, labels, weight, sample_weight, denominator, *, axis, ignore_index,
               reduction, label_smoothing, z_loss, softcap, empty, metrics, top_k,
               inplace_backward=False):
    """Check the call as nbxent would (shapes, dtypes, options) before tracing anything."""
    logits_dtype = np.dtype(logits.dtype)
    dummies = [None if x is None else _host_dummy(x.shape, x.dtype)
               for x in (logits, labels, weight, sample_weight)]
    plan = make_loss_plan(dummies[0], dummies[1], axis=axis,
                          weight=dummies[2], ignore_index=ignore_index, reduction=reduction,
                          label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                          validate=True, want_loss=True, want_grad=False)
    is_array = hasattr(denominator, "shape") and hasattr(denominator, "dtype")
    check_training(dummies[0], dummies[1], axis=plan.logits.axis, sample_weight=dummies[3],
                   denominator=_host_dummy(denominator.shape, denominator.dtype) if is_array
                   else denominator, empty=empty, reduction=reduction)
    names = check_metrics(metrics, top_k, plan.loss.target_is_index)
    loss_shape = tuple(plan.logits.result_shape) if reduction == "none" else ()
    return _Spec(axis=plan.logits.axis, logits_shape=tuple(logits.shape), logits_dtype=logits_dtype,
                 loss_shape=loss_shape, loss_dtype=np.dtype(plan.logits.loss_dtype),
                 labels_ndim=len(labels.shape), labels_are_index=plan.loss.target_is_index,
                 has_weight=weight is not None, ignore_index=plan.loss.ignore_index,
                 reduction=reduction, label_smoothing=plan.loss.label_smoothing,
                 z_loss=plan.loss.z_loss, softcap=None if softcap is None else float(softcap),
                 has_sample_weight=sample_weight is not None, has_denominator=is_array,
                 denominator=None if is_array or denominator is None else float(denominator),
                 empty=empty, metrics=names, top_k=int(top_k),
                 argmax_dtype=np.dtype(jax.dtypes.canonicalize_dtype(np.int64)),
                 inplace_backward=bool(inplace_backward))


# --------------------------------------------------------------- the host side

def _host(spec, want_grad, operands, outputs=None):
    """nbxent on host arrays, with any leading vmap batch dims (every operand has the same
    number of them: size 1 where unbatched with ``vmap_method='expand_dims'``, the batch's
    size with ``'broadcast_all'``).

    The results (``spec.results``: loss, gradient, metrics) are written into ``outputs``
    when given (XLA's buffers on the FFI route: the gradient in place), else into new
    arrays; returns them, a list.
    """
    operands = [np.asarray(x) for x in operands]
    n_batch = operands[0].ndim - len(spec.logits_shape)
    batch_shape = np.broadcast_shapes(*(x.shape[:n_batch] for x in operands))
    if outputs is None:
        outputs = [np.empty(batch_shape + shape, dtype)
                   for shape, dtype in spec.results(want_grad)]
    logits, labels, weight, sample_weight, denominator = spec.unpack(operands)
    if n_batch == 0:
        _host_call(spec, want_grad, (logits, labels, weight, sample_weight, denominator),
                   outputs)
        return outputs

    def full(x):
        return None if x is None else np.broadcast_to(x, batch_shape + x.shape[n_batch:])

    logits, labels, sample_weight = full(logits), full(labels), full(sample_weight)
    if spec.reduction == "none" and (weight is None or weight.shape[:n_batch] == (1,) * n_batch):
        # Rows of every batch element in one call: the batch dims are more outer dims.
        flat_weight = None if weight is None else weight.reshape(-1)
        _host_call(spec, want_grad, (logits, labels, flat_weight, sample_weight, None), outputs,
                   axis=spec.axis + n_batch)
        return outputs
    # 'mean' and 'sum' reduce within each batch element, and a batched weight or
    # denominator differs between them: one nbxent call per element, the results
    # written into views of the outputs (the gradient in place).
    weight, denominator = full(weight), full(denominator)
    for index in np.ndindex(*batch_shape):
        element = tuple(None if x is None else x[index]
                        for x in (logits, labels, weight, sample_weight, denominator))
        _host_call(spec, want_grad, element, [out[index + (...,)] for out in outputs])
    return outputs


def _host_call(spec, want_grad, arrays, outputs, axis=None):
    """One nbxent call on unbatched ``arrays`` (logits, labels, weight, sample_weight,
    denominator), its results written into ``outputs`` (the gradient by ``out=``)."""
    logits, labels, weight, sample_weight, denominator = arrays
    options = dict(spec.options(), weight=weight, sample_weight=sample_weight,
                   denominator=spec.denominator if denominator is None else denominator,
                   empty=spec.empty)
    if axis is not None:
        options["axis"] = axis
    if spec.metrics is not None:
        options.update(metrics=spec.metrics, top_k=spec.top_k)
    if want_grad:
        result = api.cross_entropy_with_grad(logits, labels, out=outputs[1], **options)
        result, outputs = (result[0],) + result[2:], outputs[:1] + outputs[2:]
    else:
        result = api.cross_entropy(logits, labels, **options)
        result = result if spec.metrics is not None else (result,)
    outputs[0][...] = result[0]
    for out, name in zip(outputs[1:], spec.metrics or ()):
        out[...] = result[1][name]


ROUTES = ("ffi", "callback")


def host_route():
    """How traced calls reach nbxent: ``"ffi"`` or ``"callback"``, and why not the FFI.

    ``"ffi"`` (the default) runs nbxent as an XLA FFI custom call on XLA's own buffers;
    ``"callback"`` as a ``jax.pure_callback``, which copies operands and results. The
    environment variable ``NBXENT_JAX_ROUTE`` chooses, read whenever a function is traced
    (a function already compiled keeps its route). Where the FFI target cannot be
    registered (a JAX without ``jax.ffi``, an XLA that refuses the handler's API
    version) the callback is used and the second value says why.

    Returns
    -------
    route : str
        The route the next traced call takes.
    why_not_ffi : str or None
        Why the FFI is not used, when ``"ffi"`` was asked for and cannot be had.

    Raises
    ------
    ValueError
        If ``NBXENT_JAX_ROUTE`` is set to anything but ``ffi`` or ``callback``.

    Examples
    --------
    >>> import nbxent.jax
    >>> nbxent.jax.host_route()   # doctest: +SKIP
    ('ffi', None)
    """
    wanted = os.environ.get("NBXENT_JAX_ROUTE", "ffi").strip().lower()
    if wanted not in ROUTES:
        raise ValueError(f"NBXENT_JAX_ROUTE={wanted!r}: expected one of {', '.join(ROUTES)}")
    if wanted == "callback":
        return "callback", None
    why_not = _jax_ffi.why_unavailable()
    return ("callback", why_not) if why_not else ("ffi", None)


@functools.lru_cache(maxsize=None)
def _ffi_host(spec, want_grad):
    """The FFI route's host function for one spec: nbxent writes into XLA's buffers."""
    def host(inputs, outputs):
        _host(spec, want_grad, inputs, outputs)
    return host


def _run(spec, want_grad, operands):
    """The results of ``spec.results(want_grad)``, a list: an XLA FFI call or a host
    callback in traced code (see ``host_route``), a direct call otherwise."""
    structs = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in spec.results(want_grad)]
    if not any(_is_traced(x) for x in operands):
        return [jnp.asarray(r) for r in _host(spec, want_grad, operands)]
    single = len(structs) == 1
    structs = structs[0] if single else tuple(structs)

    def callback(*operands):
        results = _host(spec, want_grad, operands)
        return results[0] if single else tuple(results)

    def not_on_cpu(*args):
        raise TypeError(_NOT_ON_CPU.format(what="the jitted function runs on a device other "
                                                "than the CPU"))

    route, _ = host_route()

    def on_cpu(*args):
        if route == "ffi":
            # With inplace_backward the results' gradient (loss, gradient, ...) takes the
            # logits' buffer, which under vmap must then have the batch dims whole.
            aliased = want_grad and spec.inplace_backward
            return _jax_ffi.call(_ffi_host(spec, want_grad), structs, *args,
                                 vmap_method="broadcast_all" if aliased else "expand_dims",
                                 input_output_aliases={0: 1} if aliased else None)
        return jax.pure_callback(callback, structs, *args, vmap_method="expand_dims")

    def elsewhere(*args):
        # Where the placement is known only when lowering (inside jit): the CPU branch
        # alone is compiled on the CPU; elsewhere the first run raises this TypeError.
        return jax.pure_callback(not_on_cpu, structs, *args, vmap_method="expand_dims")

    results = jax.lax.platform_dependent(*operands, cpu=on_cpu, default=elsewhere)
    return [results] if single else list(results)


# --------------------------------------------------------------- the JAX side

def _present(*arrays):
    return tuple(x for x in arrays if x is not None)


def _loss_and_metrics(spec, results):
    """The caller's result from ``[loss, *metrics]``: the loss, or with metrics
    ``(loss, metrics tuple)``."""
    return results[0] if spec.metrics is None else (results[0], tuple(results[1:]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cross_entropy(spec, logits, labels, weight, sample_weight, denominator):
    operands = _present(logits, labels, weight, sample_weight, denominator)
    return _loss_and_metrics(spec, _run(spec, False, operands))


_CONSTANTS = ("weight", "sample_weight", "denominator")


def _forward(spec, logits, labels, *constants):
    # symbolic_zeros: the primals come with ``perturbed``, which says what is differentiated.
    for name, x in zip(_CONSTANTS, constants):
        if x is not None and x.perturbed:
            raise NotImplementedError(f"nbxent.jax.cross_entropy has no gradient with "
                                      f"respect to {name}; pass it through "
                                      f"jax.lax.stop_gradient")
    constants = tuple(None if x is None else x.value for x in constants)
    loss, grad, *metrics = _run(spec, True, _present(logits.value, labels.value, *constants))
    label_grad_needed = not spec.labels_are_index and labels.perturbed
    saved_logits = logits.value if label_grad_needed else None
    return (_loss_and_metrics(spec, [loss, *metrics]),
            (grad, saved_logits, labels.value) + constants)


def _per_row(spec, cotangent):
    """The cotangent as a factor that broadcasts against (unbatched) logits."""
    if spec.reduction == "none":
        return jnp.expand_dims(cotangent, spec.axis)
    return cotangent


def _backward(spec, saved, cotangent):
    grad, saved_logits, labels, *constants = saved
    if spec.metrics is not None:   # the metrics are constants (stop_gradient in cross_entropy)
        cotangent = cotangent[0]
    if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
        return (None,) * 5
    scale = _per_row(spec, cotangent)
    logits_grad = (grad * scale).astype(grad.dtype)
    labels_grad = None
    if saved_logits is not None:
        labels_grad = _labels_grad(spec, saved_logits, labels, *constants, scale)
    return logits_grad, labels_grad, None, None, None


def _labels_grad(spec, logits, labels, weight, sample_weight, denominator, scale):
    """d loss / d labels for probability labels: ``-(1 - ε) · w_c · log_softmax(logits)``
    per row, times the row's sample weight, scaled as the reduction does ('mean' divides
    by the row count, the summed sample weights or the given denominator)."""
    x = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if spec.softcap is not None:
        x = spec.softcap * jnp.tanh(x / spec.softcap)
    factor = -(1.0 - spec.label_smoothing) * jax.nn.log_softmax(x, axis=spec.axis)
    if weight is not None:
        shape = [1] * len(spec.logits_shape)
        shape[spec.axis] = -1
        factor = factor * jnp.reshape(weight, shape)
    if sample_weight is not None:
        factor = factor * jnp.expand_dims(sample_weight, spec.axis)
    if spec.reduction == "mean":
        if denominator is None and spec.denominator is not None:
            denominator = spec.denominator
        elif denominator is None and sample_weight is not None:
            denominator = jnp.sum(sample_weight)
        elif denominator is None:
            denominator = int(np.prod(spec.logits_shape)) // spec.logits_shape[spec.axis]
        factor = factor / denominator
        if spec.empty == "zero":
            factor = jnp.where(denominator == 0, 0.0, factor)
    return (factor * scale).astype(labels.dtype)


_cross_entropy.defvjp(_forward, _backward, symbolic_zeros=True)


def cross_entropy(logits, labels, *, axis=-1, weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                  sample_weight=None, denominator=None, empty="nan", metrics=None, top_k=5,
                  inplace_backward=False):
    """Softmax cross-entropy of JAX ``logits`` against ``labels``, differentiable, on the CPU.

    nbxent's ``cross_entropy`` with optax's argument names: integer ``labels`` are class
    indices (optax's ``softmax_cross_entropy_with_integer_labels``), floating ``labels``
    class probabilities (``softmax_cross_entropy``). Every option has nbxent's (and
    PyTorch's) semantics; unlike optax, the default ``reduction`` is 'mean'.

    Parameters
    ----------
    logits : jax.Array or array-like, float16 / bfloat16 / float32 / float64
        Unnormalised scores; the classes lie along ``axis``. bfloat16 is computed in
        float32 (the loss is float32, the gradient bfloat16).
    labels : jax.Array or array-like
        Integer class indices of logits' shape without ``axis``, or floating class
        probabilities of logits' shape.
    axis : int
        The class axis.
    weight : array of shape (C,), optional
        Per-class weights. A constant: differentiating with respect to it raises
        ``NotImplementedError``.
    ignore_index : int
        Integer labels equal to it add no loss, get exactly zero gradient and do not
        count in 'mean'.
    reduction : {'mean', 'sum', 'none'}
        As ``nbxent.cross_entropy``: 'mean' divides by the summed weights of the
        non-ignored labels; 'none' gives one loss per row.
    label_smoothing, z_loss, softcap : float
        As ``nbxent.cross_entropy``.
    sample_weight : array of the loss's shape, optional
        One weight per row (logits' shape without ``axis``, exactly), multiplying each
        row's loss and gradient; combined with ``weight`` by multiplication; under
        'mean' the denominator becomes the summed ``weight[t] * sample_weight`` of the
        non-ignored labels (as ``nbxent.cross_entropy``). A constant, as ``weight``.
    denominator : float or 0-d array, optional
        'mean' only: replaces its denominator (``nbxent.mean_denominator`` of the whole
        batch, for micro-batches or shards). A number is static (part of the traced
        function, exact); a 0-d array is an operand (its value checked when the call
        runs). A constant, as ``weight``.
    empty : {'nan', 'zero', 'raise'}
        What 'mean' gives with nothing to average (every label ignored, no rows,
        sample weights summing to 0, ``denominator`` 0): nan, 0 (loss and gradient),
        or a ``ValueError`` (inside ``jax.jit``, when the call runs).
    metrics : str or sequence of str, optional
        Per-row metrics from the loss's own pass, as in ``nbxent.cross_entropy``:
        'lse', 'argmax', 'correct', 'top_k', 'entropy'. The call then returns
        ``(loss, metrics)`` (``jax.value_and_grad(..., has_aux=True)`` takes it).
    top_k : int >= 1
        The k of the 'top_k' metric.
    inplace_backward : bool
        Under differentiation, on the FFI route, write the gradient into the logits'
        own buffer (an XLA input-output alias) instead of a new one. Always safe: where
        the logits are still needed, or are an argument of the jitted function that is
        not donated, XLA copies them first, which costs more than it saves. It pays
        where the logits are an intermediate of the jitted function (a model's output,
        the usual training step) or a donated argument (``donate_argnums``): the N×C
        gradient then needs no memory of its own, which on the CPU XLA takes fresh from
        the operating system on every call. Under ``vmap`` unbatched logits are first
        broadcast to the batch. Nothing changes on the callback route.

    Returns
    -------
    loss : jax.Array
        0-d, or of logits' shape without ``axis`` for 'none'; float32 for float16,
        bfloat16 and float32 logits, float64 for float64 logits.
    metrics : dict of jax.Array
        Only with ``metrics=``: keyed by the names asked for, each of logits' shape
        without ``axis``: 'argmax' int64 (int32 unless ``jax_enable_x64``), 'correct'
        and 'top_k' bool (False where the label is ignored), 'lse' and 'entropy' in
        the loss's dtype. Constants (``jax.lax.stop_gradient``): the loss is
        differentiated as without metrics.

    Raises
    ------
    TypeError
        For logits or labels of an unsupported dtype, and for JAX arrays held on a GPU
        or TPU: the kernels read host memory (JAX's CPU backend only; for the GPU, call
        ``nbxent.cross_entropy_with_grad`` on CuPy arrays). Inside ``jax.jit`` the
        placement of traced arrays is not known when tracing; on a GPU the call then
        fails when the compiled function first runs.
    ValueError
        For shapes or options nbxent rejects, when the function is traced; for a class
        index outside [0, C) that is not ``ignore_index``, when it runs (inside
        ``jax.jit`` the error reaches you wrapped in JAX's runtime error, its message
        starting ``INVALID_ARGUMENT: ValueError:`` on the FFI route), and for
        ``NBXENT_JAX_ROUTE`` set to anything but ``ffi`` or ``callback``.
    NotImplementedError
        When differentiating with respect to ``weight``, ``sample_weight`` or
        ``denominator``.

    Notes
    -----
    Under differentiation the forward pass is one fused nbxent call that returns the
    loss and keeps d loss / d logits (one array of logits' shape, as JAX would keep the
    softmax); the backward pass multiplies it by the cotangent (a scalar, or one factor
    per row for 'none'). Without differentiation only the loss is computed.

    Inside traced code (``jit``, ``grad``, ``vmap``) nbxent runs as an XLA FFI custom
    call on the CPU: XLA hands nbxent its input buffers and the output buffers to
    write, with no copy either way (the gradient is written once, into XLA's buffer).
    ``NBXENT_JAX_ROUTE=callback`` selects ``jax.pure_callback`` instead, which copies
    the operands for the host function and the results (the N×C gradient included)
    into XLA's buffers; the FFI route is the default because it measured faster at
    every shape tried (benchmarks/RESULTS.md, "JAX: FFI against the host callback").
    ``host_route`` tells which route a traced call takes. Under ``vmap``
    ('expand_dims'), 'none' handles the whole batch in one nbxent call and
    'mean'/'sum' one call per batch element. Either route enters Python once per
    call (tens of microseconds): for tiny batches XLA's own formula is faster. A
    call on concrete arrays outside any transformation runs nbxent directly.

    Gradients: integer labels have none (JAX's zero cotangent for integers); ignored
    rows get exactly zero gradient; for probability labels the gradient with respect
    to the labels is ``-(1 - label_smoothing) * weight * log_softmax(logits)`` per row,
    times the row's sample weight and scaled by the reduction, computed in JAX only when
    the labels are differentiated.

    ``sample_weight`` and an array ``denominator`` are extra operands of the same custom
    call, and the metrics extra results of it: one pass over the logits either way.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from nbxent.jax import cross_entropy
    >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    >>> labels = jnp.array([0, 2])
    >>> round(float(cross_entropy(logits, labels)), 4)
    0.67
    >>> grad = jax.jit(jax.grad(cross_entropy))(logits, labels)
    >>> grad.shape
    (2, 3)
    >>> loss, found = cross_entropy(logits, labels, metrics="correct")
    >>> found["correct"].tolist()
    [True, False]
    """
    arrays = dict(logits=logits, labels=labels, weight=weight, sample_weight=sample_weight,
                  denominator=denominator if hasattr(denominator, "shape") else None)
    for name, x in arrays.items():
        _check_on_cpu(name, x)
        if x is not None:
            x = jnp.asarray(x)
            # bfloat16 is computed in float32
            arrays[name] = x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x
    if arrays["denominator"] is not None:
        denominator = arrays["denominator"]
    spec = _make_spec(arrays["logits"], arrays["labels"], arrays["weight"],
                      arrays["sample_weight"], denominator, axis=axis,
                      ignore_index=ignore_index, reduction=reduction,
                      label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                      empty=empty, metrics=metrics, top_k=top_k,
                      inplace_backward=inplace_backward)
    result = _cross_entropy(spec, *arrays.values())
    if spec.metrics is None:
        return result
    loss, found = result
    return loss, {name: jax.lax.stop_gradient(value) for name, value in zip(spec.metrics, found)}
