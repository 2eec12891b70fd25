"""The CUDA backend's kernels, every layout, against the float64 oracle.

Runs under ``NUMBA_ENABLE_CUDASIM=1`` (CI) with Numba device arrays, and
unchanged on a real GPU. The variant thresholds are lowered through
``nbxent.cuda.config.CUDA.override`` so tiny shapes reach every layout: a warp or less
per row (``warp``, ``warp1`` = a thread per row for class-not-last views),
a block per row (``block``), and a row split across blocks (``split``);
``*-reread`` layouts keep fewer logits in registers than a row has, so the
gradient pass reads the row again. Tests needing CuPy carry ``cuda``.
"""

import os
import sys

import numpy as np
import pytest

from nbxent import reference
from nbxent._plan import make_loss_plan, make_normalize_plan

numba_cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
from numba import config, cuda  # noqa: E402

SIMULATED = bool(config.ENABLE_CUDASIM)
if not SIMULATED and not cuda.is_available():
    pytest.skip("no GPU and not under NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)
if SIMULATED:
    sys.setswitchinterval(1e-4)

from nbxent.cuda import backend  # noqa: E402

# The simulator does the kernels' IEEE arithmetic in NumPy scalars, which warn on
# the inf/nan results the tests ask for on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
from nbxent._config import Tunables, from_environment  # noqa: E402
from nbxent.cuda.config import CUDA, Settings  # noqa: E402

from _cases import DTYPE_PARAMS  # noqa: E402

# Settings per layout name (over the defaults: small blocks and grids under the
# simulator), and the layout each must produce for the shapes used below (C between
# 20 and 150).
LAYOUTS = {
    "warp": dict(warp_max_c=1024),
    "warp-reread": dict(warp_max_c=1024, warp_cache=2),
    "block": dict(warp_max_c=8, block_cache=4),
    "block-reread": dict(warp_max_c=8, block_cache=1),
    "split": dict(warp_max_c=8, split_min_c=16, split_cols=32, split_max_rows=64,
                  block_cache=2),
}
TOL = {np.dtype(np.float16): dict(loss=(2e-5, 2e-6), grad=(2e-3, 1e-4)),
       np.dtype(np.float32): dict(loss=(2e-5, 2e-6), grad=(2e-5, 2e-6)),
       np.dtype(np.float64): dict(loss=(1e-11, 1e-12), grad=(1e-11, 1e-12))}
DTYPES = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]


# The layouts that re-read a row (a register cache too small for it) are not in the quick
# subset.
@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.slow] if "reread" in name else [])
                        for name in LAYOUTS])
def layout(request):
    """Override the CUDA thresholds for one layout; yields its name."""
    with CUDA.override(**LAYOUTS[request.param]):
        yield request.param


def expected_layout(name, plan):
    """True when the backend picks the layout the fixture named for this plan."""
    return backend._layout(CUDA.current(), plan)[0] == name.split("-")[0]


def _host(x):
    return None if x is None else np.asarray(x.copy_to_host())


def _check(actual, expected, dtype, what):
    """Close within the dtype's tolerance (atol scaled by the largest finite value);
    nan and inf positions must match exactly."""
    rtol, atol = TOL[np.dtype(dtype)][what]
    expected = np.asarray(expected, np.float64)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=atol * scale)


def run_loss(x, target, *, layout=None, weight=None, want_loss=True, want_grad=True,
             grad_output=1.0, out=None, axis=-1, validate=True, **options):
    """Plan a cross-entropy call on device copies, run the backend; host results."""
    dev = lambda a: a if a is None or not isinstance(a, np.ndarray) else cuda.to_device(a)  # noqa
    x_dev = dev(x)
    plan = make_loss_plan(
        x_dev, dev(target), axis=axis, weight=dev(weight),
        ignore_index=options.pop("ignore_index", -100),
        reduction=options.pop("reduction", "mean"),
        label_smoothing=options.pop("label_smoothing", 0.0),
        z_loss=options.pop("z_loss", 0.0), softcap=options.pop("softcap", None),
        validate=validate, want_loss=want_loss, want_grad=want_grad,
        grad_output=dev(grad_output), out=x_dev if out == "in-place" else dev(out),
        copy_contiguous=backend.copy_contiguous)
    assert not options, options
    if layout is not None:
        assert expected_layout(layout, plan), (layout, backend._layout(CUDA.current(), plan))
    loss, grad = backend.cross_entropy(plan)
    if out == "in-place":
        assert grad is x_dev
    return _host(loss), _host(grad), plan


def reference_pair(x, target, grad_output=1.0, **options):
    return (reference.cross_entropy(x, target, **options),
            reference.cross_entropy_grad(x, target, grad_output=grad_output, **options))


def make(rng, rows, n_classes, dtype, scale=3.0):
    x = (rng.standard_normal((rows, n_classes)) * scale).astype(dtype)
    t = rng.integers(0, n_classes, rows)
    return x, t


# ---------------------------------------------------------------- every layout

@pytest.mark.parametrize("dtype", DTYPE_PARAMS)  # float16 and float64: not in the quick subset
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_index_target_matches_reference(layout, dtype, reduction):
    rng = np.random.default_rng(1)
    x, t = make(rng, 5, 70, dtype)
    t[1] = -100
    loss, grad, plan = run_loss(x, t, layout=layout, reduction=reduction)
    ref_loss, ref_grad = reference_pair(x, t, reduction=reduction)
    assert loss.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert grad.dtype == dtype and grad.shape == x.shape
    assert loss.shape == (() if reduction != "none" else (5,))
    _check(loss, ref_loss, dtype, "loss")
    _check(grad, ref_grad, dtype, "grad")
    assert np.all(grad[1] == 0)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_every_option_together(layout, reduction):
    rng = np.random.default_rng(2)
    x, t = make(rng, 6, 45, np.float32)
    t[2] = 7  # ignore_index below
    weight = rng.uniform(0.2, 2.0, 45).astype(np.float32)
    grad_output = (rng.standard_normal(6).astype(np.float32) if reduction == "none" else 1.0)
    options = dict(weight=weight, ignore_index=7, reduction=reduction, label_smoothing=0.15,
                   z_loss=1e-3, softcap=4.0)
    loss, grad, _ = run_loss(x, t, layout=layout, grad_output=grad_output, **options)
    ref_loss, ref_grad = reference_pair(x, t, grad_output=grad_output, **options)
    _check(loss, ref_loss, np.float32, "loss")
    _check(grad, ref_grad, np.float32, "grad")


@pytest.mark.parametrize("dtype", [np.dtype(np.float16), np.dtype(np.float64)],
                         ids=lambda d: d.name)
def test_probability_target(layout, dtype):
    rng = np.random.default_rng(3)
    x, _ = make(rng, 4, 33, dtype)
    p = rng.uniform(0, 1, x.shape)
    p = (p / p.sum(1, keepdims=True)).astype(dtype)
    weight = rng.uniform(0.5, 1.5, 33)
    for reduction in ("mean", "none"):
        options = dict(weight=weight, reduction=reduction, label_smoothing=0.1)
        loss, grad, _ = run_loss(x, p, layout=layout, **options)
        ref_loss, ref_grad = reference_pair(x, p, **options)
        _check(loss, ref_loss, dtype, "loss")
        _check(grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("op", ["logsumexp", "log_softmax", "softmax", "entropy"])
def test_normalize_ops(layout, op):
    rng = np.random.default_rng(4)
    x, _ = make(rng, 5, 37, np.float32)
    x[0, 3] = -np.inf
    for reduction in (("none", "mean", "sum") if op == "entropy" else ("none",)):
        plan = make_normalize_plan(op, cuda.to_device(x), axis=-1, reduction=reduction)
        assert expected_layout(layout, plan)
        result = _host(backend.normalize(plan))
        if op == "entropy":
            expected = reference.entropy(x, reduction=reduction)
        else:
            expected = getattr(reference, op)(x)
        _check(result, expected, np.float32, "loss" if op in ("logsumexp", "entropy")
               else "grad")


def test_loss_only_and_grad_only(layout):
    rng = np.random.default_rng(5)
    x, t = make(rng, 4, 50, np.float32)
    loss, grad, _ = run_loss(x, t, layout=layout, want_grad=False, reduction="sum")
    assert grad is None
    _check(loss, reference.cross_entropy(x, t, reduction="sum"), np.float32, "loss")
    loss, grad, _ = run_loss(x, t, layout=layout, want_loss=False, reduction="mean")
    assert loss is None
    _check(grad, reference.cross_entropy_grad(x, t, reduction="mean"), np.float32, "grad")


def test_kernels_launch_in_the_inliners_context(monkeypatch):
    """The backend launches its kernels (which compile on their first launch in a process)
    where numba-cuda's inliner skips its copies (``nbxent/_numba_inlining.py``)."""
    entered = []
    real = backend.copies_skipped

    def recorded(cuda=False):
        entered.append(cuda)
        return real(cuda=cuda)

    monkeypatch.setattr(backend, "copies_skipped", recorded)
    rng = np.random.default_rng(5)
    x, t = make(rng, 4, 50, np.float32)
    loss, _, _ = run_loss(x, t, want_grad=False, reduction="sum")
    _check(loss, reference.cross_entropy(x, t, reduction="sum"), np.float32, "loss")
    assert entered == [True]
    strided = cuda.to_device(x)[:, ::2]
    np.testing.assert_array_equal(backend.copy_contiguous(strided).copy_to_host(), x[:, ::2])
    assert entered == [True, True]


def test_in_place_gradient(layout):
    rng = np.random.default_rng(6)
    x, t = make(rng, 5, 40, np.float16)
    loss, grad, _ = run_loss(x, t, layout=layout, out="in-place", reduction="sum",
                             label_smoothing=0.05)
    ref_loss, ref_grad = reference_pair(x, t, reduction="sum", label_smoothing=0.05)
    _check(loss, ref_loss, np.float16, "loss")
    _check(grad, ref_grad, np.float16, "grad")


def test_class_axis_not_last(layout):
    """NCHW-style logits (axis=1): strided rows, a thread per row in the warp layout."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 21, 3, 2)).astype(np.float32)
    t = rng.integers(0, 21, (2, 3, 2))
    t[0, 1, 1] = -100
    loss, grad, plan = run_loss(x, t, axis=1, reduction="none")
    assert plan.logits.inner == 6
    _check(loss, reference.cross_entropy(x, t, axis=1, reduction="none"), np.float32, "loss")
    _check(grad, reference.cross_entropy_grad(x, t, axis=1, reduction="none"), np.float32,
           "grad")


def test_strided_and_reversed_views(layout):
    rng = np.random.default_rng(8)
    base = rng.standard_normal((8, 90)).astype(np.float32)
    t = rng.integers(0, 30, 4)
    x_dev = cuda.to_device(base)[::-2, 10:70:2]  # reversed rows, every other class
    x = base[::-2, 10:70:2]
    plan = make_loss_plan(x_dev, cuda.to_device(t), axis=-1, weight=None, ignore_index=-100,
                          reduction="none", label_smoothing=0.0, z_loss=0.0, softcap=None,
                          validate=True, want_loss=True, want_grad=True,
                          copy_contiguous=backend.copy_contiguous)
    assert plan.logits.view.strides[0] < 0 and plan.logits.view.strides[1] == 2
    loss, grad = backend.cross_entropy(plan)
    _check(_host(loss), reference.cross_entropy(x, t, reduction="none"), np.float32, "loss")
    _check(_host(grad), reference.cross_entropy_grad(x, t, reduction="none"), np.float32, "grad")


def test_non_finite_logits(layout):
    x = np.zeros((5, 40), np.float32)
    x[0, 3] = np.nan                  # nan anywhere: nan row
    x[1, 5] = np.inf                  # +inf: nan row
    x[2, :] = -np.inf                 # all -inf: nan row
    x[3, 7] = -np.inf                 # -inf elsewhere than the target: fine
    t = np.array([1, 2, 3, 0, 4])
    loss, grad, _ = run_loss(x, t, layout=layout, reduction="none")
    ref_loss, ref_grad = reference_pair(x, t, reduction="none")
    _check(loss, ref_loss, np.float32, "loss")
    _check(grad, ref_grad, np.float32, "grad")
    assert np.isnan(loss[:3]).all() and np.isfinite(loss[3:]).all()


# ---------------------------------------------------------------- errors and edges

def test_invalid_index_raises_with_first_position(layout):
    rng = np.random.default_rng(9)
    x, t = make(rng, 6, 40, np.float32)
    t[4], t[2] = 41, -3
    with pytest.raises(ValueError, match=r"target -3 at position \(2,\)"):
        run_loss(x, t, layout=layout, reduction="sum")


def test_invalid_index_without_validation_gives_nan():
    rng = np.random.default_rng(10)
    x, t = make(rng, 4, 12, np.float32)
    t[1] = 12
    loss, grad, _ = run_loss(x, t, validate=False, reduction="none")
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
    ok = [0, 2, 3]
    _check(loss[ok], reference.cross_entropy(x[ok], t[ok], reduction="none"), np.float32,
           "loss")


# Grids of one block and of several; in the warp layout blocks of one and two warps
# (the rows a block holds; the lanes per row stay the same).
LAUNCH_SHAPES = (dict(max_blocks=1), dict(max_blocks=7, threads=64))


@pytest.mark.slow
def test_sums_do_not_depend_on_the_launch_shape(layout):
    """'sum' and 'mean' (and the 'mean' gradient's denominators) are taken over fixed
    tiles of rows (here 8 rows: 2 tiles), whatever grid and block the row kernel runs
    with: the same bits from every launch shape."""
    rng = np.random.default_rng(14)
    x, t = make(rng, 16, 45, np.float32)
    t[::6] = -100
    weight = rng.uniform(0.2, 2.0, 45).astype(np.float32)
    p = rng.dirichlet(np.ones(45), 16).astype(np.float32)
    results = []
    for shape in LAUNCH_SHAPES:
        # (Blocks of 32 threads in the block and split layouts: the simulator runs a
        # thread per thread.)
        with CUDA.override(sum_rows=8, block_threads=32, **shape):
            calls = [run_loss(x, t, layout=layout, weight=weight, reduction=reduction,
                              z_loss=1e-2)[:2] for reduction in ("sum", "mean")]
            calls.append(run_loss(x, p, layout=layout, reduction="mean", want_grad=False)[:1])
        results.append([array.tobytes() for call in calls for array in call])
    assert results[0] == results[1]
    _check(calls[1][0], reference.cross_entropy(x, t, weight=weight, z_loss=1e-2), np.float32,
           "loss")
    _check(calls[1][1], reference.cross_entropy_grad(x, t, weight=weight, z_loss=1e-2),
           np.float32, "grad")
    _check(calls[2][0], reference.cross_entropy(x, p), np.float32, "loss")


def test_invalid_index_found_in_any_tile_of_the_denominators():
    rng = np.random.default_rng(15)
    x, t = make(rng, 40, 12, np.float32)
    t[29], t[13] = 12, -5
    with CUDA.override(sum_rows=8), pytest.raises(ValueError,
                                                  match=r"target -5 at position \(13,\)"):
        run_loss(x, t, out="in-place", reduction="mean")


@pytest.mark.parametrize("reduction,expected", [("sum", 0.0), ("mean", np.nan)])
def test_empty_batch(reduction, expected):
    x, t = np.zeros((0, 5), np.float32), np.zeros(0, np.int64)
    loss, grad, _ = run_loss(x, t, reduction=reduction)
    np.testing.assert_array_equal(loss, expected)
    assert grad.shape == (0, 5)


def test_all_ignored_mean_is_nan():
    x, t = np.zeros((3, 5), np.float32), np.full(3, -100)
    loss, grad, _ = run_loss(x, t, reduction="mean")
    assert np.isnan(loss)
    assert np.isnan(grad).all() or np.all(grad == 0)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(
        reference.cross_entropy_grad(x, t, reduction="mean")))


@pytest.mark.parametrize("target_dtype", [np.uint8, np.int8, np.int32])
def test_small_integer_targets(target_dtype):
    rng = np.random.default_rng(11)
    x, t = make(rng, 5, 9, np.float32)
    t = t.astype(target_dtype)
    ignore = 255 if target_dtype == np.uint8 else -100
    t[0] = ignore
    loss, grad, _ = run_loss(x, t, ignore_index=ignore, reduction="mean")
    _check(loss, reference.cross_entropy(x, t, ignore_index=ignore), np.float32, "loss")
    _check(grad, reference.cross_entropy_grad(x, t, ignore_index=ignore), np.float32, "grad")


def test_confident_float16_gradient_keeps_precision():
    """The target-class gradient p_t - 1 is formed in float32, then rounded once."""
    x = np.zeros((1, 8), np.float16)
    x[0, 0] = 8.0   # p_t = 0.99765: float16 holds 1 - p_t to ~20 % only if formed in float16
    _, grad, _ = run_loss(x, np.array([0]), reduction="sum")
    expected = reference.cross_entropy_grad(x, np.array([0]), reduction="sum")
    np.testing.assert_allclose(grad[0, 0], expected[0, 0], rtol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_confident_row_keeps_the_digits_of_its_loss(layout, dtype):
    """Where the target's logit leads the others by 25 or 60, the loss is the tiny sum of
    their exps, which 1 + sum rounds away (float32's below 6e-8, float64's below 1e-16):
    the sum's excess over one keeps its digits through the threads', warps' and chunks'
    merges. (Tolerances: the device's own exp and log1p, not ours.)"""
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((4, 100)) * 3).astype(dtype)
    t = rng.integers(0, 100, 4)
    for row, lead, others in ((0, 0.0, -25.0), (1, -0.0, -60.0)):
        x[row] = others + 0.5 * rng.standard_normal(100)
        x[row, 57] = lead
        t[row] = 57
    loss, grad, _ = run_loss(x, t, layout=layout, reduction="none")
    for row in (0, 1):
        precise = np.log1p(np.exp(np.delete(x[row].astype(np.float64), 57)).sum())
        tolerance = 1e-6 if dtype == np.float32 else 1e-13
        assert abs(loss[row] - precise) <= tolerance * precise, (row, loss[row], precise)
    expected_loss, expected_grad = reference_pair(x, t, reduction="none")
    _check(loss, expected_loss, dtype, "loss")
    _check(grad, expected_grad, dtype, "grad")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_confident_row_keeps_the_digits_of_its_spread(layout, dtype):
    """A probability target on the max of a confident row (lead 20 or 30): the loss
    sum_c q_c (lse - x_c) is log1p of the tiny rest. The spread's moment is taken about the
    running max and moved with it through the threads', warps' and chunks' merges (the
    max comes last, the first logit lies far below: terms about it would cancel)."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal((4, 100)) - np.array([[20.0], [30.0], [20.0], [30.0]])
    x[:, 0] -= 10.0
    x[:, 99] = 0.0
    x = x.astype(dtype)
    q = np.zeros((4, 100), dtype)
    q[:, 99] = 1.0
    loss, grad, _ = run_loss(x, q, layout=layout, reduction="none")
    precise = np.log1p(np.exp(x[:, :99].astype(np.float64)).sum(axis=1))
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    assert np.all(np.abs(loss - precise) <= tolerance * precise), (loss, precise)
    expected_loss, expected_grad = reference_pair(x, q, reduction="none")
    _check(loss, expected_loss, dtype, "loss")
    _check(grad, expected_grad, dtype, "grad")


def test_copy_contiguous_of_exotic_view():
    base = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    view = cuda.to_device(base)[::2, :, ::3]
    copy = backend.copy_contiguous(view)
    np.testing.assert_array_equal(copy.copy_to_host(), base[::2, :, ::3])


def test_results_stay_device_arrays():
    x, t = make(np.random.default_rng(12), 3, 6, np.float32)
    plan = make_loss_plan(cuda.to_device(x), cuda.to_device(t), axis=-1, weight=None,
                          ignore_index=-100, reduction="mean", label_smoothing=0.0,
                          z_loss=0.0, softcap=None, validate=False, want_loss=True,
                          want_grad=True)
    loss, grad = backend.cross_entropy(plan)
    for result in (loss, grad):
        assert type(result) is type(plan.logits.view.array)
    assert loss.shape == ()


# ---------------------------------------------------------------- real GPU + CuPy

def _cupy():
    if SIMULATED:
        pytest.skip("CuPy needs a real GPU (running under the CUDA simulator)")
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        if not cupy.cuda.is_available():
            raise RuntimeError
    except Exception:
        pytest.skip("CuPy finds no usable GPU")
    return cupy


@pytest.mark.cuda
def test_cupy_in_cupy_out_on_a_side_stream():
    """Work queued on a non-default stream is ordered before the loss kernel reads it."""
    cupy = _cupy()
    rng = np.random.default_rng(13)
    x, t = make(rng, 512, 4000, np.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        x_dev = cupy.asarray(x) * 0          # queued first on the side stream ...
        x_dev += cupy.asarray(x)             # ... so the kernel must run after these
        t_dev = cupy.asarray(t)
        plan = make_loss_plan(x_dev, t_dev, axis=-1, weight=None, ignore_index=-100,
                              reduction="mean", label_smoothing=0.0, z_loss=0.0,
                              softcap=None, validate=False, want_loss=True, want_grad=True)
        loss, grad = backend.cross_entropy(plan)
        assert isinstance(loss, cupy.ndarray) and isinstance(grad, cupy.ndarray)
        host_loss = loss.get(stream=stream)
    _check(host_loss, reference.cross_entropy(x, t), np.float32, "loss")
    _check(grad.get(), reference.cross_entropy_grad(x, t), np.float32, "grad")


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(64, 32000), (4, 200_000), (4096, 10)])
def test_cupy_default_thresholds(shape):
    cupy = _cupy()
    rng = np.random.default_rng(14)
    x, t = make(rng, *shape, np.float32)
    plan = make_loss_plan(cupy.asarray(x), cupy.asarray(t), axis=-1, weight=None,
                          ignore_index=-100, reduction="sum", label_smoothing=0.1,
                          z_loss=1e-4, softcap=None, validate=True, want_loss=True,
                          want_grad=True)
    loss, grad = backend.cross_entropy(plan)
    options = dict(reduction="sum", label_smoothing=0.1, z_loss=1e-4)
    _check(loss.get(), reference.cross_entropy(x, t, **options), np.float32, "loss")
    _check(grad.get(), reference.cross_entropy_grad(x, t, **options), np.float32, "grad")


def test_settings_read_once_from_environment(monkeypatch):
    """NBXENT_CUDA_* variables are read at first use and kept; override() changes the
    settings within a block only."""
    monkeypatch.setenv("NBXENT_CUDA_WARP_MAX_C", "17")
    tunables = Tunables(Settings, "NBXENT_CUDA_")
    first = tunables.current()
    assert first.warp_max_c == 17
    monkeypatch.delenv("NBXENT_CUDA_WARP_MAX_C")
    assert tunables.current() is first
    with tunables.override(warp_max_c=8, split_cols=64) as inside:
        assert tunables.current() is inside
        assert (inside.warp_max_c, inside.split_cols, inside.threads) == (8, 64, first.threads)
    assert tunables.current() is first
    assert from_environment(Settings, "NBXENT_CUDA_", environ={}) == Settings()
    assert os.environ.get("NBXENT_CUDA_WARP_MAX_C") is None
