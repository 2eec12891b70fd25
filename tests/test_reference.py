"""The oracle itself, checked against PyTorch (float64, autograd for gradients).

Every option torch shares with nbxent is compared with ``F.cross_entropy``
directly, with the class axis moved to torch's dimension 1; ``z_loss`` and
``softcap`` are compared with torch composites (loss + z*logsumexp**2 over the
non-ignored rows; torch on c*tanh(x/c)). Skipped when torch is not installed;
test_golden.py checks the oracle against values PyTorch stored in tests/golden/ too,
so that agreement is tested where torch is not installed.

Known, chosen divergence: torch's gradient of an ignored row whose logits hold
nan or +-inf is nan (log_softmax's backward multiplies 0 by nan); nbxent and the
oracle give ignored rows exactly zero gradient. Such rows are tested in
test_api.py against the oracle, not here.
"""

import itertools

import numpy as np
import pytest

from conftest import assert_close
from nbxent import reference as R

torch = pytest.importorskip("torch")

from _torch_oracle import torch_loss_and_grad  # noqa: E402 (needs torch)

F64 = np.float64

# (id, logits shape, axis)
SHAPES = [
    ("rows", (13, 7), -1),
    ("axis0", (5, 9), 0),
    ("nchw", (2, 6, 3, 4), 1),
    ("btc", (2, 3, 11), -1),
    ("single", (5,), 0),
]
TARGET_FORMS = ["index", "uint8_255", "ignore_pos", "prob", "onehot"]
EXTRAS = ["plain", "z_loss", "softcap", "z_loss+softcap"]
REDUCTIONS = ["none", "mean", "sum"]


# ------------------------------------------------------------------ inputs

def make_logits(rng, shape, scale=3.0):
    return rng.normal(0.0, scale, shape)


def make_target(rng, form, shape, axis, n_ignored=2):
    """(target, ignore_index) of ``form`` for logits of ``shape`` with classes on ``axis``."""
    n_classes = shape[axis]
    loss_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    if form in ("prob", "onehot"):
        if form == "onehot":
            idx = rng.integers(0, n_classes, loss_shape)
            onehot = np.eye(n_classes)[idx]                  # class axis last
            return np.moveaxis(onehot, -1, axis), -100
        return np.moveaxis(R.softmax(rng.normal(0, 2, loss_shape + (n_classes,))), -1, axis), -100
    t = rng.integers(0, n_classes, loss_shape)
    flat = t.reshape(-1)
    ignore = {"index": -100, "uint8_255": 255, "ignore_pos": 2}[form]
    if form != "ignore_pos":
        k = min(n_ignored, max(flat.size - 1, 0))          # keep at least one row counted
        flat[rng.choice(flat.size, k, replace=False)] = ignore
    elif flat.size > 1:
        flat[0] = 2                                        # ignore_index is a real class here
        flat[1] = 0 if flat[1] == 2 else flat[1]
    dtype = np.uint8 if form == "uint8_255" else np.int64
    return t.reshape(loss_shape).astype(dtype), ignore


def _grad_output_for(rng, reduction, loss_shape):
    if reduction == "none":
        return rng.uniform(-2.0, 2.0, loss_shape)
    return 0.7


def _extras(extra):
    return {"z_loss": 0.05 if "z_loss" in extra else 0.0,
            "softcap": 4.0 if "softcap" in extra else None}


# ------------------------------------------------------------------ the grid

@pytest.mark.parametrize("extra", EXTRAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("form", TARGET_FORMS)
@pytest.mark.parametrize("shape_id,shape,axis", SHAPES, ids=[s[0] for s in SHAPES])
def test_cross_entropy_and_grad_match_torch(rng, shape_id, shape, axis, form, weighted,
                                            label_smoothing, reduction, extra):
    logits = make_logits(rng, shape, scale=5.0 if "softcap" in extra else 3.0)
    target, ignore_index = make_target(rng, form, shape, axis)
    weight = rng.uniform(0.2, 2.0, shape[axis]) if weighted else None
    loss_shape = np.delete(np.array(shape), axis % len(shape)).tolist()
    grad_output = _grad_output_for(rng, reduction, tuple(loss_shape))
    options = dict(axis=axis, weight=weight, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, **_extras(extra))
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, grad_output=grad_output,
                                                       **options)
    logits_before, target_before = logits.copy(), target.copy()
    loss = R.cross_entropy(logits, target, **options)
    grad = R.cross_entropy_grad(logits, target, grad_output=grad_output, **options)
    assert_close(loss, expected_loss, F64, "loss", atol=1e-12)
    assert_close(grad, expected_grad, F64, "grad")
    assert grad.shape == logits.shape
    np.testing.assert_array_equal(logits, logits_before)
    np.testing.assert_array_equal(target, target_before)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scalar_grad_output_under_none(rng, reduction):
    logits = make_logits(rng, (6, 4))
    target, _ = make_target(rng, "index", (6, 4), -1)
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, reduction=reduction,
                                                       grad_output=-1.3)
    grad = R.cross_entropy_grad(logits, target, reduction=reduction, grad_output=-1.3)
    assert_close(grad, expected_grad, F64, "grad")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("z_loss", [0.0, 0.1])
def test_all_ignored_mean_is_nan_with_zero_gradient(rng, weighted, label_smoothing, z_loss):
    logits = make_logits(rng, (4, 5))
    target = np.full(4, -100)
    weight = rng.uniform(0.5, 1.5, 5) if weighted else None
    options = dict(weight=weight, reduction="mean", label_smoothing=label_smoothing,
                   z_loss=z_loss)
    loss = R.cross_entropy(logits, target, **options)
    grad = R.cross_entropy_grad(logits, target, **options)
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, **options)
    assert np.isnan(expected_loss) and np.isnan(loss)
    assert_close(grad, expected_grad, F64, "grad")
    assert np.all(grad == 0.0)
    for reduction in ("sum", "none"):
        assert np.all(R.cross_entropy(logits, target, **{**options, "reduction": reduction}) == 0)


@pytest.mark.parametrize("softcap", [None, 4.0])
def test_ignored_rows_get_exactly_zero_gradient_whatever_their_logits(rng, softcap):
    """An ignored row's gradient is 0, nan and infinite logits included, under a soft cap
    too (the kernels' choice, and README's; a torch composite gives nan there: the
    log_softmax of a nan row times a zero upstream)."""
    logits = make_logits(rng, (4, 5))
    logits[0, 1], logits[1, 2], logits[2, :] = np.nan, np.inf, -np.inf
    target = np.array([-100, -100, -100, 3])
    grad = R.cross_entropy_grad(logits, target, reduction="sum", label_smoothing=0.1,
                                softcap=softcap)
    assert np.all(grad[:3] == 0.0) and np.all(np.isfinite(grad[3]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ["index", "prob"])
@pytest.mark.parametrize("shape,axis", [((0, 7), -1), ((2, 3, 0, 4), 1), ((0, 5), 1)],
                         ids=["rows0", "nchw_h0", "classes_first0"])
def test_empty_batch_matches_torch(rng, shape, axis, form, reduction):
    logits = make_logits(rng, shape)
    target, _ = make_target(rng, form, shape, axis)
    loss = R.cross_entropy(logits, target, axis=axis, reduction=reduction, label_smoothing=0.1)
    grad = R.cross_entropy_grad(logits, target, axis=axis, reduction=reduction,
                                label_smoothing=0.1)
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, axis=axis,
                                                       reduction=reduction, label_smoothing=0.1)
    assert_close(loss, expected_loss, F64, "loss")
    assert_close(grad, expected_grad, F64, "grad")
    if reduction == "mean":
        assert np.isnan(loss)
    elif reduction == "sum":
        assert loss == 0.0
    else:
        assert loss.shape == expected_loss.shape and loss.size == 0


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("form", ["index", "prob", "onehot"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_minus_inf_logits_match_torch(rng, reduction, label_smoothing, form, weighted):
    """-inf at non-target classes: finite loss without smoothing, as torch has it."""
    n, c = 6, 5
    logits = make_logits(rng, (n, c))
    target, _ = make_target(rng, form, (n, c), -1, n_ignored=1)
    hot = target.argmax(-1) if form != "index" else np.where(target < 0, 0, target)
    for row in range(n):
        logits[row, (hot[row] + 1 + np.arange(row % (c - 1))) % c] = -np.inf
    weight = rng.uniform(0.5, 1.5, c) if weighted else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, **options)
    assert_close(R.cross_entropy(logits, target, **options), expected_loss, F64, "loss")
    assert_close(R.cross_entropy_grad(logits, target, **options), expected_grad, F64, "grad")
    if form == "index" and label_smoothing == 0.0:
        assert np.all(np.isfinite(R.cross_entropy(logits, target, **options)))


@pytest.mark.parametrize("extra", EXTRAS)
@pytest.mark.parametrize("form", ["index", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nonfinite_rows_match_torch(rng, reduction, form, extra):
    """nan anywhere, +inf anywhere, or a row of all -inf: that row's loss and gradient are nan
    (a soft cap makes +-inf finite first)."""
    logits = make_logits(rng, (5, 4))
    logits[0, 1] = np.nan
    logits[1, 2] = np.inf
    logits[2, :] = -np.inf
    logits[3, 0] = -np.inf           # harmless for an index target; inf loss if q[0] > 0
    target, _ = make_target(rng, form, (5, 4), -1, n_ignored=0)
    if form == "index":
        target[3] = 1
    options = dict(reduction=reduction, **_extras(extra))
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, **options)
    loss = R.cross_entropy(logits, target, **options)
    assert_close(loss, expected_loss, F64, "loss")
    assert_close(R.cross_entropy_grad(logits, target, **options), expected_grad, F64, "grad")
    # c*tanh(x/c) maps +-inf to +-c: under a soft cap only the nan row stays nan.
    n_nan = 1 if "softcap" in extra else 3
    if reduction == "none":
        assert np.all(np.isnan(loss[:n_nan])) and not np.any(np.isnan(loss[n_nan:]))
        assert np.isfinite(loss[4]) and (np.isfinite(loss[3]) or form == "prob")
    else:
        assert np.isnan(loss)


@pytest.mark.parametrize("extra", EXTRAS)
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_extreme_logits_match_torch(rng, scale, extra):
    logits = rng.choice([-1.0, 1.0], (8, 6)) * scale + rng.normal(0, 1, (8, 6))
    target, _ = make_target(rng, "index", (8, 6), -1, n_ignored=1)
    options = dict(reduction="none", label_smoothing=0.1, **_extras(extra))
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, **options)
    # lse - x of values ~scale loses ~scale*eps absolutely in any float64 order.
    assert_close(R.cross_entropy(logits, target, **options), expected_loss, F64, "loss",
                 atol=scale * 1e-14)
    assert_close(R.cross_entropy_grad(logits, target, **options), expected_grad, F64, "grad",
                 atol=1e-13)


def test_grid_covers_every_torch_option():
    """The grid above combines every shared option: keep it that way."""
    combos = set(itertools.product(TARGET_FORMS, [False, True], [0.0, 0.2], REDUCTIONS))
    assert len(combos) == 5 * 2 * 2 * 3
    assert {s[2] for s in SHAPES} >= {-1, 0, 1}


# ------------------------------------------------------------------ normalisers

NORM_SHAPES = [((7, 5), -1), ((5, 7), 0), ((2, 4, 3, 3), 1), ((6,), 0), ((0, 4), -1),
               ((3, 1), -1)]


def _torch_norms(x, axis):
    t = torch.tensor(np.asarray(x, F64))
    lse = torch.logsumexp(t, dim=axis)
    logp = torch.log_softmax(t, dim=axis)
    p = torch.softmax(t, dim=axis)
    ent = torch.special.entr(p).sum(dim=axis)
    return lse.numpy(), logp.numpy(), p.numpy(), ent.numpy()


@pytest.mark.parametrize("shape,axis", NORM_SHAPES, ids=[str(s) for s in NORM_SHAPES])
@pytest.mark.parametrize("nonfinite", [False, True], ids=["finite", "nonfinite"])
def test_normalizers_match_torch(rng, shape, axis, nonfinite):
    x = make_logits(rng, shape)
    if nonfinite and x.size and x.ndim == 2 and x.shape[axis] > 1:
        rows = np.moveaxis(x, axis, -1)                     # a view: writes go into x
        rows[0, 0] = -np.inf
        if rows.shape[0] > 1:
            rows[1, :] = -np.inf
        if rows.shape[0] > 2:
            rows[2, 1] = np.nan
        if rows.shape[0] > 3:
            rows[3, 0] = np.inf
    lse, logp, p, ent = _torch_norms(x, axis)
    assert_close(R.logsumexp(x, axis), lse, F64, "loss")
    assert_close(R.log_softmax(x, axis), logp, F64, "grad")
    assert_close(R.softmax(x, axis), p, F64, "grad")
    assert_close(R.entropy(x, axis), ent, F64, "loss", atol=1e-14)
    with np.errstate(invalid="ignore"):
        assert_close(R.entropy(x, axis, reduction="sum"), ent.sum(), F64, "loss", atol=1e-14)
        assert_close(R.entropy(x, axis, reduction="mean"),
                     ent.mean() if ent.size else np.nan, F64, "loss", atol=1e-14)


# ------------------------------------------------------------------ confident rows

@pytest.mark.parametrize("n_top", [1, 2])
def test_a_confident_row_keeps_its_digits(n_top):
    """A row whose ``n_top`` leaders stand L above C - n_top zeros has the closed forms
    s = n_top + k with k = (C - n_top) e^-L: its loss is log1p(n_top - 1 + k) and its
    entropy log s + L k / s. 1 + k would round k away (below 1e-16); the oracle, like the
    kernels, counts the classes at the max apart, so each keeps its relative digits."""
    n_classes = 100
    leads = np.array([5.0, 20.0, 30.0, 40.0, 80.0, 700.0])
    logits = np.zeros((leads.size, n_classes))
    logits[:, :n_top] = leads[:, None]
    target = np.zeros(leads.size, np.int64)
    k = (n_classes - n_top) * np.exp(-leads)
    s = n_top + k
    rows = dict(reduction="none")
    np.testing.assert_allclose(R.cross_entropy(logits, target, **rows), np.log1p(n_top - 1 + k),
                               rtol=1e-14, atol=0)
    np.testing.assert_allclose(R.logsumexp(logits), leads + np.log1p(n_top - 1 + k),
                               rtol=1e-15, atol=0)
    np.testing.assert_allclose(R.entropy(logits), np.log1p(n_top - 1 + k) + leads * k / s,
                               rtol=1e-14, atol=0)
