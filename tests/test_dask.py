"""The Dask backend on a real dask.distributed cluster.

One LocalCluster per module: two worker processes on loopback, one thread each.
Every Dask result is compared with the in-memory nbxent call on the same NumPy
arrays and with the float64 oracle, for chunks along the rows, along the
classes, and both.

Workers inherit NUMBA_CACHE_DIR from conftest. ``compute`` runs each graph in
this process first (Dask's synchronous scheduler, tiny shapes), so a kernel
variant a chunk needs is compiled once, here, and the workers load it from the
disk cache instead of each compiling it again.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest

import nbxent
from nbxent import reference as R

from _cases import FakeGpuArray, OPTIONS_BY_ID, loss_shape, make_inputs, make_logits
from conftest import assert_close

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

# A cluster of worker processes per module: slow to start, left out of the quick subset.
pytestmark = [pytest.mark.dask, pytest.mark.slow]


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of two single-threaded worker processes, loopback only."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  memory_limit="1GiB") as cluster, \
            distributed.Client(cluster) as dask_client:
        yield dask_client


# (id, logits shape, class axis, chunks): row chunks, class chunks, both, NCHW.
LAYOUTS = [
    pytest.param((40, 11), -1, (16, 11), id="rows"),
    pytest.param((40, 11), -1, (40, 4), id="classes"),
    pytest.param((40, 11), -1, (16, 4), id="both"),
    pytest.param((3, 7, 2, 5), 1, (2, 3, 2, 3), id="nchw-both"),
    pytest.param((3, 7, 2, 5), 1, (2, 7, 1, 5), id="nchw-rows"),
]

# float32 runs every option set; float64 (whose kernels are the same code) three of them.
OPTION_DTYPES = [pytest.param(option, dtype, id=f"{option}-{dtype.name}")
                 for option in ("plain", "weight-smooth-ignore", "everything", "ignore-pos",
                                "prob-weight-smooth", "prob-zloss-softcap")
                 for dtype in (F32, F64)
                 if dtype == F32 or option in ("plain", "everything", "prob-zloss-softcap")]


# A computation that outlives this is a hang (a cluster whose processes were stopped
# and resumed, say): fail the test rather than block the run.
COMPUTE_TIMEOUT_S = 180


def _as_is(value):
    return value


def compute(lazy):
    """``lazy`` (Dask arrays, possibly nested in tuples and dicts) computed on the cluster,
    after a run in this process that fills the kernel cache."""
    dask.compute(lazy, scheduler="synchronous")
    future = distributed.get_client().compute(dask.delayed(_as_is)(lazy))
    return future.result(timeout=COMPUTE_TIMEOUT_S)


def _dask(array, chunks):
    return None if array is None else da.from_array(array, chunks=chunks)


def _row_chunks(chunks, axis):
    """The logits' chunks without the class axis: a per-row array's."""
    return tuple(c for i, c in enumerate(chunks) if i != axis % len(chunks))


def _target_chunks(target, chunks, axis):
    return chunks if target.dtype.kind == "f" else _row_chunks(chunks, axis)


def _check(got, expected, dtype, what, err_msg):
    assert_close(got, expected, dtype, what, err_msg=err_msg)


@pytest.mark.parametrize("option_id, dtype", OPTION_DTYPES)
@pytest.mark.parametrize("shape, axis, chunks", LAYOUTS)
def test_cross_entropy_matches_in_memory(client, rng, shape, axis, chunks, option_id, dtype):
    """Loss, gradient and fused call, every reduction, against nbxent in memory and the oracle."""
    options = OPTIONS_BY_ID[option_id]
    logits, target, keywords = make_inputs(rng, shape, axis, dtype, options)
    grad_output = rng.standard_normal(loss_shape(shape, axis))
    dx = _dask(logits, chunks)
    dt = _dask(target, _target_chunks(target, chunks, axis))
    lazy, expected = {}, {}
    for reduction in ("none", "mean", "sum"):
        g = grad_output if reduction == "none" else 0.75
        expected[reduction] = (
            nbxent.cross_entropy(logits, target, reduction=reduction, **keywords),
            nbxent.cross_entropy_with_grad(logits, target, reduction=reduction,
                                           grad_output=g, **keywords),
            R.cross_entropy(logits, target, reduction=reduction, **keywords),
            R.cross_entropy_grad(logits, target, reduction=reduction, grad_output=g,
                                 **keywords))
        dg = _dask(grad_output, _row_chunks(chunks, axis)) if reduction == "none" else 0.75
        lazy[reduction] = (
            nbxent.cross_entropy(dx, dt, reduction=reduction, **keywords),
            nbxent.cross_entropy_with_grad(dx, dt, reduction=reduction, grad_output=dg,
                                           **keywords),
            nbxent.cross_entropy_grad(dx, target, reduction=reduction, grad_output=dg,
                                      **keywords))
    assert all(isinstance(a, da.Array) for results in lazy.values()
               for a in (results[0], *results[1], results[2]))
    computed = compute(lazy)
    for reduction, (loss, (fused_loss, fused_grad), grad) in computed.items():
        in_memory, (in_memory_loss, in_memory_grad), oracle_loss, oracle_grad = expected[reduction]
        message = f"{reduction}:"
        for got in (loss, fused_loss):
            _check(got, in_memory, dtype, "loss", f"{message} loss vs in-memory")
            _check(got, oracle_loss, dtype, "loss", f"{message} loss vs oracle")
        for got in (fused_grad, grad):
            _check(got, in_memory_grad, dtype, "grad", f"{message} grad vs in-memory")
            _check(got, oracle_grad, dtype, "grad", f"{message} grad vs oracle")


@pytest.mark.parametrize("dtype", [pytest.param(F32, id="float32"),
                                   pytest.param(F64, id="float64")])
@pytest.mark.parametrize("shape, axis, chunks", LAYOUTS)
def test_normalize_matches_in_memory(client, rng, shape, axis, chunks, dtype):
    x = make_logits(rng, shape, dtype)
    x[0] = -np.inf          # a row (or map) of all -inf, and a -inf inside a chunk
    x.flat[-1] = -np.inf
    dx = _dask(x, chunks)
    lazy = {op: getattr(nbxent, op)(dx, axis=axis)
            for op in ("logsumexp", "log_softmax", "softmax", "entropy")}
    lazy.update({f"entropy-{r}": nbxent.entropy(dx, axis=axis, reduction=r)
                 for r in ("mean", "sum")})
    computed = compute(lazy)
    for name, got in computed.items():
        op, _, reduction = name.partition("-")
        keywords = {"reduction": reduction} if reduction else {}
        in_memory = getattr(nbxent, op)(x, axis=axis, **keywords)
        what = "loss" if op in ("logsumexp", "entropy") else "grad"
        tolerance = {"rtol": 1e-5 if dtype == F32 else 1e-12} if op == "log_softmax" else {}
        assert_close(got, in_memory, dtype, what, err_msg=f"{name} vs in-memory", **tolerance)
        assert_close(got, getattr(R, op)(x, axis=axis, **keywords), dtype, what,
                     err_msg=f"{name} vs oracle", **tolerance)


@pytest.mark.parametrize("dtype", [pytest.param(F32, id="float32"),
                                   pytest.param(F64, id="float64")])
def test_large_logits_split_classes(client, rng, dtype):
    """Logits at +-1e4 split over class chunks lose no digits (partials are re-based)."""
    logits = (rng.choice([-1e4, 1e4], (24, 30)) + rng.standard_normal((24, 30))).astype(dtype)
    target = rng.integers(0, 30, 24)
    target[:4] = np.argmax(logits[:4], axis=1)        # small losses next to 2e4 ones
    keywords = dict(weight=rng.uniform(0.5, 2, 30), label_smoothing=0.1, z_loss=1e-6)
    dx = da.from_array(logits, chunks=(8, 7))
    loss, grad = compute(nbxent.cross_entropy_with_grad(dx, target, reduction="none",
                                                        **keywords))
    assert_close(loss, R.cross_entropy(logits, target, reduction="none", **keywords), dtype,
                 "loss")
    assert_close(grad, R.cross_entropy_grad(logits, target, reduction="none", **keywords),
                 dtype, "grad", rtol=1e-5 if dtype == F32 else None)
    lse, entropy = compute((nbxent.logsumexp(dx), nbxent.entropy(dx)))
    assert_close(lse, R.logsumexp(logits), dtype, "loss")
    assert_close(entropy, R.entropy(logits), dtype, "loss", atol=1e-5 if dtype == F32 else None)


@pytest.mark.parametrize("dtype", [pytest.param(F32, id="float32"),
                                   pytest.param(F64, id="float64")])
def test_a_confident_row_keeps_its_digits_split_classes(client, rng, dtype):
    """A row whose last class leads the others by 20 or 30 has the tiny loss log1p(rest):
    merged across class chunks (the chunk at the max adding its sum's excess over one),
    with a class index or a probability target, it keeps its relative digits."""
    logits = rng.standard_normal((6, 40)) - np.where(np.arange(6) % 2, 30.0, 20.0)[:, None]
    logits[:, 0] -= 10.0
    logits[:, -1] = 0.0
    logits = logits.astype(dtype)
    precise = np.log1p(np.exp(logits[:, :-1].astype(np.float64)).sum(axis=1))
    dx = da.from_array(logits, chunks=(3, 11))
    for target in (np.full(6, 39), np.eye(40, dtype=dtype)[np.full(6, 39)]):
        loss = compute(nbxent.cross_entropy(
            dx, target if target.ndim == 1 else da.from_array(target, chunks=(3, 11)),
            reduction="none"))
        error = np.abs(loss - precise) / precise
        assert error.max() <= (4e-7 if dtype == F32 else 1e-13), error


@pytest.mark.parametrize("dtype, offset, option_id", [
    pytest.param(F32, 1e8, "weight-smooth-ignore", id="float32-1e8"),
    pytest.param(F32, 1e30, "prob-weight-smooth", id="float32-1e30"),
    pytest.param(F64, 1e16, "plain", id="float64-1e16"),
    pytest.param(F64, 1e300, "plain", id="float64-1e300")])
@pytest.mark.parametrize("shape, axis, chunks", [LAYOUTS[0], LAYOUTS[1], LAYOUTS[3]])
def test_any_offset_of_the_logits(client, rng, shape, axis, chunks, dtype, offset, option_id):
    """Row and class chunks are exact at any common offset of the logits (as in memory)."""
    logits, target, keywords = make_inputs(rng, shape, axis, dtype, OPTIONS_BY_ID[option_id])
    logits = (logits.astype(np.float64) + offset).astype(dtype)
    dx = _dask(logits, chunks)
    lazy = {"loss+grad": nbxent.cross_entropy_with_grad(dx, target, reduction="none",
                                                        **keywords)}
    lazy.update({op: getattr(nbxent, op)(dx, axis=axis)
                 for op in ("logsumexp", "log_softmax", "softmax", "entropy")})
    computed = compute(lazy)
    loss, grad = computed.pop("loss+grad")
    assert_close(loss, R.cross_entropy(logits, target, reduction="none", **keywords), dtype,
                 "loss")
    assert_close(grad, R.cross_entropy_grad(logits, target, reduction="none", **keywords),
                 dtype, "grad")
    for op, got in computed.items():
        what = "loss" if op in ("logsumexp", "entropy") else "grad"
        assert_close(got, getattr(R, op)(logits, axis=axis), dtype, what, err_msg=op,
                     atol=1e-5 if op == "entropy" and dtype == F32 else None)


def test_results_are_lazy_and_keep_the_chunks(client, rng):
    logits = make_logits(rng, (40, 11), np.float16)
    target = rng.integers(0, 11, 40)
    dx = da.from_array(logits, chunks=(16, 4))
    loss, grad = nbxent.cross_entropy_with_grad(dx, target, reduction="none")
    assert (loss.chunks, loss.dtype) == (((16, 16, 8),), np.float32)
    assert (grad.chunks, grad.dtype) == (dx.chunks, np.float16)
    mean = nbxent.cross_entropy(dx, target)
    assert (mean.shape, mean.dtype) == ((), np.float32)
    assert nbxent.logsumexp(dx).chunks == ((16, 16, 8),)
    assert nbxent.softmax(dx).chunks == dx.chunks
    assert nbxent.backend_of(dx, target) == "dask"
    assert nbxent.backend_of(target, dx) == "dask"
    mean, grad = compute((mean, grad))
    assert_close(mean, nbxent.cross_entropy(logits, target), np.float16, "loss")
    assert_close(grad, nbxent.cross_entropy_grad(logits, target, reduction="none"),
                 np.float16, "grad")


def test_mean_when_every_target_is_ignored_is_nan(client, rng):
    logits = make_logits(rng, (12, 5), np.float32)
    target = np.full(12, -100)
    for chunks in ((4, 5), (4, 2)):
        dx = da.from_array(logits, chunks=chunks)
        loss, grad = compute(nbxent.cross_entropy_with_grad(dx, target, z_loss=0.1))
        assert np.isnan(loss) and loss.dtype == np.float32
        np.testing.assert_array_equal(grad, np.zeros_like(logits))


# ------------------------------------------------------------------ bad input

def test_out_is_a_type_error_before_anything_runs(rng):
    logits = make_logits(rng, (8, 5), np.float32)
    dx = da.from_array(logits, chunks=(4, 5))
    target = np.arange(8) % 5
    for call in (lambda: nbxent.cross_entropy_grad(dx, target, out=np.empty_like(logits)),
                 lambda: nbxent.cross_entropy_with_grad(dx, target, out=dx),
                 lambda: nbxent.log_softmax(dx, out=dx),
                 lambda: nbxent.softmax(dx, out=np.empty_like(logits))):
        with pytest.raises(TypeError, match=r"out= is not supported with Dask arrays: they are "
                                            r"immutable"):
            call()


def test_dask_mixed_with_a_gpu_array_names_both(rng):
    dx = da.from_array(make_logits(rng, (40, 5), np.float32), chunks=(8, 5))
    with pytest.raises(TypeError, match=r"dask\.array\.core\.Array \(dask\).*FakeGpuArray "
                                        r"\(cuda\)"):
        nbxent.cross_entropy(dx, FakeGpuArray((40,), "<i8"))


def test_shape_errors_are_raised_at_call_time(rng):
    dx = da.from_array(make_logits(rng, (8, 5), np.float32), chunks=(4, 5))
    with pytest.raises(ValueError, match=r"class-index target of shape \(7,\) does not fit "
                                         r"logits of shape \(8, 5\)"):
        nbxent.cross_entropy(dx, np.zeros(7, int))


@pytest.mark.parametrize("chunks", [(8, 5), (8, 2)], ids=["rows", "classes"])
def test_out_of_range_target_names_the_global_position(client, rng, chunks):
    logits = make_logits(rng, (24, 5), np.float32)
    target = rng.integers(0, 5, 24)
    target[19] = 7
    dx = da.from_array(logits, chunks=chunks)
    lazy = nbxent.cross_entropy(dx, target)          # nothing is checked until compute
    with pytest.raises(ValueError, match=r"target 7 at position \(19,\) is not a class index "
                                         r"in \[0, 5\) nor ignore_index=-100"):
        lazy.compute()
    loss, grad = compute(nbxent.cross_entropy_with_grad(dx, target, reduction="none",
                                                        validate=False))
    in_memory = nbxent.cross_entropy_with_grad(logits, target, reduction="none", validate=False)
    assert_close(loss, in_memory[0], np.float32, "loss")
    assert_close(grad, in_memory[1], np.float32, "grad")
    assert np.isnan(loss[19]) and np.isnan(grad[19]).all()


# ------------------------------------------------------------------ a worker dies

def test_worker_killed_mid_computation(client, rng):
    """SIGKILL one worker process while chunks run: Dask recomputes its lost work on the
    other worker and the restarted one, and the result equals the in-memory loss, or the
    call fails with distributed's KilledWorker naming the task (never a wrong number)."""
    logits = make_logits(rng, (480, 33), np.float32)
    target = rng.integers(0, 33, 480)
    expected = nbxent.cross_entropy_with_grad(logits, target, label_smoothing=0.1)

    def slow(block):   # defined here, so it travels by value, not by module name
        time.sleep(0.1)
        return block

    dx = da.from_array(logits, chunks=(20, 11)).map_blocks(slow, dtype=logits.dtype)
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    killer = threading.Timer(1.0, os.kill, (victim, signal.SIGKILL))
    killer.start()
    try:
        loss, grad = dask.compute(*nbxent.cross_entropy_with_grad(dx, target,
                                                                  label_smoothing=0.1))
    except distributed.scheduler.KilledWorker as exc:
        assert "died" in str(exc), exc
    else:
        assert_close(loss, expected[0], np.float32, "loss")
        assert_close(grad, expected[1], np.float32, "grad")
    finally:
        killer.join()
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(os.getpid).values()
