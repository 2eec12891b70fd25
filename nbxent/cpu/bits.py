"""Bit- and vector-level helpers for the CPU kernels, what Numba cannot say itself:
float <-> integer casts, order keys, float16, a float max that stays a vector max,
block transposes in vector shuffles, cache prefetch hints, atomic counters, and the
vector width LLVM is asked for.

Numba's CPU target has no float16 type, so float16 arrays reach the kernels as
uint16 and are converted here with integer arithmetic that LLVM can vectorise
(round to nearest even on the way back, like NumPy's ``astype``).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .target import enabled_features


@intrinsic
def bitcast(typingctx, value, target_class):
    """Reinterpret the bits of ``value`` as ``target_class`` (same width)."""
    to = target_class.instance_type
    sig = to(value, target_class)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(to))

    if isinstance(value, types.Number) and value.bitwidth == to.bitwidth:
        return sig, codegen
    return None


@njit(inline="always")
def half_to_float(half_bits):
    """The float32 value of float16 bits (given as an integer)."""
    h = np.int32(half_bits)
    sign = (h & 0x8000) << 16
    magnitude = (h & 0x7FFF) << 13
    exponent = magnitude & (0x7C00 << 13)
    if exponent == (0x7C00 << 13):  # inf or nan: widen the exponent to all ones
        bits = magnitude + ((255 - 31) << 23)
        value = bitcast(np.int32(bits | sign), np.float32)
    elif exponent == 0:  # zero or subnormal: renormalise through a float subtraction
        value = bitcast(np.int32(magnitude + (113 << 23)), np.float32) - np.float32(6.103515625e-05)
        value = bitcast(np.int32(bitcast(value, np.int32) | sign), np.float32)
    else:
        value = bitcast(np.int32((magnitude + ((127 - 15) << 23)) | sign), np.float32)
    return value


@njit(inline="always")
def float_to_half(value):
    """float16 bits (as uint16) of a float32, rounded to nearest even."""
    bits = bitcast(np.float32(value), np.int32)
    sign = (bits >> 16) & 0x8000
    magnitude = bits & 0x7FFFFFFF
    if magnitude >= (143 << 23):  # too large for float16, or inf / nan
        half = 0x7E00 if magnitude > (255 << 23) else 0x7C00
    elif magnitude < (113 << 23):  # subnormal in float16: let float addition round it
        rounded = bitcast(np.int32(magnitude), np.float32) + np.float32(0.5)
        half = bitcast(rounded, np.int32) - bitcast(np.float32(0.5), np.int32)
    else:
        mantissa_odd = (magnitude >> 13) & 1
        half = (magnitude + ((15 - 127) << 23) + 0xFFF + mantissa_odd) >> 13
    return np.uint16(half | sign)


def _flip_magnitude(builder, bits, width):
    """bits ^ (sign ? 0x7F..F : 0): maps the float order onto the signed integers
    and back (the sign bit is kept, so the map is its own inverse)."""
    int_type = ir.IntType(width)
    sign = builder.ashr(bits, ir.Constant(int_type, width - 1))
    return builder.xor(bits, builder.and_(sign, ir.Constant(int_type, (1 << (width - 1)) - 1)))


@intrinsic
def order_key(typingctx, value):
    """A signed integer of the float's width that orders like it: for non-nan a, b,
    ``order_key(a) < order_key(b)`` iff ``a < b`` (-0.0 just below 0.0).

    Integer max reductions vectorise without fastmath's nnan; float ones do not.
    A nan's key lies beyond the infinities of its sign.
    """
    if not isinstance(value, types.Float):
        return None
    key_type = types.int32 if value.bitwidth == 32 else types.int64

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], ir.IntType(value.bitwidth))
        return _flip_magnitude(builder, bits, value.bitwidth)

    return key_type(value), codegen


@intrinsic
def from_order_key(typingctx, key):
    """The float (float32 for an int32 key, float64 for int64) ``order_key`` maps to ``key``."""
    if not isinstance(key, types.Integer) or key.bitwidth not in (32, 64):
        return None
    float_type = types.float32 if key.bitwidth == 32 else types.float64

    def codegen(context, builder, signature, args):
        bits = _flip_magnitude(builder, args[0], key.bitwidth)
        return builder.bitcast(bits, context.get_value_type(float_type))

    return float_type(key), codegen


@intrinsic
def larger_of_numbers(typingctx, a, b):
    """The larger of two floats of one type, neither of them nan: LLVM's maxnum with the
    no-nan flag, one vector max instruction (with a nan operand the result is either
    operand, or nan).

    For maxima whose nan the sums that follow carry (an exp of nan is nan): as a
    reduction it vectorises to one max per vector, where the integer order keys of
    ``order_key`` take four operations and Python's ``max`` does not vectorise;
    as a running maximum kept in memory (``top[k] = larger_of_numbers(top[k], x)``) it
    is not a select, which LLVM would turn into a masked store, microcode on AMD's
    CPUs (benchmarks/RESULTS.md).
    """
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        float_type = context.get_value_type(a)
        name = "llvm.maxnum.f%d" % a.bitwidth
        module = builder.module
        function = module.globals.get(name) or ir.Function(
            module, ir.FunctionType(float_type, [float_type, float_type]), name=name)
        return builder.call(function, args, fastmath=("nnan", "nsz"))

    return a(a, b), codegen


@njit(inline="always")
def rank_key(value):
    """An order key in which every nan is above +inf and -0.0 equals 0.0: the order
    of ``np.argmax`` (the first nan wins; zeros tie), as an integer to compare
    across vector lanes."""
    key = order_key(value)
    # (Cast back: Numba's integer arithmetic widens to int64, and int32 keys of
    # float32 logits fill twice the vector lanes.)
    above_inf = type(key)(order_key(type(value)(np.inf)) + 1)
    key = key if key != -1 else type(key)(0)  # -0.0 is the only float whose key is -1
    return key if value == value else above_inf


def exact_order(load):
    """An inlined ``order(a, base, stride, c0, c1, cap, t_logit, t)``: (the largest
    ``rank_key`` of the values ``load(a, base + c * stride, cap)`` for classes c in
    [c0, c1), the first class at it, the classes ahead of class t whose value is
    ``t_logit``) in ``rank_key``'s order, where float comparisons cannot give that
    order (a nan, an infinity, a nan target value). Branch-free passes, which
    vectorise; ``load`` is the caller's access to its values."""

    @njit(inline="always")
    def order(a, base, stride, c0, c1, cap, t_logit, t):
        top = rank_key(load(a, base + c0 * stride, cap))
        for c in range(c0, c1):
            top = max(top, rank_key(load(a, base + c * stride, cap)))
        t_key = rank_key(t_logit)
        first = c1
        ahead = 0
        for c in range(c0, c1):
            key = rank_key(load(a, base + c * stride, cap))
            first = min(first, c if key == top else c1)
            ahead += (key > t_key) | ((key == t_key) & (c < t))
        return top, first, ahead

    return order


def _data(context, builder, signature, args, i):
    """In an intrinsic's code generation, the data pointer of its array argument ``i``."""
    return context.make_array(signature.args[i])(context, builder, args[i]).data


def _prefetch_hint(for_write, doc):
    """An intrinsic ``hint(array, index)``: a cache hint (LLVM's prefetch, kept in the
    caches near L2) for ``array[index]``, to be read or, ``for_write``, written."""

    @intrinsic
    def hint(typingctx, array, index):
        if not isinstance(array, types.Array):
            return None

        def codegen(context, builder, signature, args):
            data = _data(context, builder, signature, args, 0)
            address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
            i32 = ir.IntType(32)
            name = "llvm.prefetch.p0"
            module = builder.module
            function = module.globals.get(name) or ir.Function(
                module, ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]), name=name)
            builder.call(function, [address, ir.Constant(i32, int(for_write)),
                                    ir.Constant(i32, 2), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(array, types.int64), codegen

    hint.__doc__ = doc
    return hint


prefetch = _prefetch_hint(
    False, "Hint the cache to fetch ``array[index]`` (into L2); no effect on results.")
prefetch_for_write = _prefetch_hint(
    True, "Hint the cache to fetch ``array[index]`` to be written (the line's ownership "
          "too); no effect on results.")


def _transposed(builder, rows):
    """The square matrix of vectors ``rows`` transposed, in shuffles: at each step h
    (1, 2, 4, ...) rows i and i + h swap their off-diagonal h x h blocks."""
    width = len(rows)
    rows = list(rows)
    mask = ir.VectorType(ir.IntType(32), width)
    h = 1
    while h < width:
        for i in range(width):
            if i // h % 2:
                continue
            a, b = rows[i], rows[i + h]
            low = [p if p // h % 2 == 0 else width + p - h for p in range(width)]
            high = [p + h if p // h % 2 == 0 else width + p for p in range(width)]
            rows[i] = builder.shuffle_vector(a, b, ir.Constant(mask, low))
            rows[i + h] = builder.shuffle_vector(a, b, ir.Constant(mask, high))
        h *= 2
    return rows


def _square_transpose(side_bits):
    """An intrinsic copying a square block of ``side_bits`` a side, transposed (see
    ``transpose_block``)."""
    @intrinsic
    def transpose(typingctx, src, src_start, src_stride, dst, dst_start, dst_stride):
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
                and src.dtype == dst.dtype and src.ndim == dst.ndim == 1
                and isinstance(src.dtype, types.Float)):
            return None
        width = side_bits // src.dtype.bitwidth

        def codegen(context, builder, signature, args):
            src_data = _data(context, builder, signature, args, 0)
            dst_data = _data(context, builder, signature, args, 3)
            index = [context.cast(builder, value, ty, types.int64)
                     for value, ty in zip(args, signature.args)
                     if isinstance(ty, types.Integer)]
            (src_start, src_stride, dst_start, dst_stride) = index
            vector = ir.VectorType(context.get_value_type(src.dtype), width).as_pointer()
            align = src.dtype.bitwidth // 8

            def at(data, start, stride, i):
                offset = builder.add(start, builder.mul(stride, ir.Constant(ir.IntType(64), i)))
                return builder.bitcast(builder.gep(data, [offset]), vector)

            rows = [builder.load(at(src_data, src_start, src_stride, i), align=align)
                    for i in range(width)]
            for j, row in enumerate(_transposed(builder, rows)):
                builder.store(row, at(dst_data, dst_start, dst_stride, j), align=align)
            return context.get_dummy_value()

        return types.void(src, src_start, src_stride, dst, dst_start, dst_stride), codegen

    return transpose


transpose_block = _square_transpose(256)
transpose_block.__doc__ = """Copy a square block of 32 bytes a side, transposed: for i, j < B
(8 float32s, 4 float64s), ``dst[dst_start + j * dst_stride + i] = src[src_start + i *
src_stride + j]``, as B vector loads, shuffles and B vector stores (LLVM's shufflevector:
any CPU's vectors). Loops of scalar loads and strided stores do not vectorise. ``src``
and ``dst`` are 1-D arrays of one dtype, not overlapping."""
# The same, 64 bytes a side (16 float32s): a quarter fewer shuffles and half the loads and
# stores per element where vectors are 512 bits wide.
transpose_wide_block = _square_transpose(512)


@njit(inline="always")
def _copy_in_blocks(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows, n_cols,
                    width, wide):
    """``copy_transposed`` in blocks of ``width`` a side (``transpose_wide_block`` where
    ``wide``, a constant where this is called, else ``transpose_block``), the last of a
    row or column of blocks moved back to end at the edge (it copies again some of what
    the one before it copied: the same values)."""
    for bi in range((n_rows + width - 1) // width):
        i0 = min(bi * width, n_rows - width)
        for bj in range((n_cols + width - 1) // width):
            j0 = min(bj * width, n_cols - width)
            if wide:
                transpose_wide_block(src, src_start + i0 * src_stride + j0, src_stride,
                                     dst, dst_start + j0 * dst_stride + i0, dst_stride)
            else:
                transpose_block(src, src_start + i0 * src_stride + j0, src_stride,
                                dst, dst_start + j0 * dst_stride + i0, dst_stride)


@njit(inline="always")
def copy_transposed(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows, n_cols):
    """``dst[dst_start + j * dst_stride + i] = src[src_start + i * src_stride + j]`` for
    i < n_rows, j < n_cols: in square blocks of shuffled vectors (``_copy_in_blocks``), 64
    bytes a side where the kernels' vectors are 512 bits (``full_vector_bits``) and both
    sides are that long, else 32 bytes; element by element only where a side is shorter
    than 32 bytes (at C = 10 the scalar edge loops cost more than the blocks:
    benchmarks/RESULTS.md). For 512-bit blocks, give ``lined_empty`` arrays: across cache
    lines their loads and stores ran slower than the 256-bit blocks."""
    narrow, wide = 32 // src.itemsize, 64 // src.itemsize
    if _WIDE_BLOCKS and n_rows >= wide and n_cols >= wide:
        _copy_in_blocks(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows,
                        n_cols, wide, True)
    elif n_rows >= narrow and n_cols >= narrow:
        _copy_in_blocks(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows,
                        n_cols, narrow, False)
    else:
        for i in range(n_rows):
            for j in range(n_cols):
                dst[np.uint64(dst_start + j * dst_stride + i)] = src[
                    np.uint64(src_start + i * src_stride + j)]


# Bytes each streaming store writes: a cache line, so that a line is written whole.
_STREAM_BYTES = 64


@intrinsic
def address_of(typingctx, array, index):
    """The address of ``array[index]`` (an integer), to align a loop on it."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        data = _data(context, builder, signature, args, 0)
        return builder.ptrtoint(builder.gep(data, [args[1]]), ir.IntType(64))

    return types.int64(array, types.int64), codegen


@njit(inline="always")
def lined_empty(size, dtype):
    """``np.empty(size, dtype)`` starting on a 64-byte cache line (float32 or float64), so
    that 512-bit vectors of it, from its start, cross no line: the tile kernel's arrays.
    (Numba's allocations start where the heap had room, 16 bytes apart or so, differently
    in each process: the tile kernel's loops ran 6-14 % slower across lines with 512-bit
    vectors, benchmarks/RESULTS.md.)"""
    buf = np.empty(size + 16, dtype)
    lead = ((64 - address_of(buf, 0) % 64) % 64) // buf.itemsize
    return buf[lead:lead + size]


@intrinsic
def stream_lines(typingctx, src, src_start, dst, dst_start, n_lines):
    """``dst[dst_start + i] = src[src_start + i]`` for the ``n_lines`` cache lines of
    ``dst`` from ``dst_start``, which must start a line: vector loads and streaming stores
    (LLVM's nontemporal stores: they write memory without first reading each line into the
    caches, as a plain store does, and leave it out of them). Any CPU: where the target
    has no streaming store, LLVM emits a plain one. Streaming stores are not ordered with
    other stores: a ``store_fence`` must follow them before another thread reads ``dst``.
    """
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == dst.dtype and isinstance(src.dtype, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        element = context.get_value_type(src.dtype)
        width = _STREAM_BYTES * 8 // src.dtype.bitwidth
        vector = ir.VectorType(element, width).as_pointer()
        src_data = _data(context, builder, signature, args, 0)
        dst_data = _data(context, builder, signature, args, 2)
        src_start, dst_start, n_lines = (
            context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 3, 4))
        nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        before = builder.block
        loop = builder.append_basic_block("stream")
        done = builder.append_basic_block("streamed")
        builder.cbranch(builder.icmp_signed(">", n_lines, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        line = builder.phi(i64)
        line.add_incoming(ir.Constant(i64, 0), before)
        offset = builder.mul(line, ir.Constant(i64, width))
        value = builder.load(builder.bitcast(
            builder.gep(src_data, [builder.add(src_start, offset)]), vector),
            align=src.dtype.bitwidth // 8)
        store = builder.store(value, builder.bitcast(
            builder.gep(dst_data, [builder.add(dst_start, offset)]), vector),
            align=_STREAM_BYTES)
        store.set_metadata("nontemporal", nontemporal)
        following = builder.add(line, ir.Constant(i64, 1))
        line.add_incoming(following, loop)
        builder.cbranch(builder.icmp_signed("<", following, n_lines), loop, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return types.void(src, src_start, dst, dst_start, n_lines), codegen


@njit(inline="always")
def copy_streaming(src, src_start, dst, dst_start, n):
    """``dst[dst_start + i] = src[src_start + i]`` for i < n (not overlapping), the whole
    cache lines of ``dst`` among them by ``stream_lines`` (a ``store_fence`` must follow),
    the rest element by element."""
    size = dst.itemsize
    address = address_of(dst, dst_start)
    head = min(n, (-address % _STREAM_BYTES) // size) if address % size == 0 else n
    n_lines = (n - head) * size // _STREAM_BYTES
    for i in range(head):
        dst[np.uint64(dst_start + i)] = src[np.uint64(src_start + i)]
    stream_lines(src, src_start + head, dst, dst_start + head, n_lines)
    for i in range(head + n_lines * (_STREAM_BYTES // size), n):
        dst[np.uint64(dst_start + i)] = src[np.uint64(src_start + i)]


@intrinsic
def store_fence(typingctx):
    """A fence after streaming stores (``stream_lines``): those before it are seen by
    every other thread before anything after it."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def fetch_add(typingctx, counters, index, value):
    """Add ``value`` to the int64 ``counters[index]`` atomically (LLVM's atomicrmw, on any
    target); returns the value before: threads that share a counter each get their own."""
    if not (isinstance(counters, types.Array) and counters.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        address = builder.gep(_data(context, builder, signature, args, 0), [args[1]])
        return builder.atomic_rmw("add", address, args[2], "seq_cst")

    return types.int64(counters, types.int64, types.int64), codegen


def full_vector_bits():
    """The vector width, in bits, the kernels ask LLVM for: 512 where AVX-512 comes with
    VBMI (Intel from Ice Lake, AMD from Zen 4); None elsewhere, LLVM's choice (the full
    width of AVX2, NEON and SSE2).

    LLVM's tuning for Intel's AVX-512 servers (Skylake to Emerald Rapids) vectorises with
    256-bit vectors, for the clock speed the first of them (Skylake, Cascade Lake: AVX-512
    without VBMI) lost on 512-bit arithmetic; the kernels' loops are bound by arithmetic
    per logit, and on an Emerald Rapids 512-bit loops ran them up to 1.16x faster
    (benchmarks/RESULTS.md). AMD's Zen 4 and 5 get 512 bits from LLVM already."""
    features = enabled_features()
    return 512 if "avx512f" in features and "avx512vbmi" in features else None


# ``copy_transposed`` in blocks of 512-bit vectors (read when a kernel compiles).
_WIDE_BLOCKS = full_vector_bits() == 512


@intrinsic
def vectors_at_full_width(typingctx):
    """Called first in a kernel function that LLVM compiles apart: its loops vectorise at
    ``full_vector_bits()`` (the function attribute ``prefer-vector-width``, as clang's
    ``-mprefer-vector-width`` sets it); nothing where that is None."""
    def codegen(context, builder, signature, args):
        bits = full_vector_bits()
        if bits:
            # llvmlite's attribute set accepts only the attributes it names; a string
            # attribute is written into the IR as given.
            set.add(builder.function.attributes, f'"prefer-vector-width"="{bits}"')
        return context.get_dummy_value()

    return types.void(), codegen
