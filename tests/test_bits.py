"""The CPU kernels' vector helpers: transposed copies in blocks of shuffles (256- and
512-bit, whichever the machine's kernels take), arrays that start on a cache line, copies by
streaming stores, the maximum of numbers as a running maximum kept in memory and as
a reduction; the atomic counter the threads take blocks of work from; the vector
width the kernels ask LLVM for; and the explicit vectors of rows tiled as they lie, over
rows of any length."""

import re

import numpy as np
import pytest
from numba import njit, prange

from nbxent.cpu.bits import (_copy_in_blocks, address_of, copy_streaming, copy_transposed,
                             fetch_add, full_vector_bits, larger_of_numbers, lined_empty,
                             store_fence, vectors_at_full_width)
from nbxent.cpu.lanes import lane_bits, lanes_for


@njit
def _copy_transposed(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows, n_cols):
    copy_transposed(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows, n_cols)


@njit
def _copy_in_wide_blocks(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows,
                         n_cols):
    _copy_in_blocks(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows, n_cols,
                    64 // src.itemsize, True)


@njit
def _lined_empty_address(size, dtype):
    lined = lined_empty(size, dtype)
    return address_of(lined, 0), lined.size


@njit
def _copy_streaming(src, src_start, dst, dst_start, n):
    copy_streaming(src, src_start, dst, dst_start, n)
    store_fence()


@njit(parallel=True)
def _hand_out(n_takers, n_items):
    """Items [0, n_items) taken from a counter (``counters[1]``) by ``n_takers`` loops over
    the threads, as ``nbxent.cpu.launch.run_blocks`` takes blocks: (items each taker took,
    the counters after)."""
    counters = np.zeros(3, np.int64)
    took = np.zeros(n_takers, np.int64)
    work = np.zeros(n_takers)
    for taker in prange(n_takers):
        item = fetch_add(counters, 1, 1)
        while item < n_items:
            took[taker] += 1
            for step in range(100):  # (some work, so that the threads overlap)
                work[taker] = np.sqrt(work[taker] + step)
            item = fetch_add(counters, 1, 1)
    return took, counters


@njit
def _running_max(tile, n_rows, n_cols):
    top = tile[:n_cols].copy()
    for r in range(n_rows):
        for k in range(n_cols):
            top[k] = larger_of_numbers(top[k], tile[r * n_cols + k])
    return top


@njit
def _reduced_max(row):
    top = row.dtype.type(-np.inf)
    for value in row:
        top = larger_of_numbers(top, value)
    return top


_TRANSPOSED_SIDES = [(8, 8), (4, 4), (3, 5), (19, 100), (17, 9), (64, 10), (16, 16),
                     (40, 37), (1, 1), (0, 7)]
# The 512-bit blocks (any CPU's vectors: LLVM splits them where they are wider than the
# machine's), where both sides are as long as a block (the kernels' condition).
_TRANSPOSED_CASES = [
    pytest.param(copy, dtype, n_rows, n_cols, id=f"{label}-{dtype.__name__}-{n_rows}x{n_cols}")
    for copy, label in ((_copy_transposed, "as-the-kernels"),
                        (_copy_in_wide_blocks, "512-bit-blocks"))
    for dtype in (np.float32, np.float64) for n_rows, n_cols in _TRANSPOSED_SIDES
    if copy is _copy_transposed or min(n_rows, n_cols) >= 64 // np.dtype(dtype).itemsize]


@pytest.mark.parametrize("copy, dtype, n_rows, n_cols", _TRANSPOSED_CASES)
def test_copy_transposed_matches_numpy(copy, dtype, n_rows, n_cols):
    """Whole blocks and the edges around them, between strided windows of flat
    buffers; nothing outside the destination window is written."""
    src_start, src_stride, dst_start, dst_stride = 5, n_cols + 3, 2, n_rows + 7
    src = np.arange(src_start + max(n_rows, 1) * src_stride, dtype=dtype)
    dst = np.full(dst_start + max(n_cols, 1) * dst_stride, -1.0, dtype)
    before = src.copy()
    copy(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows, n_cols)
    window = src[src_start:src_start + n_rows * src_stride].reshape(n_rows, src_stride)
    copied = dst[dst_start:dst_start + n_cols * dst_stride].reshape(n_cols, dst_stride)
    np.testing.assert_array_equal(copied[:, :n_rows], window[:, :n_cols].T)
    assert (copied[:, n_rows:] == -1).all() and (dst[:dst_start] == -1).all()
    np.testing.assert_array_equal(src, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096])
def test_lined_empty_starts_on_a_cache_line(dtype, size):
    """Each of many arrays (the heap's free space moving under them) starts on a 64-byte
    line and holds ``size`` elements."""
    for _ in range(20):
        address, n = _lined_empty_address(size, dtype)
        assert address % 64 == 0 and n == size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_larger_of_numbers_is_the_max_running_and_reduced(dtype, rng):
    """Over finite values and infinities, in loops long enough to be vectorised."""
    tile = rng.standard_normal((7, 100)).astype(dtype)
    tile[2, 10] = np.inf
    tile[:, 20] = -np.inf
    tile[5, 30:40] = 1e30
    np.testing.assert_array_equal(_running_max(tile.ravel(), 7, 100), tile.max(axis=0))
    for n in (1, 7, 64, 1000, 1001):
        row = tile.ravel()[:n]
        assert _reduced_max(row) == row.max()
    assert _reduced_max(np.full(300, -np.inf, dtype)) == -np.inf


def test_larger_of_numbers_leaves_other_lanes_exact_beside_a_nan(rng):
    """A nan gives its own column any of its values or nan (the kernels' sums carry the
    nan); the other columns are exact."""
    tile = rng.standard_normal((5, 64)).astype(np.float32)
    tile[3, 17] = np.nan
    top = _running_max(tile.ravel(), 5, 64)
    others = np.arange(64) != 17
    np.testing.assert_array_equal(top[others], tile[:, others].max(axis=0))
    assert np.isnan(top[17]) or top[17] in tile[:, 17]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_copy_streaming_copies_exactly_its_window(rng, dtype):
    """Every alignment of the destination's start (the elements before its first whole
    cache line go one by one), lengths from nothing to many lines, nothing outside the
    window written; the whole lines by LLVM's nontemporal stores."""
    line = 64 // np.dtype(dtype).itemsize
    src = rng.standard_normal(12 * line).astype(dtype)
    for dst_start in range(line + 1):
        for n in (0, 1, line - 1, line, 2 * line + 3, 9 * line):
            src_start = int(rng.integers(0, 2 * line))
            dst = np.full(12 * line, np.nan, dtype)
            _copy_streaming(src, src_start, dst, dst_start, n)
            expected = np.full_like(dst, np.nan)
            expected[dst_start:dst_start + n] = src[src_start:src_start + n]
            np.testing.assert_array_equal(dst, expected, err_msg=f"{dst_start} {n}")
    llvm = _copy_streaming.inspect_llvm(_copy_streaming.signatures[-1])
    assert "!nontemporal" in llvm


def test_fetch_add_hands_each_item_out_once():
    """Threads racing on one counter: an add that is not atomic loses increments, and two
    takers then take the same item (more items taken than there are). Each taker's last
    add finds the counter past the end."""
    n_takers, n_items = 8, 20_000
    took, counters = _hand_out(n_takers, n_items)
    assert took.sum() == n_items
    np.testing.assert_array_equal(counters, [0, n_items + n_takers, 0])


def _scaling_loop():
    """A fresh function (compiled on its first call) whose loop asks for full vectors."""
    @njit
    def scale(x, y):
        vectors_at_full_width()
        for i in range(x.size):
            y[i] = x[i] * np.float32(2.5) + np.float32(1.0)

    x = np.ones(100, np.float32)
    scale(x, np.empty_like(x))
    return scale


def test_full_vectors_asked_for_where_avx512_has_vbmi(monkeypatch):
    """512-bit vectors where AVX-512 is enabled with VBMI (LLVM's tuning for Intel's
    servers takes 256), and the function attribute nowhere else."""
    scale = _scaling_loop()
    llvm, = scale.inspect_llvm().values()
    asm, = scale.inspect_asm().values()
    asks = '"prefer-vector-width"="512"' in llvm
    assert asks == (full_vector_bits() == 512)
    if asks:
        # (Its main loop; a remainder may take narrower vectors.)
        assert "zmm" in re.findall(r"vmulps\s.*%([xyz]mm)", asm)
    from numba.core import config
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,+avx512f,+avx512bw,-avx512vbmi")
    assert full_vector_bits() is None  # a Skylake or Cascade Lake server: LLVM's 256 bits
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx,+avx2,+fma,-avx512f")
    assert full_vector_bits() is None
    llvm, = _scaling_loop().inspect_llvm().values()
    assert "prefer-vector-width" not in llvm


def _lane_passes(dtype):
    """A row's max, plain sum, count of a value, and its values less a shift stored
    elsewhere, in ``lanes``' vectors: whole ones, then the row's last values in one."""
    lanes = lanes_for(dtype)
    width, load, store, splat = lanes.width, lanes.load, lanes.store, lanes.splat
    larger, largest, total = lanes.larger, lanes.largest, lanes.total
    where_equal, where, first = lanes.where_equal, lanes.where, lanes.first

    @njit
    def passes(x, start, n, shift, out, out_start):
        top, sums, counts = splat(-np.inf), splat(0.0), splat(0.0)
        whole = n - n % width
        for c in range(0, whole + width, width):
            m = min(width, n - c)
            value = load(x, start + c, m, -np.inf)
            top = larger(top, value)
            sums += first(m, value)
            counts += first(m, where_equal(value, splat(shift), splat(1.0), splat(0.0)))
            store(out, out_start + c, m, where(m > 0, 1.0 * value - shift, splat(np.nan)))
        return largest(top), total(sums), total(counts)

    return width, passes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lanes_take_a_row_of_any_length_and_nothing_past_it(rng, dtype):
    """Rows of 0 to three vectors and more, from a vector's start and from within one: the
    max and the count exact, the sum as NumPy's within its rounding, and the stores
    (``value - shift``) in the row's window only, the values around it untouched."""
    width, passes = _lane_passes(dtype)
    x = rng.integers(-8, 8, 4 * width + 16).astype(dtype)
    for start in (0, 3):
        for n in range(3 * width + 3):
            out = np.full(x.size, -7.5, dtype)
            top, total, count = passes(x, start, n, dtype(2.0), out, start + 1)
            row = x[start:start + n]
            assert top == (row.max() if n else -np.inf)
            assert total == row.sum(dtype=np.float64)  # (small integers: exact in any order)
            assert count == np.count_nonzero(row == 2.0)
            expected = np.full(x.size, -7.5, dtype)
            expected[start + 1:start + 1 + n] = row - dtype(2.0)
            np.testing.assert_array_equal(out, expected, err_msg=f"start {start}, n {n}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("source", [np.float16, np.float32, np.float64])
def test_lanes_load_any_float_type_converted(rng, dtype, source):
    """A load of float16 (as its uint16 bits, as the kernels take it), float32 or float64
    values into lanes of either type: each value as NumPy converts it (infinities, nan,
    -0.0, float16's subnormals), the lanes past n the fill."""
    lanes = lanes_for(dtype)
    width, load, store = lanes.width, lanes.load, lanes.store

    @njit
    def loaded(values, start, n, out):
        store(out, 0, width, load(values, start, n, -2.5))

    values = (rng.standard_normal(3 * width + 8) * 1e3).astype(source)
    values[:7] = [np.inf, -np.inf, np.nan, -0.0, 6e-8, -3e-5, 65504.0]  # (float16 subnormals)
    bits = values.view(np.uint16) if source == np.float16 else values
    for start, n in ((0, width), (1, width - 1), (2, min(3, width)), (4, width)):
        out = np.zeros(width, dtype)
        loaded(bits, start, n, out)
        expected = np.full(width, -2.5, dtype)
        expected[:n] = values[start:start + n].astype(dtype)
        np.testing.assert_array_equal(out, expected)
        assert np.array_equal(np.signbit(out), np.signbit(expected))


def test_lanes_are_the_kernels_vector_width():
    """As wide as the kernels' loops (``full_vector_bits``), else AVX's 256 bits or 128,
    float64 half as many lanes as float32."""
    bits = lane_bits()
    assert bits == (full_vector_bits() or bits) and bits in (128, 256, 512)
    assert lanes_for(np.float32).width * 32 == lanes_for(np.float64).width * 64 == bits
