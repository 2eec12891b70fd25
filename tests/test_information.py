"""Information measures: entropy in any base, conditional entropy, KL divergence.

The float64 oracle against SciPy and PyTorch (skipped where they are missing), then every
backend (CPU, the CUDA simulator, Dask; a GPU with CuPy where present) against the oracle,
on small shapes and the kernel variants the other test files compile (float32 and float64,
rows and NCHW with axis=1, probability targets without smoothing).
"""

import numpy as np
import pytest

import nbxent
from nbxent import _information
from nbxent import reference as R

from _cases import make_logits, make_prob_target
from conftest import assert_calls_raise, assert_close

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)

# (logits' shape, class axis): rows with the classes last, an NCHW map.
LAYOUTS = [pytest.param((12, 7), -1, id="rows"), pytest.param((2, 7, 3, 5), 1, id="nchw")]
# KL's probability targets without smoothing, across positions, compile tile kernels that
# no other quick test uses: those layouts run in the full suite.
KL_LAYOUTS = [LAYOUTS[0], pytest.param((2, 7, 3, 5), 1, id="nchw", marks=pytest.mark.slow)]
# float16 and float64 run the float32 code paths' twins: not in the quick subset.
DTYPES = [pytest.param(F32, id="float32"),
          pytest.param(F16, id="float16", marks=pytest.mark.slow),
          pytest.param(F64, id="float64", marks=pytest.mark.slow)]


def _rows_shape(shape, axis):
    return tuple(np.delete(np.array(shape), axis % len(shape)))


def _inputs(rng, shape, axis, dtype):
    """(logits, probability target, class weights, sample weights), float64 weights."""
    logits = make_logits(rng, shape, dtype)
    target = make_prob_target(rng, shape, axis).astype(dtype)
    weight = rng.uniform(0.25, 2.0, shape[axis])
    sample_weight = rng.uniform(0.0, 2.0, _rows_shape(shape, axis))
    return logits, target, weight, sample_weight


# ------------------------------------------------------------------ the oracle vs SciPy

@pytest.mark.parametrize("base", [None, 2, 10])
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_oracle_entropy_matches_scipy(rng, shape, axis, base):
    stats = pytest.importorskip("scipy.stats")
    logits = make_logits(rng, shape, F64)
    expected = stats.entropy(R.softmax(logits, axis), base=base, axis=axis)
    np.testing.assert_allclose(R.entropy(logits, axis, base=base), expected, rtol=1e-13)


@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_oracle_kl_matches_scipy(rng, shape, axis):
    """scipy.stats.entropy(p, q) is KL(p || q) (it normalises both first)."""
    stats = pytest.importorskip("scipy.stats")
    logits, target, _, _ = _inputs(rng, shape, axis, F64)
    expected = stats.entropy(target, R.softmax(logits, axis), axis=axis)
    np.testing.assert_allclose(R.kl_divergence(logits, target, axis, reduction="none"),
                               expected, rtol=1e-12, atol=1e-15)


def test_oracle_conditional_entropy_is_joint_minus_marginal(rng):
    """H(Y|X) = H(X, Y) - H(X) for p(x) proportional to the sample weights."""
    stats = pytest.importorskip("scipy.stats")
    logits = make_logits(rng, (9, 6), F64)
    sample_weight = rng.uniform(0.1, 3.0, 9)
    p_x = sample_weight / sample_weight.sum()
    joint = p_x[:, None] * R.softmax(logits, -1)
    expected = stats.entropy(joint.ravel(), base=2) - stats.entropy(p_x, base=2)
    np.testing.assert_allclose(
        R.conditional_entropy(logits, base=2, sample_weight=sample_weight), expected,
        rtol=1e-12)


# ------------------------------------------------------------------ the oracle vs PyTorch

def _torch_kl(logits, target, axis, log_target, reduction):
    """torch's kl_div of log_softmax(logits), summed over the classes for 'none'; and the
    gradient of its sum (times 1 / rows for 'batchmean') with respect to the logits."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(target, dtype=torch.float64)
    if log_target:
        t = F.log_softmax(t, dim=axis)
    elementwise = F.kl_div(F.log_softmax(x, dim=axis), t, reduction="none",
                           log_target=log_target)
    loss = elementwise.sum(dim=axis)
    if reduction != "none":
        loss = loss.sum() / (loss.numel() if reduction == "mean" else 1)
        if reduction == "mean" and logits.ndim == 2:  # the same number as torch's own
            assert torch.allclose(loss, F.kl_div(F.log_softmax(x, dim=axis), t,
                                                 reduction="batchmean", log_target=log_target))
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True], ids=["probs", "log_target"])
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_oracle_kl_matches_torch(rng, shape, axis, log_target, reduction):
    logits, target, _, _ = _inputs(rng, shape, axis, F64)
    if log_target:
        target = make_logits(rng, shape, F64)
    expected, expected_grad = _torch_kl(logits, target, axis, log_target, reduction)
    kw = dict(axis=axis, log_target=log_target, reduction=reduction)
    np.testing.assert_allclose(R.kl_divergence(logits, target, **kw), expected, rtol=1e-12,
                               atol=1e-15)
    np.testing.assert_allclose(R.kl_divergence_grad(logits, target, **kw), expected_grad,
                               rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ every backend

def _on(backend, *arrays):
    return [None if a is None else backend.to_backend(np.asarray(a)) for a in arrays]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("base", [None, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_entropy(any_backend, rng, shape, axis, dtype, base, weighted):
    b = any_backend
    logits, _, _, sample_weight = _inputs(rng, shape, axis, dtype)
    sample_weight = sample_weight if weighted else None
    x, s = _on(b, logits, sample_weight)
    for reduction in ("none", "mean", "sum"):
        got = nbxent.entropy(x, axis, reduction, base=base, sample_weight=s)
        expected = R.entropy(logits, axis, reduction, base=base, sample_weight=sample_weight)
        assert_close(b.to_numpy(got), expected, dtype, "loss", err_msg=f"{reduction}:")
    got = nbxent.conditional_entropy(x, axis, base=base, sample_weight=s)
    assert_close(b.to_numpy(got), R.conditional_entropy(logits, axis, base, sample_weight),
                 dtype, "loss", err_msg="conditional:")
    np.testing.assert_array_equal(b.to_numpy(x), logits, err_msg="the logits were modified")


@pytest.mark.slow  # float64 kernels the quick subset leaves out
def test_entropy_zero_probabilities(any_backend):
    """0 log 0 = 0: a -inf logit adds nothing; bits of a fair coin and a fair die."""
    b = any_backend
    logits = np.array([[0.0, 0.0, -np.inf, -np.inf], [0.0, 0.0, 0.0, 0.0]])
    x, = _on(b, logits)
    np.testing.assert_allclose(b.to_numpy(nbxent.entropy(x, base=2)), [1.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(b.to_numpy(nbxent.entropy(x, base=4, reduction="sum")), 1.5,
                               rtol=1e-15)


@pytest.mark.parametrize("log_target", [False, True], ids=["probs", "log_target"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weights"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", KL_LAYOUTS)
def test_kl_divergence(any_backend, rng, shape, axis, dtype, weighted, log_target):
    """Loss, gradient and the fused pair against the oracle, every reduction; class and
    sample weights together ('weights'); inputs left as they were."""
    b = any_backend
    logits, target, weight, sample_weight = _inputs(rng, shape, axis, dtype)
    if log_target:
        target = np.log(target)
    if not weighted:
        weight = sample_weight = None
    x, t, w, s = _on(b, logits, target, weight, sample_weight)
    for reduction in ("none", "mean", "sum"):
        grad_output = (rng.uniform(0.5, 2.0, _rows_shape(shape, axis)) if reduction == "none"
                       else 0.75)
        g = grad_output if np.isscalar(grad_output) else b.to_backend(grad_output)
        kw = dict(axis=axis, log_target=log_target, weight=weight, reduction=reduction,
                  sample_weight=sample_weight)
        expected = R.kl_divergence(logits, target, **kw)
        expected_grad = R.kl_divergence_grad(logits, target, grad_output=grad_output, **kw)
        kw.update(weight=w, sample_weight=s)
        loss = nbxent.kl_divergence(x, t, **kw)
        assert_close(b.to_numpy(loss), expected, dtype, "loss", err_msg=f"{reduction}:")
        grad = nbxent.kl_divergence_grad(x, t, grad_output=g, **kw)
        assert_close(b.to_numpy(grad), expected_grad, dtype, "grad", err_msg=f"{reduction}:")
        loss, grad = nbxent.kl_divergence_with_grad(x, t, grad_output=g, **kw)
        assert_close(b.to_numpy(loss), expected, dtype, "loss", err_msg=f"fused {reduction}:")
        assert_close(b.to_numpy(grad), expected_grad, dtype, "grad",
                     err_msg=f"fused {reduction}:")
    np.testing.assert_array_equal(b.to_numpy(x), logits, err_msg="the logits were modified")
    np.testing.assert_array_equal(b.to_numpy(t), target, err_msg="the target was modified")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_kl_divergence_matches_torch(any_backend, rng, reduction):
    """Live: nbxent on each backend against torch's kl_div ('batchmean' for 'mean')."""
    b = any_backend
    logits, target, _, _ = _inputs(rng, (12, 7), -1, F64)
    expected, expected_grad = _torch_kl(logits, target, -1, False, reduction)
    x, t = _on(b, logits, target)
    loss, grad = nbxent.kl_divergence_with_grad(x, t, reduction=reduction,
                                                grad_output=1.0 if reduction != "none"
                                                else b.to_backend(np.ones(12)))
    assert_close(b.to_numpy(loss), expected, F64, "loss")
    assert_close(b.to_numpy(grad), expected_grad, F64, "grad")


@pytest.mark.parametrize("log_target", [False, True], ids=["probs", "log_target"])
@pytest.mark.parametrize("shape, axis", [
    *KL_LAYOUTS, pytest.param((7, 12), 0, id="classes-first", marks=pytest.mark.slow)])
def test_kl_target_terms_in_blocks(any_backend, rng, monkeypatch, shape, axis, log_target):
    """The target's terms are taken a few rows at a time (here 20 elements: several blocks
    along a rows' axis, whichever axis holds the classes): the same loss."""
    monkeypatch.setattr(_information, "_BLOCK_ELEMENTS", 20)
    b = any_backend
    logits, target, weight, _ = _inputs(rng, shape, axis, F32)
    target[(slice(None),) * (axis % len(shape)) + (0,)] = 0.0  # some p = 0: 0 log 0 = 0
    if log_target:
        with np.errstate(divide="ignore"):
            target = np.log(target)
    x, t, w = _on(b, logits, target, weight)
    got = nbxent.kl_divergence(x, t, axis=axis, log_target=log_target, weight=w, reduction="none")
    expected = R.kl_divergence(logits, target, axis=axis, log_target=log_target, weight=weight,
                               reduction="none")
    assert_close(b.to_numpy(got), expected, F32, "loss")


@pytest.mark.slow  # float64 kernels the quick subset leaves out
def test_kl_divergence_of_itself_is_zero(any_backend, rng):
    b = any_backend
    logits = make_logits(rng, (12, 7), F64)
    x, = _on(b, logits)
    loss, grad = nbxent.kl_divergence_with_grad(x, x, log_target=True, reduction="none")
    assert_close(b.to_numpy(loss), np.zeros(12), F64, "loss", atol=1e-14)
    assert_close(b.to_numpy(grad), np.zeros((12, 7)), F64, "grad")


def test_kl_divergence_in_place(backend, rng):
    """out=logits: the gradient overwrites the logits, after the target term is taken."""
    logits, target, weight, sample_weight = _inputs(rng, (12, 7), -1, F32)
    kw = dict(weight=weight, sample_weight=sample_weight)
    expected = R.kl_divergence(logits, target, **kw)
    expected_grad = R.kl_divergence_grad(logits, target, **kw)
    x, t, w, s = _on(backend, logits, target, weight, sample_weight)
    loss, grad = nbxent.kl_divergence_with_grad(x, t, weight=w, sample_weight=s, out=x)
    assert grad is x
    assert_close(backend.to_numpy(loss), expected, F32, "loss")
    assert_close(backend.to_numpy(x), expected_grad, F32, "grad")


@pytest.mark.slow  # float64 kernels the quick subset leaves out
def test_kl_micro_batches_sum_to_the_batch(any_backend, rng):
    """Parts divided by the whole batch's summed sample weights add up to its 'mean'."""
    b = any_backend
    logits, target, _, sample_weight = _inputs(rng, (12, 7), -1, F64)
    whole, whole_grad = R.kl_divergence(logits, target, sample_weight=sample_weight), \
        R.kl_divergence_grad(logits, target, sample_weight=sample_weight)
    total = float(sample_weight.sum())
    losses, grads = [], []
    for part in (slice(0, 5), slice(5, 12)):
        x, t, s = _on(b, logits[part], target[part], sample_weight[part])
        loss, grad = nbxent.kl_divergence_with_grad(x, t, sample_weight=s, denominator=total)
        losses.append(b.to_numpy(loss))
        grads.append(b.to_numpy(grad))
    assert_close(sum(losses), whole, F64, "loss")
    assert_close(np.concatenate(grads), whole_grad, F64, "grad")


@pytest.mark.slow  # float64 kernels the quick subset leaves out
def test_nothing_to_average(any_backend, rng):
    """Sample weights summing to 0 under 'mean': nan, 0 with empty='zero', or a ValueError."""
    b = any_backend
    logits, target, _, _ = _inputs(rng, (6, 5), -1, F32)
    x, t, zeros = _on(b, logits, target, np.zeros(6))
    for call in (lambda **kw: nbxent.entropy(x, reduction="mean", **kw),
                 lambda **kw: nbxent.conditional_entropy(x, **kw),
                 lambda **kw: nbxent.kl_divergence(x, t, **kw)):
        assert np.isnan(b.to_numpy(call(sample_weight=zeros)))
        assert b.to_numpy(call(sample_weight=zeros, empty="zero")) == 0.0
        with pytest.raises(ValueError, match="empty='raise'"):
            call(sample_weight=zeros, empty="raise")
    assert np.isnan(b.to_numpy(nbxent.conditional_entropy(b.to_backend(np.zeros((0, 5))))))


# ------------------------------------------------------------------ bad input

LOGITS = np.arange(12, dtype=np.float32).reshape(4, 3)

BAD_ENTROPY = [
    pytest.param(dict(base=1), ValueError, "base must be None .* other than 1 .*; got 1.0",
                 id="base-1"),
    pytest.param(dict(base=0.0), ValueError, "base must be None .*; got 0.0", id="base-0"),
    pytest.param(dict(base=-2), ValueError, "base must be None .*; got -2.0", id="base-neg"),
    pytest.param(dict(base=np.inf), ValueError, "base must be None .*; got inf", id="base-inf"),
    pytest.param(dict(base="2"), TypeError, "base must be a real number; got '2'",
                 id="base-str"),
    pytest.param(dict(sample_weight=np.ones(5)), ValueError,
                 r"sample_weight of shape \(5,\) does not fit logits of shape \(4, 3\): "
                 r"expected \(4,\)", id="sample_weight-shape"),
    pytest.param(dict(empty="skip"), ValueError, "empty must be one of", id="empty"),
    pytest.param(dict(axis=2), ValueError, "axis 2 is out of range", id="axis"),
]


@pytest.mark.parametrize("keywords, error, message", BAD_ENTROPY)
def test_entropy_bad_input(any_backend, keywords, error, message):
    b = any_backend
    x, = _on(b, LOGITS)
    kw = dict(keywords)
    if isinstance(kw.get("sample_weight"), np.ndarray):
        kw["sample_weight"] = b.to_backend(kw["sample_weight"])
    with pytest.raises(error, match=message):
        nbxent.entropy(x, reduction="mean", **kw)
    if "axis" not in kw:
        with pytest.raises(error, match=message):
            nbxent.conditional_entropy(x, **kw)
    np.testing.assert_array_equal(b.to_numpy(x), LOGITS)


BAD_KL = [
    pytest.param(np.array([0, 1, 2, 1]), {}, TypeError,
                 r"target of a KL divergence must hold class probabilities as float16, "
                 r"float32 or float64, of the logits' shape \(4, 3\); got dtype int64 and "
                 r"shape \(4,\)", id="index-target"),
    pytest.param(np.full((4, 2), 0.5, np.float32), {}, ValueError,
                 r"target of shape \(4, 2\) does not fit logits of shape \(4, 3\)",
                 id="target-shape"),
    pytest.param(np.full((4, 3), 0.5, np.float32), dict(log_target="yes"), TypeError,
                 "log_target must be True or False; got 'yes'", id="log_target"),
    pytest.param(np.full((4, 3), 0.5, np.float32), dict(weight=np.ones(4)), ValueError,
                 r"weight of shape \(4,\) does not fit logits with 3 classes", id="weight"),
    pytest.param(np.full((4, 3), 0.5, np.float32), dict(sample_weight=np.ones(3)), ValueError,
                 r"sample_weight of shape \(3,\) does not fit logits of shape \(4, 3\)",
                 id="sample_weight"),
    pytest.param(np.full((4, 3), 0.5, np.float32), dict(reduction="batchmean"), ValueError,
                 "reduction must be one of 'none', 'mean', 'sum'; got 'batchmean'",
                 id="reduction"),
]


@pytest.mark.parametrize("target, keywords, error, message", BAD_KL)
def test_kl_divergence_bad_input(any_backend, target, keywords, error, message):
    b = any_backend
    x, t = _on(b, LOGITS, target)
    kw = {name: b.to_backend(v) if isinstance(v, np.ndarray) else v
          for name, v in keywords.items()}
    assert_calls_raise(b, (nbxent.kl_divergence, nbxent.kl_divergence_grad,
                           nbxent.kl_divergence_with_grad), x, t, kw, error, message)
    np.testing.assert_array_equal(b.to_numpy(x), LOGITS)
    np.testing.assert_array_equal(b.to_numpy(t), target)
