"""Exact at any magnitude: a common offset of the logits does not move any result's error.

Softmax is shift-invariant, so the loss, its gradient, log_softmax, softmax and
entropy of ``x + offset`` depend on ``x`` alone, and logsumexp moves by exactly the
offset. Each case shifts random logits by 0 .. 1e300 (as far as the dtype holds
them), rounds them to the dtype, and compares every public function with the
float64 oracle on those rounded logits, at the tolerance of the unshifted case: a
kernel that forms ``x - (max + log_sum)`` instead of ``(x - max) - log_sum`` loses
the digits of the offset and fails here. Layouts cover the row kernel (short and
long rows), the tile kernel (few classes, rows as positions; NCHW) and, under the
simulator, the CUDA kernels; tests/test_dask.py covers the Dask chunks.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbxent
from nbxent import reference as R

from _cases import OPTIONS_BY_ID, make_index_target, make_prob_target
from conftest import assert_close

OFFSETS = [0.0, 1e4, 1e8, 1e16, 1e30, 1e300]
# (shape, class axis): the row kernel (3, 100 and 2000 classes), the tile kernel with
# rows as positions (10 classes, enough rows to fill tiles), the tile kernel for NCHW.
LAYOUTS = [
    pytest.param((64, 3), -1, id="rows-3"),
    pytest.param((16, 100), -1, id="rows-100"),
    pytest.param((8, 2000), -1, id="rows-2000"),
    pytest.param((4000, 10), -1, id="tiles-10"),
    pytest.param((2, 5, 4, 3), 1, id="nchw"),
]
SMALL_LAYOUTS = [pytest.param((5, 3), -1, id="rows-3"), pytest.param((2, 5, 2, 3), 1, id="nchw")]
# Option sets whose results stay O(1) at any offset (a z-loss grows with lse**2: under
# "everything" the soft cap bounds it).
OPTION_IDS = ["plain", "weight-smooth-ignore", "prob-weight-smooth", "everything"]


def _offsets(dtype):
    """The offsets a dtype holds with room to spare (float16: up to 1e4)."""
    return [o for o in OFFSETS if o < float(np.finfo(dtype).max) / 100]


def _cases(dtypes, layouts, option_ids):
    """Every combination; the quick subset keeps float32 at 0 and 1e16, the rest is slow."""
    return [pytest.param(dtype, offset, *layout.values, option_id,
                         id=f"{dtype.name}-{offset:g}-{layout.id}-{option_id}",
                         marks=[] if dtype == np.float32 and offset in (0.0, 1e16)
                         else [pytest.mark.slow])
            for dtype in dtypes for offset in _offsets(dtype) for layout in layouts
            for option_id in option_ids]


DTYPES = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]
CASES = _cases(DTYPES, LAYOUTS, OPTION_IDS)
# The simulator is slow (a launch takes tenths of a second): the largest offset of each
# dtype, both layouts, index and probability targets.
SMALL_CASES = [pytest.param(dtype, _offsets(dtype)[-1], *layout.values, option_id,
                            id=f"{dtype.name}-{_offsets(dtype)[-1]:g}-{layout.id}-{option_id}")
               for dtype in DTYPES for layout in SMALL_LAYOUTS
               for option_id in ("plain", "prob-weight-smooth")]


def _inputs(rng, dtype, offset, shape, axis, option_id):
    """Shifted logits (rounded to ``dtype``), their float64 values, target and keywords."""
    options = OPTIONS_BY_ID[option_id]
    logits = (rng.standard_normal(shape) * 2.0 + offset).astype(dtype)
    if options.target == "index":
        target = make_index_target(rng, shape, axis, ignore_index=options.ignore_index,
                                   ignored=options.ignored)
    else:
        target = make_prob_target(rng, shape, axis, options.target).astype(dtype)
    weight = rng.uniform(0.25, 2.0, shape[axis]).astype(dtype) if options.weight else None
    keywords = dict(axis=axis, weight=weight, ignore_index=options.ignore_index,
                    label_smoothing=options.label_smoothing, z_loss=options.z_loss,
                    softcap=options.softcap)
    return logits, target, keywords


def _check_every_function(backend, logits, target, keywords):
    dtype = logits.dtype
    axis = keywords["axis"]
    x = backend.to_backend(logits)
    on = dict(keywords, weight=backend.to_backend(keywords["weight"]))
    t = backend.to_backend(target)
    for reduction in ("none", "mean"):
        expected_loss = R.cross_entropy(logits, target, reduction=reduction, **keywords)
        expected_grad = R.cross_entropy_grad(logits, target, reduction=reduction, **keywords)
        loss, grad = nbxent.cross_entropy_with_grad(x, t, reduction=reduction, **on)
        assert_close(backend.to_numpy(loss), expected_loss, dtype, "loss", err_msg=reduction)
        assert_close(backend.to_numpy(grad), expected_grad, dtype, "grad", err_msg=reduction)
    loss = nbxent.cross_entropy(x, t, reduction="sum", **on)
    assert_close(backend.to_numpy(loss), R.cross_entropy(logits, target, reduction="sum",
                                                         **keywords), dtype, "loss")
    grad = nbxent.cross_entropy_grad(x, t, reduction="sum", **on)
    assert_close(backend.to_numpy(grad), R.cross_entropy_grad(logits, target, reduction="sum",
                                                              **keywords), dtype, "grad")
    assert_close(backend.to_numpy(nbxent.logsumexp(x, axis=axis)), R.logsumexp(logits, axis),
                 dtype, "loss")
    assert_close(backend.to_numpy(nbxent.log_softmax(x, axis=axis)),
                 R.log_softmax(logits, axis), dtype, "grad")
    assert_close(backend.to_numpy(nbxent.softmax(x, axis=axis)), R.softmax(logits, axis),
                 dtype, "grad")
    assert_close(backend.to_numpy(nbxent.entropy(x, axis=axis)), R.entropy(logits, axis),
                 dtype, "loss", atol=1e-5 if dtype != np.float64 else None)


@pytest.mark.parametrize("dtype, offset, shape, axis, option_id", CASES)
def test_every_function_at_any_offset(rng, dtype, offset, shape, axis, option_id):
    logits, target, keywords = _inputs(rng, dtype, offset, shape, axis, option_id)
    from conftest import _cpu_backend  # the CPU kernels: row and tile layouts alike
    _check_every_function(_cpu_backend(), logits, target, keywords)


@pytest.mark.parametrize("dtype, offset, shape, axis, option_id", SMALL_CASES)
def test_every_backend_at_any_offset(backend, rng, dtype, offset, shape, axis, option_id):
    if backend.name == "cpu":
        pytest.skip("the CPU kernels run every layout above")
    logits, target, keywords = _inputs(rng, dtype, offset, shape, axis, option_id)
    _check_every_function(backend, logits, target, keywords)


# (shape, class axis, rows of a single class): one class leaves the z-loss's term alone in
# the gradient, a z * lse * (1 - tanh(x / a)**2), so the soft cap's slope is checked bare.
CAP_LAYOUTS = [
    pytest.param((400, 1), -1, id="rows-1"),
    pytest.param((2, 1, 200), 1, id="nchw-1"),
    pytest.param((400, 7), -1, id="tiles-7"),
    pytest.param((4, 2000), -1, id="rows-2000"),
    pytest.param((2, 7, 100), 1, id="nchw-7"),
]


@pytest.mark.parametrize("shape, axis", CAP_LAYOUTS)
def test_soft_cap_near_saturation(backend, rng, shape, axis):
    """Logits up to 6 caps from 0: the cap's slope 1 - tanh(x / a)**2 keeps its digits.

    Formed as 1 - (x / a)**2 from the capped x rounded to float32 it lost them near
    saturation, as did the loss from capped logits held in float32. The CPU kernels
    compute float32 logits under a cap in float64, so every class count is checked;
    the CUDA kernels keep float32 for the softmax (capped logits near a round to
    a few 1e-6 there) and take the slope from the logit itself: one class.
    """
    if backend.name != "cpu" and shape[axis] > 1:
        pytest.skip("the CUDA kernels' softmax of capped logits is float32")
    cap = 30.0  # the z-loss's gradient grows with lse ~ a: relative checks
    logits = (rng.uniform(-6.0, 6.0, shape) * cap).astype(np.float32)
    target = make_index_target(rng, shape, axis, ignore_index=-100, ignored=0.0)
    keywords = dict(axis=axis, z_loss=0.5, softcap=cap, label_smoothing=0.1)
    loss, grad = nbxent.cross_entropy_with_grad(
        backend.to_backend(logits), backend.to_backend(target), reduction="none", **keywords)
    assert_close(backend.to_numpy(loss),
                 R.cross_entropy(logits, target, reduction="none", **keywords),
                 logits.dtype, "loss", rtol=1e-6)
    assert_close(backend.to_numpy(grad),
                 R.cross_entropy_grad(logits, target, reduction="none", **keywords),
                 logits.dtype, "grad")


@pytest.mark.slow  # float64 kernels the quick subset leaves out
def test_equal_huge_logits():
    """Rows of equal logits far from 0: log_softmax is -log C, the loss log C."""
    for dtype, big in ((np.float64, 1e300), (np.float64, 1e20), (np.float32, 1e30)):
        x = np.full((2, 3), big, dtype)
        assert_close(nbxent.log_softmax(x), np.full((2, 3), -np.log(3)), x.dtype, "grad")
        assert_close(nbxent.cross_entropy(x, np.array([0, 2])), np.log(3), x.dtype, "loss")
        assert_close(nbxent.cross_entropy_grad(x, np.array([0, 2])),
                     [[-1 / 3, 1 / 6, 1 / 6], [1 / 6, 1 / 6, -1 / 3]], x.dtype, "grad")
        assert_close(nbxent.logsumexp(x), np.full(2, big + np.log(3)), x.dtype, "loss")


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(st.sampled_from(DTYPES[1:]), st.integers(0, 2**32 - 1),
       st.floats(1.0, 300.0), st.sampled_from([-1.0, 1.0]),
       st.sampled_from([((9, 7), -1), ((3, 300), -1), ((2, 4, 3), 1)]),
       st.sampled_from(OPTION_IDS))
def test_shifted_logits_match_the_oracle(dtype, seed, exponent, sign, layout, option_id):
    """Any offset the dtype holds, either sign: the same tolerance as unshifted logits."""
    shape, axis = layout
    exponent = min(exponent, 36.0 if dtype == np.float32 else exponent)
    logits, target, keywords = _inputs(np.random.default_rng(seed), dtype,
                                       sign * 10.0 ** exponent, shape, axis, option_id)
    from conftest import _cpu_backend
    _check_every_function(_cpu_backend(), logits, target, keywords)
