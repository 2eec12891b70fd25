"""nbxent, and its NumPy oracle, against values PyTorch, SciPy and optax computed on their
own test inputs, stored in ``tests/golden/`` (NumPy alone reads them: no PyTorch, JAX or
SciPy needed here). ``tests/golden/make_golden.py`` regenerates them and says with
which versions.

- PyTorch cross-entropy (float64): every input PyTorch's own test suite gives
  ``nn.CrossEntropyLoss`` and ``nn.functional.cross_entropy``: no-batch-dim 1-D
  logits with a 0-d target (class axis 0), 2-D to 6-D logits with classes on axis 1,
  index and probability targets (also unnormalised ones), class weights (also
  negative ones), ignore_index at a real class, label smoothing, each reduction.
  Loss, and gradient times a stored upstream gradient, from ``cross_entropy``,
  ``cross_entropy_grad`` and the fused ``cross_entropy_with_grad``.
- PyTorch's ``log_softmax``, ``softmax``, ``logsumexp`` samples (float64): the result,
  and torch's vector-Jacobian product rebuilt from nbxent's ``softmax``.
- Special values, float32 and float64: rows with +inf, -inf, all -inf, nan, equal huge
  values up to the float max, and mixes, through ``logsumexp``, ``softmax``,
  ``log_softmax`` and ``entropy``. Where SciPy and PyTorch differ, nbxent follows
  PyTorch: ``log_softmax`` of a row holding +inf is nan everywhere in PyTorch (and
  nbxent), while SciPy gives nan at the +inf and -inf at the finite entries.
- optax's ``softmax_cross_entropy`` and ``softmax_cross_entropy_with_integer_labels``
  on the inputs of optax's tests and a few more (float32 and float64), per-example
  loss and gradient. Where optax and PyTorch differ (float32 logits near 3e4, where
  optax's float32 logsumexp loses digits that PyTorch keeps) the PyTorch value is
  expected.

Each check runs on every backend (the CUDA simulator takes the cases of at most 70
rows), and the same golden values check the oracle ``nbxent.reference``, so its
agreement with PyTorch is tested where PyTorch is not installed.
"""

import functools
import json
import pathlib

import numpy as np
import pytest

import nbxent
from nbxent import reference as R

from conftest import assert_close, tolerance

pytestmark = pytest.mark.slow  # float64 and float16 kernels the quick subset leaves out

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"


@functools.lru_cache(maxsize=None)
def load(name):
    """(meta, arrays) of a golden file: meta is its JSON description, arrays a dict."""
    with np.load(GOLDEN / name, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def case_params(name):
    return [pytest.param(case, id=case["id"]) for case in load(name)[0]["cases"]]


def arrays_of(name, case_id):
    arrays = load(name)[1]
    prefix = f"{case_id}/"
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def rows_and_classes(shape, axis):
    n_classes = shape[axis]
    return int(np.prod(shape)) // max(n_classes, 1), n_classes


def loss_atol(x, dtype):
    """Absolute tolerance of a loss or logsumexp: log-sum-exp minus a logit of size s
    loses about s*eps in any order of evaluation, on top of the usual tolerance."""
    finite = np.abs(np.asarray(x, np.float64)[np.isfinite(x)])
    scale = float(finite.max()) if finite.size else 0.0
    return max(tolerance(dtype, "loss")[1], 8 * np.finfo(dtype).eps * scale)


def _on(backend, x):
    return None if x is None else backend.to_backend(np.asarray(x))


def _grad_output_on(backend, go):
    return float(go) if np.ndim(go) == 0 else backend.to_backend(go)


# ------------------------------------------------------------ PyTorch cross-entropy

TORCH_CE = "torch_cross_entropy.npz"


def _torch_ce_inputs(case):
    a = arrays_of(TORCH_CE, case["id"])
    options = dict(axis=case["axis"], weight=a.get("weight"), reduction=case["reduction"],
                   ignore_index=case["ignore_index"], label_smoothing=case["label_smoothing"])
    return a, options


@pytest.mark.parametrize("case", case_params(TORCH_CE))
def test_cross_entropy_matches_pytorch_test_inputs(backend, case):
    """Loss and gradient of nbxent on the inputs PyTorch tests its cross-entropy with."""
    backend.skip_if_large(*rows_and_classes(case["shape"], case["axis"]))
    a, options = _torch_ce_inputs(case)
    x, t = backend.to_backend(a["logits"]), backend.to_backend(a["target"])
    options = {**options, "weight": _on(backend, options["weight"])}
    go = _grad_output_on(backend, a["grad_output"])
    loss = nbxent.cross_entropy(x, t, **options)
    grad = nbxent.cross_entropy_grad(x, t, grad_output=go, **options)
    fused_loss, fused_grad = nbxent.cross_entropy_with_grad(x, t, grad_output=go, **options)
    for what, got, want in (("loss", loss, a["loss"]), ("grad", grad, a["grad"]),
                            ("loss", fused_loss, a["loss"]), ("grad", fused_grad, a["grad"])):
        assert_close(backend.to_numpy(got), want, np.float64, what, err_msg=f"{what}:")


@pytest.mark.parametrize("case", case_params(TORCH_CE))
def test_reference_matches_pytorch_test_inputs(case):
    """The oracle's loss and gradient on the same inputs."""
    a, options = _torch_ce_inputs(case)
    assert_close(R.cross_entropy(a["logits"], a["target"], **options), a["loss"],
                 np.float64, "loss")
    assert_close(R.cross_entropy_grad(a["logits"], a["target"], grad_output=a["grad_output"],
                                      **options), a["grad"], np.float64, "grad")


# ------------------------------------------------------------ PyTorch normalisers

TORCH_NORM = "torch_normalizers.npz"


def _vjp(op, p, go, dim):
    """torch's vector-Jacobian product of ``op`` at softmax probabilities ``p``."""
    if op == "logsumexp":
        return p * go
    if op == "log_softmax":
        return go - p * go.sum(dim, keepdims=True)
    return p * (go - (go * p).sum(dim, keepdims=True))


def _check_normalizer(case, a, result, p):
    op, dim = case["op"], case["dim"]
    if case["keepdim"]:
        result = np.expand_dims(result, dim)
    assert_close(result, a["result"], np.float64, "loss" if op == "logsumexp" else "grad",
                 check_dtype=False)
    go = a["grad_output"]
    if op == "logsumexp" and not case["keepdim"]:
        go = np.expand_dims(go, dim)
    assert_close(_vjp(op, p, go, dim), a["grad"], np.float64, "grad", check_dtype=False,
                 err_msg="vjp:")


@pytest.mark.parametrize("case", case_params(TORCH_NORM))
def test_normalizers_match_pytorch_test_inputs(backend, case):
    """log_softmax, softmax, logsumexp on PyTorch's samples; softmax gives torch's vjp."""
    a = arrays_of(TORCH_NORM, case["id"])
    x = backend.to_backend(a["input"])
    result = backend.to_numpy(getattr(nbxent, case["op"])(x, axis=case["dim"]))
    assert result.dtype == np.float64
    p = backend.to_numpy(nbxent.softmax(x, axis=case["dim"]))
    _check_normalizer(case, a, result, p)


@pytest.mark.parametrize("case", case_params(TORCH_NORM))
def test_reference_normalizers_match_pytorch_test_inputs(case):
    a = arrays_of(TORCH_NORM, case["id"])
    result = getattr(R, case["op"])(a["input"], case["dim"])
    _check_normalizer(case, a, np.asarray(result), R.softmax(a["input"], case["dim"]))


# ------------------------------------------------------------ special values

SPECIAL = "special_values.npz"
SPECIAL_DTYPES = [pytest.param(np.dtype(d), id=np.dtype(d).name)
                  for d in (np.float32, np.float64)]
FUNCTIONS = ["logsumexp", "softmax", "log_softmax", "entropy"]


def _special(dtype, fn):
    """(row ids, input rows, PyTorch's answer) for ``fn`` on ``dtype`` rows, classes last."""
    meta, arrays = load(SPECIAL)
    name = np.dtype(dtype).name
    (ids,) = [c["rows"] for c in meta["cases"] if c["dtype"] == name]
    return ids, arrays[f"{name}/input"], arrays[f"{name}/torch/{fn}"]


def _check_rows(ids, got, want, dtype, fn):
    what = "loss" if fn in ("logsumexp", "entropy") else "grad"
    for i, row_id in enumerate(ids):   # one row at a time: a failure names its row
        assert_close(np.asarray(got)[i], want[i], dtype, what, check_dtype=False,
                     atol=loss_atol(want[i], dtype) if fn == "logsumexp" else None,
                     err_msg=f"{fn} of row {row_id}:")


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("dtype", SPECIAL_DTYPES)
def test_special_values_follow_pytorch(backend, dtype, fn):
    """+-inf, nan and huge logits give PyTorch's logsumexp, softmax, log_softmax, entropy."""
    ids, x, want = _special(dtype, fn)
    got = backend.to_numpy(getattr(nbxent, fn)(backend.to_backend(x), axis=-1))
    want_dtype = np.dtype(dtype) if fn in ("softmax", "log_softmax") else \
        np.dtype(np.float64 if dtype == np.float64 else np.float32)
    assert got.dtype == want_dtype and got.shape == want.shape
    _check_rows(ids, got, want, dtype, fn)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_reference_special_values_follow_pytorch(fn):
    """The float64 rows only: the oracle computes in float64, where float32 rows such as
    [max, -max] do not overflow as PyTorch's float32 answer does."""
    ids, x, want = _special(np.float64, fn)
    dtype = np.float64
    _check_rows(ids, getattr(R, fn)(x, -1), want, dtype, fn)


def test_special_values_where_scipy_differs_are_known():
    """The rows where SciPy and PyTorch disagree are only log_softmax of rows holding +inf
    (the module docstring says so; nbxent follows PyTorch there)."""
    differ = load(SPECIAL)[0]["differ"]
    assert differ, "the golden file lists no SciPy/PyTorch difference"
    for d in differ:
        assert d["function"] == "log_softmax" and np.isposinf(d["input"]).any(), d


# ------------------------------------------------------------ optax

OPTAX = "optax_cross_entropy.npz"


def _optax_expected(case):
    """(inputs, loss, grad): optax's, or PyTorch's where the two differ."""
    a = arrays_of(OPTAX, case["id"])
    differ = {(d["id"], d["what"]) for d in load(OPTAX)[0]["differ"]}
    loss = a["torch_loss" if (case["id"], "loss") in differ else "loss"]
    grad = a["torch_grad" if (case["id"], "grad") in differ else "grad"]
    return a, loss, grad


def _check_optax(case, a, loss, grad, want_loss, want_grad, check_dtype=True):
    dtype = np.dtype(case["dtype"])
    assert_close(loss, want_loss, dtype, "loss", atol=loss_atol(a["logits"], dtype),
                 check_dtype=check_dtype, err_msg="loss:")
    assert_close(grad, want_grad, dtype, "grad", check_dtype=check_dtype, err_msg="grad:")


@pytest.mark.parametrize("case", case_params(OPTAX))
def test_cross_entropy_matches_optax(backend, case):
    """Per-example loss (reduction='none') and gradient of optax's softmax cross-entropy."""
    a, want_loss, want_grad = _optax_expected(case)
    x, t = backend.to_backend(a["logits"]), backend.to_backend(a["labels"])
    loss, grad = nbxent.cross_entropy_with_grad(
        x, t, axis=case["axis"], reduction="none",
        grad_output=_grad_output_on(backend, a["grad_output"]))
    _check_optax(case, a, backend.to_numpy(loss), backend.to_numpy(grad), want_loss, want_grad)


@pytest.mark.parametrize("case", case_params(OPTAX))
def test_reference_matches_optax(case):
    a, want_loss, want_grad = _optax_expected(case)
    options = dict(axis=case["axis"], reduction="none")
    loss = R.cross_entropy(a["logits"], a["labels"], **options)
    grad = R.cross_entropy_grad(a["logits"], a["labels"], grad_output=a["grad_output"],
                                **options)
    _check_optax(case, a, loss, grad, want_loss, want_grad, check_dtype=False)


def test_golden_files_cover_what_they_claim():
    """Enough cases of each kind, and versions recorded in every file."""
    counts = {name: len(load(name)[0]["cases"]) for name in (TORCH_CE, TORCH_NORM, OPTAX)}
    assert counts[TORCH_CE] >= 120 and counts[TORCH_NORM] >= 15 and counts[OPTAX] >= 30
    kinds = {(c["source"], c["target"], c["weighted"], c["reduction"], len(c["shape"]))
             for c in load(TORCH_CE)[0]["cases"]}
    assert {k[4] for k in kinds} == {1, 2, 3, 4, 5, 6}
    assert {k[1] for k in kinds} == {"index", "probability"}
    for name in (TORCH_CE, TORCH_NORM, SPECIAL, OPTAX):
        assert set(load(name)[0]["versions"]) >= {"torch", "numpy"}
