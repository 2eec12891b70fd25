"""Hypothesis property tests on the CPU backend: random shapes, axes and options.

Properties: agreement with the oracle; gradient rows sum to zero (any target,
weight and smoothing, as long as there is no z-loss and no soft cap); loss >= 0; the in-place gradient equals the
out-of-place one; the gradient matches finite differences of the loss; softmax
rows sum to 1 and 0 <= entropy <= log C. Example counts are kept modest for CI.
(Shifted logits: tests/test_offsets.py.)

The searches draw shapes, axes and every option's value at random, but the kernels'
compile-time choices (probability targets, smoothing, soft cap: ``kernel_choices``) only
among those the parametrised tests check (tests/test_api.py: every option set on rows,
``LAYOUT_OPTION_IDS`` on the other layouts): each new choice would compile kernels of
its own, seconds each, and a different handful every run.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbxent
from nbxent import reference as R

from _cases import LAYOUT_OPTION_IDS, OPTIONS, kernel_choices
from conftest import assert_close, tolerance

# Long single items (searches): left out of the quick subset.
pytestmark = pytest.mark.slow

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=False)


_ROW_CHOICES = kernel_choices([o.id for o in OPTIONS])
_LAYOUT_CHOICES = kernel_choices(LAYOUT_OPTION_IDS)


@st.composite
def problems(draw, dtypes=(np.float32, np.float64), allow_z=True, allow_softcap=True,
             allow_prob=True, max_rows=12, max_classes=40, tiled_rows=True):
    """(logits, target, keywords, reduction) for a random cross-entropy call.

    With ``tiled_rows``, a third of the 2-D calls take 20 classes or more and rows enough
    for the tile kernel's short-row paths (two tiles or more), their classes first in
    memory (a transpose's layout): shapes the parametrised tests' small ones do not
    reach; their kernel choices are the layouts'."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    ndim = draw(st.integers(1, 3))
    many_rows = tiled_rows and ndim == 2 and draw(st.integers(0, 2)) == 0
    n_classes = draw(st.integers(20, max(20, max_classes)) if many_rows
                     else st.integers(1, max_classes))
    other = ([draw(st.integers(260, 420))] if many_rows else
             [draw(st.integers(0 if ndim > 1 else 1, max_rows if ndim == 2 else 4))
              for _ in range(ndim - 1)])
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = list(other)
    shape.insert(axis % ndim, n_classes)
    shape = tuple(shape)
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    logits = (rng.standard_normal(shape) * scale).astype(dtype)
    if many_rows:
        logits = np.moveaxis(np.moveaxis(logits, axis, 0).copy(), 0, axis)
    loss_shape = tuple(s for i, s in enumerate(shape) if i != axis % ndim)
    classes_last = np.prod(shape[axis % ndim + 1:], dtype=np.int64) <= 1
    choices = [(p, s, c) for p, s, c in (_ROW_CHOICES if classes_last and not many_rows
                                         else _LAYOUT_CHOICES)
               if (allow_prob or not p) and (allow_softcap or not c)]
    prob, smoothing, softcap = draw(st.sampled_from(choices))
    keywords = dict(axis=axis)
    if prob:
        raw = rng.uniform(0.0, 1.0, shape)
        if draw(st.booleans()):                        # normalised soft labels
            total = raw.sum(axis=axis, keepdims=True)
            raw = raw / np.where(total > 0, total, 1.0)
        target = raw.astype(dtype)
    else:
        ignore_index = draw(st.sampled_from([-100, -1, 0, n_classes - 1, 255]))
        target = rng.integers(0, n_classes, loss_shape)
        if draw(st.booleans()) and target.size:
            mask = rng.random(loss_shape) < draw(st.floats(0.0, 1.0))
            target = np.where(mask, ignore_index, target)
        target = target.astype(np.int16 if ignore_index != 255 else np.int64)
        keywords["ignore_index"] = ignore_index
    if draw(st.booleans()):
        keywords["weight"] = rng.uniform(0.0, 3.0, n_classes).astype(dtype)
    keywords["label_smoothing"] = draw(st.sampled_from([0.05, 0.5, 1.0])) if smoothing else 0.0
    if allow_z and draw(st.booleans()):
        keywords["z_loss"] = draw(st.sampled_from([1e-4, 1e-2, 0.5]))
    if softcap:
        keywords["softcap"] = draw(st.sampled_from([1.0, 5.0, 30.0]))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return logits, target, keywords, reduction


def _is_index(target):
    return np.issubdtype(target.dtype, np.integer)


@settings(max_examples=60, **SETTINGS)
@given(problems(dtypes=(np.float16, np.float32, np.float64)), st.data())
def test_matches_oracle(problem, data):
    logits, target, keywords, reduction = problem
    go_shape = R.cross_entropy(logits, target, reduction="none", **keywords).shape
    grad_output = (data.draw(st.sampled_from([1.0, -0.5, "array"]))
                   if reduction == "none" else data.draw(st.sampled_from([1.0, 2.5, 0.0])))
    if isinstance(grad_output, str):
        grad_output = np.linspace(-1, 2, int(np.prod(go_shape))).reshape(go_shape)
    loss, grad = nbxent.cross_entropy_with_grad(logits, target, reduction=reduction,
                                                grad_output=grad_output, **keywords)
    expected_loss = R.cross_entropy(logits, target, reduction=reduction, **keywords)
    expected_grad = R.cross_entropy_grad(logits, target, reduction=reduction,
                                         grad_output=grad_output, **keywords)
    assert_close(loss, expected_loss, logits.dtype, "loss")
    # The gradient's rounding scales with its terms sum(q) p_c and q_c (see the next
    # test), not with the gradient: probability targets that do not sum to 1, and class
    # weights, take the absolute tolerance up with the largest row mass sum(q).
    _, q, _, _ = R._terms(logits, target, keywords["axis"], keywords.get("weight"),
                          keywords.get("ignore_index", -100),
                          keywords.get("label_smoothing", 0.0), None)
    mass = max(1.0, np.max(np.sum(q, axis=-1), initial=0.0))
    upstream = max(1.0, float(np.max(np.abs(grad_output), initial=0.0)))
    assert_close(grad, expected_grad, logits.dtype, "grad",
                 atol=tolerance(logits.dtype, "grad")[1] * mass * upstream)


@settings(max_examples=40, **SETTINGS)
@given(problems(allow_z=False, allow_softcap=False))
def test_gradient_rows_sum_to_zero(problem):
    """d/dx of -sum_c q_c log p_c is sum(q) p - q: every row sums to 0 (weights and
    smoothing included), until a z-loss or a soft cap enters.

    Rounding scales with the terms sum(q) p_c and q_c, whose mass per row is sum(q)
    (times the 'mean' scale), not with the gradient: with smoothing 1 and near-equal
    logits every entry is a small difference p_c - 1/C of rounded terms.
    """
    logits, target, keywords, reduction = problem
    axis = keywords["axis"]
    grad = nbxent.cross_entropy_grad(logits, target, reduction=reduction, **keywords)
    sums = np.sum(grad.astype(np.float64), axis=axis)
    _, q, _, row_weight = R._terms(logits, target, axis, keywords.get("weight"),
                                   keywords.get("ignore_index", -100),
                                   keywords.get("label_smoothing", 0.0), None)
    mass = np.max(np.sum(q, axis=-1), initial=0.0)
    if reduction == "mean" and np.sum(row_weight) > 0:
        mass /= np.sum(row_weight)
    tol = ((1e-12 if logits.dtype == np.float64 else 1e-6)
           * max(1.0, logits.shape[axis] ** 0.5) * max(mass, 1e-30))
    assert np.all(np.abs(sums) <= tol), (np.max(np.abs(sums)), tol)


@settings(max_examples=40, **SETTINGS)
@given(problems(dtypes=(np.float16, np.float32, np.float64)))
def test_loss_is_nonnegative(problem):
    """-sum q log p >= 0 for q >= 0 (log p <= 0), plus z * lse**2 >= 0."""
    logits, target, keywords, reduction = problem
    loss = nbxent.cross_entropy(logits, target, reduction=reduction, **keywords)
    finite = loss[np.isfinite(loss)] if loss.ndim else (loss if np.isfinite(loss) else [])
    assert np.all(np.asarray(finite) >= 0), loss


@settings(max_examples=40, **SETTINGS)
@given(problems(dtypes=(np.float16, np.float32, np.float64)), st.booleans())
def test_in_place_gradient_equals_out_of_place(problem, fused):
    logits, target, keywords, reduction = problem
    expected = nbxent.cross_entropy_grad(logits, target, reduction=reduction, **keywords)
    expected_loss = nbxent.cross_entropy(logits, target, reduction=reduction, **keywords)
    work = logits.copy()
    if fused:
        loss, result = nbxent.cross_entropy_with_grad(work, target, reduction=reduction,
                                                      out=work, **keywords)
        # The fused kernel is another compiled variant: fastmath may round differently.
        assert_close(loss, expected_loss, logits.dtype, "loss")
    else:
        result = nbxent.cross_entropy_grad(work, target, reduction=reduction, out=work,
                                           **keywords)
    assert result is work
    assert_close(work, expected, logits.dtype, "grad")


@settings(max_examples=25, **SETTINGS)
@given(problems(dtypes=(np.float64,), max_rows=4, max_classes=6, tiled_rows=False))
def test_gradient_matches_finite_differences(problem):
    """An oracle-free check: central differences of nbxent's own float64 loss."""
    logits, target, keywords, reduction = problem
    reduce = "sum" if reduction == "none" else reduction
    if "softcap" in keywords:
        keywords["softcap"] = max(keywords["softcap"], 5.0)
    logits = np.clip(logits, -20, 20)
    loss0 = nbxent.cross_entropy(logits, target, reduction=reduce, **keywords)
    if not np.isfinite(loss0):
        return                                         # all-ignored 'mean' or an empty batch
    grad = nbxent.cross_entropy_grad(logits, target, reduction=reduce, **keywords)
    h = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (nbxent.cross_entropy(up, target, reduction=reduce, **keywords)
                        - nbxent.cross_entropy(down, target, reduction=reduce, **keywords)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, atol=2e-6 * max(1.0, float(np.abs(loss0))),
                               rtol=1e-5)


@st.composite
def logit_arrays(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = np.dtype(draw(st.sampled_from([np.float16, np.float32, np.float64])))
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 9)) for _ in range(ndim))
    axis = draw(st.integers(-ndim, ndim - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 100.0]))
    return (rng.standard_normal(shape) * scale).astype(dtype), axis


@settings(max_examples=40, **SETTINGS)
@given(logit_arrays())
def test_normalizer_identities(case):
    x, axis = case
    n_classes = x.shape[axis]
    tol = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-12}[x.dtype.type]
    p = nbxent.softmax(x, axis=axis).astype(np.float64)
    np.testing.assert_allclose(p.sum(axis=axis), 1.0, atol=tol * n_classes)
    assert np.all(p >= 0)
    logp = nbxent.log_softmax(x, axis=axis)
    assert np.all(logp <= 0)
    lse = nbxent.logsumexp(x, axis=axis)
    assert np.all(lse >= np.max(x, axis=axis).astype(lse.dtype))
    assert np.all(lse <= np.max(x, axis=axis).astype(np.float64) + np.log(n_classes) + 1e-5)
    h = nbxent.entropy(x, axis=axis)
    assert np.all(h >= -tol) and np.all(h <= np.log(n_classes) * (1 + tol) + tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_logits_give_log_c(dtype):
    """A fixed point of every property above: equal logits, loss log C, entropy log C."""
    for n_classes in (1, 2, 7, 1000, 32000):
        x = np.full((3, n_classes), 2.5, dtype)
        t = np.array([0, n_classes - 1, n_classes // 2])
        np.testing.assert_allclose(nbxent.cross_entropy(x, t), np.log(n_classes),
                                   rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-7)
        np.testing.assert_allclose(nbxent.entropy(x), np.log(n_classes),
                                   rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)
