"""README.md's table of bad input, one parametrised row per kind: the error type, the
message (``match=``), and that no input (nor ``out``) was changed.

Rows that build their arrays with NumPy-only tricks (object/complex dtypes,
lists, byte-level overlaps) run on the CPU backend only.
"""

import re
from dataclasses import dataclass, field

import numpy as np
import pytest

import nbxent
from nbxent import _plan
from nbxent import reference as R

from _cases import FakeGpuArray

F32 = np.float32


@dataclass
class Row:
    """One bad call: ``make(rng)`` returns (function name, positional args, keywords)."""
    id: str
    make: object
    error: type
    match: str
    cpu_only: bool = False
    marks: list = field(default_factory=list)

    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


def _x(rng, shape=(4, 5), dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


def _t(rng, shape=(4,), n_classes=5):
    return rng.integers(0, n_classes, shape)


def ce(*args, **kw):
    return ("cross_entropy", args, kw)


def grad(*args, **kw):
    return ("cross_entropy_grad", args, kw)


def both(*args, **kw):
    return ("cross_entropy_with_grad", args, kw)


def fn(name, *args, **kw):
    return (name, args, kw)


def _index_msg(position, value, n_classes, ignore_index=-100):
    return re.escape(str(_plan.index_error(position, value, n_classes, ignore_index)))


def _overlapping_out_and_index_target(rng):
    raw = np.zeros(4 * 5 * 4, np.uint8)
    out = raw.view(F32).reshape(4, 5)
    target = raw[:32].view(np.int64)
    target[:] = [0, 1, 2, 3]
    return grad(_x(rng), target, out=out)


def _overlapping_out_and_prob_target(rng):
    buffer = np.full((4, 5), 0.2, F32)
    return grad(_x(rng), buffer, out=buffer)


def _overlapping_out_and_weight(rng):
    buffer = np.ones((4, 5), F32)
    return grad(_x(rng), _t(rng), weight=buffer[0], out=buffer)


def _partly_overlapping_out(rng):
    base = _x(rng, (5, 5))
    return grad(base[:4], _t(rng), out=base[1:])


def _partly_overlapping_normalize_out(rng):
    base = _x(rng, (5, 5))
    return fn("log_softmax", base[:4], out=base[1:])


SHAPE_ROWS = [
    Row("index-target-shape", lambda r: ce(_x(r), _t(r, (3,))), ValueError,
        r"class-index target of shape \(3,\) does not fit logits of shape \(4, 5\)"),
    Row("index-target-shape-2d", lambda r: ce(_x(r), _t(r, (4, 1))), ValueError,
        r"target of shape \(4, 1\) does not fit logits of shape \(4, 5\): expected \(4,\)"),
    Row("index-target-shape-nchw", lambda r: grad(_x(r, (2, 5, 3)), _t(r, (2, 5)), axis=1),
        ValueError, r"target of shape \(2, 5\) does not fit logits of shape \(2, 5, 3\): "
                    r"expected \(2, 3\)"),
    Row("prob-target-shape", lambda r: ce(_x(r), np.full((4, 6), 1 / 6, F32)), ValueError,
        r"probability target of shape \(4, 6\) does not fit logits of shape \(4, 5\)"),
    Row("weight-shape", lambda r: ce(_x(r), _t(r), weight=np.ones(4, F32)), ValueError,
        r"weight of shape \(4,\) does not fit logits with 5 classes: expected \(5,\)"),
    Row("weight-2d", lambda r: both(_x(r), _t(r), weight=np.ones((1, 5), F32)), ValueError,
        r"weight of shape \(1, 5\) does not fit logits with 5 classes"),
    Row("grad-output-shape", lambda r: grad(_x(r), _t(r), reduction="none",
                                            grad_output=np.ones(3)), ValueError,
        r"grad_output of shape \(3,\) does not fit the loss of shape \(4,\)"),
    Row("grad-output-array-under-mean", lambda r: both(_x(r), _t(r), reduction="mean",
                                                       grad_output=np.ones(4)), ValueError,
        r"grad_output of shape \(4,\) does not fit the loss of shape \(\) "
        r"\(reduction='mean'\)"),
    Row("grad-output-array-under-sum", lambda r: grad(_x(r), _t(r), reduction="sum",
                                                      grad_output=np.ones((4, 1))), ValueError,
        r"grad_output of shape \(4, 1\) does not fit the loss"),
    Row("out-shape", lambda r: grad(_x(r), _t(r), out=np.zeros((4, 6), F32)), ValueError,
        r"out= must have the logits' shape \(4, 5\) and dtype float32; got shape \(4, 6\)"),
    Row("out-dtype", lambda r: both(_x(r), _t(r), out=np.zeros((4, 5), np.float64)),
        ValueError, r"out= must have the logits' shape \(4, 5\) and dtype float32; got shape "
                    r"\(4, 5\) and dtype float64"),
    Row("out-transposed-shape", lambda r: grad(_x(r), _t(r), out=np.zeros((5, 4), F32).T.T),
        ValueError, r"out= must have the logits' shape"),
    Row("log-softmax-out-shape", lambda r: fn("log_softmax", _x(r), out=np.zeros((4,), F32)),
        ValueError, r"out= must have the logits' shape \(4, 5\)"),
    Row("softmax-out-dtype", lambda r: fn("softmax", _x(r), out=np.zeros((4, 5), np.float16)),
        ValueError, r"out= must have the logits' shape \(4, 5\) and dtype float32; got shape "
                    r"\(4, 5\) and dtype float16"),
]

DTYPE_ROWS = [
    Row("int-logits", lambda r: ce(np.ones((4, 5), np.int64), _t(r)), TypeError,
        r"logits must be float16, float32 or float64; got int64"),
    Row("int32-logits-grad", lambda r: grad(np.ones((4, 5), np.int32), _t(r)), TypeError,
        r"logits must be float16, float32 or float64; got int32"),
    Row("bool-logits", lambda r: ce(np.ones((4, 5), bool), _t(r)), TypeError,
        r"logits must be float16, float32 or float64; got bool"),
    Row("complex-logits", lambda r: ce(np.ones((4, 5), np.complex64), _t(r)), TypeError,
        r"logits must be float16, float32 or float64; got complex64", cpu_only=True),
    Row("object-logits", lambda r: ce(np.ones((4, 5), object), _t(r)), TypeError,
        r"logits must be float16, float32 or float64; got object", cpu_only=True),
    Row("list-of-ints-logits", lambda r: ce([[1, 2, 3]], [0]), TypeError,
        r"logits must be float16, float32 or float64; got int64", cpu_only=True),
    Row("int-logsumexp", lambda r: fn("logsumexp", np.ones((4, 5), np.int64)), TypeError,
        r"logits must be float16, float32 or float64; got int64"),
    Row("int-softmax", lambda r: fn("softmax", np.ones((4, 5), np.int8)), TypeError,
        r"logits must be float16, float32 or float64; got int8"),
    Row("complex-entropy", lambda r: fn("entropy", np.ones((4, 5), np.complex128)), TypeError,
        r"logits must be float16, float32 or float64; got complex128", cpu_only=True),
    Row("bool-target", lambda r: ce(_x(r), np.ones(4, bool)), TypeError,
        r"target must hold integer class indices or floating class probabilities; "
        r"got dtype bool"),
    Row("complex-target", lambda r: ce(_x(r), np.ones((4, 5), np.complex64)), TypeError,
        r"target must hold integer class indices or floating class probabilities; "
        r"got dtype complex64", cpu_only=True),
    Row("complex-weight", lambda r: ce(_x(r), _t(r), weight=np.ones(5, np.complex64)),
        TypeError, r"weight must be a real-valued array of shape \(5,\); got dtype complex64",
        cpu_only=True),
    Row("bool-weight", lambda r: ce(_x(r), _t(r), weight=np.ones(5, bool)), TypeError,
        r"weight must be a real-valued array of shape \(5,\); got dtype bool"),
    Row("bool-grad-output", lambda r: grad(_x(r), _t(r), grad_output=True), TypeError,
        r"grad_output must be a real scalar or array"),
    Row("string-grad-output", lambda r: grad(_x(r), _t(r), grad_output="1"), TypeError,
        r"grad_output must be a real scalar or array", cpu_only=True),
]

OPTION_ROWS = [
    Row("reduction-avg", lambda r: ce(_x(r), _t(r), reduction="avg"), ValueError,
        r"reduction must be one of 'none', 'mean', 'sum'; got 'avg'"),
    Row("reduction-None", lambda r: both(_x(r), _t(r), reduction=None), ValueError,
        r"reduction must be one of 'none', 'mean', 'sum'; got None"),
    Row("entropy-reduction", lambda r: fn("entropy", _x(r), reduction="max"), ValueError,
        r"reduction must be one of 'none', 'mean', 'sum'; got 'max'"),
    Row("smoothing-negative", lambda r: ce(_x(r), _t(r), label_smoothing=-0.1), ValueError,
        r"label_smoothing must be in \[0, 1\]; got -0.1"),
    Row("smoothing-above-1", lambda r: grad(_x(r), _t(r), label_smoothing=1.5), ValueError,
        r"label_smoothing must be in \[0, 1\]; got 1.5"),
    Row("smoothing-nan", lambda r: ce(_x(r), _t(r), label_smoothing=float("nan")), ValueError,
        r"label_smoothing must be in \[0, 1\]; got nan"),
    Row("smoothing-string", lambda r: ce(_x(r), _t(r), label_smoothing="0.1"), TypeError,
        r"label_smoothing must be a real number; got '0.1'"),
    Row("z-loss-negative", lambda r: ce(_x(r), _t(r), z_loss=-1e-4), ValueError,
        r"z_loss must be a finite number >= 0; got -0.0001"),
    Row("z-loss-inf", lambda r: both(_x(r), _t(r), z_loss=float("inf")), ValueError,
        r"z_loss must be a finite number >= 0; got inf"),
    Row("z-loss-nan", lambda r: ce(_x(r), _t(r), z_loss=float("nan")), ValueError,
        r"z_loss must be a finite number >= 0; got nan"),
    Row("softcap-zero", lambda r: ce(_x(r), _t(r), softcap=0.0), ValueError,
        r"softcap must be None or a finite number > 0; got 0.0"),
    Row("softcap-negative", lambda r: grad(_x(r), _t(r), softcap=-3.0), ValueError,
        r"softcap must be None or a finite number > 0; got -3.0"),
    Row("softcap-inf", lambda r: ce(_x(r), _t(r), softcap=float("inf")), ValueError,
        r"softcap must be None or a finite number > 0; got inf"),
    Row("softcap-nan", lambda r: ce(_x(r), _t(r), softcap=float("nan")), ValueError,
        r"softcap must be None or a finite number > 0; got nan"),
    Row("axis-too-large", lambda r: ce(_x(r), _t(r), axis=2), ValueError,
        r"axis 2 is out of range for logits with 2 dimension\(s\); accepted: -2 to 1"),
    Row("axis-too-small", lambda r: grad(_x(r), _t(r), axis=-3), ValueError,
        r"axis -3 is out of range for logits with 2 dimension\(s\); accepted: -2 to 1"),
    Row("axis-float", lambda r: ce(_x(r), _t(r), axis=1.0), TypeError,
        r"axis must be an integer; got 1.0"),
    Row("axis-softmax", lambda r: fn("softmax", _x(r, (2, 3, 4)), axis=3), ValueError,
        r"axis 3 is out of range for logits with 3 dimension\(s\); accepted: -3 to 2"),
    Row("axis-logsumexp", lambda r: fn("logsumexp", _x(r), axis=-3), ValueError,
        r"axis -3 is out of range"),
    Row("ignore-index-float", lambda r: ce(_x(r), _t(r), ignore_index=1.5), TypeError,
        r"ignore_index must be an integer; got 1.5"),
    Row("prob-target-ignore-index", lambda r: ce(_x(r), np.full((4, 5), 0.2, F32),
                                                 ignore_index=0), ValueError,
        r"ignore_index=0 is not supported with probability targets"),
    Row("prob-target-ignore-index-255", lambda r: grad(_x(r), np.full((4, 5), 0.2, F32),
                                                       ignore_index=255), ValueError,
        r"ignore_index=255 is not supported with probability targets"),
    Row("0d-logits", lambda r: ce(np.array(1.0, F32), np.array(0)), ValueError,
        r"logits must have at least one dimension"),
    Row("0d-softmax", lambda r: fn("softmax", np.array(1.0, F32)), ValueError,
        r"logits must have at least one dimension"),
]

MIXED_ROWS = []  # NumPy mixed with a GPU array: see test_mixed_kinds below.

INDEX_ROWS = [
    Row("index-equals-C", lambda r: ce(_x(r), np.array([0, 1, 5, 2])), ValueError,
        _index_msg((2,), 5, 5)),
    Row("index-negative", lambda r: grad(_x(r), np.array([0, -1, 9, 2])), ValueError,
        _index_msg((1,), -1, 5)),
    Row("index-first-of-several", lambda r: both(_x(r, (3, 4, 6)), np.array(
        [[0, 1, 2, 3], [1, 2, 60, 4], [7, 0, 0, 0]]), axis=-1), ValueError,
        _index_msg((1, 2), 60, 6)),
    Row("index-nchw", lambda r: both(_x(r, (2, 3, 2, 2)), np.array(
        [[[0, 1], [2, 0]], [[1, 3, ], [0, 0]]]), axis=1), ValueError,
        _index_msg((1, 0, 1), 3, 3)),
    Row("index-uint8-255-not-ignored", lambda r: ce(_x(r), np.array([0, 255, 1, 2], np.uint8)),
        ValueError, _index_msg((1,), 255, 5)),
    Row("index-default-ignore-with-255", lambda r: ce(_x(r), np.array([0, -100, 1, 2]),
                                                      ignore_index=255), ValueError,
        _index_msg((1,), -100, 5, 255)),
    Row("index-int8", lambda r: grad(_x(r), np.array([0, 1, 2, 100], np.int8)), ValueError,
        _index_msg((3,), 100, 5)),
    Row("index-with-weight-mean", lambda r: ce(_x(r), np.array([5, 0, 0, 0]),
                                               weight=np.ones(5, F32)), ValueError,
        _index_msg((0,), 5, 5)),
    Row("index-1d-logits", lambda r: ce(_x(r, (5,)), np.array(7)), ValueError,
        _index_msg((), 7, 5)),
    Row("index-strided-target", lambda r: grad(_x(r, (3, 5)), np.array([0, 9, 1, 9, 6, 9])[::2]),
        ValueError, _index_msg((2,), 6, 5)),
    Row("index-in-place", lambda r: (lambda x: grad(x, np.array([0, 1, 2, 5]), out=x))(_x(r)),
        ValueError, _index_msg((3,), 5, 5)),
    Row("index-in-place-with-grad", lambda r: (lambda x: both(
        x, np.array([0, 1, 2, 5]), out=x, label_smoothing=0.1))(_x(r)), ValueError,
        _index_msg((3,), 5, 5)),
    Row("index-out-preallocated", lambda r: grad(_x(r), np.array([0, 7, 2, 1]),
                                                 out=np.full((4, 5), 3.0, F32)), ValueError,
        _index_msg((1,), 7, 5)),
    Row("index-large-C-large-value", lambda r: ce(_x(r, (2, 300)), np.array([299, 300])),
        ValueError, _index_msg((1,), 300, 300)),
]

EMPTY_AND_CLASSLESS_ROWS = [
    Row("C-zero", lambda r: ce(np.zeros((4, 0), F32), np.zeros(4, np.int64)), ValueError,
        r"logits have no classes: shape \(4, 0\) is 0 along axis 1; need C >= 1"),
    Row("C-zero-nchw", lambda r: grad(np.zeros((2, 0, 3), F32), np.zeros((2, 3), np.int64),
                                      axis=1), ValueError,
        r"logits have no classes: shape \(2, 0, 3\) is 0 along axis 1"),
    Row("C-zero-prob", lambda r: both(np.zeros((4, 0), F32), np.zeros((4, 0), F32)),
        ValueError, r"logits have no classes"),
    Row("C-zero-and-rows-zero", lambda r: ce(np.zeros((0, 0), F32), np.zeros(0, np.int64)),
        ValueError, r"logits have no classes"),
    Row("C-zero-logsumexp", lambda r: fn("logsumexp", np.zeros((3, 0), F32)), ValueError,
        r"logits have no classes"),
    Row("C-zero-entropy-axis0", lambda r: fn("entropy", np.zeros((0, 3), F32), axis=0),
        ValueError, r"logits have no classes: shape \(0, 3\) is 0 along axis 0"),
]

OVERLAP_ROWS = [
    Row("out-overlaps-index-target", _overlapping_out_and_index_target, ValueError,
        r"out= overlaps target: the gradient would overwrite it", cpu_only=True),
    Row("out-overlaps-prob-target", _overlapping_out_and_prob_target, ValueError,
        r"out= overlaps target", cpu_only=True),
    Row("out-overlaps-weight", _overlapping_out_and_weight, ValueError,
        r"out= overlaps weight: the gradient would overwrite it", cpu_only=True),
    Row("out-partly-overlaps-logits", _partly_overlapping_out, ValueError,
        r"out= partly overlaps the logits"),
    Row("normalize-out-partly-overlaps", _partly_overlapping_normalize_out, ValueError,
        r"out= partly overlaps the logits"),
]

ROWS = (SHAPE_ROWS + DTYPE_ROWS + OPTION_ROWS + INDEX_ROWS + EMPTY_AND_CLASSLESS_ROWS
        + OVERLAP_ROWS)


def _is_array(x):
    return isinstance(x, np.ndarray)


def _move(backend, value):
    """A NumPy argument as the backend's kind (bases kept: views stay views of one buffer)."""
    if not _is_array(value) or backend.name == "cpu":
        return value
    return backend.to_backend(value)


def _equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and (
        np.array_equal(a, b, equal_nan=a.dtype.kind in "fc") if a.dtype != object
        else all(x == y for x, y in zip(a.ravel(), b.ravel())))


def test_rows_have_unique_ids():
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("row", [row.param() for row in ROWS])
def test_bad_input(backend, rng, row):
    if row.cpu_only and backend.name != "cpu":
        pytest.skip("the row builds its input with NumPy-only means")
    name, args, kwargs = row.make(rng)
    if backend.name != "cpu" and any(
            _is_array(v) and v.base is not None for v in [*args, *kwargs.values()]):
        if "in-place" in row.id or "partly" in row.id or "strided" in row.id:
            pytest.skip("views sharing one buffer are built on the CPU only")
    args = [_move(backend, a) for a in args]
    if "in-place" in row.id:                       # out= must be the very logits object
        kwargs["out"] = args[0]
    kwargs = {k: _move(backend, v) for k, v in kwargs.items()}
    inputs = [v for v in [*args, *kwargs.values()] if hasattr(v, "shape") and v.ndim >= 0
              and not isinstance(v, (bool, int, float))]
    before = [np.array(backend.to_numpy(v) if backend.name != "cpu" else v, copy=True)
              for v in inputs if not isinstance(v, list)]
    with pytest.raises(row.error, match=row.match):
        getattr(nbxent, name)(*args, **kwargs)
    after = [np.asarray(backend.to_numpy(v) if backend.name != "cpu" else v)
             for v in inputs if not isinstance(v, list)]
    for b, a in zip(before, after):
        assert _equal(a, b), f"{row.id}: an input or out= was modified by the failed call"


# ------------------------------------------------------------------ mixed kinds

@pytest.mark.parametrize("which", ["target", "weight", "grad_output", "out"])
def test_numpy_mixed_with_gpu_array_is_a_type_error(rng, which):
    logits, target = _x(rng), _t(rng)
    before = logits.copy()
    args = dict(target=target, weight=None, grad_output=np.ones(4), out=None)
    args[which] = {"target": FakeGpuArray((4,), "<i8"), "weight": FakeGpuArray((5,), "<f4"),
                   "grad_output": FakeGpuArray((4,), "<f4"),
                   "out": FakeGpuArray((4, 5), "<f4")}[which]
    with pytest.raises(TypeError, match=r"cannot mix array kinds: numpy\.ndarray \(cpu\) with "
                                        r"_cases\.FakeGpuArray \(cuda\)"):
        nbxent.cross_entropy_grad(logits, args["target"], weight=args["weight"],
                                  grad_output=args["grad_output"], reduction="none",
                                  out=args["out"])
    np.testing.assert_array_equal(logits, before)


def test_gpu_array_first_then_numpy_names_both(rng):
    with pytest.raises(TypeError, match=r"FakeGpuArray \(cuda\) with numpy\.ndarray \(cpu\)"):
        nbxent.cross_entropy(FakeGpuArray((4, 5), "<f4"), _t(rng))


# ------------------------------------------------------------------ validate=False on a GPU

def test_validate_false_on_gpu_gives_nan_rows(backend, rng):
    """GPU: validate=False skips reading the error flag; a bad row's loss is nan, others exact.
    CPU: either still the index error, or the same nan contract."""
    logits = _x(rng, (6, 5))
    target = np.array([0, 1, 9, 3, -100, 4])
    x, t = backend.to_backend(logits), backend.to_backend(target)
    if backend.name == "cpu":
        try:
            loss = nbxent.cross_entropy(x, t, reduction="none", validate=False)
        except ValueError as exc:
            assert re.search(_index_msg((2,), 9, 5), str(exc))
            return
    else:
        loss = nbxent.cross_entropy(x, t, reduction="none", validate=False)
    loss = backend.to_numpy(loss)
    assert np.isnan(loss[2])
    good = [0, 1, 3, 4, 5]
    expected = R.cross_entropy(logits[good], target[good], reduction="none")
    np.testing.assert_allclose(loss[good], expected, rtol=1e-5)
