"""nbxent.linear_cross_entropy(_with_grad): the fused classifier head.

Checked against the float64 oracle with the logits materialised
(``nbxent.reference`` on ``features @ weight.T + bias``, then the two products),
over every option, tiles that split rows and classes unevenly, ignored rows and
both dtypes; against ``torch.nn.functional.linear_cross_entropy`` in float64
when torch is installed; and for bad input (the error, and nothing modified).
The GPU path is the same code over CuPy: the ``cuda`` backend runs it where
CuPy sees a GPU.
"""

import numpy as np
import pytest

import nbxent
from nbxent import reference
from nbxent.linear import tile_shape

from conftest import _FACTORIES

N, D, C = 23, 6, 17

# (tile option, id): whole rows in one tile or several uneven blocks; classes split
# unevenly, in one row block or several; a budget that forces split classes.
TILES = [
    pytest.param({}, id="default"),
    pytest.param({"chunk": 5}, id="rows5"),
    pytest.param({"chunk": (7, 4)}, id="7x4"),
    pytest.param({"chunk": (64, 16)}, id="allrows-x16"),
    pytest.param({"memory_budget": 2000}, id="budget2000"),
]

OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"class_weight": True}, id="weighted"),
    pytest.param({"class_weight": True, "label_smoothing": 0.2}, id="weighted-smoothing"),
    pytest.param({"z_loss": 0.05}, id="zloss"),
    pytest.param({"softcap": 2.5, "label_smoothing": 0.1}, id="softcap-smoothing"),
    pytest.param({"probs": True, "class_weight": True, "label_smoothing": 0.1}, id="probs"),
    pytest.param({"ignore_index": 3, "z_loss": 0.01, "class_weight": True}, id="ignore3"),
]

# float32: the GEMMs round each logit and gradient product at ~d * 2**-24 relative.
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def _inputs(rng, dtype, options, n=N, d=D, c=C, bias=True):
    features = rng.standard_normal((n, d)).astype(dtype)
    weight = (rng.standard_normal((c, d)) / np.sqrt(d)).astype(dtype) * 3
    b = rng.standard_normal(c).astype(dtype) if bias else None
    if options.get("probs"):
        target = rng.dirichlet(np.ones(c), n).astype(dtype)
    else:
        target = rng.integers(0, c, n)
        target[::4] = options.get("ignore_index", -100)  # ignored rows
    keywords = {k: v for k, v in options.items() if k != "probs"}
    if keywords.get("class_weight") is True:
        keywords["class_weight"] = rng.uniform(0.2, 2.0, c)
    return features, weight, b, target, keywords


def _expected(features, weight, bias, target, keywords, reduction, grad_output):
    """(loss, d_features, d_weight, d_bias) in float64 with the logits materialised."""
    x, w = features.astype(np.float64), weight.astype(np.float64)
    logits = x @ w.T + (0 if bias is None else bias.astype(np.float64))
    options = dict(keywords)
    options["weight"] = options.pop("class_weight", None)
    loss = reference.cross_entropy(logits, target, reduction=reduction, **options)
    g = reference.cross_entropy_grad(logits, target, reduction=reduction,
                                     grad_output=grad_output, **options)
    return loss, g @ w, g.T @ x, None if bias is None else g.sum(axis=0)


def _check(got, expected, dtype, err_msg=""):
    names = ("loss", "d_features", "d_weight", "d_bias")
    for name, a, e in zip(names, got, expected):
        if e is None:
            assert a is None, f"{err_msg} {name}"
            continue
        assert a.dtype == (np.float64 if dtype == np.float64 else np.float32), name
        tol = TOL[dtype]
        scale = max(1.0, float(np.max(np.abs(e)))) if np.size(e) else 1.0
        np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=tol["rtol"],
                                   atol=tol["atol"] * scale, err_msg=f"{err_msg} {name}")


def _matches_materialised_logits(rng, tiles, option, reduction, dtype):
    features, weight, bias, target, keywords = _inputs(rng, dtype, option)
    grad_output = rng.standard_normal(N) if reduction == "none" else 0.75
    before = [a.copy() for a in (features, weight, bias, target)]
    got = nbxent.linear_cross_entropy_with_grad(
        features, weight, target, bias=bias, reduction=reduction, grad_output=grad_output,
        **keywords, **tiles)
    expected = _expected(features, weight, bias, target, keywords, reduction, grad_output)
    _check(got, expected, dtype)
    loss_only = nbxent.linear_cross_entropy(features, weight, target, bias=bias,
                                            reduction=reduction, **keywords, **tiles)
    _check([loss_only], expected[:1], dtype, "loss only:")
    for a, b in zip(before, (features, weight, bias, target)):
        np.testing.assert_array_equal(a, b)  # inputs untouched


@pytest.mark.slow  # every option's float64 kernels; the quick subset checks float32 below
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("tiles", TILES)
def test_float64_matches_materialised_logits(rng, tiles, option, reduction):
    _matches_materialised_logits(rng, tiles, option, reduction, np.float64)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("option", [OPTIONS[0], OPTIONS[2], OPTIONS[4], OPTIONS[6]])
@pytest.mark.parametrize("tiles", TILES)
def test_float32_within_gemm_rounding(rng, tiles, option, reduction):
    _matches_materialised_logits(rng, tiles, option, reduction, np.float32)


@pytest.mark.parametrize("tiles", [{}, {"chunk": (3, 5)}], ids=["whole-rows", "split"])
def test_without_bias_and_one_row(rng, tiles):
    features, weight, _, target, _ = _inputs(rng, np.float64, {}, bias=False)
    got = nbxent.linear_cross_entropy_with_grad(features, weight, target, **tiles)
    _check(got, _expected(features, weight, None, target, {}, "mean", 1.0), np.float64)
    # A 1-D input is one row: a 0-d loss ('none' too) and d_features of shape (d,).
    row, t = features[1], target[1]
    loss, d_row, d_weight, d_bias = nbxent.linear_cross_entropy_with_grad(
        row, weight, t, reduction="none", **tiles)
    expected = _expected(row[None], weight, None, t[None], {}, "none", 1.0)
    assert loss.shape == () and d_row.shape == (D,) and d_bias is None
    _check((loss, d_row, d_weight), (expected[0][0], expected[1][0], expected[2]), np.float64)


@pytest.mark.parametrize("tiles", [{}, {"chunk": (4, 5)}], ids=["whole-rows", "split"])
def test_every_row_ignored_and_empty_batch(rng, tiles):
    features, weight, bias, target, _ = _inputs(rng, np.float64, {})
    ignored = np.full(N, -100)
    loss, d_features, d_weight, d_bias = nbxent.linear_cross_entropy_with_grad(
        features, weight, ignored, bias=bias, **tiles)
    assert np.isnan(loss)  # 'mean' over no target, as in torch
    assert not np.any(d_features) and not np.any(d_weight) and not np.any(d_bias)
    empty = features[:0], weight, target[:0]
    assert float(nbxent.linear_cross_entropy(*empty, reduction="sum", **tiles)) == 0.0
    assert np.isnan(nbxent.linear_cross_entropy(*empty, **tiles))
    _, d_features, d_weight, _ = nbxent.linear_cross_entropy_with_grad(*empty, **tiles)
    assert d_features.shape == (0, D) and not np.any(d_weight)


def test_products_in_turn_without_threadpoolctl(rng, monkeypatch):
    """Without threadpoolctl each product of a tile runs whole, one after the other."""
    import nbxent.linear

    monkeypatch.setitem(nbxent.linear._shared, "controller", None)
    features, weight, bias, target, keywords = _inputs(rng, np.float64, {"z_loss": 0.01})
    for tiles in ({"chunk": 5}, {"chunk": (6, 7)}):
        got = nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias,
                                                    **keywords, **tiles)
        _check(got, _expected(features, weight, bias, target, keywords, "mean", 1.0),
               np.float64, str(tiles))


def test_kernels_run_on_one_thread_in_each_share(rng, monkeypatch):
    """A tile's loss and gradient go in two shares of its rows, each share's kernel on one
    Numba thread (no OpenMP team left spinning beside the other share's GEMM); the
    caller's thread count is as it was after the call, and after a failed one."""
    import numba

    import nbxent.linear

    row_cross_entropy = nbxent.linear.partials.row_cross_entropy
    seen = []

    def spy(logits, *args, **kwargs):
        seen.append((len(logits), numba.get_num_threads()))
        return row_cross_entropy(logits, *args, **kwargs)

    monkeypatch.setattr(nbxent.linear.partials, "row_cross_entropy", spy)
    features, weight, bias, target, keywords = _inputs(rng, np.float64, {"z_loss": 0.01})
    before = numba.get_num_threads()
    got = nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias,
                                                chunk=5, **keywords)
    _check(got, _expected(features, weight, bias, target, keywords, "mean", 1.0), np.float64)
    assert numba.get_num_threads() == before
    assert sorted(rows for rows, _ in seen) == sorted([2, 3] * 4 + [1, 2])  # 23 rows
    assert {threads for _, threads in seen} == {1}

    def failing(*args, **kwargs):
        raise RuntimeError("a kernel failed")

    monkeypatch.setattr(nbxent.linear.partials, "row_cross_entropy", failing)
    with pytest.raises(RuntimeError, match="a kernel failed"):
        nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias, chunk=5)
    assert numba.get_num_threads() == before


def test_large_logits_are_exact_across_class_chunks(rng):
    """Logits near 1e4 (float64): the split tiles' shift + log-sum loses no digits."""
    features, weight, bias, target, _ = _inputs(rng, np.float64, {})
    bias = bias + 1e4
    got = nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias,
                                                chunk=(6, 5), z_loss=1e-6)
    _check(got, _expected(features, weight, bias, target, {"z_loss": 1e-6}, "mean", 1.0),
           np.float64)


def test_tile_shape_keeps_the_budget():
    # Whole rows when 32 rows fit: 7/8 of the budget (1/12 of the logits) for the tile.
    rows, classes = tile_shape(8192, 256, 100_000, 4)
    assert classes == 100_000 and rows * classes * 4 <= 8192 * 100_000 * 4 // 12 * 7 // 8
    rows, classes = tile_shape(8192, 256, 100_000, 4, memory_budget=1 << 20)
    assert rows == 32 and classes < 100_000 and rows * classes * 48 <= 1 << 20
    assert tile_shape(10, 3, 7, 8) == (10, 7)  # small problems: one tile
    assert tile_shape(10, 3, 7, 8, chunk=(4, None)) == (4, 7)


def test_peak_memory_is_a_fraction_of_the_logits(rng):
    """tracemalloc sees NumPy's buffers: beyond the inputs and the three gradients, a
    default call holds at most 10 % of the N x C logits."""
    import tracemalloc

    n, d, c = 4096, 16, 8192  # logits of 128 MiB: over the 4 MiB floor of the budget
    features, weight, bias, target, _ = _inputs(rng, np.float32, {}, n=n, d=d, c=c)
    nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias)  # warm
    outputs = (n * d + c * d + c) * 4
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    assert peak - outputs <= 0.10 * n * c * 4, (peak - outputs) / (n * c * 4)


# ---------------------------------------------------------------- PyTorch

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option", [
    pytest.param({}, id="plain"),
    pytest.param({"class_weight": True, "label_smoothing": 0.2}, id="weighted-smoothing"),
    pytest.param({"ignore_index": 3, "class_weight": True}, id="ignore3-weighted"),
    pytest.param({"probs": True, "label_smoothing": 0.1}, id="probs"),
])
@pytest.mark.parametrize("chunked", [False, True], ids=["torch-reference", "torch-chunked"])
def test_matches_torch_linear_cross_entropy(rng, option, reduction, chunked):
    torch = pytest.importorskip("torch")
    if not hasattr(torch.nn.functional, "linear_cross_entropy"):
        pytest.skip("torch.nn.functional.linear_cross_entropy needs PyTorch 2.13")
    features, weight, bias, target, keywords = _inputs(rng, np.float64, option)
    grad_output = rng.standard_normal(N) if reduction == "none" else 1.0
    tensors = [torch.tensor(a, requires_grad=True) for a in (features, weight, bias)]
    class_weight = keywords.get("class_weight")
    torch_keywords = dict(linear_bias=tensors[2], reduction=reduction,
                          label_smoothing=keywords.get("label_smoothing", 0.0),
                          weight=None if class_weight is None else torch.tensor(class_weight))
    if not option.get("probs"):
        torch_keywords["ignore_index"] = keywords.get("ignore_index", -100)
    if chunked:  # torch's batch-chunked path (it falls back, warning, on what it lacks)
        torch_keywords["options"] = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=8)
    with pytest.warns(UserWarning) if chunked and (option.get("probs") or keywords.get(
            "label_smoothing")) else _no_warning():
        loss = torch.nn.functional.linear_cross_entropy(tensors[0], tensors[1],
                                                        torch.tensor(target), **torch_keywords)
    loss.backward(torch.tensor(grad_output) if reduction == "none" else None)
    expected = [loss.detach().numpy(), *(t.grad.numpy() for t in tensors)]
    got = nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias,
                                                reduction=reduction, grad_output=grad_output,
                                                chunk=(7, 5), **keywords)
    _check(got, expected, np.float64, "vs torch:")


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------- GPU (where present)

@pytest.mark.cuda
@pytest.mark.parametrize("tiles", [{}, {"chunk": (7, 4)}], ids=["whole-rows", "split"])
def test_cuda_matches_materialised_logits(rng, tiles):
    gpu = _FACTORIES["cuda"]()
    features, weight, bias, target, keywords = _inputs(rng, np.float32, {"z_loss": 0.01})
    got = nbxent.linear_cross_entropy_with_grad(
        *(gpu.to_backend(a) for a in (features, weight, target)), bias=gpu.to_backend(bias),
        **keywords, **tiles)
    expected = _expected(features, weight, bias, target, keywords, "mean", 1.0)
    _check([gpu.to_numpy(a) for a in got], expected, np.float32)


# ---------------------------------------------------------------- bad input

BAD_CALLS = [
    (dict(features=(N, D + 1)), ValueError,
     r"features of shape \(23, 7\) and weight of shape \(17, 6\) do not fit"),
    (dict(weight=(C, D, 2)), ValueError, r"weight must be \(C, d\).*got shape \(17, 6, 2\)"),
    (dict(features=(2, N, D)), ValueError, r"features must be \(N, d\) or \(d,\)"),
    (dict(bias=(C + 1,)), ValueError, r"bias of shape \(18,\) does not fit weight of shape"),
    (dict(target=(N + 1,)), ValueError,
     r"class-index target of shape \(24,\) does not fit the logits features @ weight.T of "
     r"shape \(23, 17\)"),
    (dict(class_weight=(C - 1,)), ValueError, r"class_weight of shape \(16,\) does not fit"),
    (dict(grad_output=(N + 2,), reduction="none"), ValueError,
     r"grad_output of shape \(25,\) does not fit the loss of shape \(23,\)"),
    (dict(weight_dtype=np.float64), TypeError,
     r"weight must have the features' dtype float32; got float64"),
    (dict(features_dtype=np.int32), TypeError, r"features must be float32 or float64"),
    (dict(chunk=(3, 0)), ValueError, r"chunk\[1\] \(classes\) must be a positive integer"),
    (dict(chunk=4, memory_budget=100), ValueError, r"give chunk= or memory_budget=, not both"),
    (dict(reduction="avg"), ValueError, r"reduction must be one of"),
    (dict(bad_index=True), ValueError, r"target 17 at position \(5,\) is not a class index"),
]


@pytest.mark.parametrize("change,error,message", BAD_CALLS,
                         ids=[m.split("(")[0].split()[0][:20] + str(i)
                              for i, (_, _, m) in enumerate(BAD_CALLS)])
def test_bad_input_raises_and_modifies_nothing(rng, change, error, message):
    f_dtype = change.pop("features_dtype", np.float32)
    arrays = dict(
        features=rng.standard_normal(change.pop("features", (N, D))).astype(f_dtype),
        weight=rng.standard_normal(change.pop("weight", (C, D))).astype(
            change.pop("weight_dtype", np.float32)),
        bias=rng.standard_normal(change.pop("bias", (C,))).astype(np.float32),
        target=rng.integers(0, C, change.pop("target", (N,))),
        class_weight=rng.uniform(size=change.pop("class_weight", (C,))),
    )
    if change.pop("bad_index", False):
        arrays["target"][5] = C
    if "grad_output" in change:
        change["grad_output"] = rng.standard_normal(change["grad_output"])
    before = {k: v.copy() for k, v in arrays.items()}
    features, weight, target = arrays.pop("features"), arrays.pop("weight"), arrays.pop("target")
    with pytest.raises(error, match=message):
        nbxent.linear_cross_entropy_with_grad(features, weight, target, **arrays, **change)
    for name, value in dict(arrays, features=features, weight=weight, target=target).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


# ---------------------------------------------------------------- Dask

@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_dask_row_chunked_features(rng, reduction):
    da = pytest.importorskip("dask.array")
    import dask

    features, weight, bias, target, keywords = _inputs(
        rng, np.float64, {"class_weight": True, "z_loss": 0.02, "label_smoothing": 0.1})
    grad_output = rng.standard_normal(N) if reduction == "none" else 1.0
    lazy = nbxent.linear_cross_entropy_with_grad(
        da.from_array(features, chunks=(9, D)), weight, da.from_array(target, chunks=5),
        bias=bias, reduction=reduction, grad_output=grad_output, chunk=(4, 6), **keywords)
    assert all(isinstance(a, da.Array) for a in lazy)
    got = dask.compute(*lazy, scheduler="synchronous")
    _check(got, _expected(features, weight, bias, target, keywords, reduction, grad_output),
           np.float64)


def test_dask_bad_index_names_the_global_position(rng):
    da = pytest.importorskip("dask.array")
    features, weight, bias, target, _ = _inputs(rng, np.float64, {})
    target[15] = 99
    loss = nbxent.linear_cross_entropy(da.from_array(features, chunks=(9, D)), weight, target)
    with pytest.raises(ValueError, match=r"target 99 at position \(15,\)"):
        loss.compute(scheduler="synchronous")


# ---------------------------------------------------------------- nbxent bench --suite linear

def test_bench_linear_suite_on_a_small_case():
    from nbxent.bench import linear
    from nbxent.bench.progress import QuietProgress

    case = linear.LinearCase(96, 8, 700, budget=700 * 96 * 4)   # torch unchunked over budget
    settings = linear.Settings(repeat=1, threads=1, measure_memory=False)
    rows = linear._run_case(case, settings, 1, QuietProgress())
    by_impl = {row["impl"]: row for row in rows}
    assert by_impl["nbxent"]["status"] == "ok" and by_impl["nbxent"]["max_error"] < 1e-5
    assert by_impl["3 GEMMs"]["ratio_to_gemms"] == 1.0
    assert by_impl["torch"]["status"] in ("over budget", "not installed")
    if by_impl["torch chunked"]["status"] != "not installed":
        assert by_impl["torch chunked"]["status"] == "ok", by_impl["torch chunked"]["message"]
    report = {"machine": {"cpu": "cpu", "cpu_count": 1, "load_average": None,
                          "allocator": "glibc's default"},
              "versions": {"nbxent": "0"}, "threads": {}, "results": rows}
    table = linear.format_table(report)
    assert "| N=96 d=8 C=700" in table
    assert "over the budget" in table or "not installed" in table
