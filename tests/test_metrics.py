"""Metrics from the loss's own pass: lse, argmax, correct, top_k, entropy.

The oracle against NumPy's argmax and PyTorch (skipped where it is missing); then the
CPU, CUDA (under the simulator or on a GPU) and Dask (whole rows, and rows split across
class chunks) backends against the oracle on logits full of ties, zeros of both signs,
nan and infinities, where the kernels' fast comparisons must hand over to their exact
order. Few kernel variants: the quick subset
compiles float32 loss-only kernels (rows and tiles; on CUDA the warp and NCHW layouts);
gradients, CUDA's block and split layouts, Dask's rows split across class chunks,
float16, float64, the soft cap and probability targets are in the slow subset.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbxent
from nbxent import reference as R
from nbxent._plan import make_loss_plan

from _cases import is_small
from conftest import assert_close

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
ALL = ("lse", "argmax", "correct", "top_k", "entropy")

# (logits' shape, class axis): short rows (the tile kernel), rows long enough for the
# row kernel (and, 3 x 5000, split across work items and chunks), an NCHW map.
LAYOUTS = [pytest.param((40, 9), -1, id="short"),
           pytest.param((24, 1100), -1, id="rows"),
           pytest.param((3, 5000), -1, id="split-rows"),
           pytest.param((2, 7, 4, 5), 1, id="nchw")]


def _rows_shape(shape, axis):
    return tuple(np.delete(np.array(shape), axis % len(shape)))


def tied_logits(rng, shape, axis, dtype):
    """Logits in steps of 0.5 (ties everywhere), and in rows of their own: all equal,
    both zeros, a nan, a +inf, all -inf, the target's logit repeated before and after it."""
    x = np.moveaxis(np.round(rng.standard_normal(shape) * 4.0) / 2.0, axis, -1).copy()
    rows = x.reshape(-1, x.shape[-1])
    n_classes = rows.shape[1]
    specials = [
        lambda row: row.fill(1.5),
        lambda row: row.__setitem__(slice(None), np.where(np.arange(n_classes) % 2, -0.0, 0.0)),
        lambda row: row.__setitem__(n_classes // 2, np.nan),
        lambda row: row.__setitem__(n_classes - 1, np.inf),
        lambda row: row.fill(-np.inf),
        lambda row: row.__setitem__(slice(None), np.arange(n_classes) % 3),
    ]
    for row, special in zip(rows, specials):
        special(row)
    return np.moveaxis(x, -1, axis).astype(dtype)


def tied_targets(rng, shape, axis, ignore_index=-100):
    """Class indices with a fifth ignored."""
    rows = _rows_shape(shape, axis)
    t = rng.integers(0, shape[axis], rows)
    return np.where(rng.random(rows) < 0.2, ignore_index, t)


def assert_metrics(found, expected, names, dtype):
    assert list(found) == list(names)
    for name in names:
        if name in ("lse", "entropy"):
            assert_close(found[name], expected[name], dtype, "loss", err_msg=name)
        else:
            want = np.int64 if name == "argmax" else np.bool_
            assert found[name].dtype == want, name
            np.testing.assert_array_equal(found[name], expected[name], err_msg=name)


# ------------------------------------------------------------------ the oracle

def test_oracle_agrees_with_numpy_argmax(rng):
    x = tied_logits(rng, (40, 9), -1, F64)
    t = tied_targets(rng, (40, 9), -1)
    found = R.metrics(x, t, top_k=1)
    np.testing.assert_array_equal(found["argmax"], np.argmax(x, -1))
    counted = t != -100
    np.testing.assert_array_equal(found["correct"], counted & (np.argmax(x, -1) == t))
    np.testing.assert_array_equal(found["top_k"], found["correct"])  # top-1 is correct


def test_oracle_matches_torch(rng):
    """Without ties (torch.topk orders ties as it likes): argmax, top-5 membership and
    the entropy of torch.distributions.Categorical."""
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((50, 12))
    t = rng.integers(0, 12, 50)
    found = R.metrics(x, t, top_k=5)
    xt = torch.from_numpy(x)
    np.testing.assert_array_equal(found["argmax"], xt.argmax(-1).numpy())
    in_top5 = (xt.topk(5, dim=-1).indices == torch.from_numpy(t)[:, None]).any(-1)
    np.testing.assert_array_equal(found["top_k"], in_top5.numpy())
    entropy = torch.distributions.Categorical(logits=xt).entropy().numpy()
    np.testing.assert_allclose(found["entropy"], entropy, rtol=1e-12)
    np.testing.assert_allclose(found["lse"], torch.logsumexp(xt, -1).numpy(), rtol=1e-14)


# ------------------------------------------------------------------ the backends

def _backend_case(backend, rng, shape, axis):
    """(tied logits, targets) for a backend's test (a skip for shapes too large for the
    simulator)."""
    if backend.small and not is_small(shape, axis):
        pytest.skip("too large for the CUDA simulator")
    return tied_logits(rng, shape, axis, F32), tied_targets(rng, shape, axis)


def _call(backend, x, t, with_grad, **keywords):
    """(loss, metrics) from the backend, inputs checked unmodified."""
    xb, tb = backend.to_backend(x), backend.to_backend(t)
    before = [backend.to_numpy(a).copy() for a in (xb, tb) if a is not None]
    if with_grad:
        loss, _, found = nbxent.cross_entropy_with_grad(xb, tb, **keywords)
    else:
        loss, found = nbxent.cross_entropy(xb, tb, **keywords)
    for b, a in zip(before, (xb, tb)):
        np.testing.assert_array_equal(backend.to_numpy(a), b, err_msg="an input was modified")
    return backend.to_numpy(loss), {name: backend.to_numpy(v) for name, v in found.items()}


@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_metrics_match_oracle(any_backend, rng, shape, axis):
    x, t = _backend_case(any_backend, rng, shape, axis)
    _, found = _call(any_backend, x, t, False, axis=axis, reduction="none", metrics=ALL,
                     top_k=3)
    assert_metrics(found, R.metrics(x, t, axis, top_k=3), ALL, F32)


# The CUDA backend's layouts for long rows, reached with small shapes by lowering its
# thresholds (as tests/test_cuda_kernels.py does): a block of two warps per row, and a
# row split over blocks (C = 40 in 3 chunks of a warp each; its gradient is a second
# launch). The short rows (a warp or less per row) and the NCHW map (a thread per row)
# are LAYOUTS' "short" and "nchw".
CUDA_LAYOUTS = [
    pytest.param(dict(warp_max_c=8, block_cache=4), (8, 20), False, id="block"),
    pytest.param(dict(warp_max_c=8, split_min_c=16, split_cols=16, split_max_rows=64,
                      block_threads=32, block_cache=2), (7, 40), True, id="split-grad"),
]


@pytest.mark.slow
@pytest.mark.parametrize("settings, shape, with_grad", CUDA_LAYOUTS)
def test_cuda_long_row_layouts(backend, rng, settings, shape, with_grad):
    """Every metric from the block and split layouts, whose threads (and blocks) each see
    part of a row; with the gradient in place (out=logits), the metrics of the logits
    before, and loss and gradient as without metrics."""
    if backend.name == "cpu":
        pytest.skip("the CUDA backend's layouts")
    from nbxent.cuda import backend as cuda_backend
    from nbxent.cuda.config import CUDA

    x, t = tied_logits(rng, shape, -1, F32), tied_targets(rng, shape, -1)
    with CUDA.override(**settings):
        plan = make_loss_plan(x, t, axis=-1, weight=None, ignore_index=-100, reduction="mean",
                              label_smoothing=0.0, z_loss=0.0, softcap=None, validate=True,
                              want_loss=True, want_grad=False)
        layout = cuda_backend._layout(CUDA.current(), plan)[0]
        assert layout == ("split" if with_grad else "block")
        if not with_grad:
            _, found = _call(backend, x, t, False, metrics=ALL, top_k=3)
        else:
            xb, tb = backend.to_backend(x), backend.to_backend(t)
            loss, grad, found = nbxent.cross_entropy_with_grad(xb, tb, metrics=ALL, top_k=3,
                                                               out=xb)
            found = {name: backend.to_numpy(v) for name, v in found.items()}
            plain_loss, plain_grad = nbxent.cross_entropy_with_grad(backend.to_backend(x), tb)
            np.testing.assert_array_equal(backend.to_numpy(loss), backend.to_numpy(plain_loss))
            np.testing.assert_array_equal(backend.to_numpy(grad), backend.to_numpy(plain_grad))
    assert_metrics(found, R.metrics(x, t, top_k=3), ALL, F32)


@pytest.mark.parametrize("names", [("correct",), ("top_k",), ("argmax",), ("entropy", "lse"),
                                   ("correct", "argmax")])
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_each_metric_alone(rng, shape, axis, names):
    """Each takes its own way through the kernels (the target's rank counted only for
    top_k, the argmax searched only when asked for): the same values as the oracle."""
    x = tied_logits(rng, shape, axis, F32)
    t = tied_targets(rng, shape, axis)
    _, found = nbxent.cross_entropy(x, t, axis=axis, metrics=names, top_k=2)
    assert_metrics(found, R.metrics(x, t, axis, top_k=2), names, F32)


@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_loss_unchanged_by_metrics(rng, shape, axis):
    """The loss of the same call without metrics: bit for bit, but for 'entropy', whose sum
    shares the loss's loop and may change the order of its vector sums (the last bit)."""
    x = (rng.standard_normal(shape) * 3).astype(F32)
    t = tied_targets(rng, shape, axis)
    for reduction in ("none", "mean"):
        plain = nbxent.cross_entropy(x, t, axis=axis, reduction=reduction)
        with_rank, _ = nbxent.cross_entropy(x, t, axis=axis, reduction=reduction,
                                            metrics=("lse", "argmax", "correct", "top_k"))
        np.testing.assert_array_equal(with_rank, plain)
        with_entropy, _ = nbxent.cross_entropy(x, t, axis=axis, reduction=reduction,
                                               metrics=ALL)
        np.testing.assert_allclose(with_entropy, plain, rtol=2.5e-7, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_fused_gradient_call(any_backend, rng, shape, axis):
    """With the gradient: metrics as the oracle's, loss and gradient as without metrics,
    and with out=logits the metrics are those of the logits before they were replaced."""
    x, t = _backend_case(any_backend, rng, shape, axis)
    names = ("lse", "argmax", "correct", "top_k")  # (entropy: see the test above)
    loss, found = _call(any_backend, x, t, True, axis=axis, metrics=names)
    assert_metrics(found, R.metrics(x, t, axis), names, F32)
    plain_loss, _ = nbxent.cross_entropy_with_grad(any_backend.to_backend(x),
                                                   any_backend.to_backend(t), axis=axis)
    np.testing.assert_array_equal(loss, any_backend.to_numpy(plain_loss))
    if any_backend.name != "dask":
        tb = any_backend.to_backend(t)
        xb = any_backend.to_backend(x.copy())  # (the CPU's is the array itself)
        _, plain_grad = nbxent.cross_entropy_with_grad(xb, tb, axis=axis, out=xb)
        xb = any_backend.to_backend(x.copy())
        _, grad, found = nbxent.cross_entropy_with_grad(xb, tb, axis=axis, out=xb,
                                                        metrics=names)
        assert_metrics({k: any_backend.to_numpy(v) for k, v in found.items()},
                       R.metrics(x, t, axis), names, F32)
        np.testing.assert_array_equal(any_backend.to_numpy(grad),
                                      any_backend.to_numpy(plain_grad))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F16, F64])
@pytest.mark.parametrize("shape, axis", [LAYOUTS[0], LAYOUTS[2]])
def test_half_and_double(rng, shape, axis, dtype):
    x = tied_logits(rng, shape, axis, dtype)
    t = tied_targets(rng, shape, axis)
    _, found = nbxent.cross_entropy(x, t, axis=axis, metrics=ALL)
    assert_metrics(found, R.metrics(x, t, axis), ALL, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("shape, axis", [LAYOUTS[0], LAYOUTS[2]])
def test_softcap_orders_the_capped_logits(rng, shape, axis):
    """Under softcap the order is the capped logits' (in the logits' precision: where the
    cap saturates, distinct logits tie, which the float64 oracle would not see, so these
    stay below it), with every other option of the loss beside."""
    x = tied_logits(rng, shape, axis, F32)
    t = tied_targets(rng, shape, axis)
    weight = rng.uniform(0.5, 2.0, shape[axis])
    _, found = nbxent.cross_entropy(x, t, axis=axis, softcap=5.0, weight=weight,
                                    label_smoothing=0.1, metrics=ALL)
    assert_metrics(found, R.metrics(x, t, axis, softcap=5.0), ALL, F32)


@pytest.mark.slow
@pytest.mark.parametrize("shape, axis", [LAYOUTS[0], LAYOUTS[1], LAYOUTS[3]])
def test_probability_targets(rng, shape, axis):
    x = tied_logits(rng, shape, axis, F32)
    y = R.softmax(rng.standard_normal(shape), axis).astype(F32)
    names = ("lse", "argmax", "entropy")
    _, found = nbxent.cross_entropy(x, y, axis=axis, metrics=names)
    assert_metrics(found, R.metrics(x, None, axis), names, F32)


def test_training_options_give_the_same_metrics(any_backend, rng):
    """sample_weight, denominator= and empty= run another pass of the kernels: the same
    metrics, beside their own loss."""
    shape = (30, 9)
    x = tied_logits(rng, shape, -1, F32)
    t = tied_targets(rng, shape, -1)
    s = rng.uniform(0.0, 2.0, 30)
    xb, tb, sb = (any_backend.to_backend(a) for a in (x, t, s))
    loss, found = nbxent.cross_entropy(xb, tb, sample_weight=sb, metrics=ALL)
    assert_close(any_backend.to_numpy(loss), R.cross_entropy(x, t, sample_weight=s), F32,
                 "loss")
    assert_metrics({k: any_backend.to_numpy(v) for k, v in found.items()}, R.metrics(x, t),
                   ALL, F32)


def test_top_k_is_correct_for_k_1_and_all_for_k_c(rng):
    x = tied_logits(rng, (40, 9), -1, F32)
    t = tied_targets(rng, (40, 9), -1)
    counted = t != -100
    _, one = nbxent.cross_entropy(x, t, metrics=("correct", "top_k"), top_k=1)
    np.testing.assert_array_equal(one["top_k"], one["correct"])
    _, every = nbxent.cross_entropy(x, t, metrics="top_k", top_k=9)
    np.testing.assert_array_equal(every["top_k"], counted)


@pytest.mark.parametrize("n_rows, n_classes", [(16, 1100), (4, 5000)], ids=["rows", "split-rows"])
def test_top_k_counts_the_classes_ahead_wherever_they_lie(rng, n_rows, n_classes):
    """The count of the classes ahead of the target, which the CPU kernels stop at k: on
    each side of k, with the classes ahead spread over the row (its first and last class,
    both sides of the target, ties with the target's logit before it, which come first,
    and after it, which do not), in one segment of a row or in several."""
    k = 3
    x = rng.uniform(-3.0, -1.0, (n_rows, n_classes)).astype(F32)
    t = rng.integers(n_classes // 4, 3 * n_classes // 4, n_rows)
    n_ahead = np.arange(n_rows) % (k + 3)  # 0 to k + 2
    for row in range(n_rows):
        x[row, t[row]] = 0.0
        x[row, t[row] + 1] = 0.0  # a tie after the target: not ahead
        places = [0, n_classes - 1, t[row] - 1, t[row] + 2, 127, 129, n_classes - 130]
        for j, place in enumerate(places[:n_ahead[row]]):
            tied = place < t[row] and j % 2 == 0
            x[row, place] = 0.0 if tied else 0.5 + j
    for top_k in (k, 1):
        _, found = nbxent.cross_entropy(x, t, metrics=("correct", "top_k"), top_k=top_k)
        np.testing.assert_array_equal(found["top_k"], n_ahead < top_k)
        np.testing.assert_array_equal(found["correct"], n_ahead == 0)
        assert_metrics(found, R.metrics(x, t, top_k=top_k), ("correct", "top_k"), F32)


@pytest.mark.slow
def test_argmax_is_exact_beyond_float32_integers():
    """The CPU kernels keep float32 metric rows where they compute in float32, but not
    for rows of more than 2**24 classes, whose indices float32 would round: the last
    class of 2**24 + 2 is found as itself. (Its float64 rows compile a kernel of their
    own: seconds.)"""
    x = np.zeros((1, 2**24 + 2), F32)
    x[0, -1] = 1.0
    _, found = nbxent.cross_entropy(x, np.array([2**24 + 1]), metrics=("argmax", "correct"))
    assert found["argmax"].tolist() == [2**24 + 1]
    assert found["correct"].tolist() == [True]


def test_docstring_accuracy_recipe(rng):
    """README's recipe: accuracy = correct.sum() / counted targets."""
    x = (rng.standard_normal((64, 10)) * 3).astype(F32)
    t = tied_targets(rng, (64, 10), -1)
    _, found = nbxent.cross_entropy(x, t, metrics="correct")
    counted = t != -100
    accuracy = found["correct"].sum() / counted.sum()
    assert accuracy == np.mean(np.argmax(x, -1)[counted] == t[counted])


# ------------------------------------------------------------------ bad calls

@pytest.mark.parametrize("metrics, top_k, error, message", [
    ("accuracy", 5, ValueError, r"unknown metric 'accuracy'"),
    (("correct", 3), 5, ValueError, r"unknown metric 3"),
    ((), 5, ValueError, r"metrics is empty"),
    (7, 5, TypeError, r"metrics must be a name or a sequence of names"),
    ("top_k", 0, ValueError, r"top_k must be >= 1, got 0"),
    ("top_k", 2.0, TypeError, r"top_k must be an int >= 1, got float"),
    ("top_k", True, TypeError, r"top_k must be an int >= 1, got bool"),
])
def test_bad_metrics(rng, metrics, top_k, error, message):
    x = (rng.standard_normal((6, 5))).astype(F32)
    t = rng.integers(0, 5, 6)
    out = np.full_like(x, 7.0)
    before = x.copy()
    with pytest.raises(error, match=message):
        nbxent.cross_entropy(x, t, metrics=metrics, top_k=top_k)
    with pytest.raises(error, match=message):
        nbxent.cross_entropy_with_grad(x, t, metrics=metrics, top_k=top_k, out=out)
    np.testing.assert_array_equal(out, 7.0)
    np.testing.assert_array_equal(x, before)


@pytest.mark.slow
@pytest.mark.parametrize("shape, axis, chunks", [((40, 9), -1, (16, 4)),
                                                 ((2, 7, 4, 5), 1, (1, 3, 4, 5))])
def test_dask_rows_split_across_class_chunks(rng, shape, axis, chunks):
    """Each class chunk's best classes and entropy, merged: every metric, each alone
    (each takes its own fields), k beyond a chunk's classes; loss and gradient as
    without metrics."""
    da = pytest.importorskip("dask.array")
    x = tied_logits(rng, shape, axis, F32)
    t = tied_targets(rng, shape, axis)
    xd, td = da.from_array(x, chunks=chunks), da.from_array(t)
    plain_loss, plain_grad = nbxent.cross_entropy_with_grad(xd, td, axis=axis)
    for top_k in (1, 3, 6):
        expected = R.metrics(x, t, axis, top_k=top_k)
        loss, grad, found = nbxent.cross_entropy_with_grad(xd, td, axis=axis, metrics=ALL,
                                                           top_k=top_k)
        assert_metrics({name: np.asarray(a) for name, a in found.items()}, expected, ALL, F32)
        np.testing.assert_array_equal(np.asarray(loss), np.asarray(plain_loss))
        np.testing.assert_array_equal(np.asarray(grad), np.asarray(plain_grad))
        for name in ALL:
            _, alone = nbxent.cross_entropy(xd, td, axis=axis, metrics=name, top_k=top_k)
            assert_metrics({name: np.asarray(alone[name])}, expected, (name,), F32)


def test_rank_metrics_need_index_targets(rng):
    x = (rng.standard_normal((6, 5))).astype(F32)
    y = R.softmax(x, -1).astype(F32)
    for names in ("correct", ("lse", "top_k")):
        with pytest.raises(ValueError, match=r"need class-index targets, not probabilities"):
            nbxent.cross_entropy(x, y, metrics=names)


# ------------------------------------------------------------------ properties

@st.composite
def tied_problems(draw):
    """(logits, target, axis): small float32 problems of few distinct values (ties), with
    nan, infinities and zeros of both signs among them."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_classes = draw(st.integers(1, 40))
    rows = draw(st.integers(0, 30))
    nchw = draw(st.booleans())
    shape, axis = ((2, n_classes, rows), 1) if nchw else ((rows, n_classes), -1)
    values = np.array([-np.inf, -1.0, -0.0, 0.0, 0.5, 1.0, 2.0, np.inf, np.nan])
    weights = draw(st.sampled_from([(0, 3, 2, 2, 3, 3, 3, 0, 0), (1, 3, 2, 2, 3, 3, 3, 1, 1)]))
    p = np.array(weights, float) / sum(weights)
    x = rng.choice(values, size=shape, p=p).astype(F32)
    t = rng.integers(-1, n_classes, _rows_shape(shape, axis))
    return x, t, axis


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tied_problems(), st.integers(1, 4))
def test_matches_oracle_on_ties(problem, top_k):
    x, t, axis = problem
    _, found = nbxent.cross_entropy(x, t, axis=axis, ignore_index=-1, reduction="none",
                                    metrics=ALL, top_k=top_k)
    expected = R.metrics(x, t, axis, ignore_index=-1, top_k=top_k)
    for name in ("argmax", "correct", "top_k"):
        np.testing.assert_array_equal(found[name], expected[name], err_msg=name)
    _, alone = nbxent.cross_entropy(x, t, axis=axis, ignore_index=-1, metrics="correct")
    np.testing.assert_array_equal(alone["correct"], expected["correct"])
