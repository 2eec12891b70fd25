"""nbxent as a PyTorch loss: ``cross_entropy`` and ``CrossEntropyLoss`` for training.

A drop-in for ``torch.nn.functional.cross_entropy`` and ``torch.nn.CrossEntropyLoss``
(same arguments, same defaults, same results) that computes the loss and its
gradient in one fused nbxent pass in the forward, saves the gradient, and only
scales it by the upstream gradient in the backward: the logits are read once and
the gradient written once per training step. ``pip install 'nbxent[torch]'``.

CPU tensors run on nbxent's Numba kernels, read and written in place through
DLPack (no copy, contiguous or not); CUDA tensors run on nbxent's CUDA kernels
(``nbxent[cuda]``) on the tensor's current PyTorch stream, through
``__cuda_array_interface__``, without waiting for the GPU except for the class
index check (see ``nbxent.cross_entropy``'s ``validate``).

The fused step is a PyTorch custom operator, ``torch.ops.nbxent.cross_entropy_with_grad``
(with a shape-only fake implementation and an autograd formula), so
``torch.compile(model, fullgraph=True)`` compiles a model that uses it without a
graph break. Without autograd (``torch.no_grad()``, or logits that do not require
grad) the loss alone is computed (``torch.ops.nbxent.cross_entropy``), with no
gradient buffer. Both operators carry an autocast rule: under ``torch.autocast``
float16 and bfloat16 inputs are cast to float32 first, as autocast does for
``torch.nn.functional.cross_entropy``.

nbxent's training options (``sample_weight``, ``denominator``, ``empty``) are operator
arguments; ``metrics=`` takes the operators ``torch.ops.nbxent.cross_entropy_metrics``
and ``torch.ops.nbxent.cross_entropy_with_grad_metrics`` (``..._metrics_`` in place),
which also return the metrics of the same pass (calls without metrics never run them).
"""

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import api
from ._config import CPU
from ._metrics import check_metrics
from ._plan import (_check_ignore_index, _check_options, check_denominator,
                    check_empty)
from .cpu import recycling

__all__ = ["cross_entropy", "CrossEntropyLoss"]

_LOGIT_DTYPES = (torch.float16, torch.float32, torch.float64)


# --------------------------------------------------------------- nbxent calls

def _as_tensor(array, device, dtype=None):
    """nbxent's array (NumPy on the host; CuPy or a Numba device array on the GPU) as a
    tensor on ``device`` without a copy (no host sync), cast to ``dtype`` when given."""
    if isinstance(array, (np.ndarray, np.generic)):
        tensor = torch.from_numpy(np.asarray(array))
    else:  # __cuda_array_interface__: a view of the device memory, no host sync
        tensor = torch.as_tensor(array, device=device)
    return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)


_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32,
                 torch.float64: np.float64}


def _new_grad(logits):
    """The gradient's buffer, with the strides the fake implementation announces
    (``empty_like``); nbxent writes it through DLPack / ``__cuda_array_interface__``.

    Contiguous CPU logits get a NumPy allocation: NumPy asks Linux for transparent huge
    pages on large arrays and PyTorch's allocator does not (unless THP_MEM_ALLOC_ENABLE=1),
    so the first write of a fresh N×C buffer faults 2 MiB pages instead of 4 KiB ones:
    measured 4x cheaper (benchmarks/RESULTS.md, "PyTorch and JAX wrappers"); and from the
    step before's dropped gradient when it has the same size (``nbxent.cpu.recycling``),
    without faults at all.
    """
    if logits.device.type == "cpu" and logits.is_contiguous() and logits.dtype in _NUMPY_DTYPES:
        return torch.from_numpy(recycling.empty(tuple(logits.shape),
                                                _NUMPY_DTYPES[logits.dtype], CPU.current()))
    return torch.empty_like(logits)


def _rows_shape(logits, axis):
    shape = tuple(logits.shape)
    return shape[:axis] + shape[axis + 1:]


def _loss_shape(logits, axis, reduction):
    return _rows_shape(logits, axis) if reduction == "none" else ()


def _metric_names(metrics):
    """The operators' ``metrics`` string (names joined by commas: torch.library's schema
    has no list of strings) as nbxent's tuple of names, None for ''."""
    return tuple(metrics.split(",")) if metrics else None


def _metric_dtype(name, logits):
    """A metric tensor's dtype: int64 argmax, bool correct and top_k, lse and entropy in
    the loss's dtype (input's dtype, as the loss)."""
    return {"argmax": torch.int64, "correct": torch.bool, "top_k": torch.bool}.get(
        name, logits.dtype)


def _fake_results(logits, axis, reduction, metrics, grad=False):
    """What the fake implementations return: the loss, the gradient when ``grad``, and
    with ``metrics`` the list of metric tensors."""
    results = [logits.new_empty(_loss_shape(logits, axis, reduction))]
    if grad:
        results.append(torch.empty_like(logits))
    if metrics is not None:
        results.append([logits.new_empty(_rows_shape(logits, axis),
                                         dtype=_metric_dtype(name, logits))
                        for name in _metric_names(metrics) or ()])
    return tuple(results) if len(results) > 1 else results[0]


def _run(logits, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss,
         softcap, sample_weight, denominator, empty, metrics=None, top_k=5, grad=None):
    """nbxent on tensors: the loss, and with ``grad`` (a buffer, or ``logits`` itself for
    the in-place operator) the gradient written there; with ``metrics`` (the operators'
    string) also the list of metric tensors. Tensors are detached (DLPack refuses tensors
    requiring grad), and on the GPU nbxent runs on the caller's current PyTorch stream."""
    detach = [None if x is None else x.detach() for x in (sample_weight, denominator, weight)]
    if detach[1] is not None and detach[1].device.type == "cpu":
        # A host value for nbxent whatever the logits' device (a number given to the
        # wrapper arrives as a CPU tensor): read on the host, not a CPU array beside GPU ones.
        detach[1] = detach[1].numpy()
    options = dict(axis=axis, weight=detach[2], ignore_index=ignore_index,
                   reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                   softcap=softcap, sample_weight=detach[0], denominator=detach[1],
                   empty=empty)
    if logits.device.type == "cuda":
        options["stream"] = torch.cuda.current_stream(logits.device).cuda_stream
    names = _metric_names(metrics)
    if names is not None:
        options.update(metrics=names, top_k=top_k)
    x, t = logits.detach(), target.detach()
    if grad is None:
        result = api.cross_entropy(x, t, **options)
    else:
        result = api.cross_entropy_with_grad(x, t, out=x if grad is logits else grad, **options)
        result = (result[0],) + tuple(result[2:])
    loss = result if grad is None and names is None else result[0]
    loss = _as_tensor(loss, logits.device, logits.dtype)
    if names is None:
        return loss
    found = result[-1]
    return loss, [_as_tensor(found[name], logits.device, _metric_dtype(name, logits))
                  for name in names]


def _with_grad(logits, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss,
               softcap, sample_weight=None, denominator=None, empty="nan", metrics=None,
               top_k=5):
    """The differentiated forward: (loss, gradient), with ``metrics`` (loss, gradient,
    list of metric tensors); the gradient in a new buffer (``_new_grad``)."""
    grad = _new_grad(logits)
    result = _run(logits, target, weight, axis, ignore_index, reduction, label_smoothing,
                  z_loss, softcap, sample_weight, denominator, empty, metrics, top_k, grad=grad)
    return (result, grad) if metrics is None else (result[0], grad, result[1])


# --------------------------------------------------------------- custom operators
# Tensors are typed for torch.library's schema; axis is nbxent's class axis (1, or 0
# for a 1-D input). Outputs never alias inputs, except in the mutating operator. The
# training options (sample_weight, denominator, empty) are constants: no gradient.

@torch.library.custom_op("nbxent::cross_entropy", mutates_args=())
def _cross_entropy_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], axis: int,
                      ignore_index: int, reduction: str, label_smoothing: float, z_loss: float,
                      softcap: Optional[float], sample_weight: Optional[Tensor] = None,
                      denominator: Optional[Tensor] = None, empty: str = "nan") -> Tensor:
    """The loss alone (no gradient buffer): the path without autograd."""
    return _run(logits, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss,
                softcap, sample_weight, denominator, empty)


@_cross_entropy_op.register_fake
def _(logits, target, weight, axis, ignore_index, reduction, *_):
    return _fake_results(logits, axis, reduction, None)


@torch.library.custom_op("nbxent::cross_entropy_metrics", mutates_args=())
def _metrics_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], axis: int,
                ignore_index: int, reduction: str, label_smoothing: float, z_loss: float,
                softcap: Optional[float], sample_weight: Optional[Tensor],
                denominator: Optional[Tensor], empty: str, metrics: str,
                top_k: int) -> tuple[Tensor, list[Tensor]]:
    """The loss and the metric tensors (names joined by commas), without a gradient."""
    return _run(logits, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss,
                softcap, sample_weight, denominator, empty, metrics, top_k)


@_metrics_op.register_fake
def _(logits, target, weight, axis, ignore_index, reduction, *rest):
    return _fake_results(logits, axis, reduction, rest[-2])


@torch.library.custom_op("nbxent::cross_entropy_with_grad", mutates_args=())
def _with_grad_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], axis: int,
                  ignore_index: int, reduction: str, label_smoothing: float, z_loss: float,
                  softcap: Optional[float], sample_weight: Optional[Tensor] = None,
                  denominator: Optional[Tensor] = None,
                  empty: str = "nan") -> tuple[Tensor, Tensor]:
    """(loss, d loss / d logits) in one fused pass; for 'none' the gradient of each row's
    own loss (upstream gradient 1), which the backward scales row by row."""
    return _with_grad(logits, target, weight, axis, ignore_index, reduction, label_smoothing,
                      z_loss, softcap, sample_weight, denominator, empty)


@_with_grad_op.register_fake
def _(logits, target, weight, axis, ignore_index, reduction, *_):
    return _fake_results(logits, axis, reduction, None, grad=True)


@torch.library.custom_op("nbxent::cross_entropy_with_grad_metrics", mutates_args=())
def _with_grad_metrics_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], axis: int,
                          ignore_index: int, reduction: str, label_smoothing: float,
                          z_loss: float, softcap: Optional[float],
                          sample_weight: Optional[Tensor], denominator: Optional[Tensor],
                          empty: str, metrics: str,
                          top_k: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``nbxent::cross_entropy_with_grad`` and the metric tensors of the same pass."""
    return _with_grad(logits, target, weight, axis, ignore_index, reduction, label_smoothing,
                      z_loss, softcap, sample_weight, denominator, empty, metrics, top_k)


@_with_grad_metrics_op.register_fake
def _(logits, target, weight, axis, ignore_index, reduction, *rest):
    return _fake_results(logits, axis, reduction, rest[-2], grad=True)


def _setup_context(ctx, inputs, output):
    ctx.axis, ctx.reduction, ctx.n_inputs = inputs[3], inputs[5], len(inputs)
    ctx.save_for_backward(output[1])
    # The gradient output has no gradient of its own (no gradients of gradients), nor
    # have the metrics: marked so, and with their cotangents left unmaterialised (None,
    # not an N×C tensor of zeros written on every backward).
    ctx.mark_non_differentiable(output[1], *(output[2] if len(output) > 2 else ()))
    ctx.set_materialize_grads(False)


def _scale(grad_loss, axis, reduction):
    """The upstream gradient in a shape that multiplies the saved gradient: a scalar for
    'mean' and 'sum', one value per row (broadcast along the class axis) for 'none'."""
    return grad_loss.unsqueeze(axis) if reduction == "none" else grad_loss


def _is_one(grad_loss):
    """Whether the upstream gradient is the scalar 1 (``loss.backward()`` of a 'mean' or
    'sum' loss), checked only where reading it costs no wait: a CPU tensor, outside
    ``torch.compile`` (whose graph fuses the multiplication anyway) and functorch."""
    if (grad_loss.numel() != 1 or grad_loss.device.type != "cpu"
            or torch.compiler.is_compiling()
            or torch._C._functorch.is_functorch_wrapped_tensor(grad_loss)):
        return False
    return bool(grad_loss.item() == 1)


def _graph_is_released():
    """Whether this backward frees the saved tensors after it (no ``retain_graph``)."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keep_graph is not None and not keep_graph()


def _backward(ctx, grad_loss, *_grads_of_other_outputs):
    (grad,) = ctx.saved_tensors
    others = (None,) * (ctx.n_inputs - 1)
    if grad_loss is None:        # only the gradient output (or metrics) used downstream
        return (None,) + others
    if _is_one(grad_loss) and _graph_is_released():
        # The saved gradient as is: no N×C multiplication by 1 and no new buffer. The graph
        # is freed after this backward, so nothing reads the saved tensor again and a
        # leaf's .grad may take it over. With retain_graph it would alias the saved
        # tensor (a second backward accumulating into .grad would modify it): multiply.
        return (grad,) + others
    return (grad * _scale(grad_loss, ctx.axis, ctx.reduction),) + others


for _op in (_with_grad_op, _with_grad_metrics_op):
    _op.register_autograd(_backward, setup_context=_setup_context)


class _EagerCrossEntropy(torch.autograd.Function):
    """The differentiated call in eager mode: the operators' own forward and backward
    (``_with_grad``, ``_setup_context``, ``_backward``) without torch.library's dispatch
    and autograd wrapper, which cost about 0.5 ms a step (benchmarks/RESULTS.md). The
    operators serve what must see them: torch.compile, autocast, functorch transforms and
    tensor subclasses (``_eager``). Outputs: the loss, the gradient, each metric tensor."""

    @staticmethod
    def forward(ctx, *args):
        loss, grad, *found = _with_grad(*args)
        found = found[0] if found else []
        _setup_context(ctx, args, (loss, grad, found))
        return (loss, grad, *found)

    backward = staticmethod(_backward)


def _eager(input):
    """Whether a differentiated call on ``input`` may take ``_EagerCrossEntropy``."""
    return not (torch.compiler.is_compiling() or torch.is_autocast_enabled(input.device.type)
                or torch._C._functorch.is_functorch_wrapped_tensor(input)
                or torch.overrides.has_torch_function_unary(input))


@torch.library.custom_op("nbxent::cross_entropy_with_grad_", mutates_args=("logits",))
def _with_grad_inplace_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], axis: int,
                          ignore_index: int, reduction: str, label_smoothing: float,
                          z_loss: float, softcap: Optional[float],
                          sample_weight: Optional[Tensor] = None,
                          denominator: Optional[Tensor] = None, empty: str = "nan") -> Tensor:
    """The loss; the gradient (as in ``nbxent::cross_entropy_with_grad``) overwrites
    ``logits``."""
    return _run(logits, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss,
                softcap, sample_weight, denominator, empty, grad=logits)


@_with_grad_inplace_op.register_fake
def _(logits, target, weight, axis, ignore_index, reduction, *_):
    return _fake_results(logits, axis, reduction, None)


@torch.library.custom_op("nbxent::cross_entropy_with_grad_metrics_", mutates_args=("logits",))
def _with_grad_inplace_metrics_op(logits: Tensor, target: Tensor, weight: Optional[Tensor],
                                  axis: int, ignore_index: int, reduction: str,
                                  label_smoothing: float, z_loss: float,
                                  softcap: Optional[float], sample_weight: Optional[Tensor],
                                  denominator: Optional[Tensor], empty: str, metrics: str,
                                  top_k: int) -> tuple[Tensor, Tensor]:
    """``nbxent::cross_entropy_with_grad_`` and the metrics, stacked as float64 rows (one
    per name, exact for each metric's values): torch.compile cannot functionalize a
    mutating operator that returns a list of tensors. ``_unstacked`` takes them apart."""
    loss, found = _run(logits, target, weight, axis, ignore_index, reduction, label_smoothing,
                       z_loss, softcap, sample_weight, denominator, empty, metrics, top_k,
                       grad=logits)
    return loss, torch.stack([value.to(torch.float64) for value in found])


@_with_grad_inplace_metrics_op.register_fake
def _(logits, target, weight, axis, ignore_index, reduction, *rest):
    stacked_shape = (len(_metric_names(rest[-2])),) + _rows_shape(logits, axis)
    return (_fake_results(logits, axis, reduction, None),
            logits.new_empty(stacked_shape, dtype=torch.float64))


def _unstacked(stacked, names, logits):
    return [row.to(_metric_dtype(name, logits)) for name, row in zip(names, stacked)]


class _InplaceCrossEntropy(torch.autograd.Function):
    """Autograd for the in-place operator (torch.library gives mutating operators no
    autograd formula): the forward leaves the gradient in the logits' storage, the
    backward scales it there and hands it on.

    The mutation goes through a detached alias, so it bumps the logits' version counter:
    an operation that saved the logits for its own backward then fails loudly instead
    of differentiating garbage.
    """

    @staticmethod
    def forward(ctx, logits, *args):
        """The loss, or with the metrics' arguments (loss, stacked metrics)."""
        grad = logits.detach()
        with_metrics = len(args) > 11
        op = _with_grad_inplace_metrics_op if with_metrics else _with_grad_inplace_op
        result = op(grad, *args)
        ctx.axis, ctx.reduction, ctx.n_inputs = args[2], args[4], 1 + len(args)
        ctx.save_for_backward(grad)
        if with_metrics:
            ctx.mark_non_differentiable(result[1])
        return result

    @staticmethod
    def backward(ctx, grad_loss, *_grad_of_metrics):
        (grad,) = ctx.saved_tensors
        if not _is_one(grad_loss):
            grad.mul_(_scale(grad_loss, ctx.axis, ctx.reduction))
        return (grad,) + (None,) * (ctx.n_inputs - 1)


# torch.nn.functional.cross_entropy is on autocast's float32 list: under torch.autocast its
# float16 and bfloat16 inputs are cast to float32 (float64 stays) and the loss is float32.
# The same rule for nbxent's operators, on every device type autocast knows; autograd
# records the casts, so a bfloat16 input still gets a bfloat16 gradient.
for _op in (_cross_entropy_op, _metrics_op, _with_grad_op, _with_grad_metrics_op):
    for _device_type in ("cpu", "cuda"):
        if torch._C._is_autocast_available(_device_type):
            _op.register_autocast(_device_type, torch.float32)


def _autocasts(input):
    """Whether autocast will cast ``input`` (float16 or bfloat16) to float32 for the op."""
    return (input.dtype in (torch.float16, torch.bfloat16)
            and torch.is_autocast_enabled(input.device.type))


# --------------------------------------------------------------- public API

def _check_tensor_args(input, target, weight, sample_weight=None, denominator=None):
    """Errors torch.library's schema would otherwise raise in its own words, and the
    refusal of gradients other than the input's."""
    for name, x in (("input", input), ("target", target), ("weight", weight),
                    ("sample_weight", sample_weight)):
        if x is not None and not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__} "
                            f"(use nbxent.cross_entropy for NumPy and CuPy arrays)")
    if input.dtype not in _LOGIT_DTYPES and not _autocasts(input):
        hint = (" (nbxent has no bfloat16 kernels: pass input.float(), or input.half() if "
                "float16's range suffices)" if input.dtype == torch.bfloat16 else "")
        raise TypeError(f"logits must be float16, float32 or float64; got {input.dtype}{hint}")
    grad_enabled = torch.is_grad_enabled()
    for name, x in (("target", target), ("weight", weight), ("sample_weight", sample_weight),
                    ("denominator", denominator)):
        if grad_enabled and isinstance(x, Tensor) and x.requires_grad:
            raise RuntimeError(f"nbxent.torch.cross_entropy differentiates with respect to "
                               f"input only, but {name} requires grad; pass {name}.detach()")


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, *, z_loss=0.0, softcap=None, inplace_backward=False,
                  sample_weight=None, denominator=None, empty="nan", metrics=None, top_k=5):
    """Softmax cross-entropy of PyTorch tensors, forward and backward in one nbxent pass.

    Arguments, defaults and results are those of ``torch.nn.functional.cross_entropy``
    (the classes lie along dimension 1, or 0 for a 1-D input), plus nbxent's
    ``z_loss``, ``softcap`` and training options (``sample_weight``, ``denominator``,
    ``empty``, ``metrics``), with ``nbxent.cross_entropy``'s semantics. Under
    autograd the forward computes the loss and its gradient together and saves the
    gradient (one N×C buffer, as torch saves its softmax); the backward multiplies it
    by the upstream gradient.

    Parameters
    ----------
    input : Tensor, float16 / float32 / float64, shape (C,), (N, C) or (N, C, d1, ...)
        Unnormalised scores, on the CPU or a CUDA device.
    target : Tensor
        Class indices (an integer tensor of input's shape without dimension 1, a 0-d
        tensor for a 1-D input) or class probabilities (floating, input's shape).
    weight : Tensor of shape (C,), optional
        Per-class weights, as in torch.
    ignore_index : int
        Class-index targets equal to it add no loss and no gradient, and do not
        count in 'mean'.
    reduction : {'mean', 'sum', 'none'}
        As in torch: 'mean' divides by the summed weights of the non-ignored targets.
    label_smoothing : float in [0, 1]
        torch's formula.
    z_loss : float >= 0
        Adds ``z_loss * logsumexp(row)**2`` per non-ignored row (PaLM); under 'mean'
        divided by the number of non-ignored rows.
    softcap : float > 0, optional
        Each logit x becomes ``softcap * tanh(x / softcap)`` first (Gemma 2).
    inplace_backward : bool
        Write the saved gradient over ``input``'s storage (nbxent's ``out=logits``)
        instead of a new N×C buffer, and scale it there in the backward. Saves one
        logits-sized buffer (several GB for large vocabularies). Only for logits
        nothing else reads afterwards: once the forward has run, ``input`` holds
        the gradient, not the logits. An operation that saved ``input`` for its own
        backward (``torch.tanh``, ``torch.exp``, ...) raises PyTorch's "modified by
        an inplace operation" error at backward; one that did not (a ``Linear``
        layer saves its input and weight, not its output) is unaffected. One
        backward per forward (no ``retain_graph`` re-use); gradients of gradients
        are not available with either setting.
    sample_weight : Tensor of the loss's shape, optional
        One weight per sample (per pixel for NCHW maps): input's shape without the
        class dimension, exactly. Multiplies each sample's loss and gradient; combined
        with ``weight`` by multiplication; under 'mean' the denominator becomes the
        summed ``weight[t] * sample_weight`` of the non-ignored targets (see
        ``nbxent.cross_entropy``). A constant: not differentiated (a tensor that
        requires grad is a ``RuntimeError``; pass ``sample_weight.detach()``).
    denominator : float or 0-d Tensor, optional
        'mean' only: replaces its denominator (``nbxent.mean_denominator`` of the whole
        batch, for micro-batches of gradient accumulation). A constant, as
        ``sample_weight``.
    empty : {'nan', 'zero', 'raise'}
        What 'mean' gives with nothing to average (every target ignored, no rows,
        sample weights summing to 0, ``denominator`` 0): nan (torch's answer), 0 (loss
        and gradient), or a ``ValueError``.
    metrics : str or sequence of str, optional
        Per-sample metrics from the loss's own pass: 'lse', 'argmax', 'correct',
        'top_k', 'entropy' (as in ``nbxent.cross_entropy``); the call then returns
        ``(loss, metrics)``.
    top_k : int >= 1
        The k of the 'top_k' metric.

    Returns
    -------
    loss : Tensor
        In input's dtype and on its device: 0-d for 'mean' and 'sum', input's shape
        without the class dimension for 'none'.
    metrics : dict of Tensor
        Only with ``metrics=``: keyed by the names asked for, each of input's shape
        without the class dimension, on input's device: int64 'argmax', bool
        'correct' and 'top_k' (False where the target is ignored), 'lse' and
        'entropy' in the loss's dtype. They do not require grad; the loss is
        differentiable as without metrics.

    Raises
    ------
    TypeError
        bfloat16 input outside ``torch.autocast``, or integer input: nbxent computes
        float16, float32 and float64.
    ValueError
        nbxent's errors for shapes that do not fit, class indices out of range,
        options out of range (see ``nbxent.cross_entropy``), and with
        ``empty='raise'`` for a 'mean' with nothing to average.
    RuntimeError
        target, weight, sample_weight or denominator requiring grad: only input is
        differentiated.

    See Also
    --------
    CrossEntropyLoss : the ``nn.Module`` form.
    nbxent.cross_entropy_with_grad : the fused call on NumPy and CuPy arrays.

    Notes
    -----
    Only the first derivative is provided (``gradcheck`` passes, ``gradgradcheck``
    does not apply). The loss of float16 input is computed in float32 and rounded to
    float16 as torch returns it.

    Under ``torch.autocast`` (CPU or CUDA, float16 or bfloat16) nbxent follows
    ``torch.nn.functional.cross_entropy``, which autocast runs in float32: float16
    and bfloat16 inputs (bfloat16 included, which nbxent refuses outside autocast)
    are cast to float32 before the operator, the loss is float32, and the gradient
    reaches the input in its own dtype through the cast. float64 input is not cast.
    ``inplace_backward`` then has nothing to save (the float32 copy is a new buffer
    anyway) and is ignored for such input.

    ``loss.backward()`` of a 'mean' or 'sum' loss on the CPU hands the saved gradient
    on as it is (the upstream gradient is 1); any other upstream gradient multiplies
    it, one more pass over the N×C gradient.

    Examples
    --------
    >>> import torch
    >>> from nbxent.torch import cross_entropy
    >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    >>> loss = cross_entropy(logits, torch.tensor([0, 2]))
    >>> loss.backward()
    >>> round(loss.item(), 4), logits.grad.shape
    (0.67, torch.Size([2, 3]))
    """
    _check_tensor_args(input, target, weight, sample_weight, denominator)
    names = check_metrics(metrics, top_k, not target.is_floating_point())
    if not torch.compiler.is_compiling():
        # nbxent's own errors for the options, before torch.library's schema turns them
        # into its own words; a compiled graph meets them when nbxent runs.
        _check_options(reduction, label_smoothing, z_loss, softcap)
        ignore_index = _check_ignore_index(ignore_index)
        if not isinstance(denominator, Tensor):
            check_denominator(denominator, reduction)
        check_empty(empty)
    if denominator is not None and not isinstance(denominator, Tensor):
        denominator = torch.tensor(float(denominator), dtype=torch.float64)
    axis = 0 if input.dim() <= 1 else 1
    args = (input, target, weight, axis, ignore_index, reduction, float(label_smoothing),
            float(z_loss), None if softcap is None else float(softcap), sample_weight,
            denominator, empty)
    differentiated = torch.is_grad_enabled() and input.requires_grad
    if names is None:
        if not differentiated:
            return _cross_entropy_op(*args)
        if inplace_backward and not _autocasts(input):
            return _InplaceCrossEntropy.apply(*args)
        return (_EagerCrossEntropy.apply if _eager(input) else _with_grad_op)(*args)[0]
    args += (",".join(names), int(top_k))
    if not differentiated:
        loss, found = _metrics_op(*args)
    elif inplace_backward and not _autocasts(input):
        loss, stacked = _InplaceCrossEntropy.apply(*args)
        found = _unstacked(stacked, names, input)
    elif _eager(input):
        loss, _, *found = _EagerCrossEntropy.apply(*args)
    else:
        loss, _, found = _with_grad_metrics_op(*args)
    return loss, dict(zip(names, found))


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` computed by nbxent (see ``nbxent.torch.cross_entropy``).

    Parameters
    ----------
    weight : Tensor of shape (C,), optional
        Per-class weights; kept as a buffer (moves with ``.to(device)``).
    ignore_index, reduction, label_smoothing, z_loss, softcap, inplace_backward, empty
        As in ``nbxent.torch.cross_entropy``.
    metrics, top_k
        As in ``nbxent.torch.cross_entropy``: with ``metrics`` the module returns
        ``(loss, metrics)``.

    The per-batch options are arguments of the call:
    ``criterion(input, target, sample_weight=None, denominator=None)``.

    Examples
    --------
    >>> import torch
    >>> from nbxent.torch import CrossEntropyLoss
    >>> criterion = CrossEntropyLoss(label_smoothing=0.1)
    >>> logits = torch.zeros(4, 10, requires_grad=True)
    >>> loss = criterion(logits, torch.tensor([1, 0, 9, -100]))
    >>> round(loss.item(), 4)
    2.3026
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                 *, z_loss=0.0, softcap=None, inplace_backward=False, empty="nan",
                 metrics=None, top_k=5):
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward
        self.empty = empty
        self.metrics = metrics
        self.top_k = top_k

    def forward(self, input, target, sample_weight=None, denominator=None):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap,
                             inplace_backward=self.inplace_backward,
                             sample_weight=sample_weight, denominator=denominator,
                             empty=self.empty, metrics=self.metrics, top_k=self.top_k)

    def extra_repr(self):
        options = [f"reduction={self.reduction!r}"]
        for name, default in (("ignore_index", -100), ("label_smoothing", 0.0), ("z_loss", 0.0),
                              ("softcap", None), ("inplace_backward", False),
                              ("empty", "nan"), ("metrics", None), ("top_k", 5)):
            if getattr(self, name) != default:
                options.append(f"{name}={getattr(self, name)!r}")
        return ", ".join(options)
