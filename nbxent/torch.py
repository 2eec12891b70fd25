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
"""

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import api
from ._plan import _check_ignore_index, _check_options

__all__ = ["cross_entropy", "CrossEntropyLoss"]

_LOGIT_DTYPES = (torch.float16, torch.float32, torch.float64)


# --------------------------------------------------------------- nbxent calls

def _options(logits, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss,
             softcap):
    """nbxent's arguments for tensors: detached (DLPack refuses tensors requiring grad),
    and on the GPU the caller's current PyTorch stream."""
    options = dict(axis=axis, weight=None if weight is None else weight.detach(),
                   ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    if logits.device.type == "cuda":
        options["stream"] = torch.cuda.current_stream(logits.device).cuda_stream
    return logits.detach(), target.detach(), options


def _as_loss_tensor(loss, logits):
    """nbxent's loss (NumPy on the host; CuPy or a Numba device array on the GPU) as a
    tensor on logits' device, without a copy, in logits' dtype as torch returns it."""
    if isinstance(loss, (np.ndarray, np.generic)):
        tensor = torch.from_numpy(np.asarray(loss))
    else:  # __cuda_array_interface__: a view of the device memory, no host sync
        tensor = torch.as_tensor(loss, device=logits.device)
    return tensor if tensor.dtype == logits.dtype else tensor.to(logits.dtype)


_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32,
                 torch.float64: np.float64}


def _new_grad(logits):
    """The gradient's buffer, with the strides the fake implementation announces
    (``empty_like``); nbxent writes it through DLPack / ``__cuda_array_interface__``.

    Contiguous CPU logits get a NumPy allocation: NumPy asks Linux for transparent huge
    pages on large arrays and PyTorch's allocator does not (unless THP_MEM_ALLOC_ENABLE=1),
    so the first write of a fresh N×C buffer faults 2 MiB pages instead of 4 KiB ones:
    measured 4x cheaper (benchmarks/RESULTS.md, "PyTorch and JAX wrappers").
    """
    if logits.device.type == "cpu" and logits.is_contiguous() and logits.dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(tuple(logits.shape), _NUMPY_DTYPES[logits.dtype]))
    return torch.empty_like(logits)


def _loss_shape(logits, axis, reduction):
    shape = tuple(logits.shape)
    return shape[:axis] + shape[axis + 1:] if reduction == "none" else ()


# --------------------------------------------------------------- custom operators
# Tensors are typed for torch.library's schema; axis is nbxent's class axis (1, or 0
# for a 1-D input). Outputs never alias inputs, except in the mutating operator.

@torch.library.custom_op("nbxent::cross_entropy", mutates_args=())
def _cross_entropy_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], axis: int,
                      ignore_index: int, reduction: str, label_smoothing: float, z_loss: float,
                      softcap: Optional[float]) -> Tensor:
    """The loss alone (no gradient buffer): the path without autograd."""
    x, t, options = _options(logits, target, weight, axis, ignore_index, reduction,
                             label_smoothing, z_loss, softcap)
    return _as_loss_tensor(api.cross_entropy(x, t, **options), logits)


@_cross_entropy_op.register_fake
def _(logits, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss, softcap):
    return logits.new_empty(_loss_shape(logits, axis, reduction))


@torch.library.custom_op("nbxent::cross_entropy_with_grad", mutates_args=())
def _with_grad_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], axis: int,
                  ignore_index: int, reduction: str, label_smoothing: float, z_loss: float,
                  softcap: Optional[float]) -> tuple[Tensor, Tensor]:
    """(loss, d loss / d logits) in one fused pass; for 'none' the gradient of each row's
    own loss (upstream gradient 1), which the backward scales row by row."""
    x, t, options = _options(logits, target, weight, axis, ignore_index, reduction,
                             label_smoothing, z_loss, softcap)
    grad = _new_grad(logits)
    loss, _ = api.cross_entropy_with_grad(x, t, out=grad, **options)
    return _as_loss_tensor(loss, logits), grad


@_with_grad_op.register_fake
def _(logits, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss, softcap):
    return logits.new_empty(_loss_shape(logits, axis, reduction)), torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    ctx.axis, ctx.reduction = inputs[3], inputs[5]
    ctx.save_for_backward(output[1])
    # The gradient output has no gradient of its own (no gradients of gradients): marked
    # so, and with its cotangent left unmaterialised (None, not an N×C tensor of zeros
    # written on every backward).
    ctx.mark_non_differentiable(output[1])
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


def _backward(ctx, grad_loss, _grad_of_grad):
    (grad,) = ctx.saved_tensors
    if grad_loss is None:        # only the gradient output was used downstream
        return (None,) * 9
    if _is_one(grad_loss) and _graph_is_released():
        # The saved gradient as is: no N×C multiplication by 1 and no new buffer. The graph
        # is freed after this backward, so nothing reads the saved tensor again and a
        # leaf's .grad may take it over. With retain_graph it would alias the saved
        # tensor (a second backward accumulating into .grad would modify it): multiply.
        return (grad,) + (None,) * 8
    return (grad * _scale(grad_loss, ctx.axis, ctx.reduction),) + (None,) * 8


_with_grad_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("nbxent::cross_entropy_with_grad_", mutates_args=("logits",))
def _with_grad_inplace_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], axis: int,
                          ignore_index: int, reduction: str, label_smoothing: float,
                          z_loss: float, softcap: Optional[float]) -> Tensor:
    """The loss; the gradient (as in ``nbxent::cross_entropy_with_grad``) overwrites
    ``logits``."""
    x, t, options = _options(logits, target, weight, axis, ignore_index, reduction,
                             label_smoothing, z_loss, softcap)
    loss, _ = api.cross_entropy_with_grad(x, t, out=x, **options)
    return _as_loss_tensor(loss, logits)


@_with_grad_inplace_op.register_fake
def _(logits, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss, softcap):
    return logits.new_empty(_loss_shape(logits, axis, reduction))


class _InplaceCrossEntropy(torch.autograd.Function):
    """Autograd for the in-place operator (torch.library gives mutating operators no
    autograd formula): the forward leaves the gradient in the logits' storage, the
    backward scales it there and hands it on.

    The mutation goes through a detached alias, so it bumps the logits' version counter:
    an operation that saved the logits for its own backward then fails loudly instead
    of differentiating garbage.
    """

    @staticmethod
    def forward(ctx, logits, target, weight, axis, ignore_index, reduction, label_smoothing,
                z_loss, softcap):
        grad = logits.detach()
        loss = _with_grad_inplace_op(grad, target, weight, axis, ignore_index, reduction,
                                     label_smoothing, z_loss, softcap)
        ctx.axis, ctx.reduction = axis, reduction
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        if not _is_one(grad_loss):
            grad.mul_(_scale(grad_loss, ctx.axis, ctx.reduction))
        return (grad,) + (None,) * 8


# torch.nn.functional.cross_entropy is on autocast's float32 list: under torch.autocast its
# float16 and bfloat16 inputs are cast to float32 (float64 stays) and the loss is float32.
# The same rule for nbxent's operators, on every device type autocast knows; autograd
# records the casts, so a bfloat16 input still gets a bfloat16 gradient.
for _op in (_cross_entropy_op, _with_grad_op):
    for _device_type in ("cpu", "cuda"):
        if torch._C._is_autocast_available(_device_type):
            _op.register_autocast(_device_type, torch.float32)


def _autocasts(input):
    """Whether autocast will cast ``input`` (float16 or bfloat16) to float32 for the op."""
    return (input.dtype in (torch.float16, torch.bfloat16)
            and torch.is_autocast_enabled(input.device.type))


# --------------------------------------------------------------- public API

def _check_tensor_args(input, target, weight):
    """Errors torch.library's schema would otherwise raise in its own words."""
    for name, x in (("input", input), ("target", target), ("weight", weight)):
        if x is not None and not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__} "
                            f"(use nbxent.cross_entropy for NumPy and CuPy arrays)")
    if input.dtype not in _LOGIT_DTYPES and not _autocasts(input):
        hint = (" (nbxent has no bfloat16 kernels: pass input.float(), or input.half() if "
                "float16's range suffices)" if input.dtype == torch.bfloat16 else "")
        raise TypeError(f"logits must be float16, float32 or float64; got {input.dtype}{hint}")
    grad_enabled = torch.is_grad_enabled()
    for name, x in (("target", target), ("weight", weight)):
        if grad_enabled and x is not None and x.requires_grad:
            raise RuntimeError(f"nbxent.torch.cross_entropy differentiates with respect to "
                               f"input only, but {name} requires grad; pass {name}.detach()")


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, *, z_loss=0.0, softcap=None, inplace_backward=False):
    """Softmax cross-entropy of PyTorch tensors, forward and backward in one nbxent pass.

    Arguments, defaults and results are those of ``torch.nn.functional.cross_entropy``
    (the classes lie along dimension 1, or 0 for a 1-D input), plus nbxent's
    ``z_loss`` and ``softcap``. Under autograd the forward computes the loss and
    its gradient together and saves the gradient (one N×C buffer, as torch saves
    its softmax); the backward multiplies it by the upstream gradient.

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

    Returns
    -------
    loss : Tensor
        In input's dtype and on its device: 0-d for 'mean' and 'sum', input's shape
        without the class dimension for 'none'.

    Raises
    ------
    TypeError
        bfloat16 input outside ``torch.autocast``, or integer input: nbxent computes
        float16, float32 and float64.
    ValueError
        nbxent's errors for shapes that do not fit, class indices out of range,
        options out of range (see ``nbxent.cross_entropy``).

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
    _check_tensor_args(input, target, weight)
    if not torch.compiler.is_compiling():
        # nbxent's own errors for the options, before torch.library's schema turns them
        # into its own words; a compiled graph meets them when nbxent runs.
        _check_options(reduction, label_smoothing, z_loss, softcap)
        ignore_index = _check_ignore_index(ignore_index)
    axis = 0 if input.dim() <= 1 else 1
    args = (input, target, weight, axis, ignore_index, reduction, float(label_smoothing),
            float(z_loss), None if softcap is None else float(softcap))
    if not (torch.is_grad_enabled() and input.requires_grad):
        return _cross_entropy_op(*args)
    if inplace_backward and not _autocasts(input):
        return _InplaceCrossEntropy.apply(*args)
    return _with_grad_op(*args)[0]


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` computed by nbxent (see ``nbxent.torch.cross_entropy``).

    Parameters
    ----------
    weight : Tensor of shape (C,), optional
        Per-class weights; kept as a buffer (moves with ``.to(device)``).
    ignore_index, reduction, label_smoothing, z_loss, softcap, inplace_backward
        As in ``nbxent.torch.cross_entropy``.

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
                 *, z_loss=0.0, softcap=None, inplace_backward=False):
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap,
                             inplace_backward=self.inplace_backward)

    def extra_repr(self):
        options = [f"reduction={self.reduction!r}"]
        for name, default in (("ignore_index", -100), ("label_smoothing", 0.0), ("z_loss", 0.0),
                              ("softcap", None), ("inplace_backward", False)):
            if getattr(self, name) != default:
                options.append(f"{name}={getattr(self, name)!r}")
        return ", ".join(options)
