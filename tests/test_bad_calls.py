"""Bad calls drawn by hypothesis: nbxent's own error, or the NumPy call's result.

Each example starts from a good call (small float32/float64 logits, int64 class
indices, default options, so the kernels other tests compile serve it) and
spoils one or two arguments: wrong dtypes and shapes, read-only or aliasing
``out=``, foreign array objects, out-of-range and wrapped integers. The call must
then either succeed with the result of the same call on plain NumPy copies (and
of the float64 oracle), or raise a builtin ``TypeError`` / ``ValueError`` whose
message names a spoiled argument; no input may change, nor ``out=`` on failure.

Below the search, the calls a new user tried, one test each, on every backend.
"""

import re
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbxent
from nbxent import reference as R

from conftest import SIMULATOR, assert_close

# Derandomized: CI draws the same calls every run (explore with --hypothesis-seed=N).
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)
FUNCTIONS = ("cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad")
WANTS_GRAD = ("cross_entropy_grad", "cross_entropy_with_grad")
# How an error message may name each argument.
NAMES = {"logits": r"\blogits\b", "target": r"\btarget\b", "weight": r"\bweight\b",
         "out": r"\bout=", "grad_output": r"\bgrad_output\b",
         "ignore_index": r"\bignore_index\b", "axis": r"\baxis\b",
         "label_smoothing": r"\blabel_smoothing\b", "z_loss": r"\bz_loss\b",
         "softcap": r"\bsoftcap\b", "reduction": r"\breduction\b"}


def _optional_module(name):
    try:
        return __import__(name)
    except ImportError:
        return None


torch = _optional_module("torch")
jnp = _optional_module("jax.numpy") and __import__("jax.numpy").numpy


# ------------------------------------------------------------------ foreign objects

class BrokenArray:
    """``__array__`` raises, as a lazy array whose computation fails would."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("the producer failed")


class JunkArray:
    """``__array__`` returns something that is not an array."""

    def __array__(self, dtype=None, copy=None):
        return "not an array"


class BrokenGpuArray:
    """Declares ``__cuda_array_interface__`` (the class does) but fails to export it."""

    shape = (4, 5)
    dtype = np.dtype(np.float32)

    @property
    def __cuda_array_interface__(self):
        raise AttributeError("no device memory here")


def _foreign(draw, array):
    """``array`` as another library's object, or a broken look-alike."""
    forms = ["list", "memoryview", "broken", "junk", "broken-gpu"]
    if torch is not None:
        forms.append("torch")
    if jnp is not None:
        forms.append("jax")
    form = draw(st.sampled_from(forms))
    if form == "list":
        return array.tolist()
    if form == "memoryview":
        return memoryview(np.ascontiguousarray(array))
    try:   # dtypes the library has no array for (object, datetime) travel as lists
        if form == "torch":
            return torch.from_numpy(array.copy())
        if form == "jax":
            return jnp.asarray(array)
    except TypeError:
        return array.tolist()
    return {"broken": BrokenArray, "junk": JunkArray, "broken-gpu": BrokenGpuArray}[form]()


# ------------------------------------------------------------------ the drawn call

@dataclass
class Call:
    function: str
    logits: object
    target: object
    keywords: dict
    spoiled: set = field(default_factory=set)
    in_place: bool = False  # out= is the logits object itself


WIDE_INTS = st.one_of(
    st.integers(-2**70, 2**70),
    st.sampled_from([2**63, 2**63 - 1, -2**63, -2**63 - 1, 2**64 - 1, 2**64 - 100, 2**53 + 1,
                     -1, 0, 4, 5, 255, -100]))
BAD_SCALARS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), WIDE_INTS,
    st.sampled_from([True, "0.1", 1j, None, np.float32(0.25), np.int8(-3), np.uint64(2**64 - 1),
                     np.array(0.1), np.array([0.1, 0.2]), np.datetime64(1, "s")]))
BAD_DTYPES = [object, bool, np.complex64, np.complex128, "M8[s]", "m8[s]",
              [("a", "f4"), ("b", "f4")], "U1", np.int32, np.int64]


def _index_dtype_for(value):
    if -2**63 <= value < 2**63:
        for dtype in (np.int8, np.int16, np.int64):
            info = np.iinfo(dtype)
            if info.min <= value <= info.max:
                return dtype
    return np.uint64


def _spoil(draw, call, rng):
    """Spoil one argument of ``call`` in place; add its name to ``call.spoiled``."""
    kind = draw(st.sampled_from([
        "logits-dtype", "logits-rank", "target-dtype", "target-values", "target-shape",
        "ignore-index", "axis", "option", "reduction", "grad-output", "weight", "out",
        "foreign-logits", "foreign-target"]))
    x, t, kw = call.logits, call.target, call.keywords
    if kind == "logits-dtype" and isinstance(x, np.ndarray) and x.dtype.kind == "f":
        call.logits = x.astype(draw(st.sampled_from(BAD_DTYPES)))
        call.spoiled.add("logits")
    elif kind == "logits-rank" and isinstance(x, np.ndarray):
        call.logits = draw(st.sampled_from([x[(0,) * x.ndim], x[..., None], x.reshape(-1)]))
        call.spoiled.update(("logits", "target"))   # the target may then be what does not fit
    elif kind == "target-dtype" and isinstance(t, np.ndarray) and t.dtype.kind in "iu":
        call.target = t.astype(draw(st.sampled_from(BAD_DTYPES[:-2])))
        call.spoiled.add("target")
    elif kind == "target-values" and isinstance(t, np.ndarray) and t.size:
        values = [draw(WIDE_INTS) for _ in range(draw(st.integers(1, 2)))]
        dtype = np.result_type(*[_index_dtype_for(v) for v in values], t.dtype)
        if any(v >= 2**63 for v in values):
            dtype = np.dtype(np.uint64)
            # Wrapped into uint64: negatives, and values beyond it (no NumPy integer holds them).
            values = [v % 2**64 for v in values]
        if dtype == np.float64:   # int64 and uint64 together: keep the big ones
            dtype = np.dtype(np.uint64)
            values = [v % 2**64 for v in values]
        spoiled = t.astype(dtype)
        for v in values:
            spoiled.flat[draw(st.integers(0, t.size - 1))] = v
        call.target = spoiled
        call.spoiled.add("target")
    elif kind == "target-shape" and isinstance(t, np.ndarray):
        shapes = [t[..., None], t.reshape(-1)[:-1], np.stack([t, t])]
        if t.size:
            shapes.append(t.reshape(-1)[:1].reshape(()))
        call.target = draw(st.sampled_from(shapes))
        call.spoiled.add("target")
    elif kind == "ignore-index":
        value = draw(st.one_of(WIDE_INTS, st.sampled_from([1.5, True, "x", None, np.uint64(2**64 - 1),
                                                           np.int8(-100)])))
        kw["ignore_index"] = value
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(t, np.ndarray) \
                and t.size and draw(st.booleans()) and -2**63 <= value < 2**64:
            spoiled = t.astype(np.uint64 if value >= 2**63 else np.result_type(
                t.dtype, _index_dtype_for(value)))
            spoiled.flat[0] = value            # a row that ignore_index should mask
            call.target = spoiled
            call.spoiled.add("target")
        call.spoiled.add("ignore_index")
    elif kind == "axis":
        kw["axis"] = draw(st.one_of(WIDE_INTS, st.sampled_from(
            [np.uint64(2**63 + 5), np.int8(-1), 1.0, True, "1", None])))
        call.spoiled.update(("axis", "target"))    # a valid other axis: the target may not fit
    elif kind == "option":
        name = draw(st.sampled_from(["label_smoothing", "z_loss", "softcap"]))
        kw[name] = draw(BAD_SCALARS)
        call.spoiled.add(name)
    elif kind == "reduction":
        kw["reduction"] = draw(st.sampled_from(["avg", None, 1, "MEAN", np.array(["mean"])]))
        call.spoiled.add("reduction")
    elif kind == "grad-output":
        call.function = draw(st.sampled_from(WANTS_GRAD))
        loss_shape = np.asarray(t).shape
        kw["grad_output"] = draw(st.one_of(BAD_SCALARS, st.sampled_from([
            np.ones(loss_shape, np.float32), np.ones(loss_shape + (1,)), np.ones(loss_shape, bool),
            np.ones(loss_shape, np.complex64), np.ones(3), [1.0] * len(loss_shape),
            np.ones(loss_shape, "M8[s]")])))
        call.spoiled.add("grad_output")
    elif kind == "weight" and isinstance(x, np.ndarray) and x.ndim:
        try:   # the axis may be spoiled too
            n_classes = x.shape[kw.get("axis", -1)]
        except (IndexError, TypeError):
            n_classes = 5
        kw["weight"] = draw(st.sampled_from([
            np.ones(n_classes + 1), np.ones((1, n_classes)), np.ones(n_classes, bool),
            np.ones(n_classes, np.complex64), np.ones(n_classes, object), [1.0] * n_classes,
            np.full(n_classes, 2**62, np.int64), np.arange(n_classes, dtype=np.uint64),
            np.ones(n_classes, "m8[s]")]))
        call.spoiled.add("weight")
    elif kind == "out" and isinstance(x, np.ndarray):
        call.function = draw(st.sampled_from(WANTS_GRAD))
        call.spoiled.add("out")
        _spoil_out(draw, call, rng)
    elif kind == "foreign-logits" and isinstance(x, np.ndarray):
        call.logits = _foreign(draw, x)
        call.spoiled.add("logits")
    elif kind == "foreign-target" and isinstance(t, np.ndarray):
        call.target = _foreign(draw, t)
        call.spoiled.add("target")


def _read_only(array):
    array = array.copy()
    array.setflags(write=False)
    return array


def _spoil_out(draw, call, rng):
    x, kw = call.logits, call.keywords
    form = draw(st.sampled_from(["read-only", "frombuffer", "in-place", "in-place-read-only",
                                 "wrong-dtype", "wrong-shape", "list", "memoryview",
                                 "aliases-target", "aliases-weight", "aliases-grad-output",
                                 "partly-overlaps-logits", "fresh"]))
    if form == "read-only":
        kw["out"] = _read_only(np.zeros_like(x))
    elif form == "frombuffer":
        kw["out"] = np.frombuffer(np.zeros_like(x).tobytes(), x.dtype).reshape(x.shape)
    elif form in ("in-place", "in-place-read-only"):
        if form == "in-place-read-only":
            call.logits = _read_only(x)
        kw["out"] = call.logits
        call.in_place = True
    elif form == "wrong-dtype":
        kw["out"] = np.zeros(x.shape, np.float16 if x.dtype != np.float16 else np.float32)
    elif form == "wrong-shape":
        kw["out"] = np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype)
    elif form == "list":
        kw["out"] = np.zeros_like(x).tolist()
    elif form == "memoryview":
        kw["out"] = memoryview(np.zeros_like(x))
    elif form == "aliases-target":
        # Probability targets in the very buffer the gradient would be written to.
        buffer = np.full(x.shape, 1.0 / x.shape[kw.get("axis", -1)], x.dtype)
        call.target, kw["out"] = buffer, buffer
        call.spoiled.add("target")
    elif form == "aliases-weight" and x.ndim == 2:
        buffer = np.ones(x.shape, x.dtype)
        kw["weight"], kw["out"] = buffer.reshape(-1)[:x.shape[-1]], buffer
        kw["axis"] = -1
        call.spoiled.add("weight")
    elif form == "aliases-grad-output" and x.ndim == 2:
        buffer = np.ones(x.shape, x.dtype)
        kw.update(reduction="none", grad_output=buffer[:, 0], out=buffer, axis=-1)
        call.spoiled.add("grad_output")
    elif form == "partly-overlaps-logits" and x.ndim == 2:
        base = np.concatenate([x, x[:1]])
        call.logits, kw["out"] = base[:-1], base[1:]
    else:
        kw["out"] = np.zeros_like(x)


@st.composite
def bad_calls(draw, spoils=(1, 2)):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape, axis = draw(st.sampled_from([((4, 5), -1), ((3, 7), -1), ((2, 5, 3), 1), ((6,), 0)]))
    # (Float64 logits across positions would compile a tile kernel for this search alone.)
    classes_last = axis % len(shape) == len(shape) - 1
    dtype = draw(st.sampled_from([np.float32, np.float64] if classes_last else [np.float32]))
    logits = rng.standard_normal(shape).astype(dtype)
    n_classes = shape[axis]
    loss_shape = tuple(n for i, n in enumerate(shape) if i != axis % len(shape))
    target = rng.integers(0, n_classes, loss_shape)
    keywords = dict(reduction=draw(st.sampled_from(["mean", "sum", "none"])))
    if axis != -1:
        keywords["axis"] = axis
    call = Call(draw(st.sampled_from(FUNCTIONS)), logits, target, keywords)
    for _ in range(draw(st.integers(*spoils))):
        _spoil(draw, call, rng)
    return call


# ------------------------------------------------------------------ checking one call

def _snapshot(value):
    """A NumPy copy of an array-like argument (None for scalars and unreadable objects)."""
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().numpy().copy()
    if isinstance(value, (np.ndarray, memoryview)):
        return np.array(value, copy=True)
    if jnp is not None and type(value).__module__.startswith("jax"):
        return np.array(value, copy=True)
    if isinstance(value, list):
        return [*value]
    if hasattr(value, "copy_to_host"):   # a (simulated) device array
        return value.copy_to_host()
    return None


def _same(a, b):
    if isinstance(a, list):
        return a == b
    return a.dtype == b.dtype and a.shape == b.shape and (
        np.array_equal(a, b, equal_nan=a.dtype.kind in "fc") if a.dtype.kind not in "OV"
        else a.tobytes() == b.tobytes() if a.dtype.kind == "V" else
        all(p is q or p == q for p, q in zip(a.ravel(), b.ravel())))


def _inputs(call):
    named = {"logits": call.logits, "target": call.target, **call.keywords}
    return {name: value for name, value in named.items() if _snapshot(value) is not None}


def _as_numpy(value):
    snapshot = _snapshot(value)
    return value if snapshot is None or isinstance(snapshot, list) else snapshot


def _numpy_copies(call):
    """Plain NumPy copies of the call's arguments, taken before the call can write any."""
    return (_as_numpy(call.logits), _as_numpy(call.target),
            {k: _as_numpy(v) for k, v in call.keywords.items()})


def _numpy_call(call, copies):
    """The same call on the NumPy ``copies`` (out= a fresh array, or the copied logits)."""
    logits, target, keywords = copies
    if "out" in keywords:
        keywords = dict(keywords, out=logits if call.in_place else np.zeros_like(keywords["out"]))
    return getattr(nbxent, call.function)(logits, target, **keywords)


def _results(function, result):
    if function == "cross_entropy":
        return {"loss": result}
    if function == "cross_entropy_grad":
        return {"grad": result}
    return {"loss": result[0], "grad": result[1]}


def _oracle(call, results, logits, target):
    """Compare with the float64 oracle when the call is a plain one on valid class indices."""
    keywords = {k: v for k, v in call.keywords.items() if k != "out"}
    if not (isinstance(logits, np.ndarray) and logits.dtype in (np.float32, np.float64)
            and isinstance(target, np.ndarray) and target.dtype.kind in "iu"):
        return
    weight = keywords.get("weight")
    if weight is not None and (np.asarray(weight).dtype.kind not in "fiu"
                               or np.abs(np.asarray(weight, np.float64)).max() > 1e6):
        return  # huge weights overflow float32 where the float64 oracle does not
    grad_output = keywords.pop("grad_output", 1.0)
    go = np.asarray(grad_output, np.float64)
    target = target.astype(np.int64)  # valid indices and ignore_index: exact in int64
    for what, value in results.items():
        if what == "loss":
            expected = R.cross_entropy(logits, target, **keywords)
        else:
            expected = R.cross_entropy_grad(logits, target, grad_output=go, **keywords)
        big = np.abs(np.asarray(expected, np.float64)[np.isfinite(expected)])
        if big.size and big.max() > 1e30:
            continue  # beyond float32 range where the float64 oracle is not
        assert_close(np.asarray(value), expected, logits.dtype, what, check_dtype=False,
                     err_msg=what)


def _check(call, run=None, to_numpy=np.asarray):
    """Run ``call`` (through ``run``, default the public function) and check the contract."""
    before = {name: _snapshot(v) for name, v in _inputs(call).items()}
    copies = _numpy_copies(call)
    run = run or (lambda c: getattr(nbxent, c.function)(c.logits, c.target, **c.keywords))
    try:
        result = run(call)
    except (TypeError, ValueError) as exc:
        assert type(exc).__module__ == "builtins", f"{type(exc)!r} reached the user: {exc}"
        message = str(exc)
        assert any(re.search(NAMES[name], message) for name in call.spoiled), (
            f"the message names none of {sorted(call.spoiled)}: {message}")
        changed = [n for n, b in before.items() if not _same(_snapshot(_inputs(call)[n]), b)]
        assert not changed, f"a failed call changed {changed}"
        return "error"
    after = _inputs(call)
    changed = [n for n, b in before.items() if n != "out" and not (call.in_place and n == "logits")
               and not _same(_snapshot(after[n]), b)]
    assert not changed, f"the call changed {changed}"
    results = {k: to_numpy(v) for k, v in _results(call.function, result).items()}
    expected = _results(call.function, _numpy_call(call, copies))
    for what, value in results.items():
        np.testing.assert_allclose(np.asarray(value, np.float64),
                                   np.asarray(expected[what], np.float64), rtol=1e-6, atol=1e-7,
                                   equal_nan=True, err_msg=what)
    if "out" in call.keywords and "grad" in results:
        assert _results(call.function, result)["grad"] is call.keywords["out"]
    target = call.target if isinstance(call.target, np.ndarray) else None
    logits = call.logits if isinstance(call.logits, np.ndarray) else None
    if target is not None and logits is not None and not call.in_place:
        _valid = _valid_indices(call, target, logits)
        if _valid:
            _oracle(call, {k: v for k, v in results.items()}, logits, target)
    return "ok"


def _valid_indices(call, target, logits):
    axis = call.keywords.get("axis", -1)
    n_classes = logits.shape[axis]
    ignore_index = call.keywords.get("ignore_index", -100)
    return all(0 <= int(v) < n_classes or int(v) == int(ignore_index)
               for v in target.reshape(-1).tolist())


# ------------------------------------------------------------------ the searches

@settings(max_examples=150, **SETTINGS)
@given(bad_calls())
def test_bad_call_on_cpu(call):
    """Every spoiled call: nbxent's error naming the argument, or the NumPy call's result."""
    _check(call)


def _to_device(value):
    from numba import cuda
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.flags.writeable:
        return cuda.to_device(value)
    return value


def _host(result):
    return result.copy_to_host() if hasattr(result, "copy_to_host") else np.asarray(result)


@pytest.mark.skipif(not SIMULATOR, reason="needs NUMBA_ENABLE_CUDASIM=1 (or a GPU: see cuda)")
@settings(max_examples=20, **SETTINGS)
@given(bad_calls(spoils=(1, 1)))
def test_bad_call_on_cudasim(call):
    """The same search with every plain NumPy argument moved to the (simulated) GPU."""
    if "out" in call.keywords or call.spoiled & {"logits", "reduction"}:
        return  # out= aliasing is built with NumPy views; foreign logits stay on the host
    device = Call(call.function, _to_device(call.logits), _to_device(call.target),
                  {k: _to_device(v) for k, v in call.keywords.items()}, call.spoiled)
    if not hasattr(device.logits, "copy_to_host"):
        return
    _check(device, to_numpy=_host)


# ------------------------------------------------------------------ the calls a user tried

def _readonly_logits():
    logits = np.frombuffer(np.zeros((4, 3), np.float32).tobytes(), np.float32).reshape(4, 3)
    assert not logits.flags.writeable
    return logits


def test_torch_cpu_tensor_runs_on_the_cpu_without_a_copy():
    torch_ = pytest.importorskip("torch")
    logits = torch_.randn(4, 3, dtype=torch_.float32)
    target = torch_.tensor([0, 1, 2, 0])
    assert nbxent.backend_of(logits, target) == "cpu"
    expected = R.cross_entropy(logits.numpy(), target.numpy())
    assert_close(nbxent.cross_entropy(logits, target), expected, np.float32, "loss")
    out = torch_.empty(4, 3)
    grad = nbxent.cross_entropy_grad(logits, target, out=out)
    assert grad is out
    assert_close(out.numpy(), R.cross_entropy_grad(logits.numpy(), target.numpy()),
                 np.float32, "grad")
    saved = logits.clone()
    nbxent.cross_entropy_grad(logits, target, out=logits)   # in place, through DLPack
    assert_close(logits.numpy(), R.cross_entropy_grad(saved.numpy(), target.numpy()),
                 np.float32, "grad")


def test_torch_tensor_that_cannot_be_read_is_a_type_error():
    torch_ = pytest.importorskip("torch")
    for logits in (torch_.randn(4, 3, requires_grad=True),
                   torch_.randn(4, 3).to(torch_.bfloat16)):
        with pytest.raises(TypeError, match=r"logits of type torch\.Tensor cannot be read as an "
                                            r"array .*; accepted: NumPy arrays"):
            nbxent.cross_entropy(logits, torch_.tensor([0, 1, 2, 0]))


def test_jax_cpu_array_runs_on_the_cpu():
    jax_numpy = pytest.importorskip("jax.numpy")
    logits = jax_numpy.asarray(np.random.default_rng(0).standard_normal((4, 3)), jax_numpy.float32)
    target = jax_numpy.asarray([0, 1, 2, 0])
    assert nbxent.backend_of(logits, target) == "cpu"
    expected = R.cross_entropy(np.asarray(logits), np.asarray(target))
    assert_close(nbxent.cross_entropy(logits, target), expected, np.float32, "loss")
    with pytest.raises(ValueError, match=r"out= is read-only"):  # JAX arrays are immutable
        nbxent.cross_entropy_grad(logits, target, out=logits)


def test_read_only_out_is_a_value_error_before_anything_runs(backend):
    logits = _readonly_logits()
    target = np.array([0, 1, 2, 0])
    if backend.name == "cpu":
        with pytest.raises(ValueError, match=r"^out= is read-only"):
            nbxent.cross_entropy_grad(logits, target, out=logits)
        fresh = np.zeros((4, 3), np.float32)
        fresh.setflags(write=False)
        with pytest.raises(ValueError, match=r"^out= is read-only"):
            nbxent.softmax(np.ones((4, 3), np.float32), out=fresh)
        return
    x = backend.to_backend(logits)   # device memory is writeable: the call succeeds
    grad = nbxent.cross_entropy_grad(x, backend.to_backend(target), out=x)
    assert_close(backend.to_numpy(grad), R.cross_entropy_grad(logits, target), np.float32)


@pytest.mark.parametrize("value,ignore_index", [(2**63 + 5, -100), (2**64 - 100, -100),
                                                (2**64 - 1, -1)])
def test_uint64_target_is_reported_as_passed(backend, value, ignore_index):
    """Values from 2**63 must neither wrap in the message nor wrap onto ignore_index."""
    target = np.array([1, value], np.uint64)
    logits = np.zeros((2, 3), np.float32)
    message = re.escape(f"target {value} at position (1,) is not a class index in [0, 3) "
                        f"nor ignore_index={ignore_index}")
    for function in ("cross_entropy", "cross_entropy_grad"):
        with pytest.raises(ValueError, match=message):
            getattr(nbxent, function)(backend.to_backend(logits), backend.to_backend(target),
                                      ignore_index=ignore_index)


@pytest.mark.parametrize("value,ignore_index", [(2**64 - 100, -100), (2**64 - 1, -1)])
def test_uint64_target_unchecked_is_nan_not_ignored(backend, value, ignore_index):
    """validate=False: a value from 2**63 is a bad index (nan row), never ignore_index."""
    target = np.array([1, value], np.uint64)
    loss = nbxent.cross_entropy(backend.to_backend(np.zeros((2, 3), np.float32)),
                                backend.to_backend(target), ignore_index=ignore_index,
                                reduction="none", validate=False)
    loss = backend.to_numpy(loss)
    assert loss[0] == pytest.approx(np.log(3)) and np.isnan(loss[1])


@pytest.mark.parametrize("ignore_index", [2**70, 2**63, -2**63 - 1])
def test_ignore_index_outside_int64_is_a_value_error(backend, ignore_index):
    with pytest.raises(ValueError, match=rf"ignore_index={ignore_index} is out of range: "
                                         r"accepted integers from -2\*\*63 to 2\*\*63 - 1"):
        nbxent.cross_entropy(backend.to_backend(np.zeros((2, 3), np.float32)),
                             backend.to_backend(np.array([0, 1])), ignore_index=ignore_index)


@pytest.mark.parametrize("ignore_index", [2**63 - 1, 2**53 + 1, -2**63])
def test_ignore_index_at_the_ends_of_int64_masks_exactly(backend, ignore_index):
    """Large ignore_index values match exactly (not after rounding to a float)."""
    logits = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    target = np.array([1, ignore_index, 3], np.int64)
    loss = nbxent.cross_entropy(backend.to_backend(logits), backend.to_backend(target),
                                ignore_index=ignore_index, reduction="none")
    expected = R.cross_entropy(logits, np.where(target == ignore_index, -100, target),
                               reduction="none")
    assert_close(backend.to_numpy(loss), expected, np.float32, "loss")


def test_mixed_kinds_name_the_arguments():
    with pytest.raises(TypeError, match=r"BrokenGpuArray \(cuda\) \(given as logits and "
                                        r"target\)"):
        nbxent.cross_entropy(np.zeros((4, 5), np.float32), BrokenGpuArray())


# ------------------------------------------------------------------ Dask

def test_the_user_calls_on_dask():
    da = pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    dask = pytest.importorskip("dask")
    logits = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    lazy = da.from_array(logits, chunks=(2, 3))
    target = np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"ignore_index=1180591620717411303424 is out of range"):
        nbxent.cross_entropy(lazy, target, ignore_index=2**70)
    bad = np.array([0, 1, 2**63 + 5, 0], np.uint64)
    with pytest.raises(ValueError, match=r"target 9223372036854775813 at position \(2,\)"):
        dask.compute(nbxent.cross_entropy(lazy, bad), scheduler="synchronous")
    with pytest.raises(TypeError, match=r"out= is not supported with Dask arrays"):
        nbxent.cross_entropy_grad(lazy, target, out=_readonly_logits())
    if torch is not None:
        loss = nbxent.cross_entropy(lazy, torch.from_numpy(target))
        (value,) = dask.compute(loss, scheduler="synchronous")
        assert_close(value, R.cross_entropy(logits, target), np.float32, "loss")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_first_bad_index_among_many_rows(weighted):
    """Among many rows (the CPU scan runs over the threads), the error names the first
    bad one, after ignored rows; unchecked, 'mean' is nan and 'none' is nan on those rows
    only."""
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((70000, 3)).astype(np.float32)
    target = rng.integers(0, 3, 70000)
    target[[100, 50000]] = -100
    target[[50001, 69999]] = [3, -2]
    weight = np.array([0.5, 1.0, 2.0], np.float32) if weighted else None
    message = re.escape("target 3 at position (50001,) is not a class index in [0, 3)")
    with pytest.raises(ValueError, match=message):
        nbxent.cross_entropy(logits, target, weight=weight)
    assert np.isnan(nbxent.cross_entropy(logits, target, weight=weight, validate=False))
    loss = nbxent.cross_entropy(logits, target, weight=weight, reduction="none",
                                validate=False)
    bad = np.zeros(70000, bool)
    bad[[50001, 69999]] = True
    assert np.isnan(loss[bad]).all() and np.isfinite(loss[~bad]).all()
