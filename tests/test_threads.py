"""Threads: concurrent calls from Python threads, numba.set_num_threads (the same bits
whatever the count), rows whose classes are split into work items, and the tiles
the tile kernel cuts rows into.

Concurrency and thread-count checks run in subprocesses: a threading layer that
is not thread-safe aborts the whole process, which must show up as one failed
test, not a dead test session.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
import types

import numba
import numpy as np
import pytest

import nbxent
from nbxent import reference as R
from nbxent._config import CPU, CpuSettings
from nbxent.cpu import backend

from conftest import assert_close

pytestmark = pytest.mark.slow  # subprocesses, a million-class row, every dtype


def _run(code, timeout=600, **env_extra):
    env = {**os.environ, **env_extra}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, env=env, timeout=timeout,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, (f"subprocess exited with {result.returncode}\n"
                                    f"stdout:\n{result.stdout[-3000:]}\n"
                                    f"stderr:\n{result.stderr[-3000:]}")
    return result.stdout


def _layer_available(layer):
    if layer == "default":
        return True
    code = f"""
        import numba, numpy as np
        from numba import njit, prange
        @njit(parallel=True)
        def f(a):
            s = 0.0
            for i in prange(a.size):
                s += a[i]
            return s
        f(np.ones(4))
        print(numba.threading_layer())
    """
    try:
        return layer in _run(code, timeout=120, NUMBA_THREADING_LAYER=layer)
    except AssertionError:
        return False


CONCURRENT = """
    import json, threading
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    import nbxent
    from nbxent import reference as R

    rng = np.random.default_rng(0)
    cases = []
    for k, (n, c, dtype) in enumerate([(64, 1000, np.float32), (3, 20000, np.float64),
                                       (257, 33, np.float32), (1, 50000, np.float32),
                                       (16, 127, np.float16), (500, 10, np.float64)]):
        x = (rng.standard_normal((n, c)) * 3).astype(dtype)
        t = rng.integers(0, c, n)
        t[::7] = -100
        kw = dict(label_smoothing=0.1 * (k % 2), z_loss=1e-3 * (k % 3 == 0),
                  weight=rng.uniform(0.5, 2, c) if k % 2 else None)
        cases.append((x, t, kw, R.cross_entropy(x, t, reduction="none", **kw),
                      R.cross_entropy_grad(x, t, reduction="none", **kw)))
    # Warm every variant serially first: the test is about running, not compiling, at once.
    for x, t, kw, _, _ in cases:
        nbxent.cross_entropy_with_grad(x, t, reduction="none", **kw)

    start = threading.Barrier(8)
    def work(i):
        start.wait()
        worst = 0.0
        for rep in range(6):
            x, t, kw, loss_ref, grad_ref = cases[(i + rep) % len(cases)]
            loss, grad = nbxent.cross_entropy_with_grad(x, t, reduction="none", **kw)
            tol = 1e-3 if x.dtype == np.float16 else 1e-5
            worst = max(worst, float(np.max(np.abs(loss - loss_ref) / (1 + np.abs(loss_ref)))),
                        float(np.max(np.abs(grad - grad_ref))) * (1e-2 if x.dtype == np.float16
                                                                   else 1.0))
            lse = nbxent.logsumexp(x)
            worst = max(worst, float(np.max(np.abs(lse - R.logsumexp(x))
                                            / (1 + np.abs(R.logsumexp(x))))))
        return worst
    with ThreadPoolExecutor(8) as pool:
        errors = list(pool.map(work, range(8)))
    import numba
    print("RESULT", json.dumps({"errors": errors, "layer": numba.threading_layer()}))
"""


@pytest.mark.parametrize("layer", ["default", "workqueue", "omp", "tbb"])
def test_concurrent_calls_from_python_threads(layer):
    """Eight Python threads call the parallel kernels at once; every answer is right,
    every result's memory recycled (``nbxent.cpu.recycling``) as soon as it is dropped."""
    if not _layer_available(layer):
        pytest.skip(f"threading layer {layer!r} is not available here")
    env = {"NBXENT_CPU_RECYCLE_MIN_BYTES": "0"}
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    out = _run(CONCURRENT, **env)
    result = json.loads(out.split("RESULT", 1)[1])
    assert max(result["errors"]) < 1e-5, result


# ------------------------------------------------------------------ thread counts

def _inputs(rng, n, c, dtype=np.float32):
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    t = rng.integers(0, c, n)
    return x, t


@pytest.mark.parametrize("shape", [(1000, 100), (3, 40000), (1, 200_000)],
                         ids=["many-rows", "few-rows", "one-row"])
def test_set_num_threads_gives_the_same_bits(rng, shape):
    """Every result, 'sum' and 'mean' included, is identical bit for bit whatever the
    number of threads: a row's classes are split by a rule that does not read it."""
    x, t = _inputs(rng, *shape)
    kw = dict(label_smoothing=0.1, z_loss=1e-4, weight=rng.uniform(0.5, 1.5, shape[1]))
    saved = numba.get_num_threads()
    results = {}
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results[threads] = [nbxent.cross_entropy_with_grad(x, t, reduction=reduction, **kw)
                                for reduction in ("none", "sum", "mean")]
            assert numba.get_num_threads() == threads
    finally:
        numba.set_num_threads(saved)
    (loss, grad), _, _ = results[1]
    assert_close(loss, R.cross_entropy(x, t, reduction="none", **kw), np.float32, "loss")
    assert_close(grad, R.cross_entropy_grad(x, t, reduction="none", **kw), np.float32, "grad")
    for one, many in zip(results[1], results[max(results)]):
        np.testing.assert_array_equal(many[0], one[0])
        np.testing.assert_array_equal(many[1], one[1])


def test_weighted_mean_denominator_is_the_same_bits_whatever_the_threads():
    """The summed class weight that 'mean' divides by, over blocks of rows the threads
    share, is summed in an order fixed by the rows alone (a reduction over the threads
    differed in its last bits between 1 and 2 threads here)."""
    from nbxent.cpu.kernels import scan_targets
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 1000, 300_001)
    rows[::7] = -100
    weight = rng.uniform(0.1, 3.0, 1000)
    saved = numba.get_num_threads()
    sums = {}
    try:
        for threads in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            sums[threads] = scan_targets(rows, 1000, -100, weight)
    finally:
        numba.set_num_threads(saved)
    counted = rows != -100
    for result in sums.values():
        assert result == sums[1]
    assert sums[1][0] == -1 and sums[1][2] == counted.sum()
    assert sums[1][1] == pytest.approx(math.fsum(weight[rows[counted]]), rel=1e-13)


THREAD_COUNTS = """
    import hashlib
    import json
    import numba
    import numpy as np
    import nbxent
    from nbxent import reference as R
    rng = np.random.default_rng(1)
    report = {}
    for name, (n, c) in {"one-row": (1, 300000), "five-rows": (5, 60000),
                         "many-rows": (333, 257)}.items():
        x = (rng.standard_normal((n, c)) * 4).astype(np.float32)
        t = rng.integers(0, c, n)
        kw = dict(label_smoothing=0.05, z_loss=1e-4)
        ref_loss = R.cross_entropy(x, t, reduction="none", **kw)
        ref_grad = R.cross_entropy_grad(x, t, reduction="none", **kw)
        for threads in (1, 2, 3, 8):
            numba.set_num_threads(threads)
            loss, grad = nbxent.cross_entropy_with_grad(x, t, reduction="none", **kw)
            mean = nbxent.cross_entropy(x, t, **kw)
            report[f"{name}/{threads}"] = [
                float(np.max(np.abs(loss - ref_loss) / np.abs(ref_loss))),
                float(np.max(np.abs(grad - ref_grad))),
                hashlib.sha256(loss.tobytes() + grad.tobytes() + mean.tobytes()).hexdigest()]
    print("RESULT", json.dumps(report))
"""


def test_more_threads_than_cores_and_uneven_splits():
    """NUMBA_NUM_THREADS=8 (more than CI's 2 cores): 1, 2, 3 and 8 threads, rows fewer than
    threads (the class axis is split) and not a multiple of them, all within tolerance
    and identical bit for bit."""
    out = _run(THREAD_COUNTS, NUMBA_NUM_THREADS="8")
    report = json.loads(out.split("RESULT", 1)[1])
    bad = {k: v for k, v in report.items() if not (v[0] <= 1e-5 and v[1] <= 1e-6)}
    assert not bad, bad
    for name in ("one-row", "five-rows", "many-rows"):
        digests = {k: v[2] for k, v in report.items() if k.startswith(name + "/")}
        assert len(set(digests.values())) == 1, digests


# ------------------------------------------------------------------ one huge row

@pytest.fixture
def all_threads():
    saved = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    yield numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(saved)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_one_row_of_a_million_classes(rng, all_threads, dtype):
    c = 1_000_000
    x = (rng.standard_normal((1, c)) * 3).astype(dtype)
    t = np.array([rng.integers(0, c)])
    kw = dict(label_smoothing=0.1, z_loss=1e-4, softcap=30.0)
    loss, grad = nbxent.cross_entropy_with_grad(x, t, **kw)
    assert_close(loss, R.cross_entropy(x, t, **kw), dtype, "loss")
    assert_close(grad, R.cross_entropy_grad(x, t, **kw), dtype, "grad")
    assert_close(nbxent.logsumexp(x), R.logsumexp(x), dtype, "loss")
    assert_close(nbxent.softmax(x), R.softmax(x), dtype, "grad")
    assert_close(nbxent.entropy(x), R.entropy(x), dtype, "loss")
    work = x.copy()
    nbxent.cross_entropy_grad(work, t, out=work, **kw)
    assert_close(work, R.cross_entropy_grad(x, t, **kw), dtype, "grad")


def _split_case(rng, kind, c):
    """A single row whose parts (split over threads) hold a trap."""
    x = (rng.standard_normal((1, c)) * 2).astype(np.float32)
    t = np.array([c // 2])
    if kind == "max-in-last-part":
        x[0, -1] = 50.0
    elif kind == "max-in-first-part":
        x[0, 0] = 50.0
    elif kind == "first-part-all-minus-inf":
        x[0, : c // 2 - 1] = -np.inf
    elif kind == "last-part-all-minus-inf":
        x[0, c // 2 + 1:] = -np.inf
    elif kind == "nan-in-one-part":
        x[0, c - 3] = np.nan
    elif kind == "plus-inf-in-one-part":
        x[0, 5] = np.inf
    elif kind == "target-minus-inf":
        x[0, c // 2] = -np.inf
    elif kind == "all-minus-inf":
        x[0, :] = -np.inf
    elif kind == "ignored":
        t[0] = -100
    elif kind == "huge-logits":
        x *= 1e4
    return x, t


def _option_keywords(rng, option, shape, axis=-1, *, softcap):
    """Keywords of one option set, and the float32 probability target it needs (or None)."""
    n_classes = shape[axis]
    if option == "weight-smooth":
        return dict(weight=rng.uniform(0.5, 2, n_classes), label_smoothing=0.2), None
    if option == "z_loss-smooth-softcap":
        # (with smoothing: the kernel variant the layout tests compile, none of its own)
        return dict(z_loss=1e-3, label_smoothing=0.1, softcap=softcap), None
    if option == "prob":
        target = R.softmax(rng.standard_normal(shape), axis=axis).astype(np.float32)
        return dict(label_smoothing=0.1), target
    return {}, None


SPLIT_KINDS = ["plain", "max-in-last-part", "max-in-first-part", "first-part-all-minus-inf",
               "last-part-all-minus-inf", "nan-in-one-part", "plus-inf-in-one-part",
               "target-minus-inf", "all-minus-inf", "ignored", "huge-logits"]


@pytest.mark.parametrize("option", ["plain", "weight-smooth", "z_loss-smooth-softcap", "prob"])
@pytest.mark.parametrize("kind", SPLIT_KINDS)
def test_class_split_edge_cases(rng, all_threads, kind, option):
    """Force the class axis of one row to be split (small split threshold) and check the
    partial statistics combine right, whatever each part holds."""
    with CPU.override(split_min_classes=16):
        c = 4099
        x, t = _split_case(rng, kind, c)
        kw, prob_target = _option_keywords(rng, option, (1, c), softcap=20.0)
        t = t if prob_target is None else prob_target
        for reduction in ("none", "sum"):
            loss, grad = nbxent.cross_entropy_with_grad(x, t, reduction=reduction, **kw)
            scale = 1e4 if kind == "huge-logits" else 1.0
            assert_close(loss, R.cross_entropy(x, t, reduction=reduction, **kw), np.float32, "loss",
                         atol=1e-6 * scale)
            assert_close(grad, R.cross_entropy_grad(x, t, reduction=reduction, **kw), np.float32,
                         "grad")
        assert_close(nbxent.logsumexp(x), R.logsumexp(x), np.float32, "loss")
        assert_close(nbxent.softmax(x), R.softmax(x), np.float32, "grad")
        assert_close(nbxent.log_softmax(x), R.log_softmax(x), np.float32, "grad", rtol=1e-5)


def test_split_threshold_really_splits(rng, all_threads):
    """The class-split path is the one the edge cases above exercise: with the threshold
    lowered, a one-row call gives the same answer as the unsplit call, within rounding."""
    x, t = _split_case(rng, "plain", 5000)
    with CPU.override(split_min_classes=10**9):
        unsplit = nbxent.cross_entropy_with_grad(x, t)
    with CPU.override(split_min_classes=16):
        split = nbxent.cross_entropy_with_grad(x, t)
    np.testing.assert_allclose(split[0], unsplit[0], rtol=1e-6)
    np.testing.assert_allclose(split[1], unsplit[1], atol=1e-8)


@pytest.mark.parametrize("n_rows, n_classes, inner, expected", [
    pytest.param(10**6, 10, 1, (True, 409, True), id="short-rows-elements-per-tile"),
    pytest.param(65536, 100, 1, (True, 96, True), id="short-rows-fewest-positions"),
    pytest.param(500, 10, 1, (False, 1, False), id="too-few-rows-for-two-tiles"),
    pytest.param(65536, 300, 1, (False, 1, False), id="long-rows"),
    pytest.param(8 * 512 * 512, 21, 512 * 512, (True, 256, False), id="nchw-fewest-run"),
    pytest.param(4 * 64, 4, 64, (True, 1024, False), id="nchw-elements-per-tile"),
])
def test_tile_width(n_rows, n_classes, inner, expected):
    """Tiles hold ``tile_elements`` logits, but never fewer positions than
    ``tile_min_width`` (short rows) or ``tile_min_run`` (classes not last)."""
    settings = CpuSettings(tile_max_classes=192, tile_elements=4096, tile_min_width=96,
                           tile_min_run=256)
    logits = types.SimpleNamespace(n_rows=n_rows, n_classes=n_classes, inner=inner)
    assert backend._shape(settings, logits) == expected


TILE_CASES = [pytest.param((40, 10), -1, id="short-rows-40x10"),
              pytest.param((3, 5, 37), 1, id="class-middle-3x5x37"),
              pytest.param((2, 7, 3, 11), 1, id="nchw-2x7x3x11"),
              pytest.param((37, 3), 0, id="axis0-37x3")]


@pytest.mark.parametrize("option", ["plain", "weight-smooth", "z_loss-smooth-softcap", "prob"])
@pytest.mark.parametrize("shape, axis", TILE_CASES)
def test_tile_kernel_geometry(rng, shape, axis, option):
    """Tiles of 8 positions: several tiles per batch item and a partial last one, for
    short rows (transposed into the tile on the way in and out) and for a class axis
    that is not the last; ignored rows among them; and the gradient in place."""
    with CPU.override(tile_elements=8, tile_min_width=8, tile_min_run=8, tile_max_classes=16):
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        axis_ = axis % len(shape)
        loss_shape = shape[:axis_] + shape[axis_ + 1:]
        t = rng.integers(0, shape[axis_], loss_shape)
        t.reshape(-1)[::5] = -100
        kw, prob_target = _option_keywords(rng, option, shape, axis, softcap=5.0)
        t = t if prob_target is None else prob_target
        for reduction in ("none", "mean"):
            loss, grad = nbxent.cross_entropy_with_grad(x, t, axis=axis, reduction=reduction, **kw)
            assert_close(loss, R.cross_entropy(x, t, axis=axis, reduction=reduction, **kw),
                         np.float32, "loss")
            assert_close(grad, R.cross_entropy_grad(x, t, axis=axis, reduction=reduction, **kw),
                         np.float32, "grad")
        in_place = x.copy()
        nbxent.cross_entropy_grad(in_place, t, axis=axis, out=in_place, **kw)
        np.testing.assert_array_equal(in_place, nbxent.cross_entropy_grad(x, t, axis=axis, **kw))
        assert_close(nbxent.logsumexp(x, axis=axis), R.logsumexp(x, axis=axis), np.float32, "loss")
        assert_close(nbxent.entropy(x, axis=axis), R.entropy(x, axis=axis), np.float32, "loss")
        assert_close(nbxent.softmax(x, axis=axis), R.softmax(x, axis=axis), np.float32, "grad")
        assert_close(nbxent.log_softmax(x, axis=axis), R.log_softmax(x, axis=axis), np.float32,
                     "grad", rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_map_tiles_start_on_a_cache_line_and_results_do_not_move(rng, dtype):
    """The tiles of an NCHW map start where a cache line of its logits does, whatever the
    array's address (a vector load across two lines costs time), and every result bit
    is the same at every address: the first tile of each image is cut short instead."""
    shape, width = (2, 5, 61), 16
    source = rng.standard_normal(shape).astype(dtype)
    t = rng.integers(0, shape[1], (shape[0], shape[2]))
    buffer = np.empty(source.size + 64, dtype)
    expected = None
    with CPU.override(tile_elements=width, tile_min_run=width):
        for shift in range(64 // source.itemsize):
            start = -buffer.ctypes.data % 64 // source.itemsize + shift
            x = buffer[start:start + source.size].reshape(shape)
            x[...] = source
            offset = backend._tile_offset(x.reshape(-1), backend.Geometry(0, 0, 0, 0), width)
            assert (x.ctypes.data + (width - offset) % width * x.itemsize) % 64 == 0
            results = [*nbxent.cross_entropy_with_grad(x, t, axis=1, reduction="none"),
                       nbxent.cross_entropy(x, t, axis=1)]
            if expected is None:
                expected = results
                assert_close(results[0], R.cross_entropy(source, t, axis=1, reduction="none"),
                             dtype, "loss")
            for got, want in zip(results, expected):
                np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(x, source)
