"""The contenders timed on each case: nbxent itself and the peers users would reach for.

Every contender computes the same thing: the mean softmax cross-entropy over
all rows (op "loss") or that loss and its gradient with respect to the logits
(op "loss+grad"). A contender is built once per case and op, then called many
times. Peers are optional: each is offered only when its library imports and
it can run on the backend being measured.
"""

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

PEER_NAMES = ("numpy", "torch", "jax", "cupy")

# The largest error a peer may show against nbxent before it is called a
# mismatch: max |peer - nbxent| over max |nbxent|, separately for the loss
# and the gradient. Summation order differs between libraries; these bounds
# are far above that noise and far below a wrong result.
TOLERANCE = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-9}


@dataclass(frozen=True)
class CaseArrays:
    """One case's inputs: NumPy copies, and the arrays the backend works on."""
    host_logits: np.ndarray
    host_target: np.ndarray
    logits: object          # NumPy on the CPU backend, CuPy on the CUDA backend
    target: object
    axis: int
    backend: str


@dataclass(frozen=True)
class Contender:
    """A named zero-argument call that computes one op on one case.

    ``call()`` returns the loss (op "loss") or ``(loss, grad)`` (op "loss+grad")
    in the contender's own array type; ``to_host`` turns that into NumPy.
    """
    name: str
    call: Callable[[], object]


def to_host(value):
    """A NumPy float64 copy of a NumPy, CuPy, PyTorch or JAX array (or scalar)."""
    if hasattr(value, "detach"):             # torch.Tensor
        value = value.detach().cpu().numpy()
    elif hasattr(value, "__cuda_array_interface__"):
        value = value.get() if hasattr(value, "get") else value.copy_to_host()
    return np.asarray(value, dtype=np.float64)


def relative_error(result, reference):
    """max |result - reference| / max |reference| over the loss and, if present, the gradient."""
    pairs = zip(result, reference) if isinstance(reference, tuple) else [(result, reference)]
    worst = 0.0
    for got, want in pairs:
        got, want = to_host(got), to_host(want)
        if got.shape != want.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(want), initial=0.0)), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(got - want), initial=0.0)) / scale)
    return worst


# ------------------------------------------------------------------ nbxent

def nbxent_contenders(arrays, op):
    """nbxent's calls for ``op``; for "loss+grad" also with a preallocated ``out=``."""
    import nbxent

    logits, target, axis = arrays.logits, arrays.target, arrays.axis
    if op == "loss":
        return [Contender("nbxent", lambda: nbxent.cross_entropy(logits, target, axis=axis))]
    grad_buffer = _array_module(arrays.backend).empty_like(logits)
    return [
        Contender("nbxent", lambda: nbxent.cross_entropy_with_grad(logits, target, axis=axis)),
        Contender("nbxent out=", lambda: nbxent.cross_entropy_with_grad(
            logits, target, axis=axis, out=grad_buffer)),
    ]


FRAMEWORKS = ("torch", "jax")


def framework_contenders(arrays, framework):
    """A training step's loss part through ``framework``'s autograd, then nbxent called directly.

    First nbxent's wrapper (``nbxent.torch.cross_entropy`` forward + ``loss.backward()``,
    or ``jax.jit(jax.value_and_grad(nbxent.jax.cross_entropy))``), the contender the
    framework's own cross-entropy (the peer of the same name) is compared with; then
    ``nbxent.cross_entropy_with_grad`` on the same arrays, the cost the wrapper adds
    to. Op "loss+grad" only: each returns ``(loss, grad)``.
    """
    import nbxent

    logits, target, axis = arrays.logits, arrays.target, arrays.axis
    wrapper = {"torch": _nbxent_torch_call, "jax": _nbxent_jax_call}[framework](arrays)
    return [Contender(f"nbxent.{framework}", wrapper),
            Contender("nbxent", lambda: nbxent.cross_entropy_with_grad(logits, target, axis=axis))]


def _torch_tensors(arrays):
    """The case's logits and target as tensors on the backend's device (no copy on the CPU),
    and the dimension torch wants the classes in."""
    import torch

    device = "cuda" if arrays.backend == "cuda" else "cpu"
    logits = torch.from_dlpack(arrays.logits).to(device)
    target = torch.from_dlpack(arrays.target).to(device)
    return logits, target, 0 if logits.ndim == 1 else 1


def _training_step(loss_of, leaf):
    """forward + backward into ``leaf.grad``, a fresh gradient each step as
    ``zero_grad(set_to_none=True)`` leaves it."""
    def loss_and_grad():
        leaf.grad = None
        loss = loss_of(leaf)
        loss.backward()
        return loss, leaf.grad
    return loss_and_grad


def _nbxent_torch_call(arrays):
    import nbxent.torch

    logits, target, class_dim = _torch_tensors(arrays)
    axis = arrays.axis
    return _training_step(
        lambda x: nbxent.torch.cross_entropy(x.movedim(axis, class_dim), target),
        logits.detach().requires_grad_())


def _nbxent_jax_call(arrays):
    import nbxent.jax

    jax, logits, target = _jax_arrays(arrays)
    axis = arrays.axis
    compiled = jax.jit(jax.value_and_grad(
        lambda x, t: nbxent.jax.cross_entropy(x, t, axis=axis)))
    return lambda: jax.block_until_ready(compiled(logits, target))


def _array_module(backend):
    if backend == "cuda":
        import cupy
        return cupy
    return np


# ------------------------------------------------------------------ peers

def usual_cross_entropy(xp, logits, target, axis, want_grad):
    """Mean cross-entropy (and its gradient) written the way NumPy and CuPy users write it.

    Subtract the row max, exponentiate, sum, take the log; pick each row's
    target logit with ``take_along_axis``. The gradient is softmax minus
    one-hot, divided by the number of rows. ``xp`` is ``numpy`` or ``cupy``.

    Examples
    --------
    >>> logits = np.array([[0.0, 0.0]], np.float32)
    >>> round(float(usual_cross_entropy(np, logits, np.array([1]), -1, False)), 4)
    0.6931
    """
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=axis, keepdims=True)
    index = xp.expand_dims(target, axis)
    target_logit = xp.take_along_axis(shifted, index, axis=axis)
    loss = xp.mean(xp.log(sum_exp) - target_logit)
    if not want_grad:
        return loss
    grad = exp / sum_exp
    xp.put_along_axis(grad, index, xp.take_along_axis(grad, index, axis=axis) - 1, axis=axis)
    grad /= target.size
    return loss, grad


def _numpy_call(arrays, op):
    logits, target, axis = arrays.logits, arrays.target, arrays.axis
    return lambda: usual_cross_entropy(np, logits, target, axis, op == "loss+grad")


def _cupy_call(arrays, op):
    import cupy

    logits, target, axis = arrays.logits, arrays.target, arrays.axis
    return lambda: usual_cross_entropy(cupy, logits, target, axis, op == "loss+grad")


def _torch_call(arrays, op):
    import torch.nn.functional as F

    logits, target, class_dim = _torch_tensors(arrays)
    axis = arrays.axis

    def loss_of(x):
        return F.cross_entropy(x.movedim(axis, class_dim), target)

    if op == "loss":
        return lambda: loss_of(logits)
    return _training_step(loss_of, logits.detach().requires_grad_())


def _import_jax():
    # XLA logs slow compiles (the gradient of take_along_axis on a class axis
    # that is not last takes seconds to constant-fold) as errors on stderr,
    # through the progress bar. Only its fatal messages are wanted here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax
    return jax


def _jax_devices(backend):
    jax = _import_jax()
    try:
        return jax.devices("gpu" if backend == "cuda" else "cpu")
    except RuntimeError:
        return []


def _jax_arrays(arrays):
    """JAX (with x64 on), and the case's logits and target on the backend's JAX device."""
    jax = _import_jax()
    # Without x64 JAX silently computes float64 cases in float32.
    jax.config.update("jax_enable_x64", True)
    device = _jax_devices(arrays.backend)[0]
    return (jax, jax.device_put(arrays.host_logits, device),
            jax.device_put(arrays.host_target, device))


def _jax_call(arrays, op):
    import optax

    jax, logits, target = _jax_arrays(arrays)
    axis = arrays.axis

    def mean_loss(x, t):
        return optax.softmax_cross_entropy_with_integer_labels(x, t, axis=axis).mean()

    compiled = jax.jit(mean_loss if op == "loss" else jax.value_and_grad(mean_loss))
    # JAX dispatches asynchronously, on the CPU too: wait for the result inside the call.
    return lambda: jax.block_until_ready(compiled(logits, target))


@dataclass(frozen=True)
class Peer:
    """An optional library to compare against: where it runs and how to build its call."""
    name: str
    module: str
    backends: tuple
    make_call: Callable
    describe: str

    def installed(self):
        return importlib.util.find_spec(self.module) is not None

    def runs_on(self, backend):
        """Whether this peer is installed and can run on ``backend``."""
        if backend not in self.backends or not self.installed():
            return False
        return self.name != "jax" or bool(_jax_devices(backend))

    def contender(self, arrays, op):
        return Contender(self.name, self.make_call(arrays, op))


PEERS = {
    "numpy": Peer("numpy", "numpy", ("cpu",), _numpy_call,
                  "NumPy as users write it: max-subtract, exp, sum, log, take_along_axis"),
    "torch": Peer("torch", "torch", ("cpu", "cuda"), _torch_call,
                  "torch.nn.functional.cross_entropy; loss+grad is forward + autograd backward"),
    "jax": Peer("jax", "optax", ("cpu", "cuda"), _jax_call,
                "optax.softmax_cross_entropy_with_integer_labels under jax.jit; "
                "loss+grad is jax.value_and_grad"),
    "cupy": Peer("cupy", "cupy", ("cuda",), _cupy_call,
                 "CuPy as users write it: the NumPy peer's code on CuPy arrays"),
}
