"""nbxent.jax.cross_entropy inside JAX: values and gradients against the optax formulas
written with jax.nn.log_softmax (PyTorch's semantics for weights, ignore_index and
smoothing), under jit, grad and vmap, in float32 and float64. Skipped without JAX."""

import re

import numpy as np
import pytest

from _cases import bad_training_options, make_index_target, make_logits, make_prob_target
from conftest import assert_close

jax = pytest.importorskip("jax")
jnp = jax.numpy

import nbxent  # noqa: E402
import nbxent.jax  # noqa: E402 (needs jax)
from nbxent.jax import cross_entropy  # noqa: E402 (needs jax)


@pytest.fixture(autouse=True, params=nbxent.jax.ROUTES)
def route(request, monkeypatch):
    """Every test on both ways traced code reaches nbxent: XLA's FFI and the host callback."""
    monkeypatch.setenv("NBXENT_JAX_ROUTE", request.param)
    assert nbxent.jax.host_route() == (request.param, None)
    return request.param


@pytest.fixture(autouse=True)
def x64_off():
    """JAX's default, x64 off, whatever a test before left in this process (the bench's JAX
    peer turns it on); restored after."""
    was_x64 = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", was_x64)


@pytest.fixture(params=[np.dtype(np.float32), np.dtype(np.float64)], ids=["float32", "float64"])
def dtype(request):
    """The logits' dtype; float64 turns on jax_enable_x64 for the test, and restores it."""
    was_x64 = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", request.param == np.float64)
    yield request.param
    jax.config.update("jax_enable_x64", was_x64)


def reference(logits, labels, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
              label_smoothing=0.0, z_loss=0.0, softcap=None):
    """The loss in plain JAX: optax's log_softmax formulas with PyTorch's options."""
    x = jnp.moveaxis(logits, axis, -1)
    if softcap is not None:
        x = softcap * jnp.tanh(x / softcap)
    n_classes = x.shape[-1]
    log_p = jax.nn.log_softmax(x, axis=-1)
    lse = jax.nn.logsumexp(x, axis=-1)
    w = jnp.ones(n_classes, x.dtype) if weight is None else weight.astype(x.dtype)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        valid = labels != ignore_index
        safe = jnp.where(valid, labels, 0)
        nll = -jnp.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0] * w[safe]
        smooth = -(log_p * w).sum(-1)
        rows = jnp.where(valid, (1 - label_smoothing) * nll
                         + label_smoothing / n_classes * smooth, 0)
        z_rows = jnp.where(valid, z_loss * lse ** 2, 0)
        denominator = jnp.where(valid, w[safe], 0).sum()
        n_valid = valid.sum()
    else:
        q = jnp.moveaxis(labels, axis, -1) * (1 - label_smoothing) + label_smoothing / n_classes
        rows = -(q * log_p * w).sum(-1)
        z_rows = z_loss * lse ** 2
        denominator = n_valid = rows.size
    if reduction == "none":
        return rows + z_rows
    if reduction == "sum":
        return (rows + z_rows).sum()
    return rows.sum() / denominator + z_rows.sum() / n_valid


# Option sets the rest of the suite compiles kernels for (tests/_cases.py OPTIONS).
CASES = {
    "plain": dict(),
    "weight-smooth-ignore": dict(weight=True, ignored=0.3, label_smoothing=0.2),
    "everything": dict(weight=True, ignored=0.3, label_smoothing=0.2, z_loss=1e-3, softcap=5.0),
    "prob": dict(prob=True),
    "prob-weight-smooth": dict(prob=True, weight=True, label_smoothing=0.15),
}
SHAPE_CASES = [pytest.param((7, 5), -1, case, id=f"7x5-{case}") for case in CASES] + [
    pytest.param((2, 3, 4), 1, case, id=f"2x3x4-axis1-{case}")
    for case in ("everything", "prob-weight-smooth")]


def _inputs(rng, shape, axis, dtype, case):
    case = dict(CASES[case])
    logits = make_logits(rng, shape, dtype)
    if case.pop("prob", False):
        labels = make_prob_target(rng, shape, axis).astype(dtype)
    else:
        labels = make_index_target(rng, shape, axis, ignored=case.pop("ignored", 0.0))
    case.pop("ignored", None)
    if case.pop("weight", False):
        case["weight"] = jnp.asarray(rng.uniform(0.25, 2.0, shape[axis]).astype(dtype))
    return jnp.asarray(logits), jnp.asarray(labels), dict(axis=axis, **case)


def _objective(fn, cotangent, **options):
    """Loss to differentiate: the loss itself, or <loss, cotangent> for 'none'."""
    if options["reduction"] == "none":
        return lambda x, y: jnp.sum(fn(x, y, **options) * cotangent)
    return lambda x, y: fn(x, y, **options) * cotangent


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape,axis,case", SHAPE_CASES)
def test_loss_and_grad_match_formulas(rng, dtype, shape, axis, case, reduction):
    logits, labels, options = _inputs(rng, shape, axis, dtype, case)
    options["reduction"] = reduction
    rows_shape = tuple(np.delete(np.array(shape), axis % len(shape)))
    cotangent = jnp.asarray(rng.uniform(-1, 1, rows_shape if reduction == "none" else ())
                            .astype(dtype))
    expected_loss = reference(logits, labels, **options)
    argnums = (0, 1) if jnp.issubdtype(labels.dtype, jnp.floating) else 0
    objective = _objective(cross_entropy, cotangent, **options)
    loss, grads = jax.jit(jax.value_and_grad(objective, argnums))(logits, labels)
    expected = jax.grad(_objective(reference, cotangent, **options), argnums)(logits, labels)
    if options["reduction"] == "none":
        expected_loss = jnp.sum(expected_loss * cotangent)
        assert_close(loss, expected_loss, dtype, "loss", check_dtype=False)
    else:
        assert_close(loss, expected_loss * cotangent, dtype, "loss", check_dtype=False)
    if argnums == 0:
        grads, expected = (grads,), (expected,)
    for got, want in zip(grads, expected):
        assert_close(got, want, dtype, "grad")


def test_eager_call_matches_jit_and_value_and_grad(rng, dtype):
    logits, labels, options = _inputs(rng, (7, 5), -1, dtype, "weight-smooth-ignore")
    eager = cross_entropy(logits, labels, **options)
    assert isinstance(eager, jax.Array)
    loss, grad = jax.jit(jax.value_and_grad(lambda x: cross_entropy(x, labels, **options)))(logits)
    assert_close(eager, loss, dtype, "loss")
    assert_close(eager, reference(logits, labels, **options), dtype, "loss")
    assert grad.dtype == dtype and grad.shape == logits.shape


def test_numpy_inputs(rng):
    logits = make_logits(rng, (7, 5), np.float32)
    labels = make_index_target(rng, (7, 5), -1)
    loss = cross_entropy(logits, labels)
    assert_close(loss, reference(jnp.asarray(logits), jnp.asarray(labels)), np.float32, "loss")


def test_ignored_rows_get_zero_gradient(rng, dtype):
    logits, labels, options = _inputs(rng, (7, 5), -1, dtype, "weight-smooth-ignore")
    labels = labels.at[2].set(-100)
    grad = jax.jit(jax.grad(lambda x: cross_entropy(x, labels, **options)))(logits)
    ignored = np.asarray(labels) == -100
    assert np.all(np.asarray(grad)[ignored] == 0)
    assert np.all(np.asarray(grad)[~ignored] != 0)


def test_integer_labels_get_a_zero_cotangent(rng, dtype):
    logits, labels, _ = _inputs(rng, (7, 5), -1, dtype, "plain")
    loss, vjp = jax.vjp(cross_entropy, logits, labels)
    grad_logits, grad_labels = vjp(jnp.ones_like(loss))
    assert grad_logits.shape == logits.shape
    assert grad_labels.dtype == jax.dtypes.float0


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_vmap_over_a_batch_of_logits(rng, dtype, reduction):
    shape, batch = (7, 5), 3
    logits = jnp.asarray(make_logits(rng, (batch, *shape), dtype))
    labels = jnp.asarray(make_index_target(rng, shape, -1, ignored=0.3))
    weight = jnp.asarray(rng.uniform(0.25, 2.0, shape[-1]).astype(dtype))
    options = dict(weight=weight, reduction=reduction, label_smoothing=0.1)

    def loss_of(x):
        return jnp.sum(cross_entropy(x, labels, **options))

    def reference_of(x):
        return jnp.sum(reference(x, labels, **options))

    losses = jax.jit(jax.vmap(loss_of))(logits)
    grads = jax.jit(jax.vmap(jax.grad(loss_of)))(logits)
    for b in range(batch):
        assert_close(losses[b], reference_of(logits[b]), dtype, "loss")
        assert_close(grads[b], jax.grad(reference_of)(logits[b]), dtype, "grad")


def test_vmap_over_logits_labels_and_weight(rng, dtype):
    shape, batch = (7, 5), 2
    logits = jnp.asarray(make_logits(rng, (batch, *shape), dtype))
    labels = jnp.asarray(np.stack([make_index_target(rng, shape, -1) for _ in range(batch)]))
    weight = jnp.asarray(rng.uniform(0.25, 2.0, (batch, shape[-1])).astype(dtype))
    for reduction in ("mean", "none"):
        got = jax.vmap(lambda x, y, w: cross_entropy(x, y, weight=w, reduction=reduction))(
            logits, labels, weight)
        for b in range(batch):
            assert_close(got[b], reference(logits[b], labels[b], weight=weight[b],
                                           reduction=reduction), dtype, "loss")


def test_bfloat16_logits_are_computed_in_float32(rng):
    logits = jnp.asarray(make_logits(rng, (7, 5), np.float32)).astype(jnp.bfloat16)
    labels = jnp.asarray(make_index_target(rng, (7, 5), -1))
    loss, grad = jax.value_and_grad(cross_entropy)(logits, labels)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    expected = reference(logits.astype(jnp.float32), labels)
    assert_close(loss, expected, np.float32, "loss")


def test_inplace_backward_gives_the_gradient_the_logits_buffer(rng, route):
    """inplace_backward: the same values wherever the logits come from (XLA copies an
    argument it must keep); on the FFI route a donated argument's memory comes back as
    the gradient."""
    logits = jnp.asarray(make_logits(rng, (7, 5), np.float32))
    labels = jnp.asarray(make_index_target(rng, (7, 5), -1, ignored=0.3))
    kept = np.asarray(logits).copy()

    def grad_of(inplace, **options):
        def loss(x, y):
            result = cross_entropy(x, y, inplace_backward=inplace, **options)
            return jnp.sum(result[0] if "metrics" in options else result)
        return jax.grad(loss)

    for options in ({}, dict(reduction="none"), dict(metrics="correct")):
        for inputs in (lambda x: x, lambda x: 1.5 * x):   # an argument, an intermediate
            got, expected = (jax.jit(lambda x, y: grad_of(inplace, **options)(inputs(x), y))(
                logits, labels) for inplace in (True, False))
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(logits, kept)
    # Probability labels differentiated too: their gradient reads the logits after the
    # call that took their buffer, so XLA keeps a copy.
    soft = jnp.asarray(make_prob_target(rng, (7, 5), -1).astype(np.float32))
    got, expected = (jax.jit(jax.grad(lambda x, y, inplace=inplace: cross_entropy(
        1.5 * x, y, inplace_backward=inplace), argnums=(0, 1)))(logits, soft)
        for inplace in (True, False))
    for got_part, expected_part in zip(got, expected):
        np.testing.assert_array_equal(got_part, expected_part)
    # vmap over the labels alone: the logits are broadcast to the batch first.
    batched = jnp.stack([labels, labels[::-1]])
    got = jax.jit(jax.vmap(grad_of(True), in_axes=(None, 0)))(logits, batched)
    expected = jax.jit(jax.vmap(grad_of(False), in_axes=(None, 0)))(logits, batched)
    np.testing.assert_array_equal(got, expected)

    # A donated argument: on the FFI route the gradient is written into its buffer,
    # with no copy anywhere in the compiled function.
    donating = jax.jit(grad_of(True), donate_argnums=0)
    compiled = donating.lower(logits, labels).compile().as_text()
    assert ("output_to_operand_aliasing" in compiled) == (route == "ffi")
    if route == "ffi":
        assert re.search(r"\scopy\(", compiled) is None, compiled
    got = donating(jnp.array(logits, copy=True), labels)
    np.testing.assert_array_equal(got, jax.jit(grad_of(False))(logits, labels))


# --------------------------------------------------------------- unsupported input

def test_unsupported_dtype_and_options_are_clear_errors():
    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises(TypeError, match="logits"):
        cross_entropy(jnp.zeros((2, 3), jnp.int32), labels)
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, labels, reduction="avg")
    with pytest.raises(ValueError, match=r"\(3,\)"):
        jax.jit(cross_entropy)(logits, jnp.array([0, 1, 2]))


def test_bad_class_index(rng):
    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 5])
    with pytest.raises(ValueError, match="not a class index"):
        cross_entropy(logits, labels)
    with pytest.raises(Exception, match="not a class index"):  # JAX's runtime error wraps it
        jax.block_until_ready(jax.jit(cross_entropy)(logits, labels))


def test_gradient_with_respect_to_weight_is_refused():
    logits, labels, weight = jnp.zeros((2, 3)), jnp.array([0, 1]), jnp.ones(3)
    with pytest.raises(NotImplementedError, match="weight"):
        jax.grad(lambda w: cross_entropy(logits, labels, weight=w))(weight)


class _FakeDevice:
    platform = "gpu"


class _FakeGpuArray:
    """Stands in for a JAX array held on a GPU (no GPU is needed to test the check)."""
    shape, dtype = (2, 3), np.dtype(np.float32)

    def devices(self):
        return {_FakeDevice()}


def test_arrays_on_a_gpu_are_refused():
    with pytest.raises(TypeError, match="CPU backend only.*logits is on gpu"):
        cross_entropy(_FakeGpuArray(), jnp.array([0, 1]))


def test_docstring_examples():
    import doctest

    import nbxent.jax

    failures, tried = doctest.testmod(nbxent.jax, optionflags=doctest.ELLIPSIS)
    assert tried > 0
    assert failures == 0


def test_route_is_the_one_asked_for(route):
    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 1])
    text = jax.jit(lambda x: jax.value_and_grad(cross_entropy)(x, labels)).lower(logits).as_text()
    assert ("nbxent_host_function" in text) == (route == "ffi")


def test_route_from_the_environment(monkeypatch):
    monkeypatch.setenv("NBXENT_JAX_ROUTE", "carrier-pigeon")
    with pytest.raises(ValueError, match="NBXENT_JAX_ROUTE='carrier-pigeon'.*ffi, callback"):
        nbxent.jax.host_route()
    monkeypatch.delenv("NBXENT_JAX_ROUTE")
    assert nbxent.jax.host_route() == ("ffi", None)


def test_ffi_writes_a_strided_view_and_reads_every_dtype(rng):
    """XLA hands the FFI handler dense row-major buffers; integer labels of any width and
    float16 logits go through without a copy on the host side."""
    logits = jnp.asarray(make_logits(rng, (6, 4), np.float16))
    for label_dtype in (np.uint8, np.int16, np.int32):
        labels = jnp.asarray(make_index_target(rng, (6, 4), -1).astype(label_dtype))
        loss, grad = jax.jit(jax.value_and_grad(cross_entropy))(logits[::2], labels[::2])
        assert grad.dtype == jnp.float16 and grad.shape == (3, 4)
        expected = reference(logits[::2].astype(jnp.float32), labels[::2].astype(jnp.int32))
        assert_close(loss, expected, np.float16, "loss", check_dtype=False)


# --------------------------------------------------------------- training options

def _direct(logits, labels, cotangent, **options):
    """nbxent's direct call on the same values: (loss, gradient times cotangent[, metrics])."""
    arrays = {name: np.asarray(value) if hasattr(value, "shape") else value
              for name, value in options.items()}
    return nbxent.cross_entropy_with_grad(np.asarray(logits), np.asarray(labels),
                                          grad_output=np.asarray(cotangent), **arrays)


@pytest.mark.parametrize("shape,axis,options", [
    pytest.param((7, 5), -1, dict(sample_weight=True), id="sample_weight"),
    pytest.param((2, 3, 4), 1, dict(sample_weight=True, weight=True, reduction="none"),
                 id="sample_weight-weighted-axis1-none"),
    pytest.param((7, 5), -1, dict(sample_weight=True, reduction="sum"), id="sample_weight-sum"),
    pytest.param((7, 5), -1, dict(denominator=3.5), id="denominator"),
    pytest.param((7, 5), -1, dict(denominator="array", weight=True), id="denominator-0d"),
    pytest.param((7, 5), -1, dict(empty="zero", sample_weight=True), id="empty-zero"),
])
def test_training_options_match_the_direct_call(rng, shape, axis, options):
    options = dict(options, axis=axis)
    logits = jnp.asarray(make_logits(rng, shape, np.float32))
    labels = jnp.asarray(make_index_target(rng, shape, axis, ignored=0.3))
    rows_shape = labels.shape
    if options.pop("sample_weight", False):
        options["sample_weight"] = jnp.asarray(rng.uniform(0, 2, rows_shape).astype(np.float32))
    if options.get("weight"):
        options["weight"] = jnp.asarray(rng.uniform(0.25, 2.0, shape[axis]).astype(np.float32))
    reduction = options.setdefault("reduction", "mean")
    cotangent = jnp.asarray(rng.uniform(-1, 1, rows_shape if reduction == "none" else ())
                            .astype(np.float32))
    denominator = options.pop("denominator", None)

    def objective(x, denominator):
        return jnp.sum(cross_entropy(x, labels, denominator=denominator, **options) * cotangent)

    if denominator == "array":   # a traced 0-d operand
        denominator = jnp.float32(4.25)
        loss, grad = jax.jit(jax.value_and_grad(objective))(logits, denominator)
    else:                        # a number, static
        loss, grad = jax.jit(jax.value_and_grad(lambda x: objective(x, denominator)))(logits)
    expected_loss, expected_grad = _direct(logits, labels, cotangent, denominator=denominator,
                                           **options)
    expected_loss = np.sum(expected_loss * np.asarray(cotangent))
    assert_close(loss, expected_loss, np.float32, "loss", check_dtype=False, rtol=1e-6)
    assert_close(grad, expected_grad, np.float32, "grad", rtol=1e-6)


def test_all_ignored_batch_under_empty():
    logits, labels = jnp.ones((3, 4)), jnp.full((3,), -100)
    assert np.isnan(cross_entropy(logits, labels))
    loss, grad = jax.jit(jax.value_and_grad(
        lambda x: cross_entropy(x, labels, empty="zero")))(logits)
    assert float(loss) == 0 and not np.asarray(grad).any()
    with pytest.raises(ValueError, match="no counted target.*empty='raise'"):
        cross_entropy(logits, labels, empty="raise")


def test_probability_labels_gradient_with_sample_weight_and_denominator(rng):
    """d loss / d labels (computed in JAX) follows the sample weights and the
    denominator, as jax.grad of the plain-JAX formula does."""
    shape = (7, 5)
    logits = jnp.asarray(make_logits(rng, shape, np.float32))
    labels = jnp.asarray(make_prob_target(rng, shape, -1).astype(np.float32))
    sample_weight = jnp.asarray(rng.uniform(0, 2, 7).astype(np.float32))
    for denominator in (None, 2.5):
        def ours(x, y):
            return cross_entropy(x, y, sample_weight=sample_weight, denominator=denominator,
                                 label_smoothing=0.1)

        def formula(x, y):
            rows = reference(x, y, reduction="none", label_smoothing=0.1) * sample_weight
            return rows.sum() / (sample_weight.sum() if denominator is None else denominator)

        got = jax.jit(jax.grad(ours, (0, 1)))(logits, labels)
        want = jax.grad(formula, (0, 1))(logits, labels)
        for g, w in zip(got, want):
            assert_close(g, w, np.float32, "grad")


_ALL_METRICS = ("lse", "argmax", "correct", "top_k", "entropy")


def test_metrics_match_the_direct_call(rng):
    logits = jnp.asarray(make_logits(rng, (7, 5), np.float32))
    labels = jnp.asarray(make_index_target(rng, (7, 5), -1, ignored=0.3))
    sample_weight = jnp.asarray(rng.uniform(0, 2, 7).astype(np.float32))

    def ours(x):
        return cross_entropy(x, labels, sample_weight=sample_weight, metrics=_ALL_METRICS,
                             top_k=2)

    (loss, found), grad = jax.jit(jax.value_and_grad(ours, has_aux=True))(logits)
    eager_loss, eager_found = ours(logits)
    jitted_loss, jitted_found = jax.jit(ours)(logits)
    expected_loss, expected_grad, expected = _direct(logits, labels, 1.0,
                                                     sample_weight=sample_weight,
                                                     metrics=_ALL_METRICS, top_k=2)
    assert list(eager_found) == list(_ALL_METRICS)   # (jit returns dicts sorted by key)
    for metrics in (found, eager_found, jitted_found):
        assert set(metrics) == set(_ALL_METRICS)
        for name, value in metrics.items():
            if name in ("lse", "entropy"):   # (the loss-only pass may round differently)
                assert_close(value, expected[name], np.float32, "loss", err_msg=name)
            else:
                np.testing.assert_array_equal(value, expected[name], err_msg=name)
    dtypes = {name: found[name].dtype for name in _ALL_METRICS}
    assert dtypes == {"lse": jnp.float32, "argmax": jnp.int32, "correct": jnp.bool_,
                      "top_k": jnp.bool_, "entropy": jnp.float32}   # int32: x64 is off
    for value in (loss, eager_loss, jitted_loss):
        assert_close(value, expected_loss, np.float32, "loss", rtol=1e-6)
    assert_close(grad, expected_grad, np.float32, "grad", rtol=1e-6)
    # The metrics are constants: differentiating through them adds nothing.
    with_lse = jax.grad(lambda x: ours(x)[0] + ours(x)[1]["lse"].sum())(logits)
    assert_close(with_lse, expected_grad, np.float32, "grad", rtol=1e-6)


def test_vmap_over_sample_weight_and_metrics(rng):
    shape, batch = (7, 5), 2
    logits = jnp.asarray(make_logits(rng, (batch, *shape), np.float32))
    labels = jnp.asarray(make_index_target(rng, shape, -1))
    sample_weight = jnp.asarray(rng.uniform(0, 2, (batch, 7)).astype(np.float32))
    for reduction in ("mean", "none"):
        loss, found = jax.jit(jax.vmap(lambda x, s: cross_entropy(
            x, labels, sample_weight=s, reduction=reduction, metrics="argmax")))(
            logits, sample_weight)
        for b in range(batch):
            expected_loss, _, expected = _direct(logits[b], labels, 1.0, reduction=reduction,
                                                 sample_weight=sample_weight[b],
                                                 metrics="argmax")
            assert_close(loss[b], expected_loss, np.float32, "loss", rtol=1e-6)
            np.testing.assert_array_equal(found["argmax"][b], expected["argmax"])


@pytest.mark.parametrize("options,error,match", bad_training_options(jnp.ones) + [
    pytest.param(dict(metrics="correct", labels=jnp.full((3, 4), 0.25)), ValueError,
                 r"metrics \['correct'\] need class-index targets", id="correct-prob")])
def test_bad_training_options_are_clear_errors(options, error, match):
    options = dict(options)
    labels = options.pop("labels", jnp.array([0, 1, 2]))
    with pytest.raises(error, match=match):
        jax.jit(lambda x: cross_entropy(x, labels, **options))(jnp.zeros((3, 4)))


def test_gradient_with_respect_to_sample_weight_or_denominator_is_refused():
    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises(NotImplementedError, match="sample_weight"):
        jax.grad(lambda s: cross_entropy(logits, labels, sample_weight=s))(jnp.ones(2))
    with pytest.raises(NotImplementedError, match="denominator"):
        jax.grad(lambda d: cross_entropy(logits, labels, denominator=d))(jnp.float32(2.0))
