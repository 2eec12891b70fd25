"""Training options: sample_weight, denominator= with mean_denominator, empty=.

Every backend (CPU, the CUDA simulator, Dask; a GPU with CuPy where present)
against the float64 oracle, on small shapes and the kernel variants the other
test files compile (float32/float64, class weights, ignored rows, NCHW axis=1).
"""

import numpy as np
import pytest

import nbxent
from nbxent import reference as R

from _cases import OPTIONS_BY_ID, loss_shape, make_inputs
from conftest import assert_calls_raise, assert_close

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)

# (option set, dtype): float32 for every set, float16 and float64 for two (the kernels are
# the same code; float16 and float64 are not in the quick subset).
CASES = [pytest.param(option, dtype, id=f"{option}-{dtype.name}",
                      marks=[] if dtype == F32 else [pytest.mark.slow])
         for option in ("plain", "weight-ignore", "everything", "prob-weight-smooth",
                        "z_loss-ignore")
         for dtype in (F32, F16, F64) if dtype == F32 or option in ("plain", "everything")]


def _on(backend, keywords):
    moved = dict(keywords)
    for name in ("weight", "sample_weight"):
        if moved.get(name) is not None:
            moved[name] = backend.to_backend(np.asarray(moved[name]))
    return moved


def _check(backend, logits, target, keywords, reduction, dtype, grad_output=1.0):
    """The three cross-entropy calls vs the oracle; inputs left as they were."""
    expected_loss = R.cross_entropy(logits, target, reduction=reduction, **keywords)
    expected_grad = R.cross_entropy_grad(logits, target, reduction=reduction,
                                         grad_output=grad_output, **keywords)
    x, t, kw = backend.to_backend(logits), backend.to_backend(target), _on(backend, keywords)
    g = grad_output if np.isscalar(grad_output) else backend.to_backend(grad_output)
    before = [backend.to_numpy(a).copy() for a in (x, t)]
    loss = nbxent.cross_entropy(x, t, reduction=reduction, **kw)
    assert_close(backend.to_numpy(loss), expected_loss, dtype, "loss", err_msg="loss:")
    grad = nbxent.cross_entropy_grad(x, t, reduction=reduction, grad_output=g, **kw)
    assert_close(backend.to_numpy(grad), expected_grad, dtype, "grad", err_msg="grad:")
    fused_loss, fused_grad = nbxent.cross_entropy_with_grad(x, t, reduction=reduction,
                                                            grad_output=g, **kw)
    assert_close(backend.to_numpy(fused_loss), expected_loss, dtype, "loss", err_msg="fused:")
    assert_close(backend.to_numpy(fused_grad), expected_grad, dtype, "grad", err_msg="fused:")
    for b, a in zip(before, (x, t)):
        np.testing.assert_array_equal(backend.to_numpy(a), b, err_msg="an input was modified")
    return backend.to_numpy(fused_loss), backend.to_numpy(fused_grad)


# ------------------------------------------------------------------ the oracle's semantics

@pytest.mark.parametrize("option", ["weight-ignore", "everything", "prob-weight-smooth"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_oracle_integer_sample_weight_repeats_rows(rng, option, reduction):
    """A sample weight k is the row taken k times (z-loss and class weights included)."""
    logits, target, keywords = make_inputs(rng, (9, 6), -1, F64, OPTIONS_BY_ID[option])
    counts = rng.integers(0, 4, 9)
    counts[0] = 1
    repeated = np.repeat(np.arange(9), counts)
    weighted = R.cross_entropy(logits, target, reduction=reduction, sample_weight=counts,
                               **keywords)
    plain = R.cross_entropy(logits[repeated], target[repeated], reduction=reduction, **keywords)
    np.testing.assert_allclose(weighted, plain, rtol=1e-12)
    grad = R.cross_entropy_grad(logits, target, reduction=reduction, sample_weight=counts,
                                **keywords)
    grad_repeated = R.cross_entropy_grad(logits[repeated], target[repeated],
                                         reduction=reduction, **keywords)
    summed = np.zeros_like(grad)
    np.add.at(summed, repeated, grad_repeated)
    np.testing.assert_allclose(grad, summed, rtol=1e-12, atol=1e-15)


def test_oracle_defaults_unchanged(rng):
    """sample_weight of ones and empty='nan' give the default oracle (nan when all ignored)."""
    logits, target, keywords = make_inputs(rng, (8, 5), -1, F64, OPTIONS_BY_ID["everything"])
    for reduction in ("mean", "sum", "none"):
        np.testing.assert_allclose(
            R.cross_entropy(logits, target, reduction=reduction, sample_weight=np.ones(8),
                            **keywords),
            R.cross_entropy(logits, target, reduction=reduction, **keywords), rtol=1e-13)
    ignored = np.full(8, -100)
    assert np.isnan(R.cross_entropy(logits, ignored, empty="nan", **keywords))


# ------------------------------------------------------------------ sample weights

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option, dtype", CASES)
def test_sample_weight(any_backend, rng, option, dtype, reduction):
    logits, target, keywords = make_inputs(rng, (12, 7), -1, dtype, OPTIONS_BY_ID[option])
    keywords["sample_weight"] = rng.uniform(0.0, 3.0, 12).astype(dtype)
    grad_output = rng.uniform(0.5, 2.0, 12) if reduction == "none" else 0.75
    _check(any_backend, logits, target, keywords, reduction, dtype, grad_output)


@pytest.mark.parametrize("option", ["plain", "everything", "prob-weight-smooth"])
def test_sample_weight_nchw(any_backend, rng, option):
    """Pixel weights of an NCHW map (axis=1): the loss's shape (N, H, W)."""
    logits, target, keywords = make_inputs(rng, (2, 7, 3, 5), 1, F32, OPTIONS_BY_ID[option])
    keywords["sample_weight"] = rng.uniform(0.0, 2.0, (2, 3, 5))
    _check(any_backend, logits, target, keywords, "mean", F32)


def test_sample_weight_ones_is_the_default(any_backend, rng):
    logits, target, keywords = make_inputs(rng, (10, 6), -1, F32, OPTIONS_BY_ID["everything"])
    x, t, kw = any_backend.to_backend(logits), any_backend.to_backend(target), _on(any_backend,
                                                                                  keywords)
    ones = any_backend.to_backend(np.ones(10, np.float32))
    loss, grad = nbxent.cross_entropy_with_grad(x, t, sample_weight=ones, **kw)
    plain_loss, plain_grad = nbxent.cross_entropy_with_grad(x, t, **kw)
    assert_close(any_backend.to_numpy(loss), any_backend.to_numpy(plain_loss), F32, "loss")
    assert_close(any_backend.to_numpy(grad), any_backend.to_numpy(plain_grad), F32, "grad")


def test_sklearn_log_loss(rng):
    """sample_weight means what scikit-learn's ``log_loss(sample_weight=...)`` means."""
    metrics = pytest.importorskip("sklearn.metrics")
    probs = rng.dirichlet(np.ones(5), 30)
    labels = rng.integers(0, 5, 30)
    sample_weight = rng.uniform(0.1, 3.0, 30)
    expected = metrics.log_loss(labels, probs, sample_weight=sample_weight, labels=range(5))
    got = nbxent.cross_entropy(np.log(probs), labels, sample_weight=sample_weight)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(R.cross_entropy(np.log(probs), labels,
                                               sample_weight=sample_weight), expected, rtol=1e-12)


# ------------------------------------------------------------------ denominator=

# (float64, which every option set compiles anew: two of them not in the quick subset.)
@pytest.mark.parametrize("option", ["weight-ignore",
                                    pytest.param("everything", marks=pytest.mark.slow),
                                    pytest.param("prob-weight-smooth", marks=pytest.mark.slow)])
def test_micro_batches_sum_to_the_batch(any_backend, rng, option):
    """Parts called with the whole batch's mean_denominator sum to the whole batch."""
    logits, target, keywords = make_inputs(rng, (12, 7), -1, F64, OPTIONS_BY_ID[option])
    sample_weight = rng.uniform(0.0, 2.0, 12)
    weight = keywords["weight"]
    b = any_backend
    parts = [slice(0, 5), slice(5, 6), slice(6, 12)]
    part_denominators = [
        b.to_numpy(nbxent.mean_denominator(
            b.to_backend(target[p]), weight=b.to_backend(weight), axis=-1,
            ignore_index=keywords["ignore_index"],
            sample_weight=b.to_backend(sample_weight[p]))) for p in parts]
    total = float(sum(part_denominators))
    expected_total = R.mean_denominator(target, weight, keywords["ignore_index"], sample_weight)
    np.testing.assert_allclose(total, expected_total, rtol=1e-12)
    whole_keywords = dict(keywords, sample_weight=sample_weight, denominator=total)
    whole_loss, whole_grad = _check(b, logits, target, whole_keywords, "mean", F64)
    losses, grads = [], []
    for p in parts:
        kw = _on(b, dict(keywords, sample_weight=sample_weight[p]))
        loss, grad = nbxent.cross_entropy_with_grad(b.to_backend(logits[p]),
                                                    b.to_backend(target[p]),
                                                    denominator=total, **kw)
        losses.append(b.to_numpy(loss))
        grads.append(b.to_numpy(grad))
    assert_close(sum(losses), whole_loss, F64, "loss")
    assert_close(np.concatenate(grads), whole_grad, F64, "grad")
    if not keywords["z_loss"]:  # then the batch's own 'mean' is the same number
        default = R.cross_entropy(logits, target, sample_weight=sample_weight, **keywords)
        assert_close(whole_loss, default, F64, "loss")


def test_denominator_as_an_array(any_backend, rng):
    """A 0-d array of the backend's kind (mean_denominator's result) is taken as it is."""
    logits, target, keywords = make_inputs(rng, (8, 5), -1, F32, OPTIONS_BY_ID["weight-ignore"])
    b = any_backend
    denominator = nbxent.mean_denominator(b.to_backend(target),
                                          weight=b.to_backend(keywords["weight"]))
    assert b.is_kind(denominator) and denominator.shape == ()
    loss = nbxent.cross_entropy(b.to_backend(logits), b.to_backend(target),
                                denominator=denominator, **_on(b, keywords))
    assert_close(b.to_numpy(loss), R.cross_entropy(logits, target, **keywords), F32, "loss")


def test_mean_denominator_probabilities(rng):
    target = rng.dirichlet(np.ones(4), (3, 5))              # (3, 5, 4): classes last
    assert float(nbxent.mean_denominator(target)) == 15.0
    assert float(nbxent.mean_denominator(np.moveaxis(target, -1, 1), axis=1)) == 15.0
    sample_weight = rng.uniform(0, 1, (3, 5))
    np.testing.assert_allclose(nbxent.mean_denominator(target, sample_weight=sample_weight),
                               sample_weight.sum(), rtol=1e-14)


# ------------------------------------------------------------------ empty=

@pytest.mark.parametrize("sample_weight", [None, "zeros"])
def test_empty_batch(any_backend, rng, sample_weight):
    """Nothing to average: nan (default), 0 ('zero'), or a ValueError ('raise')."""
    b = any_backend
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    target = np.full(6, -100)
    keywords = dict(z_loss=0.01)
    if sample_weight == "zeros":  # counted rows, every one weighted 0
        target = rng.integers(0, 5, 6)
        keywords["sample_weight"] = np.zeros(6, np.float32)
    x, t, kw = b.to_backend(logits), b.to_backend(target), _on(b, keywords)
    loss, grad = nbxent.cross_entropy_with_grad(x, t, empty="zero", **kw)
    assert b.to_numpy(loss) == 0.0 and b.to_numpy(loss).dtype == np.float32
    np.testing.assert_array_equal(b.to_numpy(grad), 0.0)
    assert np.isnan(b.to_numpy(nbxent.cross_entropy(x, t, **kw)))
    out = b.to_backend(np.full((6, 5), 7.0, np.float32))
    with pytest.raises(ValueError, match="no counted target .* empty='raise'"):
        nbxent.cross_entropy_with_grad(x, t, empty="raise", out=out, **kw)
    np.testing.assert_array_equal(b.to_numpy(out), 7.0)
    np.testing.assert_array_equal(b.to_numpy(x), logits)
    zero = nbxent.cross_entropy(x, t, denominator=0.0, empty="zero", **kw)
    assert b.to_numpy(zero) == 0.0


def test_empty_is_only_about_mean(any_backend, rng):
    """'sum' of an all-ignored batch is 0 whatever ``empty``; a batch with counted targets
    is not empty (empty='raise' passes)."""
    b = any_backend
    logits = rng.standard_normal((4, 3))
    x = b.to_backend(logits)
    assert b.to_numpy(nbxent.cross_entropy(x, b.to_backend(np.full(4, -100)),
                                           reduction="sum", empty="raise")) == 0.0
    target = np.array([0, -100, 2, 1])
    assert_close(b.to_numpy(nbxent.cross_entropy(x, b.to_backend(target), empty="raise")),
                 R.cross_entropy(logits, target), F64, "loss")


# ------------------------------------------------------------------ bad input

BAD_CALLS = [
    pytest.param(dict(sample_weight=np.ones(5)), ValueError,
                 r"sample_weight of shape \(5,\) does not fit logits of shape \(4, 3\): "
                 r"expected \(4,\)", id="sample_weight-shape"),
    pytest.param(dict(sample_weight=np.ones((4, 1))), ValueError,
                 r"sample_weight of shape \(4, 1\)", id="sample_weight-no-broadcasting"),
    pytest.param(dict(sample_weight=np.ones(4, complex)), TypeError,
                 "sample_weight must be a real-valued array", id="sample_weight-complex"),
    pytest.param(dict(denominator=-1.0), ValueError,
                 "denominator must be a finite number >= 0; got -1.0", id="negative"),
    pytest.param(dict(denominator=np.array(np.nan)), ValueError,
                 "denominator must be a finite number >= 0; got nan", id="nan-array"),
    pytest.param(dict(denominator=np.ones(2)), ValueError,
                 r"denominator must be a number or a 0-d array; got an array of shape \(2,\)",
                 id="denominator-shape"),
    pytest.param(dict(denominator="3"), TypeError, "denominator must be a real number",
                 id="denominator-str"),
    pytest.param(dict(denominator=2.0, reduction="sum"), ValueError,
                 "denominator= replaces the denominator of reduction='mean'; got "
                 "reduction='sum'", id="denominator-sum"),
    pytest.param(dict(empty="ignore"), ValueError,
                 "empty must be one of 'nan', 'zero', 'raise'; got 'ignore'", id="empty"),
]


@pytest.mark.parametrize("keywords, error, message", BAD_CALLS)
def test_bad_input(any_backend, keywords, error, message):
    b = any_backend
    logits = np.arange(12, dtype=np.float32).reshape(4, 3)
    target = np.array([0, 1, 2, 1])
    kw = dict(keywords)
    if isinstance(kw.get("sample_weight"), np.ndarray):
        kw["sample_weight"] = b.to_backend(kw["sample_weight"])
    x, t = b.to_backend(logits), b.to_backend(target)
    assert_calls_raise(b, (nbxent.cross_entropy, nbxent.cross_entropy_grad,
                           nbxent.cross_entropy_with_grad), x, t, kw, error, message)
    np.testing.assert_array_equal(b.to_numpy(x), logits)


def test_mean_denominator_bad_input():
    with pytest.raises(ValueError, match=r"sample_weight of shape \(2,\) does not fit target "
                                         r"of shape \(3,\): expected \(3,\)"):
        nbxent.mean_denominator(np.array([0, 1, 2]), sample_weight=np.ones(2))
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        nbxent.mean_denominator(np.array(["a"]))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        nbxent.mean_denominator(np.ones((2, 3)), axis=2)


@pytest.mark.parametrize("name", ["cpu", "cuda", "dask"])
def test_backends_provide_the_training_functions(name):
    from nbxent import _dispatch
    try:
        module = _dispatch.get_backend(name)
    except ImportError as exc:
        pytest.skip(str(exc))
    assert all(callable(getattr(module, f, None)) for f in _dispatch.TRAINING_FUNCTIONS)


@pytest.mark.parametrize("option", ["weight-ignore", "everything"])
def test_sample_weight_in_place(backend, rng, option):
    """out=logits: the gradient overwrites the logits (two passes with 'everything', the
    first into a fresh array, so the second still reads the logits)."""
    logits, target, keywords = make_inputs(rng, (9, 6), -1, F32, OPTIONS_BY_ID[option])
    sample_weight = rng.uniform(0.0, 2.0, 9)
    expected = R.cross_entropy_grad(logits, target, sample_weight=sample_weight, **keywords)
    expected_loss = R.cross_entropy(logits, target, sample_weight=sample_weight, **keywords)
    x = backend.to_backend(logits)
    loss, grad = nbxent.cross_entropy_with_grad(
        x, backend.to_backend(target), out=x,
        **_on(backend, dict(keywords, sample_weight=sample_weight)))
    assert grad is x
    assert_close(backend.to_numpy(x), expected, F32, "grad")
    assert_close(backend.to_numpy(loss), expected_loss, F32, "loss")
