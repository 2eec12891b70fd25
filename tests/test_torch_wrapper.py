"""nbxent.torch: the PyTorch loss (function, module, custom operator) against
torch.nn.functional.cross_entropy, forward and backward. Skipped when torch is not
installed."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import nbxent

from _cases import bad_training_options
from conftest import assert_close

torch = pytest.importorskip("torch")
F = torch.nn.functional
nbxent_torch = pytest.importorskip("nbxent.torch")

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (input shape, index target shape): rows, an NCHW map (classes on dim 1), one sample
# without a batch dimension.
SHAPES = [
    pytest.param((7, 5), (7,), id="rows"),
    pytest.param((2, 5, 3, 4), (2, 3, 4), id="nchw"),
    pytest.param((6,), (), id="1d"),
]
# (form, weighted, label_smoothing)
OPTIONS = [
    pytest.param("index", False, 0.0, id="index"),
    pytest.param("index", True, 0.15, id="index-weighted-smoothed"),
    pytest.param("prob", False, 0.0, id="prob"),
    pytest.param("prob", True, 0.15, id="prob-weighted-smoothed"),
]


def _inputs(rng, shape, target_shape, form, weighted, dtype):
    """(logits, target, weight) as tensors; a quarter of index targets are ignored."""
    n_classes = shape[1] if len(shape) > 1 else shape[0]
    logits = torch.tensor(rng.normal(0.0, 3.0, shape), dtype=dtype)
    if form == "index":
        target = rng.integers(0, n_classes, target_shape)
        target = np.where(rng.random(target_shape) < 0.25, -100, target)
        if not target_shape:  # keep the lone sample of a 1-D input counted
            target = np.asarray(rng.integers(0, n_classes))
        target = torch.tensor(target, dtype=torch.int64)
    else:
        probs = rng.dirichlet(np.ones(n_classes), size=int(np.prod(target_shape)))
        probs = probs.reshape(target_shape + (n_classes,))
        target = torch.tensor(np.moveaxis(probs, -1, 1 if len(shape) > 1 else 0), dtype=dtype)
    weight = torch.tensor(rng.uniform(0.3, 2.0, n_classes), dtype=dtype) if weighted else None
    return logits, target, weight


def _upstream(rng, loss_shape, reduction, dtype):
    """A random upstream gradient ('none': one per row), as a later layer would send."""
    if reduction == "none":
        return torch.tensor(rng.uniform(-1.0, 1.0, loss_shape), dtype=dtype)
    return torch.tensor(0.5, dtype=dtype)


def _loss_and_grad(fn, logits, target, upstream, **options):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, target, **options)
    loss.backward(upstream)
    return loss.detach(), x.grad


def _torch_float64(logits, target, weight, upstream, **options):
    """torch's loss and gradient, computed in float64 from the same values."""
    target = target if not target.is_floating_point() else target.double()
    weight = None if weight is None else weight.double()
    loss, grad = _loss_and_grad(F.cross_entropy, logits.double(), target, upstream.double(),
                                weight=weight, **options)
    return loss.numpy(), grad.numpy()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("form,weighted,label_smoothing", OPTIONS)
@pytest.mark.parametrize("shape,target_shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_forward_and_backward_match_torch(rng, dtype, shape, target_shape, form, weighted,
                                          label_smoothing, reduction):
    logits, target, weight = _inputs(rng, shape, target_shape, form, weighted, dtype)
    options = dict(reduction=reduction, label_smoothing=label_smoothing)
    upstream = _upstream(rng, target_shape, reduction, dtype)
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits, target, upstream,
                                weight=weight, **options)
    expected_loss, expected_grad = _torch_float64(logits, target, weight, upstream, **options)
    np_dtype = np.dtype(str(dtype).removeprefix("torch."))
    assert loss.dtype == dtype and grad.dtype == dtype
    assert_close(loss.numpy(), expected_loss, np_dtype, "loss")
    assert_close(grad.numpy(), expected_grad, np_dtype, "grad")


def test_ignore_index_other_than_default(rng):
    logits, _, weight = _inputs(rng, (9, 4), (9,), "index", True, torch.float64)
    target = torch.tensor([0, 3, 255, 1, 255, 2, 0, 3, 1])
    options = dict(ignore_index=255)
    upstream = torch.tensor(1.0, dtype=torch.float64)
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits, target, upstream,
                                weight=weight, **options)
    expected_loss, expected_grad = _torch_float64(logits, target, weight, upstream, **options)
    assert_close(loss.numpy(), expected_loss, np.dtype(np.float64), "loss")
    assert_close(grad.numpy(), expected_grad, np.dtype(np.float64), "grad")
    assert (grad[target == 255] == 0).all()


@pytest.mark.parametrize("extra", [{"z_loss": 1e-3}, {"softcap": 4.0}], ids=["z_loss", "softcap"])
def test_z_loss_and_softcap_match_torch_composites(rng, extra):
    logits, target, _ = _inputs(rng, (7, 5), (7,), "index", False, torch.float64)

    def composite(x, t, z_loss=0.0, softcap=None):
        x = x if softcap is None else softcap * torch.tanh(x / softcap)
        valid = t != -100
        z_rows = torch.where(valid, torch.logsumexp(x, dim=1), 0.0) ** 2
        return F.cross_entropy(x, t) + z_loss * z_rows.sum() / valid.sum()

    upstream = torch.tensor(1.0, dtype=torch.float64)
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits, target, upstream, **extra)
    expected_loss, expected_grad = _loss_and_grad(composite, logits, target, upstream, **extra)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction,form,weighted,label_smoothing", [
    ("mean", "index", True, 0.15), ("none", "index", False, 0.0), ("sum", "prob", False, 0.0)])
def test_gradcheck_float64(rng, reduction, form, weighted, label_smoothing):
    logits, target, weight = _inputs(rng, (4, 5), (4,), form, weighted, torch.float64)
    x = logits.clone().requires_grad_(True)

    def loss(x):
        return nbxent_torch.cross_entropy(x, target, weight=weight, reduction=reduction,
                                          label_smoothing=label_smoothing)

    assert torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-8)


def test_module_matches_torch_module(rng):
    logits, target, weight = _inputs(rng, (7, 5), (7,), "index", True, torch.float32)
    ours = nbxent_torch.CrossEntropyLoss(weight=weight, label_smoothing=0.15)
    theirs = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.15)
    upstream = torch.tensor(1.0)
    loss, grad = _loss_and_grad(ours, logits, target, upstream)
    expected_loss, expected_grad = _loss_and_grad(theirs, logits, target, upstream)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)
    assert set(ours.state_dict()) == {"weight"}  # a buffer, as in torch
    assert "label_smoothing=0.15" in repr(ours)


def test_without_autograd_gives_the_loss(rng):
    logits, target, _ = _inputs(rng, (7, 5), (7,), "index", False, torch.float64)
    with torch.no_grad():
        loss = nbxent_torch.cross_entropy(logits.requires_grad_(True), target, reduction="none")
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(logits.detach(), target, reduction="none"))


def test_non_contiguous_input(rng):
    base = torch.tensor(rng.normal(0.0, 3.0, (5, 14)))
    logits = base[:, ::2].t()  # (7, 5), neither row- nor column-contiguous
    target = torch.tensor(rng.integers(0, 5, 7))
    upstream = torch.tensor(1.0, dtype=torch.float64)
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits, target, upstream)
    logits = logits.detach().requires_grad_(True)
    expected = F.cross_entropy(logits, target)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(grad, logits.grad)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_inplace_backward_overwrites_the_logits_with_the_gradient(rng, reduction):
    logits, target, _ = _inputs(rng, (7, 5), (7,), "index", False, torch.float64)
    upstream = _upstream(rng, (7,), reduction, torch.float64)
    expected_loss, expected_grad = _loss_and_grad(F.cross_entropy, logits, target, upstream,
                                                  reduction=reduction)
    x = logits.clone().requires_grad_(True)
    storage = x.data_ptr()
    loss = nbxent_torch.cross_entropy(x, target, reduction=reduction, inplace_backward=True)
    loss.backward(upstream)
    torch.testing.assert_close(loss.detach(), expected_loss)
    torch.testing.assert_close(x.grad, expected_grad)
    assert x.grad.data_ptr() == storage  # no second N×C buffer
    torch.testing.assert_close(x.detach(), expected_grad)  # the logits are gone


def test_inplace_backward_through_a_linear_layer(rng):
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5).double()
    features = torch.tensor(rng.normal(size=(7, 6)))
    target = torch.tensor(rng.integers(0, 5, 7))
    grads = []
    for loss_fn in (F.cross_entropy,
                    lambda x, t: nbxent_torch.cross_entropy(x, t, inplace_backward=True)):
        layer.zero_grad()
        loss_fn(layer(features), target).backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for ours, theirs in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, theirs)


def test_inplace_backward_after_an_op_that_saved_its_output_fails_loudly(rng):
    x = torch.tensor(rng.normal(size=(4, 5)), requires_grad=True)
    logits = torch.exp(x)  # exp's backward needs its output, which the gradient overwrites
    loss = nbxent_torch.cross_entropy(logits, torch.tensor([0, 1, 2, 3]), inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_float16(rng):
    logits, target, _ = _inputs(rng, (7, 5), (7,), "index", False, torch.float16)
    upstream = torch.tensor(1.0, dtype=torch.float16)
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits, target, upstream)
    expected_loss, expected_grad = _torch_float64(logits, target, None, upstream)
    assert loss.dtype == torch.float16 and grad.dtype == torch.float16  # as torch returns
    np.testing.assert_allclose(loss.double().numpy(), expected_loss, rtol=1e-3)
    assert_close(grad.numpy(), expected_grad, np.dtype(np.float16), "grad")


def test_bfloat16_is_a_clear_type_error():
    logits = torch.zeros(3, 4, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(TypeError, match=r"float16, float32 or float64; got torch\.bfloat16.*"
                                        r"input\.float\(\)"):
        nbxent_torch.cross_entropy(logits, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("inplace_backward", [False, True], ids=["saved", "inplace"])
def test_autocast_computes_in_float32_as_torch_does(rng, amp_dtype, inplace_backward):
    """Under CPU autocast a Linear layer's output is low precision; cross_entropy casts it
    to float32 first (torch's rule for its own cross_entropy), on nbxent's operator too."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    features = torch.tensor(rng.normal(size=(9, 6)), dtype=torch.float32)
    target = torch.tensor(rng.integers(0, 5, 9))
    results = []
    for loss_fn in (F.cross_entropy, lambda x, t: nbxent_torch.cross_entropy(
            x, t, label_smoothing=0.1, inplace_backward=inplace_backward)):
        layer.zero_grad()
        with torch.autocast("cpu", dtype=amp_dtype):
            logits = layer(features)
            logits.retain_grad()
            if loss_fn is F.cross_entropy:
                loss = F.cross_entropy(logits, target, label_smoothing=0.1)
            else:
                loss = loss_fn(logits, target)
        loss.backward()
        assert logits.dtype == amp_dtype and logits.grad.dtype == amp_dtype
        results.append((loss.detach(), logits.grad, [p.grad.clone() for p in layer.parameters()]))
    (theirs, their_logit_grad, their_grads), (ours, our_logit_grad, our_grads) = results
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(our_logit_grad, their_logit_grad)
    for mine, reference_grad in zip(our_grads, their_grads):
        torch.testing.assert_close(mine, reference_grad)


def test_autocast_registration_on_the_operator(rng):
    """The operator itself (what torch.compile records) casts under autocast."""
    logits = torch.tensor(rng.normal(size=(4, 5)), dtype=torch.bfloat16)
    target = torch.tensor([0, 1, 4, -100])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grad = torch.ops.nbxent.cross_entropy_with_grad(
            logits, target, None, 1, -100, "mean", 0.0, 0.0, None)
        only_loss = torch.ops.nbxent.cross_entropy(
            logits, target, None, 1, -100, "mean", 0.0, 0.0, None)
    expected = F.cross_entropy(logits.float(), target)
    assert loss.dtype == grad.dtype == only_loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(only_loss, expected)


def test_autocast_leaves_float64_alone(rng):
    logits = torch.tensor(rng.normal(size=(4, 5)), requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nbxent_torch.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    assert loss.dtype == torch.float64
    loss.backward()
    assert logits.grad.dtype == torch.float64


def test_operator_gradient_output_is_not_differentiable(rng):
    logits = torch.tensor(rng.normal(size=(4, 5)), requires_grad=True)
    loss, grad = torch.ops.nbxent.cross_entropy_with_grad(
        logits, torch.tensor([0, 1, 2, 3]), None, 1, -100, "sum", 0.0, 0.0, None)
    assert loss.requires_grad and not grad.requires_grad
    torch.autograd.backward(loss)
    torch.testing.assert_close(logits.grad, grad)


def test_backward_hands_the_saved_gradient_to_a_leaf(rng):
    """loss.backward() of a mean loss: the gradient the forward saved becomes .grad as it
    is (no multiplication by 1, no copy); with retain_graph, repeated backwards still
    accumulate the right values."""
    logits = torch.tensor(rng.normal(size=(7, 5)), requires_grad=True)
    target = torch.tensor(rng.integers(0, 5, 7))
    expected = torch.func.grad(lambda x: F.cross_entropy(x, target))(logits.detach())
    loss = nbxent_torch.cross_entropy(logits, target)
    handed_on = []
    loss.grad_fn.register_hook(lambda grad_inputs, _: handed_on.append(grad_inputs[0].data_ptr()))
    loss.backward()
    torch.testing.assert_close(logits.grad, expected)
    assert logits.grad.data_ptr() == handed_on[0]   # taken over, not copied
    logits.grad = None
    loss = nbxent_torch.cross_entropy(logits, target)
    for times in (1, 2, 3):
        loss.backward(retain_graph=True)
        torch.testing.assert_close(logits.grad, times * expected)
    loss.backward(torch.tensor(2.0))
    torch.testing.assert_close(logits.grad, 5 * expected)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_eager_calls_skip_the_operator_and_match_it(rng, reduction):
    """A differentiated eager call takes an autograd Function of its own, not the custom
    operator (whose dispatch costs a step more than the fused kernel's 5 %); its loss,
    gradient and metrics are the operator's, bit for bit."""
    # (float32: the kernel variant other tests compile, none of its own)
    logits = torch.tensor(rng.normal(size=(7, 5)), dtype=torch.float32, requires_grad=True)
    target = torch.tensor(rng.integers(0, 5, 7))
    loss, found = nbxent_torch.cross_entropy(logits, target, reduction=reduction,
                                             metrics=("correct", "lse"))
    assert type(loss.grad_fn).__name__ == "_EagerCrossEntropyBackward"
    op_loss, _, op_found = torch.ops.nbxent.cross_entropy_with_grad_metrics(
        logits, target, None, 1, -100, reduction, 0.0, 0.0, None, None, None, "nan",
        "correct,lse", 5)
    assert "EagerCrossEntropy" not in type(op_loss.grad_fn).__name__
    upstream = torch.tensor(rng.normal(size=tuple(loss.shape)), dtype=torch.float32)
    (grad,) = torch.autograd.grad(loss, logits, upstream)
    (op_grad,) = torch.autograd.grad(op_loss, logits, upstream)
    torch.testing.assert_close(loss, op_loss, rtol=0, atol=0)
    torch.testing.assert_close(grad, op_grad, rtol=0, atol=0)
    for name, value in zip(("correct", "lse"), op_found):
        torch.testing.assert_close(found[name], value, rtol=0, atol=0)


def test_training_steps_in_recycled_memory(rng):
    """Gradients in recycled memory (``nbxent.cpu.recycling``, here for every size): one a
    caller still holds is never written over; a dropped one's serves the next step."""
    from nbxent._config import CPU

    target = torch.tensor(rng.integers(0, 50, 40))
    logits = [torch.tensor(rng.normal(size=(40, 50)), dtype=torch.float32, requires_grad=True)
              for _ in range(4)]
    expected = [torch.func.grad(lambda x: F.cross_entropy(x, target))(x.detach())
                for x in logits]
    with CPU.override(recycle_min_bytes=0):
        for x in logits[:3]:
            nbxent_torch.cross_entropy(x, target).backward()
        assert len({x.grad.data_ptr() for x in logits[:3]}) == 3
        dropped = logits[2].grad.data_ptr()
        logits[2].grad = None
        nbxent_torch.cross_entropy(logits[3], target).backward()
    assert logits[3].grad.data_ptr() == dropped
    for x, grad in zip(logits[:2] + logits[3:], expected[:2] + expected[3:]):
        torch.testing.assert_close(x.grad, grad)


@pytest.mark.parametrize("call,error,match", [
    (lambda x, t: nbxent_torch.cross_entropy(x, t[:2]), ValueError,
     r"class-index target of shape \(2,\) does not fit logits of shape \(3, 4\)"),
    (lambda x, t: nbxent_torch.cross_entropy(x, t + 2), ValueError, "4"),
    (lambda x, t: nbxent_torch.cross_entropy(x, t, reduction="avg"), ValueError, "reduction"),
    (lambda x, t: nbxent_torch.cross_entropy(x, t, label_smoothing=1.5), ValueError,
     r"label_smoothing must be in \[0, 1\]"),
    (lambda x, t: nbxent_torch.cross_entropy(x, t, weight=torch.ones(3)), ValueError, "weight"),
    (lambda x, t: nbxent_torch.cross_entropy(x, t.float()), ValueError, "probability target"),
], ids=["target-shape", "index-out-of-range", "reduction", "label_smoothing", "weight-shape",
        "prob-target-shape"])
def test_bad_input_gets_nbxent_errors(call, error, match):
    logits = torch.zeros(3, 4, requires_grad=True)
    with pytest.raises(error, match=match):
        call(logits, torch.tensor([0, 1, 2]))


def test_bad_index_leaves_the_logits_alone_with_inplace_backward(rng):
    logits = torch.tensor(rng.normal(size=(3, 4)), requires_grad=True)
    before = logits.detach().clone()
    with pytest.raises(ValueError):
        nbxent_torch.cross_entropy(logits, torch.tensor([0, 9, 1]), inplace_backward=True)
    assert torch.equal(logits.detach(), before)


def test_target_requiring_grad_is_refused(rng):
    logits, target, _ = _inputs(rng, (3, 4), (3,), "prob", False, torch.float64)
    with pytest.raises(RuntimeError, match="target requires grad"):
        nbxent_torch.cross_entropy(logits.requires_grad_(True), target.requires_grad_(True))


# --------------------------------------------------------------- training options

def _direct(logits, target, upstream, **options):
    """nbxent's direct call on the same values: (loss, gradient times upstream[, metrics])."""
    arrays = {name: value.numpy() if isinstance(value, torch.Tensor) else value
              for name, value in options.items()}
    return nbxent.cross_entropy_with_grad(logits.detach().numpy(), target.numpy(),
                                          axis=1 if logits.dim() > 1 else 0,
                                          grad_output=upstream.numpy(), **arrays)


def _sample_weight(rng, shape, dtype=torch.float32):
    return torch.tensor(rng.uniform(0.0, 2.0, shape), dtype=dtype)


@pytest.mark.parametrize("shape,target_shape,options", [
    pytest.param((7, 5), (7,), dict(sample_weight=True), id="sample_weight"),
    pytest.param((7, 5), (7,), dict(sample_weight=True, weighted=True, reduction="none"),
                 id="sample_weight-weighted-none"),
    pytest.param((2, 5, 3, 4), (2, 3, 4), dict(sample_weight=True, reduction="sum"),
                 id="sample_weight-nchw-sum"),
    pytest.param((7, 5), (7,), dict(denominator=3.5), id="denominator"),
    pytest.param((7, 5), (7,), dict(denominator="tensor", weighted=True), id="denominator-0d"),
    pytest.param((7, 5), (7,), dict(empty="zero", sample_weight=True), id="empty-zero"),
])
def test_training_options_match_the_direct_call(rng, shape, target_shape, options):
    options = dict(options)
    logits, target, weight = _inputs(rng, shape, target_shape, "index",
                                     options.pop("weighted", False), torch.float32)
    if options.pop("sample_weight", False):
        options["sample_weight"] = _sample_weight(rng, target_shape)
    if options.get("denominator") == "tensor":
        options["denominator"] = torch.tensor(4.25, dtype=torch.float64)
    upstream = _upstream(rng, target_shape, options.get("reduction", "mean"), torch.float32)
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits, target, upstream,
                                weight=weight, **options)
    expected_loss, expected_grad = _direct(logits, target, upstream, weight=weight, **options)
    assert loss.dtype == grad.dtype == torch.float32
    assert_close(loss.numpy(), expected_loss, np.dtype(np.float32), "loss", rtol=1e-6)
    assert_close(grad.numpy(), expected_grad, np.dtype(np.float32), "grad", rtol=1e-6)


def test_all_ignored_batch_under_empty(rng):
    logits = torch.tensor(rng.normal(size=(3, 4)), dtype=torch.float32)
    target = torch.full((3,), -100)
    upstream = torch.tensor(1.0)
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits, target, upstream)
    assert torch.isnan(loss)
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits, target, upstream,
                                empty="zero")
    assert loss.item() == 0 and not grad.any()
    with pytest.raises(ValueError, match="no counted target.*empty='raise'"):
        nbxent_torch.cross_entropy(logits.requires_grad_(True), target, empty="raise")


def test_sample_weight_matches_torch_weighted_loss(rng):
    """torch's own per-sample losses times the sample weights, over the summed
    weight[t] * sample_weight of the counted targets: nbxent's weighted 'mean'."""
    logits, target, weight = _inputs(rng, (2, 5, 3, 4), (2, 3, 4), "index", True,
                                     torch.float64)
    sample_weight = _sample_weight(rng, (2, 3, 4), torch.float64)

    def torch_weighted(x, t, weight, sample_weight):
        rows = F.cross_entropy(x, t, weight=weight, reduction="none") * sample_weight
        counted = t != -100
        return rows.sum() / (weight[torch.where(counted, t, 0)] * sample_weight * counted).sum()

    upstream = torch.tensor(0.5, dtype=torch.float64)
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits, target, upstream,
                                weight=weight, sample_weight=sample_weight)
    expected_loss, expected_grad = _loss_and_grad(torch_weighted, logits, target, upstream,
                                                  weight=weight, sample_weight=sample_weight)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)


_ALL_METRICS = ("lse", "argmax", "correct", "top_k", "entropy")
_METRIC_DTYPES = {"lse": torch.float32, "argmax": torch.int64, "correct": torch.bool,
                  "top_k": torch.bool, "entropy": torch.float32}


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inplace"])
def test_metrics_match_the_direct_call(rng, mode):
    logits, target, _ = _inputs(rng, (7, 5), (7,), "index", False, torch.float32)
    sample_weight = _sample_weight(rng, (7,))
    upstream = torch.tensor(1.0)
    x = logits.clone().requires_grad_(mode != "no_grad")
    loss, found = nbxent_torch.cross_entropy(x, target, sample_weight=sample_weight,
                                             metrics=_ALL_METRICS, top_k=2,
                                             inplace_backward=mode == "inplace")
    expected_loss, expected_grad, expected = _direct(logits, target, upstream,
                                                     sample_weight=sample_weight,
                                                     metrics=_ALL_METRICS, top_k=2)
    assert list(found) == list(_ALL_METRICS)
    for name, value in found.items():
        assert value.dtype == _METRIC_DTYPES[name] and not value.requires_grad, name
        if name in ("lse", "entropy"):   # (the loss-only pass may round differently)
            assert_close(value.numpy(), expected[name], np.dtype(np.float32), "loss",
                         err_msg=name)
        else:
            np.testing.assert_array_equal(value.numpy(), expected[name], err_msg=name)
    assert_close(loss.detach().numpy(), expected_loss, np.dtype(np.float32), "loss", rtol=1e-6)
    assert loss.requires_grad == (mode != "no_grad")
    if mode != "no_grad":
        loss.backward()
        assert_close(x.grad.numpy(), expected_grad, np.dtype(np.float32), "grad", rtol=1e-6)
        if mode == "inplace":   # the logits' storage holds the gradient
            torch.testing.assert_close(x.detach(), x.grad)


def test_module_takes_training_options(rng):
    logits, target, weight = _inputs(rng, (7, 5), (7,), "index", True, torch.float32)
    sample_weight = _sample_weight(rng, (7,))
    criterion = nbxent_torch.CrossEntropyLoss(weight=weight, metrics="correct", empty="zero")
    assert "metrics='correct'" in repr(criterion) and "empty='zero'" in repr(criterion)
    loss, found = criterion(logits, target, sample_weight=sample_weight, denominator=2.0)
    expected_loss, _, expected = _direct(logits, target, torch.tensor(1.0), weight=weight,
                                         sample_weight=sample_weight, denominator=2.0,
                                         metrics="correct")
    assert_close(loss.numpy(), expected_loss, np.dtype(np.float32), "loss", rtol=1e-6)
    np.testing.assert_array_equal(found["correct"].numpy(), expected["correct"])


@pytest.mark.parametrize("options,error,match", bad_training_options(torch.ones) + [
    pytest.param(dict(sample_weight=[1.0, 1.0, 1.0]), TypeError,
                 "sample_weight must be a torch.Tensor", id="sample_weight-list")])
@pytest.mark.parametrize("inplace_backward", [False, True], ids=["saved", "inplace"])
def test_bad_training_options_get_nbxent_errors(options, error, match, inplace_backward):
    logits = torch.zeros(3, 4).requires_grad_(True)
    with pytest.raises(error, match=match):
        nbxent_torch.cross_entropy(logits, torch.tensor([0, 1, 2]),
                                   inplace_backward=inplace_backward, **options)
    assert logits.grad is None and not logits.detach().any()


def test_correct_needs_index_targets_and_constants_refuse_grad(rng):
    logits, target, _ = _inputs(rng, (3, 4), (3,), "prob", False, torch.float32)
    with pytest.raises(ValueError, match=r"metrics \['correct'\] need class-index targets"):
        nbxent_torch.cross_entropy(logits, target, metrics="correct")
    index_target = torch.tensor([0, 1, 2])
    for name in ("sample_weight", "denominator"):
        value = torch.ones(3) if name == "sample_weight" else torch.tensor(3.0)
        with pytest.raises(RuntimeError, match=f"{name} requires grad"):
            nbxent_torch.cross_entropy(logits.requires_grad_(True), index_target,
                                       **{name: value.requires_grad_(True)})


class _TinyModel(torch.nn.Module):
    """Softmax regression whose forward returns the loss, as training loops compile it."""

    def __init__(self, inplace_backward):
        super().__init__()
        self.linear = torch.nn.Linear(6, 5)
        self.criterion = nbxent_torch.CrossEntropyLoss(label_smoothing=0.15,
                                                       inplace_backward=inplace_backward)

    def forward(self, features, target):
        return self.criterion(self.linear(features), target)


@pytest.mark.parametrize("inplace_backward", [False, True], ids=["saved", "inplace"])
def test_torch_compile_fullgraph(rng, inplace_backward):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _TinyModel(inplace_backward)
    features = torch.tensor(rng.normal(size=(7, 6)), dtype=torch.float32)
    target = torch.tensor(rng.integers(0, 5, 7))
    expected = model(features, target)
    expected.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # aot_eager: the capture inductor gets (Dynamo, AOTAutograd tracing forward and
    # backward through the fake implementation), without compiling C++ for a tiny model.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(features, target)
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected.detach())
    for param, grad in zip(model.parameters(), expected_grads):
        torch.testing.assert_close(param.grad, grad)


@pytest.mark.parametrize("inplace_backward", [False, True], ids=["saved", "inplace"])
def test_torch_compile_fullgraph_with_training_options(rng, inplace_backward):
    """sample_weight, denominator and metrics through Dynamo and AOTAutograd: the
    metrics operators' fake implementations and autograd formulas."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 5)
    features = torch.tensor(rng.normal(size=(7, 6)), dtype=torch.float32)
    target = torch.tensor(rng.integers(0, 5, 7))
    sample_weight = _sample_weight(rng, (7,))

    def step(features, target, sample_weight):
        loss, found = nbxent_torch.cross_entropy(
            linear(features), target, sample_weight=sample_weight, denominator=5.0,
            metrics=("argmax", "correct", "lse"), inplace_backward=inplace_backward)
        return loss, found["argmax"], found["correct"].sum(), found["lse"]

    expected = step(features, target, sample_weight)
    expected[0].backward()
    expected_grads = [p.grad.clone() for p in linear.parameters()]
    linear.zero_grad()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(features, target,
                                                                     sample_weight)
    got[0].backward()
    for value, want in zip(got, expected):
        torch.testing.assert_close(value.detach(), want.detach())
    for param, grad in zip(linear.parameters(), expected_grads):
        torch.testing.assert_close(param.grad, grad)


def test_custom_operator_is_registered_with_a_fake_implementation():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        logits = torch.empty(2, 5, 3, 4)
        target = torch.empty(2, 3, 4, dtype=torch.int64)
        loss, grad = torch.ops.nbxent.cross_entropy_with_grad(
            logits, target, None, 1, -100, "none", 0.0, 0.0, None)
    assert loss.shape == (2, 3, 4) and grad.shape == logits.shape
    torch.library.opcheck(torch.ops.nbxent.cross_entropy_with_grad.default,
                          (torch.randn(3, 4), torch.tensor([0, 1, 2]), None, 1, -100, "mean",
                           0.0, 0.0, None))
    torch.library.opcheck(torch.ops.nbxent.cross_entropy_with_grad_metrics.default,
                          (torch.randn(3, 4), torch.tensor([0, 1, 2]), None, 1, -100, "mean",
                           0.0, 0.0, None, torch.ones(3), None, "nan", "argmax,top_k", 2))
    torch.library.opcheck(torch.ops.nbxent.cross_entropy_with_grad_metrics_.default,
                          (torch.randn(3, 4), torch.tensor([0, 1, 2]), None, 1, -100, "mean",
                           0.0, 0.0, None, None, torch.tensor(2.0), "nan", "correct,lse", 5))


@pytest.mark.cuda
def test_cuda_tensors(rng):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    logits, target, weight = _inputs(rng, (33, 70), (33,), "index", True, torch.float32)
    upstream = torch.tensor(0.5)
    options = dict(weight=weight, label_smoothing=0.15)
    expected_loss, expected_grad = _loss_and_grad(F.cross_entropy, logits, target, upstream,
                                                  **options)
    device_options = dict(options, weight=weight.cuda())
    loss, grad = _loss_and_grad(nbxent_torch.cross_entropy, logits.cuda(), target.cuda(),
                                upstream.cuda(), **device_options)
    assert loss.is_cuda and grad.is_cuda
    torch.testing.assert_close(loss.cpu(), expected_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.cpu(), expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_cuda_tensors_with_training_options(rng):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    logits, target, _ = _inputs(rng, (33, 70), (33,), "index", False, torch.float32)
    sample_weight = _sample_weight(rng, (33,))
    options = dict(denominator=20.0, metrics=("argmax", "correct", "lse"))
    expected_loss, expected_grad, expected = _direct(logits, target, torch.tensor(1.0),
                                                     sample_weight=sample_weight, **options)
    x = logits.cuda().requires_grad_(True)
    loss, found = nbxent_torch.cross_entropy(x, target.cuda(),
                                             sample_weight=sample_weight.cuda(), **options)
    loss.backward()
    assert loss.is_cuda and all(value.is_cuda for value in found.values())
    torch.testing.assert_close(loss.cpu(), torch.tensor(float(expected_loss)),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.cpu(), torch.from_numpy(expected_grad),
                               rtol=1e-5, atol=1e-6)
    for name in ("argmax", "correct"):
        np.testing.assert_array_equal(found[name].cpu().numpy(), expected[name], err_msg=name)


def test_digits_example_runs():
    pytest.importorskip("sklearn")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "torch_digits.py"),
                             "--epochs", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loss curves agree" in result.stdout
