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
from ._plan import make_loss_plan

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

    def options(self, reduction=None):
        return dict(axis=self.axis, ignore_index=self.ignore_index,
                    reduction=self.reduction if reduction is None else reduction,
                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                    softcap=self.softcap)


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


def _make_spec(logits, labels, weight, *, axis, ignore_index, reduction, label_smoothing,
               z_loss, softcap):
    """Check the call as nbxent would (shapes, dtypes, options) before tracing anything."""
    logits_dtype = np.dtype(logits.dtype)
    weight_dummy = None if weight is None else _host_dummy(weight.shape, weight.dtype)
    plan = make_loss_plan(_host_dummy(logits.shape, logits_dtype),
                          _host_dummy(labels.shape, labels.dtype), axis=axis,
                          weight=weight_dummy, ignore_index=ignore_index, reduction=reduction,
                          label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                          validate=True, want_loss=True, want_grad=False)
    loss_shape = tuple(plan.logits.result_shape) if reduction == "none" else ()
    return _Spec(axis=plan.logits.axis, logits_shape=tuple(logits.shape), logits_dtype=logits_dtype,
                 loss_shape=loss_shape, loss_dtype=np.dtype(plan.logits.loss_dtype),
                 labels_ndim=len(labels.shape), labels_are_index=plan.loss.target_is_index,
                 has_weight=weight is not None, ignore_index=plan.loss.ignore_index,
                 reduction=reduction, label_smoothing=plan.loss.label_smoothing,
                 z_loss=plan.loss.z_loss, softcap=None if softcap is None else float(softcap))


# --------------------------------------------------------------- the host side

def _host(spec, want_grad, logits, labels, weight, loss=None, grad=None):
    """nbxent on host arrays, with any leading vmap batch dims (``vmap_method='expand_dims'``:
    every argument has the same number of them, size 1 where unbatched).

    The results are written into ``loss`` and ``grad`` when given (XLA's buffers on the
    FFI route: the gradient in place), else into new arrays; returns them.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    weight = None if weight is None else np.asarray(weight)
    n_batch = logits.ndim - len(spec.logits_shape)
    batch_shape = np.broadcast_shapes(
        logits.shape[:n_batch], labels.shape[:n_batch],
        *(() if weight is None else (weight.shape[:n_batch],)))
    if loss is None:
        loss = np.empty(batch_shape + spec.loss_shape, spec.loss_dtype)
    if grad is None and want_grad:
        grad = np.empty(batch_shape + spec.logits_shape, spec.logits_dtype)
    if n_batch == 0:
        loss[...] = _host_call(spec, want_grad, logits, labels, weight, grad)
        return (loss, grad) if want_grad else loss
    logits = np.broadcast_to(logits, batch_shape + logits.shape[n_batch:])
    labels = np.broadcast_to(labels, batch_shape + labels.shape[n_batch:])
    if spec.reduction == "none" and (weight is None or weight.shape[:n_batch] == (1,) * n_batch):
        # Rows of every batch element in one call: the batch dims are more outer dims.
        options = {**spec.options(), "axis": spec.axis + n_batch}
        flat_weight = None if weight is None else weight.reshape(-1)
        if want_grad:
            nbxent_loss, _ = api.cross_entropy_with_grad(logits, labels, weight=flat_weight,
                                                         out=grad, **options)
        else:
            nbxent_loss = api.cross_entropy(logits, labels, weight=flat_weight, **options)
        loss[...] = nbxent_loss
        return (loss, grad) if want_grad else loss
    # 'mean' and 'sum' reduce within each batch element, and a batched weight differs
    # between them: one nbxent call per element, the gradient written in place.
    if weight is not None:
        weight = np.broadcast_to(weight, batch_shape + weight.shape[n_batch:])
    for index in np.ndindex(*batch_shape):
        element_weight = None if weight is None else weight[index]
        loss[index] = _host_call(spec, want_grad, logits[index], labels[index], element_weight,
                                 grad[index] if want_grad else None)
    return (loss, grad) if want_grad else loss


def _host_call(spec, want_grad, logits, labels, weight, grad):
    """The loss of one unbatched call; with ``want_grad`` the gradient goes into ``grad``."""
    options = dict(weight=weight, **spec.options())
    if want_grad:
        return api.cross_entropy_with_grad(logits, labels, out=grad, **options)[0]
    return api.cross_entropy(logits, labels, **options)


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
        logits, labels, *weight = inputs
        _host(spec, want_grad, logits, labels, weight[0] if weight else None, *outputs)
    return host


def _run(spec, want_grad, logits, labels, weight):
    """The loss (and gradient): an XLA FFI call or a host callback in traced code (see
    ``host_route``), a direct call otherwise."""
    loss_struct = jax.ShapeDtypeStruct(spec.loss_shape, spec.loss_dtype)
    grad_struct = jax.ShapeDtypeStruct(spec.logits_shape, spec.logits_dtype)
    if not any(_is_traced(x) for x in (logits, labels, weight)):
        result = _host(spec, want_grad, logits, labels, weight)
        return tuple(jnp.asarray(r) for r in result) if want_grad else jnp.asarray(result)

    def callback(logits, labels, weight=None):
        return _host(spec, want_grad, logits, labels, weight)

    def not_on_cpu(*args):
        raise TypeError(_NOT_ON_CPU.format(what="the jitted function runs on a device other "
                                                "than the CPU"))

    args = (logits, labels) if weight is None else (logits, labels, weight)
    structs = (loss_struct, grad_struct) if want_grad else loss_struct

    route, _ = host_route()

    def on_cpu(*args):
        if route == "ffi":
            return _jax_ffi.call(_ffi_host(spec, want_grad), structs, *args)
        return jax.pure_callback(callback, structs, *args, vmap_method="expand_dims")

    def elsewhere(*args):
        # Where the placement is known only when lowering (inside jit): the CPU branch
        # alone is compiled on the CPU; elsewhere the first run raises this TypeError.
        return jax.pure_callback(not_on_cpu, structs, *args, vmap_method="expand_dims")

    return jax.lax.platform_dependent(*args, cpu=on_cpu, default=elsewhere)


# --------------------------------------------------------------- the JAX side

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cross_entropy(spec, logits, labels, weight):
    return _run(spec, False, logits, labels, weight)


def _forward(spec, logits, labels, weight):
    # symbolic_zeros: the primals come with ``perturbed``, which says what is differentiated.
    if weight is not None and weight.perturbed:
        raise NotImplementedError("nbxent.jax.cross_entropy has no gradient with respect to "
                                  "weight; pass it through jax.lax.stop_gradient")
    weight = None if weight is None else weight.value
    loss, grad = _run(spec, True, logits.value, labels.value, weight)
    label_grad_needed = not spec.labels_are_index and labels.perturbed
    saved_logits = logits.value if label_grad_needed else None
    return loss, (grad, saved_logits, labels.value, weight)


def _per_row(spec, cotangent):
    """The cotangent as a factor that broadcasts against (unbatched) logits."""
    if spec.reduction == "none":
        return jnp.expand_dims(cotangent, spec.axis)
    return cotangent


def _backward(spec, saved, cotangent):
    grad, saved_logits, labels, weight = saved
    if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
        return None, None, None
    scale = _per_row(spec, cotangent)
    logits_grad = (grad * scale).astype(grad.dtype)
    labels_grad = None
    if saved_logits is not None:
        labels_grad = _labels_grad(spec, saved_logits, labels, weight, scale)
    return logits_grad, labels_grad, None


def _labels_grad(spec, logits, labels, weight, scale):
    """d loss / d labels for probability labels: ``-(1 - ε) · w_c · log_softmax(logits)``
    per row, scaled as the reduction does ('mean' divides by the row count)."""
    x = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if spec.softcap is not None:
        x = spec.softcap * jnp.tanh(x / spec.softcap)
    factor = -(1.0 - spec.label_smoothing) * jax.nn.log_softmax(x, axis=spec.axis)
    if weight is not None:
        shape = [1] * len(spec.logits_shape)
        shape[spec.axis] = -1
        factor = factor * jnp.reshape(weight, shape)
    if spec.reduction == "mean":
        n_rows = int(np.prod(spec.logits_shape)) // spec.logits_shape[spec.axis]
        factor = factor / n_rows
    return (factor * scale).astype(labels.dtype)


_cross_entropy.defvjp(_forward, _backward, symbolic_zeros=True)


def cross_entropy(logits, labels, *, axis=-1, weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None):
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

    Returns
    -------
    loss : jax.Array
        0-d, or of logits' shape without ``axis`` for 'none'; float32 for float16,
        bfloat16 and float32 logits, float64 for float64 logits.

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
        When differentiating with respect to ``weight``.

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
    scaled by the reduction, computed in JAX only when the labels are differentiated.

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
    """
    for name, x in (("logits", logits), ("labels", labels), ("weight", weight)):
        _check_on_cpu(name, x)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    weight = None if weight is None else jnp.asarray(weight)
    if logits.dtype == jnp.bfloat16:
        logits = logits.astype(jnp.float32)
    if labels.dtype == jnp.bfloat16:
        labels = labels.astype(jnp.float32)
    if weight is not None and weight.dtype == jnp.bfloat16:
        weight = weight.astype(jnp.float32)
    spec = _make_spec(logits, labels, weight, axis=axis, ignore_index=ignore_index,
                      reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                      softcap=softcap)
    return _cross_entropy(spec, logits, labels, weight)
