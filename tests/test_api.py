"""Every public function on every backend against the float64 oracle.

Each test builds NumPy inputs, hands the backend its own kind of array
(``backend.to_backend`` / ``backend.view``), checks that results come back in
that kind (``backend.to_numpy``), in the promised dtype and shape, and within
``assert_close``'s per-dtype tolerance of ``nbxent.reference``.
"""

import numpy as np
import pytest

import nbxent
from nbxent import reference as R
from nbxent._config import CPU

from _cases import (DTYPE_PARAMS, LAYOUT_OPTION_IDS, LAYOUT_PARAMS, OPTION_PARAMS,
                    OPTIONS_BY_ID, REDUCTIONS, SHAPES, TARGET_DTYPE_PARAMS, is_small,
                    loss_shape, make_index_target, make_inputs, make_logits,
                    make_prob_target, option_params)
from conftest import assert_close, loss_dtype

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


# ------------------------------------------------------------------ helpers

def on_backend(backend, keywords):
    """``keywords`` with its arrays (weight) moved to the backend."""
    moved = dict(keywords)
    if moved.get("weight") is not None:
        moved["weight"] = backend.to_backend(moved["weight"])
    return moved


def log_softmax_tol(dtype):
    """log_softmax = x - lse rounds at the magnitude of x and lse, not of the result."""
    return {F64: (1e-12, 1e-12), F32: (1e-5, 1e-6), F16: (1e-3, 1e-5)}[np.dtype(dtype)]


def check_loss_result(backend, result, expected, dtype, reduction, err_msg=""):
    """The loss: the backend's kind, 0-d when reduced, the loss dtype, close to the oracle."""
    got = backend.to_numpy(result)
    if reduction != "none":
        assert got.shape == (), f"{err_msg} reduced loss has shape {got.shape}, not ()"
    assert_close(got, expected, dtype, "loss", err_msg=err_msg)
    return got


def check_grad_result(backend, result, expected, dtype, err_msg=""):
    got = backend.to_numpy(result)
    assert_close(got, expected, dtype, "grad", err_msg=err_msg)
    return got


def snapshot(backend, *arrays):
    return [None if a is None or np.isscalar(a) else backend.to_numpy(a).copy() for a in arrays]


def assert_unchanged(backend, before, *arrays):
    for b, a in zip(before, arrays):
        if b is not None:
            np.testing.assert_array_equal(backend.to_numpy(a), b, err_msg="an input was modified")


def check_all_three(backend, logits, target, keywords, reduction, dtype, *, grad_output=1.0,
                    logits_dev=None, target_dev=None, grad_output_dev=None):
    """cross_entropy, cross_entropy_grad and cross_entropy_with_grad vs the oracle.

    ``logits``/``target``/``grad_output`` are NumPy (for the oracle); the ``*_dev``
    versions (default: converted copies) are what the backend receives.
    """
    logits_dev = backend.to_backend(logits) if logits_dev is None else logits_dev
    target_dev = backend.to_backend(target) if target_dev is None else target_dev
    if grad_output_dev is None:
        grad_output_dev = (grad_output if np.isscalar(grad_output)
                           else backend.to_backend(np.asarray(grad_output)))
    kw_dev = on_backend(backend, keywords)
    before = snapshot(backend, logits_dev, target_dev, kw_dev.get("weight"), grad_output_dev)

    expected_loss = R.cross_entropy(logits, target, reduction=reduction, **keywords)
    expected_grad = R.cross_entropy_grad(logits, target, reduction=reduction,
                                         grad_output=grad_output, **keywords)

    loss = nbxent.cross_entropy(logits_dev, target_dev, reduction=reduction, **kw_dev)
    check_loss_result(backend, loss, expected_loss, dtype, reduction, "cross_entropy:")
    grad = nbxent.cross_entropy_grad(logits_dev, target_dev, reduction=reduction,
                                     grad_output=grad_output_dev, **kw_dev)
    got_grad = check_grad_result(backend, grad, expected_grad, dtype, "cross_entropy_grad:")
    fused_loss, fused_grad = nbxent.cross_entropy_with_grad(
        logits_dev, target_dev, reduction=reduction, grad_output=grad_output_dev, **kw_dev)
    check_loss_result(backend, fused_loss, expected_loss, dtype, reduction, "with_grad loss:")
    check_grad_result(backend, fused_grad, expected_grad, dtype, "with_grad grad:")
    assert_unchanged(backend, before, logits_dev, target_dev, kw_dev.get("weight"),
                     grad_output_dev)
    return got_grad


def ignored_rows(target, keywords, axis):
    """Boolean mask over the loss shape of rows whose index target is ignore_index."""
    if not np.issubdtype(target.dtype, np.integer):
        return np.zeros(target.shape[:axis % target.ndim] + target.shape[axis % target.ndim + 1:],
                        bool)
    return target.astype(np.int64) == keywords["ignore_index"]


# ------------------------------------------------------------------ cross-entropy: shapes

@pytest.mark.parametrize("option_id", ["plain", "weight-smooth-ignore"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cross_entropy_shapes(backend, rng, shape, dtype, reduction, option_id):
    backend.skip_if_large(*shape)
    logits, target, keywords = make_inputs(rng, shape, -1, dtype, OPTIONS_BY_ID[option_id])
    grad_output = rng.uniform(0.5, 2.0, shape[:1]) if reduction == "none" else 1.5
    got_grad = check_all_three(backend, logits, target, keywords, reduction, dtype,
                               grad_output=grad_output)
    mask = ignored_rows(target, keywords, -1)
    assert np.all(got_grad[mask] == 0), "ignored rows must get exactly zero gradient"


# ------------------------------------------------------------------ cross-entropy: options

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape", [(37, 11), (5, 1000)], ids=["37x11", "5x1000"])
@pytest.mark.parametrize("options", OPTION_PARAMS)
def test_cross_entropy_options(backend, rng, options, shape, dtype, reduction):
    backend.skip_if_large(*shape)
    logits, target, keywords = make_inputs(rng, shape, -1, dtype, options)
    grad_output = rng.uniform(-2.0, 2.0, shape[:1]) if reduction == "none" else 0.75
    got_grad = check_all_three(backend, logits, target, keywords, reduction, dtype,
                               grad_output=grad_output)
    mask = ignored_rows(target, keywords, -1)
    assert np.all(got_grad[mask] == 0), "ignored rows must get exactly zero gradient"


# ------------------------------------------------------------------ cross-entropy: layouts

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option_id", LAYOUT_OPTION_IDS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("layout", LAYOUT_PARAMS)
def test_cross_entropy_layouts(backend, rng, layout, dtype, option_id, reduction):
    """Any axis and strided views of the logits (and of prob targets) give the oracle's answer."""
    if backend.small and not is_small(layout.shape(), layout.axis):
        pytest.skip("too large for the simulator")
    options = OPTIONS_BY_ID[option_id]
    base = layout.make(rng, dtype, scale=5.0 if options.softcap else 2.0)
    logits, logits_dev = backend.view(base, layout.view)
    shape, axis = logits.shape, layout.axis
    _, target, keywords = make_inputs(rng, shape, axis, dtype, options)
    target_dev = None
    if options.target != "index":
        # Strided prob targets too: the same view of a differently-shaped base.
        target_base = make_prob_target(rng, layout.base_shape, axis).astype(dtype)
        target, target_dev = backend.view(target_base, layout.view)
    grad_output = (rng.uniform(-2.0, 2.0, loss_shape(shape, axis)) if reduction == "none"
                   else 1.25)
    got_grad = check_all_three(backend, logits, target, keywords, reduction, dtype,
                               grad_output=grad_output, logits_dev=logits_dev,
                               target_dev=target_dev)
    assert got_grad.shape == shape


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_strided_target_weight_and_grad_output(backend, rng, reduction):
    """Non-contiguous target, weight and grad_output arrays are read through their strides."""
    n, c = 12, 9
    logits = make_logits(rng, (n, c), F32)
    target_base = rng.integers(0, c, (2 * n,)).astype(np.int32)
    target_base[::5] = -100
    weight_base = rng.uniform(0.5, 2.0, (2 * c,)).astype(np.float32)
    go_base = rng.uniform(-1, 1, (3 * n,))
    target, target_dev = backend.view(target_base, lambda x: x[::2])
    weight, weight_dev = backend.view(weight_base, lambda x: x[1::2])
    grad_output, go_dev = backend.view(go_base, lambda x: x[::3])
    if reduction != "none":
        grad_output, go_dev = 2.0, 2.0
    keywords = dict(weight=weight, label_smoothing=0.05)
    expected_loss = R.cross_entropy(logits, target, reduction=reduction, **keywords)
    expected_grad = R.cross_entropy_grad(logits, target, reduction=reduction,
                                         grad_output=grad_output, **keywords)
    logits_dev = backend.to_backend(logits)
    loss, grad = nbxent.cross_entropy_with_grad(logits_dev, target_dev, weight=weight_dev,
                                                label_smoothing=0.05, reduction=reduction,
                                                grad_output=go_dev)
    check_loss_result(backend, loss, expected_loss, F32, reduction)
    check_grad_result(backend, grad, expected_grad, F32)


# ------------------------------------------------------------------ target dtypes

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_dtype,ignore_index", TARGET_DTYPE_PARAMS)
def test_integer_target_dtypes(backend, rng, target_dtype, ignore_index, reduction):
    shape = (29, 13)
    target = make_index_target(rng, shape, -1, dtype=target_dtype, ignore_index=ignore_index,
                               ignored=0.3 if ignore_index == 255 or target_dtype.kind == "i"
                               else 0.0)
    logits = make_logits(rng, shape, F32)
    keywords = dict(axis=-1, weight=rng.uniform(0.5, 1.5, 13), ignore_index=ignore_index,
                    label_smoothing=0.1)
    got_grad = check_all_three(backend, logits, target, keywords, reduction, F32)
    if ignore_index == 255:
        assert np.all(got_grad[target == 255] == 0)


def test_uint8_segmentation_mask_nchw(backend, rng):
    """The classic segmentation call: NCHW logits, a uint8 (N, H, W) mask with 255 = void."""
    logits = make_logits(rng, (2, 5, 4, 6), F32)
    target = rng.integers(0, 5, (2, 4, 6)).astype(np.uint8)
    target[:, 0, :] = 255
    keywords = dict(axis=1, ignore_index=255)
    got_grad = check_all_three(backend, logits, target, keywords, "mean", F32)
    assert np.all(got_grad[:, :, 0, :] == 0)


# (float16 and float64 targets compile their own kernels: not in the quick subset.)
@pytest.mark.parametrize("target_dtype", [pytest.param(np.float16, marks=pytest.mark.slow),
                                          np.float32,
                                          pytest.param(np.float64, marks=pytest.mark.slow)])
def test_probability_target_dtype_may_differ_from_logits(backend, rng, target_dtype):
    logits = make_logits(rng, (7, 6), F32)
    target = make_prob_target(rng, (7, 6), -1).astype(target_dtype)
    check_all_three(backend, logits, target, dict(label_smoothing=0.1), "mean", F32)


# ------------------------------------------------------------------ grad_output

GRAD_OUTPUTS = [
    pytest.param(lambda rng, shape: 2.5, id="float"),
    pytest.param(lambda rng, shape: 3, id="int"),
    pytest.param(lambda rng, shape: np.float32(0.5), id="np.float32"),
    pytest.param(lambda rng, shape: np.array(-1.5), id="0d-f64"),
    pytest.param(lambda rng, shape: np.array(0.25, np.float32), id="0d-f32"),
    pytest.param(lambda rng, shape: 0.0, id="zero"),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("make_grad_output", GRAD_OUTPUTS)
def test_scalar_grad_output(backend, rng, make_grad_output, reduction):
    logits = make_logits(rng, (9, 7), F32)
    target = make_index_target(rng, (9, 7), -1, ignored=0.2)
    grad_output = make_grad_output(rng, (9,))
    got = check_all_three(backend, logits, target, dict(label_smoothing=0.1, z_loss=0.01),
                          reduction, F32, grad_output=grad_output)
    if np.asarray(grad_output) == 0:
        assert np.all(got == 0)


@pytest.mark.parametrize("go_dtype", [np.float16, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("go_layout", ["contiguous", "strided", "reversed", "broadcast"])
def test_per_row_grad_output(backend, rng, go_dtype, go_layout):
    """Any real dtype, read through the view's strides (the CPU backend once read a float16
    view with a step as if it were contiguous), or a broadcast view (NumPy's)."""
    logits = make_logits(rng, (11, 6), F64)
    target = make_index_target(rng, (11, 6), -1, ignored=0.2)
    values = rng.integers(-3, 4, (22,)).astype(go_dtype)
    if go_layout == "broadcast":
        if backend.name != "cpu":
            pytest.skip("a broadcast view is a NumPy one")
        grad_output = grad_output_dev = np.broadcast_to(values[3], (11,))
    else:
        view = {"contiguous": lambda a: a[:11], "strided": lambda a: a[::2],
                "reversed": lambda a: a[:11][::-1]}[go_layout]
        grad_output, grad_output_dev = backend.view(values, view)
    check_all_three(backend, logits, target, dict(weight=rng.uniform(0.5, 2, 6)), "none", F64,
                    grad_output=grad_output, grad_output_dev=grad_output_dev)


def test_per_row_grad_output_nchw(backend, rng):
    logits = make_logits(rng, (2, 4, 3, 5), F32)
    target = make_index_target(rng, (2, 4, 3, 5), 1, ignored=0.2)
    grad_output = rng.uniform(-1, 1, (2, 3, 5))
    check_all_three(backend, logits, target, dict(axis=1, label_smoothing=0.2), "none", F32,
                    grad_output=grad_output)


# ------------------------------------------------------------------ out= and in place

@pytest.mark.parametrize("function", ["grad", "with_grad"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_out_preallocated(backend, rng, dtype, function):
    logits = make_logits(rng, (13, 9), dtype)
    target = make_index_target(rng, (13, 9), -1, ignored=0.2)
    expected_grad = R.cross_entropy_grad(logits, target, label_smoothing=0.1)
    out = backend.to_backend(np.full((13, 9), 7.0, dtype))
    logits_dev, target_dev = backend.to_backend(logits), backend.to_backend(target)
    if function == "grad":
        result = nbxent.cross_entropy_grad(logits_dev, target_dev, label_smoothing=0.1, out=out)
    else:
        loss, result = nbxent.cross_entropy_with_grad(logits_dev, target_dev,
                                                      label_smoothing=0.1, out=out)
        check_loss_result(backend, loss, R.cross_entropy(logits, target, label_smoothing=0.1),
                          dtype, "mean")
    assert result is out, "the gradient must be returned in out="
    check_grad_result(backend, out, expected_grad, dtype)
    np.testing.assert_array_equal(backend.to_numpy(logits_dev), logits)


def test_out_strided_view_leaves_the_rest_alone(backend, rng):
    logits = make_logits(rng, (8, 10), F32)
    target = make_index_target(rng, (8, 10), -1)
    out_base = np.full((8, 13), 7.0, np.float32)
    _, out = backend.view(out_base, lambda x: x[:, 2:12])
    result = nbxent.cross_entropy_grad(backend.to_backend(logits), backend.to_backend(target),
                                       out=out)
    assert result is out
    check_grad_result(backend, out, R.cross_entropy_grad(logits, target), F32)
    base = getattr(out, "base", None)
    # The simulator's device arrays keep their memory in a NumPy array: read it as is.
    base_after = (np.asarray(base) if isinstance(base, np.ndarray)
                  else backend.to_numpy(out if base is None else base))
    if base_after.shape == out_base.shape:
        assert np.all(base_after[:, :2] == 7.0) and np.all(base_after[:, 12:] == 7.0)


@pytest.mark.parametrize("function", ["grad", "with_grad"])
@pytest.mark.parametrize("option_id", option_params(["plain", "everything", "prob-zloss-softcap"]))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("layout", LAYOUT_PARAMS)
def test_gradient_in_place(backend, rng, layout, dtype, option_id, function):
    """out=logits overwrites the logits with the gradient (also for strided views and any axis)."""
    if backend.small and not is_small(layout.shape(), layout.axis):
        pytest.skip("too large for the simulator")
    options = OPTIONS_BY_ID[option_id]
    base = layout.make(rng, dtype, scale=5.0 if options.softcap else 2.0)
    base_before = base.copy()
    logits, logits_dev = backend.view(base, layout.view)
    logits = logits.copy()
    _, target, keywords = make_inputs(rng, logits.shape, layout.axis, dtype, options)
    reduction = "sum"
    expected_grad = R.cross_entropy_grad(logits, target, reduction=reduction, grad_output=0.5,
                                         **keywords)
    expected_loss = R.cross_entropy(logits, target, reduction=reduction, **keywords)
    target_dev, kw_dev = backend.to_backend(target), on_backend(backend, keywords)
    if function == "grad":
        result = nbxent.cross_entropy_grad(logits_dev, target_dev, reduction=reduction,
                                           grad_output=0.5, out=logits_dev, **kw_dev)
    else:
        loss, result = nbxent.cross_entropy_with_grad(logits_dev, target_dev,
                                                      reduction=reduction, grad_output=0.5,
                                                      out=logits_dev, **kw_dev)
        check_loss_result(backend, loss, expected_loss, dtype, reduction)
    assert result is logits_dev
    check_grad_result(backend, logits_dev, expected_grad, dtype)
    if backend.name == "cpu":
        # Memory of the base outside the view is untouched.
        outside = np.ones(base.shape, bool)
        layout.view(outside)[...] = False
        np.testing.assert_array_equal(base[outside], base_before[outside])


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_in_place_large_vocabulary(backend, rng, dtype):
    backend.skip_if_large(32000)
    logits = make_logits(rng, (4, 32000), dtype)
    target = make_index_target(rng, (4, 32000), -1)
    expected_loss = R.cross_entropy(logits, target, z_loss=1e-4, label_smoothing=0.1)
    expected_grad = R.cross_entropy_grad(logits, target, z_loss=1e-4, label_smoothing=0.1)
    logits_dev = backend.to_backend(logits)
    loss, grad = nbxent.cross_entropy_with_grad(logits_dev, backend.to_backend(target),
                                                z_loss=1e-4, label_smoothing=0.1,
                                                out=logits_dev)
    assert grad is logits_dev
    check_loss_result(backend, loss, expected_loss, dtype, "mean")
    check_grad_result(backend, grad, expected_grad, dtype)


@pytest.mark.parametrize("shape, split_min_classes", [((24, 1100), None), ((3, 40000), 16)],
                         ids=["rows", "split-rows"])
def test_in_place_gradient_is_the_out_of_place_one(rng, shape, split_min_classes):
    """Bit for bit on the CPU: in place, the row kernel stages each chunk of logits before
    writing its exps (LLVM's run-time overlap check had sent the loop to its scalar
    version, four times slower, whose sums round differently). Rows whose classes are
    split over work items (``split_min_classes``), each target in the last part: one item
    reads its row's target logit while another writes its exps, which in place were
    written over that logit (a wrong loss, with two threads)."""
    logits = make_logits(rng, shape, np.float32)
    target = np.full(shape[0], shape[1] - 1 - np.arange(shape[0]))
    overrides = {} if split_min_classes is None else {"split_min_classes": split_min_classes}
    with CPU.override(**overrides):
        loss, grad = nbxent.cross_entropy_with_grad(logits, target, reduction="none")
        for _ in range(3):
            in_place = logits.copy()
            loss_in_place, _ = nbxent.cross_entropy_with_grad(in_place, target, out=in_place,
                                                              reduction="none")
            np.testing.assert_array_equal(in_place, grad)
            np.testing.assert_array_equal(loss_in_place, loss)
    assert_close(loss, R.cross_entropy(logits, target, reduction="none"), np.float32, "loss")


# ------------------------------------------------------------------ normalisers

def check_normalizers(backend, x, x_dev, axis, dtype):
    before = snapshot(backend, x_dev)
    lse = nbxent.logsumexp(x_dev, axis=axis)
    assert_close(backend.to_numpy(lse), R.logsumexp(x, axis), dtype, "loss", err_msg="logsumexp:")
    logp = backend.to_numpy(nbxent.log_softmax(x_dev, axis=axis))
    rtol, atol = log_softmax_tol(dtype)
    assert_close(logp, R.log_softmax(x, axis), dtype, "grad", rtol=rtol, atol=atol,
                 err_msg="log_softmax:")
    p = backend.to_numpy(nbxent.softmax(x_dev, axis=axis))
    assert_close(p, R.softmax(x, axis), dtype, "grad", err_msg="softmax:")
    for reduction in REDUCTIONS:
        got = backend.to_numpy(nbxent.entropy(x_dev, axis=axis, reduction=reduction))
        if reduction != "none":
            assert got.shape == ()
        assert_close(got, R.entropy(x, axis, reduction), dtype, "loss",
                     err_msg=f"entropy {reduction}:")
    # entropy's default reduction is "none"
    got = backend.to_numpy(nbxent.entropy(x_dev, axis=axis))
    assert got.shape == loss_shape(x.shape, axis)
    assert_unchanged(backend, before, x_dev)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_normalizers_shapes(backend, rng, shape, dtype):
    backend.skip_if_large(*shape)
    x = make_logits(rng, shape, dtype)
    check_normalizers(backend, x, backend.to_backend(x), -1, dtype)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("layout", LAYOUT_PARAMS)
def test_normalizers_layouts(backend, rng, layout, dtype):
    if backend.small and not is_small(layout.shape(), layout.axis):
        pytest.skip("too large for the simulator")
    x, x_dev = backend.view(layout.make(rng, dtype), layout.view)
    check_normalizers(backend, x, x_dev, layout.axis, dtype)


@pytest.mark.parametrize("op", ["log_softmax", "softmax"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("in_place", [False, True], ids=["preallocated", "in_place"])
def test_normalizer_out(backend, rng, op, dtype, in_place):
    x = make_logits(rng, (2, 6, 3, 4), dtype)
    expected = getattr(R, op)(x, 1)
    x_dev = backend.to_backend(x)
    out = x_dev if in_place else backend.to_backend(np.zeros_like(x))
    result = getattr(nbxent, op)(x_dev, axis=1, out=out)
    assert result is out
    rtol, atol = log_softmax_tol(dtype) if op == "log_softmax" else (None, None)
    assert_close(backend.to_numpy(out), expected, dtype, "grad", rtol=rtol, atol=atol)
    if not in_place:
        np.testing.assert_array_equal(backend.to_numpy(x_dev), x)


# Where the classes lie for the non-finite tests: last, first (axis 0) and NCHW
# (few classes across positions: the CPU backend's tiled kernel).
NONFINITE_LAYOUTS = [pytest.param((6, 5), -1, id="last"), pytest.param((5, 6), 0, id="axis0"),
                     pytest.param((2, 5, 3), 1, id="nchw")]


def _poison_rows(x, axis):
    """nan, +inf, all -inf, one -inf, all-equal rows in the first five rows (classes on axis)."""
    moved = np.moveaxis(x, axis, -1)                 # a view: writes go into x
    rows = [idx for idx in np.ndindex(moved.shape[:-1])]
    moved[rows[0] + (1,)] = np.nan
    moved[rows[1] + (2,)] = np.inf
    moved[rows[2]] = -np.inf
    moved[rows[3] + (0,)] = -np.inf
    moved[rows[4]] = 0.0
    return rows


@pytest.mark.parametrize("shape,axis", NONFINITE_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_normalizers_nonfinite_rows(backend, rng, dtype, shape, axis):
    x = make_logits(rng, shape, dtype)
    rows = _poison_rows(x, axis)
    check_normalizers(backend, x, backend.to_backend(x), axis, dtype)
    lse = backend.to_numpy(nbxent.logsumexp(backend.to_backend(x), axis=axis))
    assert np.isnan(lse[rows[0]]) and lse[rows[1]] == np.inf and lse[rows[2]] == -np.inf


# ------------------------------------------------------------------ edge cases (README.md)

@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("option_id", option_params(["plain", "weight-smooth-ignore", "z_loss",
                                                      "softcap"]))
def test_all_ignored_mean_is_nan_with_zero_gradient(backend, rng, dtype, option_id):
    options = OPTIONS_BY_ID[option_id]
    logits, _, keywords = make_inputs(rng, (5, 7), -1, dtype, options)
    target = np.full(5, keywords["ignore_index"], np.int64)
    loss_dev, grad_dev = nbxent.cross_entropy_with_grad(
        backend.to_backend(logits), backend.to_backend(target), **on_backend(backend, keywords))
    loss, grad = backend.to_numpy(loss_dev), backend.to_numpy(grad_dev)
    assert loss.shape == () and np.isnan(loss)
    assert grad.dtype == dtype and np.all(grad == 0)
    for reduction, expected in (("sum", 0.0), ("none", np.zeros(5))):
        got = backend.to_numpy(nbxent.cross_entropy(
            backend.to_backend(logits), backend.to_backend(target), reduction=reduction,
            **on_backend(backend, keywords)))
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ["index", "prob"])
@pytest.mark.parametrize("shape,axis", [((0, 7), -1), ((2, 3, 0, 4), 1), ((0, 2, 5), -1),
                                        ((4, 0), 0)],
                         ids=["rows0", "nchw-h0", "3d-rows0", "axis0-rows0"])
def test_empty_batch(backend, rng, shape, axis, form, reduction):
    logits = make_logits(rng, shape, F32)
    target = (make_index_target(rng, shape, axis) if form == "index"
              else make_prob_target(rng, shape, axis).astype(np.float32))
    keywords = dict(axis=axis, label_smoothing=0.1, z_loss=0.01)
    check_all_three(backend, logits, target, keywords, reduction, F32,
                    grad_output=np.ones(loss_shape(shape, axis)) if reduction == "none" else 1.0)
    loss = backend.to_numpy(nbxent.cross_entropy(backend.to_backend(logits),
                                                 backend.to_backend(target),
                                                 reduction=reduction, **keywords))
    if reduction == "mean":
        assert np.isnan(loss)
    elif reduction == "sum":
        assert loss == 0
    else:
        assert loss.shape == loss_shape(shape, axis)
    x_dev = backend.to_backend(logits)
    assert backend.to_numpy(nbxent.logsumexp(x_dev, axis=axis)).shape == loss_shape(shape, axis)
    assert backend.to_numpy(nbxent.softmax(x_dev, axis=axis)).shape == shape
    assert np.isnan(backend.to_numpy(nbxent.entropy(x_dev, axis=axis, reduction="mean")))
    assert backend.to_numpy(nbxent.entropy(x_dev, axis=axis, reduction="sum")) == 0


@pytest.mark.parametrize("option_id", ["plain", "smooth", "weight", "z_loss", "prob"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_single_class(backend, rng, dtype, option_id):
    """C = 1: log_softmax is 0, so the loss is 0 (plus z-loss) and the gradient 0."""
    logits, target, keywords = make_inputs(rng, (6, 1), -1, dtype, OPTIONS_BY_ID[option_id])
    got = check_all_three(backend, logits, target, keywords, "none", dtype)
    if not keywords["z_loss"]:
        assert np.all(got == 0)


@pytest.mark.parametrize("shape,axis", [pytest.param((2, 6, 4), 1, id="nchw"),
                                        pytest.param((6, 8), 0, id="axis0")])
# (The soft cap with every other option: the soft cap alone would compile tile kernels
# that only this test uses. Not in the quick subset: float32 logits under a cap are widened
# to float64, kernels few quick tests use; probability targets without smoothing across
# positions likewise.)
@pytest.mark.parametrize("option_id", ["plain", "weight-smooth-ignore", "z_loss",
                                       pytest.param("everything", marks=pytest.mark.slow),
                                       pytest.param("prob", marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_nonfinite_logits_other_axes(backend, rng, dtype, option_id, shape, axis):
    options = OPTIONS_BY_ID[option_id]
    logits, target, keywords = make_inputs(rng, shape, axis, dtype, options)
    _poison_rows(logits, axis)
    for reduction in REDUCTIONS:
        grad_output = (np.linspace(0.5, 2, 8).reshape(loss_shape(shape, axis))
                       if reduction == "none" else 1.0)
        check_all_three(backend, logits, target, keywords, reduction, dtype,
                        grad_output=grad_output)


@pytest.mark.parametrize("option_id", option_params(["plain", "smooth", "weight-smooth-ignore",
                                                      "z_loss", "softcap", "prob",
                                                      "prob-weight-smooth"]))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_nonfinite_logits(backend, rng, dtype, reduction, option_id):
    """nan / +inf / all -inf rows give nan (like torch); a -inf at a non-target class is fine;
    a -inf at the target class gives +inf loss."""
    options = OPTIONS_BY_ID[option_id]
    logits, target, keywords = make_inputs(rng, (8, 6), -1, dtype, options)
    if options.target == "index":
        target = target.astype(np.int64)
        target[:6] = [0, 1, 2, 3, 4, 5]
    logits[0, 3] = np.nan
    logits[1, 4] = np.inf
    logits[2, :] = -np.inf
    logits[3, 0] = -np.inf                                 # non-target class (target is 3)
    logits[4, 4] = -np.inf                                 # the target class
    logits[5, :4] = -np.inf                                # most classes, not the target
    grad_output = np.linspace(0.5, 2, 8) if reduction == "none" else 1.0
    check_all_three(backend, logits, target, keywords, reduction, dtype,
                    grad_output=grad_output)
    if reduction == "none" and options.target == "index" and not options.softcap:
        loss = backend.to_numpy(nbxent.cross_entropy(backend.to_backend(logits),
                                                     backend.to_backend(target),
                                                     reduction="none",
                                                     **on_backend(backend, keywords)))
        assert np.all(np.isnan(loss[:3]))
        assert np.isfinite(loss[3]) or options.label_smoothing
        assert loss[4] == np.inf


# Shapes whose rows meet the kernels' vector loops: a long row (row kernel), short rows
# (tile kernel, transposed) and NCHW (tile kernel, along positions).
VECTOR_LAYOUTS = [pytest.param((6, 1000), -1, id="long-rows"),
                  pytest.param((1000, 10), -1, id="short-rows"),
                  pytest.param((400, 100), -1, id="short-rows-as-they-lie"),
                  pytest.param((2, 5, 300), 1, id="nchw")]


@pytest.mark.parametrize("shape,axis", VECTOR_LAYOUTS)
def test_nan_and_inf_inside_vector_lanes(rng, shape, axis):
    """A nan or +inf in the middle of a vectorised loop (the maxima there may skip a nan:
    the sums carry it) gives its row what the oracle gives, and no other row changes."""
    from conftest import _cpu_backend
    logits = make_logits(rng, shape, np.float32)
    target = make_index_target(rng, shape, axis)
    rows = _poison_rows(logits, axis)
    moved = np.moveaxis(logits, axis, -1)
    middle = moved.shape[-1] // 2
    moved[rows[0] + (middle,)] = np.nan
    moved[rows[1] + (middle,)] = np.inf
    moved[(-1,) * (moved.ndim - 1) + (middle,)] = np.nan
    check_all_three(_cpu_backend(), logits, target, dict(axis=axis), "none", np.float32)


def _kernel_calls(monkeypatch):
    """The ``(Shape, Options)`` of every CPU kernel call from here on, appended to the list
    returned."""
    import nbxent.cpu.backend as backend
    from nbxent.cpu.arguments import Options, Shape
    calls, kernel_for = [], backend.kernel_for

    class Recorded:
        """The kernel, its calls' shapes and options recorded; its other attributes the
        kernel's."""

        def __init__(self, kernel):
            self.kernel = kernel

        def __getattr__(self, name):
            return getattr(self.kernel, name)

        def __call__(self, *arguments):
            calls.append((Shape(*arguments[12]), Options(*arguments[13])))
            return self.kernel(*arguments)

    monkeypatch.setattr(backend, "kernel_for", lambda variant: Recorded(kernel_for(variant)))
    return calls


# Rows of 37 classes (the exps' vectors run across rows' ends; along a row, whole vectors
# and a part of one), contiguous or with rows further apart than their classes (float32
# only: the same loops), or class-major (a transpose's view: the classes apart, never tiled
# as they lie); rows of 11 classes, shorter than a vector.
SHORT_ROW_VIEWS = [
    pytest.param((700, 37), lambda x: x, np.float32, id="contiguous-float32"),
    pytest.param((1500, 11), lambda x: x, np.float32, id="contiguous-shorter-than-a-vector"),
    pytest.param((700, 37), lambda x: x, np.float64, id="contiguous-float64"),
    pytest.param((1400, 37), lambda x: x[::2], np.float32, id="rows-step2-float32"),
    pytest.param((700, 45), lambda x: x[:, :37], np.float32, id="classes-trimmed-float32"),
    pytest.param((37, 700), lambda x: x.T, np.float32, id="class-major-float32")]


@pytest.mark.parametrize("functions", ["cross_entropy", "normalizers"])
@pytest.mark.parametrize("base_shape,view,dtype", SHORT_ROW_VIEWS)
def test_short_rows_as_they_lie_and_transposed_agree(rng, monkeypatch, base_shape, view,
                                                     dtype, functions):
    """Short rows are tiled as they lie (``Shape.row_major``, the exps in one loop over
    the tile) where their classes are contiguous, in the logits and in the result, or
    transposed (below ``tile_rows_min_classes``, or ``..._no_writes`` for the loss, or
    classes apart): both within the
    oracle's tolerance, with nan, +inf and all -inf rows, ignored rows, class weights,
    smoothing and z-loss (the entropy, in ``check_normalizers``, is always transposed).
    A result class-major beside contiguous logits (``out=`` a transpose's view) is
    written through its strides."""
    from conftest import _cpu_backend
    logits = view(make_logits(rng, base_shape, dtype))
    shape = logits.shape
    _poison_rows(logits, -1)
    target = make_index_target(rng, shape, -1, ignored=0.2)
    keywords = dict(weight=rng.uniform(0.5, 2.0, shape[1]), label_smoothing=0.1,
                    z_loss=1e-3)
    classes_contiguous = logits.strides[1] == logits.itemsize
    calls = _kernel_calls(monkeypatch)
    for min_classes, row_major in ((min(24, shape[1]), classes_contiguous),
                                   (shape[1] + 1, False)):
        calls.clear()
        with CPU.override(tile_rows_min_classes=min_classes,
                          tile_rows_min_classes_no_writes=min_classes):
            if functions == "cross_entropy":
                check_all_three(_cpu_backend(), logits, target, keywords, "none", dtype,
                                logits_dev=logits)  # (the view itself, not a copy)
            else:
                check_normalizers(_cpu_backend(), logits, logits, -1, dtype)
        assert all(shape.tile_width > 1 for shape, _ in calls)
        assert any(shape.row_major for shape, _ in calls) == row_major
        calls.clear()
        with CPU.override(tile_rows_min_classes=min_classes,
                          tile_rows_min_classes_no_writes=min_classes):
            out = np.full(shape[::-1], np.nan, dtype).T
            if functions == "cross_entropy":
                nbxent.cross_entropy_with_grad(logits, target, reduction="none", out=out,
                                               **keywords)
                expected = R.cross_entropy_grad(logits, target, reduction="none", **keywords)
            else:
                nbxent.softmax(logits, out=out)
                expected = R.softmax(logits, -1)
        assert_close(out, expected, dtype, "grad", err_msg="class-major out=:")
        assert not any(shape.row_major for shape, _ in calls)


def test_a_call_without_writes_has_its_own_row_threshold(rng, monkeypatch):
    """Short rows go along their classes from ``tile_rows_min_classes`` where a result is
    written, from ``tile_rows_min_classes_no_writes`` for the loss alone; the same loss
    either way."""
    logits = make_logits(rng, (300, 37), np.float32)
    target = make_index_target(rng, (300, 37), -1)
    calls = _kernel_calls(monkeypatch)
    with CPU.override(tile_rows_min_classes=24, tile_rows_min_classes_no_writes=38):
        transposed = nbxent.cross_entropy(logits, target)
        along_rows, _ = nbxent.cross_entropy_with_grad(logits, target)
    assert [shape.row_major for shape, _ in calls] == [0, 1]
    assert_close(transposed, along_rows, np.float32, "loss")


# The tile kernel's three ways of writing a result: short rows transposed back, short rows
# tiled as they lie, NCHW (a run of positions per class). (The copies themselves, in both
# types and on every instruction set CI builds for, are tests/test_bits.py's.)
STREAMED_LAYOUTS = [pytest.param((3000, 10), -1, id="short-rows-transposed"),
                    pytest.param((3000, 70), -1, id="short-rows-as-they-lie"),
                    pytest.param((2, 7, 33, 65), 1, id="nchw")]


@pytest.mark.parametrize("shape,axis", STREAMED_LAYOUTS)
def test_streamed_results_are_the_cached_ones(rng, monkeypatch, shape, axis):
    """Large results the tile kernel writes by streaming stores (``stream_min_bytes``, here
    0: any result) are bit for bit those it writes through the caches: the gradient into a
    fresh array, into ``out=`` starting off a cache line (its first elements stored one by
    one) and in place, and the softmax."""
    x = make_logits(rng, shape, np.float32)
    target = make_index_target(rng, shape, axis, ignored=0.1)

    def results():
        off_line = np.full(x.size + 5, np.nan, np.float32)[3:3 + x.size].reshape(shape)
        in_place = x.copy()
        loss, grad = nbxent.cross_entropy_with_grad(x, target, axis=axis)
        nbxent.cross_entropy_with_grad(x, target, axis=axis, out=off_line)
        nbxent.cross_entropy_with_grad(in_place, target, axis=axis, out=in_place)
        return loss, grad, off_line, in_place, nbxent.softmax(x, axis=axis)

    calls = _kernel_calls(monkeypatch)
    cached = results()
    assert not any(options.streams for _, options in calls)
    calls.clear()
    with CPU.override(stream_min_bytes=0):
        streamed = results()
    assert all(options.streams and shape.tile_width > 1 for shape, options in calls)
    assert any(shape.row_major for shape, _ in calls) == (shape[-1] == 70)
    for name, a, b in zip(("loss", "grad", "out= off a line", "in place", "softmax"),
                          cached, streamed):
        np.testing.assert_array_equal(b, a, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("shape,axis", [*VECTOR_LAYOUTS,
                                        pytest.param((6, 40000), -1, id="split-rows")])
def test_a_confident_row_keeps_the_digits_of_its_loss(rng, shape, axis, dtype):
    """Where the target's logit leads by far, the loss is the tiny sum of the other exps,
    which 1 + sum would round away (float32's below 6e-8, float64's below 1e-16): it keeps
    its relative digits (issue 13's 4e-7) at leads of 25 and 60, whether the lead is +0.0
    or -0.0; ties of +0.0 and -0.0 at the max count each once; a row whose plain sum
    overflows both ways, or holds +inf and -inf, is not taken for a nan."""
    from conftest import _cpu_backend
    logits = make_logits(rng, shape, dtype)
    target = make_index_target(rng, shape, axis)
    moved = np.moveaxis(logits, axis, -1)  # views: writes go into logits and target
    rows = list(np.ndindex(moved.shape[:-1]))
    n_classes = moved.shape[-1]
    confident = rows[:2]
    for row, lead, others in zip(confident, (0.0, -0.0), (-25.0, -60.0)):
        moved[row] = others + 0.5 * rng.standard_normal(n_classes)
        moved[row + (3,)] = lead
        target[row] = 3
    for row, (first, second) in zip(rows[2:4], ((0.0, -0.0), (-0.0, 0.0))):
        moved[row] = np.minimum(moved[row], -1.0)
        moved[row + (1,)], moved[row + (4,)] = first, second
        target[row] = 4
    moved[rows[4]] = np.where(np.arange(n_classes) % 2, 3e38, -3e38)
    target[rows[4]] = 1
    moved[rows[5]] = np.where(np.arange(n_classes) % 2, np.inf, -np.inf)
    target[rows[5]] = 2
    # (The loss alone and beside its gradient: two kernel variants.)
    for loss in (nbxent.cross_entropy(logits, target, axis=axis, reduction="none"),
                 nbxent.cross_entropy_with_grad(logits, target, axis=axis, reduction="none")[0]):
        for row in confident:
            others = np.delete(moved[row].astype(np.float64), 3)
            precise = np.log1p(np.exp(others).sum())
            tolerance = 4e-7 if dtype == np.float32 else 1e-13
            assert abs(loss[row] - precise) <= tolerance * precise, (row, loss[row], precise)
    check_all_three(_cpu_backend(), logits, target, dict(axis=axis), "none", dtype)


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("shape,axis", [*VECTOR_LAYOUTS,
                                        pytest.param((6, 40000), -1, id="split-rows",
                                                     marks=pytest.mark.slow)])
def test_a_confident_row_keeps_the_digits_of_its_spread(rng, shape, axis, dtype):
    """A probability target on the max of a confident row: the loss, sum_c q_c (lse - x_c),
    is the tiny log(1 + rest). Its terms about any logit but the max would cancel (a
    relative error of 1e-2 at a lead of 30, float64 too): about the running max, however
    late the max comes (the last class: every chunk, and a split row's last segment,
    raise the shift), they keep the loss's digits."""
    from conftest import _cpu_backend
    moved_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:] + (shape[axis],)
    lead = np.where(np.arange(moved_shape[0]) % 2, 30.0, 20.0).reshape(
        (-1,) + (1,) * (len(moved_shape) - 1))
    moved = rng.standard_normal(moved_shape) - lead
    moved[..., 0] -= 10.0   # the first logit far below the rest
    moved[..., -1] = 0.0    # the max, last
    logits = np.ascontiguousarray(np.moveaxis(moved, -1, axis)).astype(dtype)
    target = np.moveaxis(np.eye(shape[axis], dtype=dtype)[
        np.full(moved_shape[:-1], shape[axis] - 1)], -1, axis)
    others = np.moveaxis(logits.astype(np.float64), axis, -1)[..., :-1]
    precise = np.log1p(np.exp(others).sum(axis=-1))
    # (float32: x86-64's baseline build, whose exp has no fused multiply-adds, needs more
    # than the native build; the cancellation lost every digit: benchmarks/RESULTS.md.)
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    for loss in (nbxent.cross_entropy(logits, target, axis=axis, reduction="none"),
                 nbxent.cross_entropy_with_grad(logits, target, axis=axis, reduction="none")[0]):
        error = np.abs(loss - precise) / precise
        assert error.max() <= tolerance, (np.unravel_index(error.argmax(), error.shape),
                                          error.max())
    check_all_three(_cpu_backend(), logits, target, dict(axis=axis), "none", dtype)


@pytest.mark.parametrize("shape", [(3000, 8), (64, 1000), (16, 5000)],
                         ids=["tile", "row", "row-chunks"])
def test_label_smoothing_beside_a_masked_class_keeps_its_digits(rng, shape):
    """Label smoothing with the first class masked at -1e9 (a padding token): the
    smoothing's sum over the classes, taken about the max, keeps float32's digits (taken
    about the first logit, it lost most of them: benchmarks/RESULTS.md)."""
    logits = rng.standard_normal(shape)
    logits[:, 0] = -1e9
    logits = logits.astype(np.float32)
    target = rng.integers(1, shape[1], shape[0])
    loss = nbxent.cross_entropy(logits, target, reduction="none", label_smoothing=0.1)
    expected = R.cross_entropy(logits, target, reduction="none", label_smoothing=0.1)
    assert np.max(np.abs(loss - expected) / expected) <= 1e-6


@pytest.mark.parametrize("function", ["loss", "grad"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_ignored_rows_with_nan_logits_count_for_nothing(backend, rng, dtype, function):
    """An ignored row's logits are not read into the result: nan there gives loss 0, grad 0."""
    logits = make_logits(rng, (5, 4), dtype)
    logits[1, :] = np.nan
    logits[3, :] = -np.inf
    target = np.array([0, -100, 2, -100, 1])
    keywords = dict(label_smoothing=0.1, z_loss=0.01)
    loss, grad = nbxent.cross_entropy_with_grad(backend.to_backend(logits),
                                                backend.to_backend(target), reduction="none",
                                                **keywords)
    loss, grad = backend.to_numpy(loss), backend.to_numpy(grad)
    assert loss[1] == 0 and loss[3] == 0 and np.all(np.isfinite(loss))
    assert np.all(grad[[1, 3]] == 0)
    assert_close(loss, R.cross_entropy(logits, target, reduction="none", **keywords), dtype,
                 "loss")
    assert_close(grad, R.cross_entropy_grad(logits, target, reduction="none", **keywords),
                 dtype, "grad")
    total = backend.to_numpy(nbxent.cross_entropy(backend.to_backend(logits),
                                                  backend.to_backend(target), **keywords))
    assert np.isfinite(total)


@pytest.mark.parametrize("option_id", option_params(["plain", "smooth", "z_loss", "softcap",
                                                      "everything"]))
@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_extreme_logits(backend, rng, dtype, scale, option_id):
    """Logits of +-1e4 neither overflow nor lose the answer."""
    options = OPTIONS_BY_ID[option_id]
    _, target, keywords = make_inputs(rng, (16, 9), -1, dtype, options)
    logits = (rng.choice([-1.0, 1.0], (16, 9)) * scale + rng.standard_normal((16, 9))).astype(dtype)
    logits_dev, target_dev = backend.to_backend(logits), backend.to_backend(target)
    kw_dev = on_backend(backend, keywords)
    loss = backend.to_numpy(nbxent.cross_entropy(logits_dev, target_dev, reduction="none",
                                                 **kw_dev))
    grad = backend.to_numpy(nbxent.cross_entropy_grad(logits_dev, target_dev, reduction="none",
                                                      **kw_dev))
    expected_loss = R.cross_entropy(logits, target, reduction="none", **keywords)
    # lse - x_target at magnitude `scale` rounds at scale * eps of the computing dtype.
    eps = np.finfo(np.float64 if dtype == F64 else np.float32).eps
    assert_close(loss, expected_loss, dtype, "loss", atol=4 * scale * eps)
    # The z-loss gradient 2*z*lse*p grows with the logits (|lse| ~ scale): relative slack.
    # float64 keeps its default 1e-12 (p = exp(x - lse) carries scale*eps ~ 2e-12 there).
    rtol = 4 * eps if keywords["z_loss"] and dtype == F32 else None
    assert_close(grad, R.cross_entropy_grad(logits, target, reduction="none", **keywords),
                 dtype, "grad", rtol=rtol)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))


# ------------------------------------------------------------------ results and keywords

@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_result_kinds_dtypes_and_shapes(backend, rng, dtype):
    logits = make_logits(rng, (2, 5, 3), dtype)
    target = make_index_target(rng, (2, 5, 3), 1)
    logits_dev, target_dev = backend.to_backend(logits), backend.to_backend(target)
    ld = loss_dtype(dtype)
    for reduction, shape in (("none", (2, 3)), ("mean", ()), ("sum", ())):
        loss = nbxent.cross_entropy(logits_dev, target_dev, axis=1, reduction=reduction)
        assert backend.is_kind(loss), type(loss)
        assert loss.shape == shape and np.dtype(loss.dtype) == ld
        loss, grad = nbxent.cross_entropy_with_grad(logits_dev, target_dev, axis=1,
                                                    reduction=reduction)
        assert backend.is_kind(loss) and backend.is_kind(grad)
        assert loss.shape == shape and np.dtype(loss.dtype) == ld
        assert grad.shape == logits.shape and np.dtype(grad.dtype) == dtype
    for op, shape, dt in (("logsumexp", (2, 3), ld), ("log_softmax", (2, 5, 3), dtype),
                          ("softmax", (2, 5, 3), dtype), ("entropy", (2, 3), ld)):
        result = getattr(nbxent, op)(logits_dev, axis=1)
        assert backend.is_kind(result) and result.shape == shape and np.dtype(result.dtype) == dt
    reduced = nbxent.entropy(logits_dev, axis=1, reduction="mean")
    assert backend.is_kind(reduced) and reduced.shape == ()


def test_reduced_loss_is_a_0d_ndarray_not_a_scalar(rng):
    logits = make_logits(rng, (4, 3), F32)
    loss = nbxent.cross_entropy(logits, np.array([0, 1, 2, 0]))
    assert type(loss) is np.ndarray and loss.shape == () and loss.dtype == np.float32


def test_lists_are_accepted(backend):
    if backend.name != "cpu":
        pytest.skip("lists are CPU input")
    loss = nbxent.cross_entropy(np.array([[1.0, 2.0, 3.0]]), [2], reduction="none")
    assert_close(loss, R.cross_entropy(np.array([[1.0, 2.0, 3.0]]), np.array([2]),
                                       reduction="none"), F64, "loss")


@pytest.mark.parametrize("validate", [True, False])
def test_validate_false_same_answer_on_valid_input(backend, rng, validate):
    logits = make_logits(rng, (10, 8), F32)
    target = make_index_target(rng, (10, 8), -1, ignored=0.2)
    loss, grad = nbxent.cross_entropy_with_grad(backend.to_backend(logits),
                                                backend.to_backend(target), validate=validate)
    check_loss_result(backend, loss, R.cross_entropy(logits, target), F32, "mean")
    check_grad_result(backend, grad, R.cross_entropy_grad(logits, target), F32)


def test_backend_keyword_names_the_backend(backend, rng):
    logits = make_logits(rng, (5, 4), F64)
    target = make_index_target(rng, (5, 4), -1)
    name = "cpu" if backend.name == "cpu" else "cuda"
    loss = nbxent.cross_entropy(backend.to_backend(logits), backend.to_backend(target),
                                backend=name)
    check_loss_result(backend, loss, R.cross_entropy(logits, target), F64, "mean")


def test_with_grad_agrees_with_separate_calls(backend, rng):
    logits = make_logits(rng, (33, 17), F32)
    target = make_index_target(rng, (33, 17), -1, ignored=0.2)
    keywords = dict(weight=rng.uniform(0.5, 2, 17).astype(np.float32), label_smoothing=0.1,
                    z_loss=1e-3, softcap=10.0)
    x, t, kw = backend.to_backend(logits), backend.to_backend(target), on_backend(backend,
                                                                                   keywords)
    fused_loss, fused_grad = nbxent.cross_entropy_with_grad(x, t, **kw)
    loss = nbxent.cross_entropy(x, t, **kw)
    grad = nbxent.cross_entropy_grad(x, t, **kw)
    np.testing.assert_allclose(backend.to_numpy(fused_loss), backend.to_numpy(loss), rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(fused_grad), backend.to_numpy(grad), atol=1e-7)


@pytest.mark.parametrize("shape,axis", [((600, 10), -1), ((300, 70), -1), ((200, 180), -1),
                                        ((64, 300), -1), ((2, 5, 9, 40), 1)])
def test_the_row_lse_is_written_only_where_it_is_kept(rng, shape, axis):
    """The kernels write each row's logsumexp to the reused per-row array only for the
    z-loss and the logsumexp (``Options.keeps_lse``): a loss without z-loss leaves it as
    it was (here nan), and those fill it anew (short rows transposed and as they lie,
    long rows, NCHW)."""
    import nbxent.cpu.backend as backend
    logits = make_logits(rng, shape, F32)
    target = make_index_target(rng, shape, axis, ignored=0.1)
    n_rows = logits.size // shape[axis]

    def poisoned_lse():
        row_lse = backend._scratch("row_lse", n_rows, np.float64)
        row_lse[:] = np.nan
        return row_lse

    row_lse = poisoned_lse()
    nbxent.cross_entropy(logits, target, axis=axis)
    nbxent.cross_entropy_with_grad(logits, target, axis=axis)
    assert np.isnan(row_lse).all()
    for reduction in ("mean", "none"):
        poisoned_lse()
        keywords = dict(axis=axis, z_loss=1e-2, reduction=reduction)
        assert_close(nbxent.cross_entropy(logits, target, **keywords),
                     R.cross_entropy(logits, target, **keywords), F32, "loss")
    poisoned_lse()
    assert_close(nbxent.logsumexp(logits, axis=axis), R.logsumexp(logits, axis), F32, "loss")


def test_label_smoothing_and_z_loss_accept_integers(rng):
    logits = make_logits(rng, (4, 3), F32)
    target = np.array([0, 1, 2, 0])
    for keywords in (dict(label_smoothing=1), dict(z_loss=1), dict(label_smoothing=0)):
        assert_close(nbxent.cross_entropy(logits, target, **keywords),
                     R.cross_entropy(logits, target, **keywords), F32, "loss")
