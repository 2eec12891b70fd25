"""Checks and the normalised call that every backend receives.

A ``Plan`` describes one call in backend-neutral terms: its ``Logits``, a strided
3-D view ``(outer, n_classes, inner)`` of the caller's memory (the class axis in
the middle; NCHW with ``axis=1`` is ``(N, C, H*W)``); for the cross-entropy its
``LossOptions``, the same view for the target and the options as plain Python
scalars; and what to compute, where. Arrays are only inspected here (shape, dtype,
strides, data pointer), never read, so this module serves NumPy, CuPy and any
``__cuda_array_interface__`` object alike.

Every error message of nbxent's argument checking lives in this module.
Backends never re-validate: they trust the plan.
"""

from dataclasses import dataclass
from math import prod

import numpy as np

REDUCTIONS = ("none", "mean", "sum")
LOGIT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
NORMALIZE_OPS = ("logsumexp", "log_softmax", "softmax", "entropy")


@dataclass(frozen=True)
class View:
    """An array and the strided geometry the kernels address it with.

    ``shape`` and ``strides`` (in elements, not bytes) describe a view of
    ``array``'s memory starting at its data pointer; a stride of 0 broadcasts.
    """
    array: object
    shape: tuple
    strides: tuple


@dataclass(frozen=True)
class Logits:
    """The logits as ``outer * inner`` rows of ``n_classes``: what every call reads.

    ``view`` is the ``(outer, n_classes, inner)`` view of the caller's array of
    ``shape``; ``result_shape`` is a per-row result's shape (``shape`` without the
    class axis).
    """
    view: View
    outer: int
    n_classes: int
    inner: int
    axis: int
    shape: tuple
    result_shape: tuple
    dtype: np.dtype         # logits dtype (also the gradient's)
    loss_dtype: np.dtype    # float32 for float16/float32 logits, float64 for float64

    @property
    def n_rows(self):
        return self.outer * self.inner


@dataclass(frozen=True)
class LossOptions:
    """What the cross-entropy adds to the logits: its target and options.

    ``target_is_index`` tells class indices (``target`` is ``(outer, inner)``)
    from probabilities (``(outer, n_classes, inner)``). ``softcap`` is 0.0 when off.
    """
    target: View
    target_is_index: bool
    weight: View = None
    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float = 0.0
    validate: bool = True


# The options of a call without a target (the normalisations): every term they switch off.
NO_LOSS = LossOptions(target=None, target_is_index=False, validate=False)


@dataclass(frozen=True)
class Plan:
    """One normalised call: ``op`` on ``logits`` with ``loss``'s target and options
    (``NO_LOSS`` for the normalisations), and what to produce where.

    The scalar ``grad_scale`` multiplies ``grad_output`` (a ``(outer, inner)`` view,
    possibly with zero strides) or stands alone when ``grad_output`` is None.
    """
    op: str                 # "cross_entropy" or one of NORMALIZE_OPS
    logits: Logits
    loss: LossOptions = NO_LOSS
    reduction: str = "none"
    want_loss: bool = True
    want_grad: bool = False
    grad_scale: float = 1.0
    grad_output: View = None
    out: View = None
    copy_back: object = None  # out= that no strided view reaches: the result is copied there
    stream: object = None


def _logits(view, shape, axis, dtype, result_shape):
    return Logits(view=view, outer=view.shape[0], n_classes=shape[axis], inner=view.shape[2],
                  axis=axis, shape=shape, result_shape=result_shape, dtype=dtype,
                  loss_dtype=_loss_dtype(dtype))


# ---------------------------------------------------------------- inspection

def _dtype(x):
    dtype = getattr(x, "dtype", None)
    return None if dtype is None else np.dtype(dtype)


def _element_strides(x):
    itemsize = _dtype(x).itemsize
    strides = getattr(x, "strides", None)
    if strides is None:  # a C-contiguous __cuda_array_interface__ without strides
        strides, step = [], itemsize
        for n in reversed(x.shape):
            strides.insert(0, step)
            step *= n
    for s in strides:
        if s % itemsize:
            raise ValueError(f"strides {tuple(strides)} are not a multiple of the item size "
                             f"{itemsize}; unaligned views are not supported")
    return tuple(s // itemsize for s in strides)


def _collapse(shape, strides):
    """Merge dims into one (size, stride), or None if the view needs two strides."""
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    size = prod(shape)
    if size == 0 or not dims:
        return size, 0
    merged_n, merged_s = dims[-1]
    for n, s in reversed(dims[:-1]):
        if s != merged_n * merged_s:
            return None
        merged_n *= n
    return merged_n, merged_s


def _view(x, axis, name, copy_contiguous, class_axis):
    """Strided view of ``x`` that merges the dims before and after ``axis``.

    With ``class_axis`` the result is (outer, C, inner) around the class axis;
    without it (an array of the loss's shape) it is (outer, inner), split where
    the class axis was. A copy is made only when no such view exists.
    """
    shape = tuple(x.shape)
    strides = _element_strides(x)
    after_start = axis + 1 if class_axis else axis
    before = _collapse(shape[:axis], strides[:axis])
    after = _collapse(shape[after_start:], strides[after_start:])
    if before is None or after is None:
        if copy_contiguous is None:
            raise ValueError(f"{name} must be a view whose dims before and after the class "
                             f"axis each collapse into one stride; got strides {strides} "
                             f"for shape {shape}")
        # Views such as x[::2, ::3] of a 3-D array need one stride per batch dim; the
        # kernels address (outer, C, inner), so these (rare) views are copied once.
        return _view(copy_contiguous(x), axis, name, None, class_axis)
    middle = ((shape[axis],), (strides[axis],)) if class_axis else ((), ())
    return View(x, (before[0], *middle[0], after[0]), (before[1], *middle[1], after[1]))


def _view3(x, axis, name, copy_contiguous=None):
    return _view(x, axis, name, copy_contiguous, class_axis=True)


def _view2(x, axis, name, copy_contiguous=None):
    return _view(x, axis, name, copy_contiguous, class_axis=False)


def _byte_range(x):
    """[lo, hi) of the bytes ``x`` can touch, or None if its pointer is unknown."""
    interface = (getattr(x, "__cuda_array_interface__", None)
                 or getattr(x, "__array_interface__", None))
    if interface is None or _dtype(x) is None:
        return None
    ptr = interface["data"][0]
    itemsize = _dtype(x).itemsize
    if prod(x.shape) == 0:
        return ptr, ptr
    lo = hi = ptr
    for n, s in zip(x.shape, _element_strides(x)):
        reach = (n - 1) * s * itemsize
        lo, hi = (lo + reach, hi) if reach < 0 else (lo, hi + reach)
    return lo, hi + itemsize


def _overlap(a, b):
    ra, rb = _byte_range(a), _byte_range(b)
    return ra is not None and rb is not None and ra[0] < rb[1] and rb[0] < ra[1]


def _same_memory(a, b):
    return (_byte_range(a) == _byte_range(b) and tuple(a.shape) == tuple(b.shape)
            and _element_strides(a) == _element_strides(b))


# ---------------------------------------------------------------- checks

def _check_logits(logits, axis):
    dtype = _dtype(logits)
    if dtype not in LOGIT_DTYPES:
        raise TypeError(f"logits must be float16, float32 or float64; got {dtype}")
    ndim = len(logits.shape)
    if ndim < 1:
        raise ValueError("logits must have at least one dimension (the class axis); got a 0-d array")
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis must be an integer; got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for logits with {ndim} dimension(s); "
                         f"accepted: {-ndim} to {ndim - 1}")
    axis = int(axis) % ndim
    if logits.shape[axis] == 0:
        raise ValueError(f"logits have no classes: shape {tuple(logits.shape)} is 0 along "
                         f"axis {axis}; need C >= 1")
    return axis


def _loss_dtype(dtype):
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _check_reduction(reduction):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; "
                         f"got {reduction!r}")


def _real(name, value, accepted):
    """``value`` as a Python float, or nbxent's error naming ``name``.

    Booleans, strings, complex numbers and arrays are a TypeError; an integer too
    large for a float (``2**2000``) is a ValueError saying what is accepted.
    """
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(
            value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be {accepted}; got an integer of "
                         f"{int(value).bit_length()} bits (too large for a float)") from None


def _check_options(reduction, label_smoothing, z_loss, softcap):
    _check_reduction(reduction)
    label_smoothing = _real("label_smoothing", label_smoothing, "in [0, 1]")
    z_loss = _real("z_loss", z_loss, "a finite number >= 0")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing}")
    if not (z_loss >= 0.0 and np.isfinite(z_loss)):
        raise ValueError(f"z_loss must be a finite number >= 0; got {z_loss}")
    if softcap is not None:
        softcap = _real("softcap", softcap, "None or a finite number > 0")
        if not (np.isfinite(softcap) and softcap > 0):
            raise ValueError(f"softcap must be None or a finite number > 0; got {softcap}")


INDEX_MIN, INDEX_MAX = -2**63, 2**63 - 1


def _check_ignore_index(ignore_index):
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, (bool, np.bool_)):
        raise TypeError(f"ignore_index must be an integer; got {ignore_index!r}")
    if not INDEX_MIN <= int(ignore_index) <= INDEX_MAX:
        raise ValueError(f"ignore_index={ignore_index} is out of range: accepted integers "
                         f"from -2**63 to 2**63 - 1 (int64)")
    return int(ignore_index)


def _check_target(target, shape, axis, ignore_index, logits="logits"):
    """Whether ``target`` holds class indices (else probabilities) for logits of ``shape``;
    ``logits`` names them in the errors."""
    dtype = _dtype(target)
    target_shape = tuple(target.shape)
    loss_shape = shape[:axis] + shape[axis + 1:]
    if dtype is not None and dtype.kind in "iu":
        if target_shape != loss_shape:
            raise ValueError(f"class-index target of shape {target_shape} does not fit {logits} "
                             f"of shape {shape}: expected {loss_shape} (logits' shape without "
                             f"axis {axis})")
        return True
    if dtype is not None and dtype.kind == "f":
        if target_shape != shape:
            raise ValueError(f"probability target of shape {target_shape} does not fit {logits} "
                             f"of shape {shape}: expected the same shape (a floating target "
                             f"holds class probabilities)")
        if ignore_index >= 0:
            raise ValueError(f"ignore_index={ignore_index} is not supported with probability "
                             f"targets (as in PyTorch); use a negative value")
        return False
    raise TypeError(f"target must hold integer class indices or floating class probabilities; "
                    f"got dtype {dtype}")


def _check_weight(weight, n_classes, name="weight"):
    dtype = _dtype(weight)
    if dtype is None or dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real-valued array of shape ({n_classes},); got dtype {dtype}")
    if tuple(weight.shape) != (n_classes,):
        raise ValueError(f"{name} of shape {tuple(weight.shape)} does not fit logits with "
                         f"{n_classes} classes: expected ({n_classes},)")


def _grad_output(grad_output, reduction, loss_shape, axis, copy_contiguous):
    """(scalar, view or None) for ``grad_output``."""
    if isinstance(grad_output, (int, float, np.integer, np.floating)) and not isinstance(grad_output, bool):
        return _real("grad_output", grad_output, "a real scalar or array within float range"), None
    dtype = _dtype(grad_output)
    if dtype is None or dtype.kind not in "fiu":
        raise TypeError(f"grad_output must be a real scalar or array; got {grad_output!r}")
    shape = tuple(grad_output.shape)
    if shape == ():
        return 1.0, View(grad_output, (1, 1), (0, 0))
    if reduction != "none" or shape != loss_shape:
        expected = loss_shape if reduction == "none" else "() (a scalar)"
        raise ValueError(f"grad_output of shape {shape} does not fit the loss of shape "
                         f"{loss_shape if reduction == 'none' else ()} (reduction={reduction!r}): "
                         f"expected {expected}")
    return 1.0, _view2(grad_output, axis, "grad_output", copy_contiguous)


def _is_read_only(x):
    flags = getattr(x, "flags", None)
    writeable = getattr(flags, "writeable", None)
    if writeable is not None:
        return not writeable
    interface = getattr(x, "__cuda_array_interface__", None)
    return bool(interface and interface["data"][1])


def _check_out(out, logits, target, weight, dtype, grad_output=None):
    shape = tuple(logits.shape)
    if getattr(out, "shape", None) is None or _dtype(out) is None:
        raise TypeError(f"out= must be an array of the logits' kind, shape {shape} and dtype "
                        f"{dtype}; got {_type_name(out)}")
    if _dtype(out) != dtype or tuple(out.shape) != shape:
        raise ValueError(f"out= must have the logits' shape {shape} and dtype {dtype}; got "
                         f"shape {tuple(out.shape)} and dtype {_dtype(out)}")
    if _is_read_only(out):
        raise ValueError("out= is read-only: pass a writeable array (or drop out= and use "
                         "the return value)")
    for name, other in (("target", target), ("weight", weight), ("grad_output", grad_output)):
        if other is not None and _overlap(out, other):
            raise ValueError(f"out= overlaps {name}: the gradient would overwrite it")
    if _overlap(out, logits) and not _same_memory(out, logits):
        raise ValueError("out= partly overlaps the logits: pass the logits themselves for an "
                         "in-place gradient, or a separate array")


EMPTY_MODES = ("nan", "zero", "raise")


def check_sample_weight(sample_weight, loss_shape, logits_shape, axis):
    """Check ``sample_weight`` (one weight per row: the loss's shape, no broadcasting)."""
    if sample_weight is None:
        return
    dtype = _dtype(sample_weight)
    if dtype is None or dtype.kind not in "fiu":
        raise TypeError(f"sample_weight must be a real-valued array of the loss's shape "
                        f"{loss_shape}; got dtype {dtype}")
    shape = tuple(sample_weight.shape)
    if shape != tuple(loss_shape):
        what = ("the target's shape" if axis is None
                else f"the loss's shape: the shape without axis {axis}")
        raise ValueError(f"sample_weight of shape {shape} does not fit "
                         f"{'target' if axis is None else 'logits'} of shape "
                         f"{tuple(logits_shape)}: expected {tuple(loss_shape)} ({what})")


def check_denominator(denominator, reduction):
    """Check ``denominator=``: None, a finite number >= 0 or a 0-d real array ('mean' only).

    Host values are checked here; a 0-d device array is taken as it is (reading it
    would wait for the device)."""
    if denominator is None:
        return
    if reduction != "mean":
        raise ValueError(f"denominator= replaces the denominator of reduction='mean'; "
                         f"got reduction={reduction!r}")
    dtype = _dtype(denominator)
    if dtype is not None and not isinstance(denominator, np.generic):
        if dtype.kind not in "fiu":
            raise TypeError(f"denominator must be a real number or a 0-d real array; got "
                            f"dtype {dtype}")
        if tuple(denominator.shape) != ():
            raise ValueError(f"denominator must be a number or a 0-d array; got an array of "
                             f"shape {tuple(denominator.shape)}")
        if not isinstance(denominator, np.ndarray):
            return
        denominator = denominator[()]
    value = _real("denominator", denominator, "a finite number >= 0")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"denominator must be a finite number >= 0; got {value}")


def check_empty(empty):
    if not isinstance(empty, str) or empty not in EMPTY_MODES:
        raise ValueError(f"empty must be one of {', '.join(map(repr, EMPTY_MODES))}; "
                         f"got {empty!r}")


def empty_batch_error(shape):
    """The ValueError of ``empty='raise'`` for a batch with nothing to average."""
    return ValueError(f"reduction='mean' of a batch with no counted target (logits of shape "
                      f"{tuple(shape)}: every target is ignore_index, the batch is empty, or "
                      f"every sample weight of a counted target is 0) and empty='raise'")


def check_training(logits, target, *, axis, sample_weight, denominator, empty, reduction,
                   out=None):
    """Check the training options of a cross-entropy call (after ``make_loss_plan``'s own)."""
    shape = tuple(logits.shape)
    axis = int(axis) % len(shape)
    check_sample_weight(sample_weight, shape[:axis] + shape[axis + 1:], shape, axis)
    check_denominator(denominator, reduction)
    check_empty(empty)
    if out is not None and sample_weight is not None and _overlap(out, sample_weight):
        raise ValueError("out= overlaps sample_weight: the gradient would overwrite it")


def check_base(base):
    """``base=`` of an entropy: None (nats) or a finite number > 0 other than 1 (2: bits)."""
    if base is None:
        return None
    value = _real("base", base, "None or a finite number > 0 other than 1")
    if not (np.isfinite(value) and value > 0 and value != 1):
        raise ValueError(f"base must be None (nats) or a finite number > 0 other than 1 "
                         f"(2 for bits); got {value}")
    return value


def check_kl_target(target, logits, log_target):
    """Check a KL divergence's target: float16/32/64 of the logits' shape (the shape is
    checked again, with the other options, by ``make_loss_plan``)."""
    if not isinstance(log_target, (bool, np.bool_)):
        raise TypeError(f"log_target must be True or False; got {log_target!r}")
    what = "log-probabilities (or logits)" if log_target else "class probabilities"
    if _dtype(target) not in LOGIT_DTYPES:
        raise TypeError(f"target of a KL divergence must hold {what} as float16, float32 or "
                        f"float64, of the logits' shape {tuple(logits.shape)}; got dtype "
                        f"{_dtype(target)} and shape {tuple(getattr(target, 'shape', ()))}")


def check_mean_denominator(target, weight, ignore_index, sample_weight, axis):
    """Check a ``mean_denominator`` call: (rows' shape, target holds indices, ignore_index)."""
    ignore_index = _check_ignore_index(ignore_index)
    dtype, shape = _dtype(target), tuple(getattr(target, "shape", ()))
    if dtype is None or dtype.kind not in "iuf":
        raise TypeError(f"target must hold integer class indices or floating class "
                        f"probabilities; got dtype {dtype}")
    if dtype.kind == "f":
        if not shape:
            raise ValueError("a probability target needs a class axis; got a 0-d array")
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise TypeError(f"axis must be an integer; got {axis!r}")
        if not -len(shape) <= axis < len(shape):
            raise ValueError(f"axis {axis} is out of range for a target with {len(shape)} "
                             f"dimension(s); accepted: {-len(shape)} to {len(shape) - 1}")
        axis = int(axis) % len(shape)
        rows_shape = shape[:axis] + shape[axis + 1:]
    else:
        rows_shape = shape
    if weight is not None:
        w_dtype = _dtype(weight)
        if w_dtype is None or w_dtype.kind not in "fiu" or len(weight.shape) != 1:
            raise TypeError(f"weight must be a real-valued array of shape (C,); got dtype "
                            f"{w_dtype} and shape {tuple(getattr(weight, 'shape', ()))}")
    if sample_weight is not None:
        check_sample_weight(sample_weight, rows_shape, shape, axis if dtype.kind == "f" else None)
    return rows_shape, dtype.kind != "f", ignore_index


# ---------------------------------------------------------------- plans

def _out_view(out, logits, axis, copy_contiguous):
    """(view of out, array to copy the result into, how the logits may be copied).

    An ``out=`` whose batch dims do not collapse into one stride gets no view: the
    backend writes a fresh array and the caller copies it into ``out`` (the same
    holds in place, where the logits may then be copied too). Otherwise the
    logits of an in-place call must not be copied: the gradient overwrites them.
    """
    if out is None:
        return None, None, copy_contiguous
    try:
        view = _view3(out, axis, "out")
    except ValueError:
        if copy_contiguous is None:
            raise
        return None, out, copy_contiguous
    return view, None, None if _same_memory(out, logits) else copy_contiguous


def _common(logits, axis):
    axis = _check_logits(logits, axis)
    shape = tuple(logits.shape)
    return axis, shape, shape[:axis] + shape[axis + 1:]


def make_loss_plan(logits, target, *, axis, weight, ignore_index, reduction, label_smoothing,
                   z_loss, softcap, validate, want_loss, want_grad, grad_output=1.0, out=None,
                   copy_contiguous=None, stream=None):
    """Check a cross-entropy call and describe it as a ``Plan``."""
    axis, shape, loss_shape = _common(logits, axis)
    _check_options(reduction, label_smoothing, z_loss, softcap)
    ignore_index = _check_ignore_index(ignore_index)
    target_is_index = _check_target(target, shape, axis, ignore_index)
    n_classes = shape[axis]
    if weight is not None:
        _check_weight(weight, n_classes)
    grad_scale, grad_view = 1.0, None
    if want_grad:
        grad_scale, grad_view = _grad_output(grad_output, reduction, loss_shape, axis,
                                             copy_contiguous)
    dtype = _dtype(logits)
    if out is not None:
        _check_out(out, logits, target, weight, dtype,
                   None if grad_view is None else grad_output)
    out_view, copy_back, logits_copy = _out_view(out, logits, axis, copy_contiguous)
    logits_view = _view3(logits, axis, "logits", logits_copy)
    if target_is_index:
        target_view = _view2(target, axis, "target", copy_contiguous)
    else:
        target_view = _view3(target, axis, "target", copy_contiguous)
    weight_view = None if weight is None else View(weight, (n_classes,), _element_strides(weight))
    loss = LossOptions(target=target_view, target_is_index=target_is_index, weight=weight_view,
                       ignore_index=int(ignore_index), label_smoothing=float(label_smoothing),
                       z_loss=float(z_loss), softcap=0.0 if softcap is None else float(softcap),
                       validate=bool(validate))
    return Plan(op="cross_entropy", logits=_logits(logits_view, shape, axis, dtype, loss_shape),
                loss=loss, reduction=reduction, want_loss=want_loss, want_grad=want_grad,
                grad_scale=grad_scale, grad_output=grad_view, out=out_view, copy_back=copy_back,
                stream=stream)


def make_normalize_plan(op, x, *, axis, reduction="none", out=None, copy_contiguous=None,
                        stream=None):
    """Check a logsumexp / log_softmax / softmax / entropy call and describe it."""
    axis, shape, result_shape = _common(x, axis)
    _check_reduction(reduction)
    dtype = _dtype(x)
    if out is not None:
        _check_out(out, x, None, None, dtype)
    out_view, copy_back, x_copy = _out_view(out, x, axis, copy_contiguous)
    view = _view3(x, axis, "x", x_copy)
    return Plan(op=op, logits=_logits(view, shape, axis, dtype, result_shape),
                reduction=reduction, want_loss=op in ("logsumexp", "entropy"),
                want_grad=op in ("log_softmax", "softmax"), out=out_view, copy_back=copy_back,
                stream=stream)


# ---------------------------------------------------------------- fused linear layer

LINEAR_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class LinearPlan:
    """One checked ``linear_cross_entropy`` call: logits = features @ weight.T + bias.

    ``features`` is (n_rows, n_features) (a 1-D input is seen as one row; ``batched``
    says which the caller gave), ``weight`` (n_classes, n_features), ``bias``
    (n_classes,) or None, ``target`` (n_rows,) class indices or (n_rows, n_classes)
    probabilities, ``class_weight`` (n_classes,) or None. ``grad_output`` is a float,
    a 0-d array, or for reduction 'none' an (n_rows,) array. ``chunk`` is
    (rows, classes) or None (sized from ``memory_budget``, bytes, or the default).
    """
    features: object
    weight: object
    bias: object
    target: object
    class_weight: object
    grad_output: object
    n_rows: int
    n_features: int
    n_classes: int
    batched: bool
    dtype: np.dtype
    loss_dtype: np.dtype
    target_is_index: bool
    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float
    softcap: float          # 0.0 when off
    validate: bool
    want_grad: bool
    chunk: tuple = None
    memory_budget: int = None


def _positive_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _check_chunk(chunk, memory_budget):
    """(rows, classes or None) or None for ``chunk=``; the budget as an int or None."""
    if chunk is not None and memory_budget is not None:
        raise ValueError(f"give chunk= or memory_budget=, not both; got chunk={chunk!r} and "
                         f"memory_budget={memory_budget!r}")
    if memory_budget is not None:
        memory_budget = _positive_int("memory_budget (bytes)", memory_budget)
    if chunk is None:
        return None, memory_budget
    if isinstance(chunk, tuple) and len(chunk) == 2:
        return (_positive_int("chunk[0] (rows)", chunk[0]),
                _positive_int("chunk[1] (classes)", chunk[1])), None
    if isinstance(chunk, tuple):
        raise ValueError(f"chunk must be rows or (rows, classes); got a tuple of {len(chunk)}")
    return (_positive_int("chunk (rows)", chunk), None), None


def _check_linear_arrays(features, weight, bias):
    """(dtype, n_rows, n_features, n_classes) of a fused linear call."""
    dtype = _dtype(features)
    if dtype not in LINEAR_DTYPES:
        raise TypeError(f"features must be float32 or float64; got {dtype}")
    for name, x in (("weight", weight), ("bias", bias)):
        if x is not None and _dtype(x) != dtype:
            raise TypeError(f"{name} must have the features' dtype {dtype}; got {_dtype(x)}")
    f_shape, w_shape = tuple(features.shape), tuple(weight.shape)
    if len(f_shape) not in (1, 2):
        raise ValueError(f"features must be (N, d) or (d,); got shape {f_shape}")
    if len(w_shape) != 2:
        raise ValueError(f"weight must be (C, d) (K-dimensional weights are not supported); "
                         f"got shape {w_shape}")
    if f_shape[-1] != w_shape[1]:
        raise ValueError(f"features of shape {f_shape} and weight of shape {w_shape} do not "
                         f"fit: their last dimensions (d, the in-features) differ")
    if w_shape[0] == 0:
        raise ValueError(f"weight of shape {w_shape} has no classes; need C >= 1")
    if bias is not None and tuple(bias.shape) != (w_shape[0],):
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not fit weight of shape "
                         f"{w_shape}: expected ({w_shape[0]},)")
    n_rows = f_shape[0] if len(f_shape) == 2 else 1
    return dtype, n_rows, f_shape[-1], w_shape[0]


def make_linear_plan(features, weight, target, *, bias, class_weight, ignore_index, reduction,
                     label_smoothing, z_loss, softcap, validate, want_grad, grad_output=1.0,
                     chunk=None, memory_budget=None):
    """Check a ``linear_cross_entropy`` call and describe it as a ``LinearPlan``.

    The checks are ``cross_entropy``'s for the logits ``features @ weight.T`` (of shape
    features' shape without d, plus C), and the shapes of the three arrays that make
    them. Arrays are only inspected, never read.
    """
    dtype, n_rows, n_features, n_classes = _check_linear_arrays(features, weight, bias)
    _check_options(reduction, label_smoothing, z_loss, softcap)
    ignore_index = _check_ignore_index(ignore_index)
    batch_shape = tuple(features.shape[:-1])
    logits_shape = (*batch_shape, n_classes)
    target_is_index = _check_target(target, logits_shape, len(batch_shape), ignore_index,
                                    logits="the logits features @ weight.T")
    if class_weight is not None:
        _check_weight(class_weight, n_classes, "class_weight")
    if want_grad:
        scale, view = _grad_output(grad_output, reduction, batch_shape, len(batch_shape), None)
        grad_output = scale if view is None else grad_output
    chunk, memory_budget = _check_chunk(chunk, memory_budget)
    return LinearPlan(features=features, weight=weight, bias=bias, target=target,
                      class_weight=class_weight, grad_output=grad_output, n_rows=n_rows,
                      n_features=n_features, n_classes=n_classes, batched=bool(batch_shape),
                      dtype=dtype, loss_dtype=_loss_dtype(dtype), target_is_index=target_is_index,
                      ignore_index=ignore_index, reduction=reduction,
                      label_smoothing=float(label_smoothing), z_loss=float(z_loss),
                      softcap=0.0 if softcap is None else float(softcap),
                      validate=bool(validate), want_grad=want_grad, chunk=chunk,
                      memory_budget=memory_budget)


def index_error(position, value, n_classes, ignore_index):
    """The ValueError for a class index outside [0, C) that is not ignore_index."""
    return ValueError(f"target {value} at position {tuple(position)} is not a class index in "
                      f"[0, {n_classes}) nor ignore_index={ignore_index}")


def _type_name(x):
    cls = type(x)
    return f"{cls.__module__}.{cls.__qualname__}"


def mixed_kinds_error(first, first_kind, first_name, other, other_kind, other_name):
    """The TypeError for arrays of two kinds (NumPy and GPU, say) in one call.

    Names are the arguments' (``logits``, ``target``, ...), or positions for
    ``backend_of``, where they are left out.
    """
    given = ("" if isinstance(first_name, int) else
             f" (given as {first_name} and {other_name})")
    return TypeError(f"cannot mix array kinds: {_type_name(first)} ({first_kind}) with "
                     f"{_type_name(other)} ({other_kind}){given}; move them to one device first")


def conversion_error(name, x, exc):
    """The TypeError for an argument no backend can read as an array."""
    return TypeError(
        f"{name} of type {_type_name(x)} cannot be read as an array "
        f"({type(exc).__name__}: {exc}); accepted: NumPy arrays and what np.asarray takes "
        f"(lists, scalars, objects with __array__ or the buffer protocol), CPU arrays "
        f"exporting DLPack (PyTorch, JAX), CuPy and other __cuda_array_interface__ arrays, "
        f"Dask arrays")


def immutable_out_error(kind):
    """The TypeError for ``out=`` given to a backend whose arrays cannot be written."""
    return TypeError(f"out= is not supported with {kind} arrays: they are immutable, so the "
                     f"result is always a new (lazy) array; drop out= and use the return value")
