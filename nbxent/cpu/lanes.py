"""Explicit vectors ("lanes") for loops along short rows, whose ends LLVM's vectoriser
takes one element at a time.

A loop along a row of 100 classes, vectorised by LLVM, runs 64 classes four vectors at a
time, then 32 in half-width vectors, then the last 4 one by one: a chain of dependent
scalar maxima or adds per row, each pass. Rows tiled as they lie (``tile_kernel``) pay it
in every pass, and a row of 100 classes took as long as one of 112
(benchmarks/RESULTS.md). Written with these vectors, a pass takes whole vectors, then the
row's last classes in one vector whose other lanes are masked off (``load`` and ``store``
of ``n`` lanes: LLVM's masked loads and stores, plain ones where ``n`` is the constant
width, as in a loop over whole vectors).

``lanes_for(dtype)`` gives the vector operations for one float dtype, at the width the
kernels vectorise at (``lane_bits``): 512 bits on AVX-512 with VBMI, 256 on AVX, 128
elsewhere (SSE2, NEON: there LLVM splits the masked loads and stores into one branch per
lane, taken only at a row's end). Arithmetic is by Python's operators (``+``, ``-``,
``*``), between vectors or a vector and a number (cast to its type), with the kernels'
fastmath flags but no reassociation (``formulas.difference_plus`` needs its order);
``total`` alone reassociates, to sum the lanes in a tree.

Numba types the operations as globals or closure variables, not as a tuple's attributes:
bind them to names first.

>>> import numpy as np
>>> from numba import njit
>>> lanes = lanes_for(np.float32)
>>> width, load, splat, larger, largest = (lanes.width, lanes.load, lanes.splat,
...                                        lanes.larger, lanes.largest)
>>> @njit
... def row_max(x, n):
...     top = splat(-np.inf)
...     whole = n - n % width
...     for c in range(0, whole, width):
...         top = larger(top, load(x, c, width, -np.inf))
...     return largest(larger(top, load(x, whole, n - whole, -np.inf)))
>>> float(row_max(np.arange(37, dtype=np.float32), 37))
36.0
"""

import functools
import operator
import platform
from typing import Callable, NamedTuple

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.imputils import lower_builtin
from numba.core.typing.templates import AbstractTemplate, infer_global
from numba.core.typing.templates import signature as typed_signature
from numba.extending import intrinsic, models, register_model

from .bits import full_vector_bits
from .target import enabled_features

# The kernels' flags (``row_kernel.FASTMATH``) but reassociation.
_FLAGS = ("nsz", "arcp", "contract", "afn")
_I32 = ir.IntType(32)
# What ``load`` reads: float32, float64, and float16 as its bits (``access``'s uint16).
_SOURCES = (types.float32, types.float64, types.uint16)


class Lanes(types.Type):
    """Numba's type of a vector of ``count`` values of the float type ``dtype``."""

    def __init__(self, dtype, count):
        self.dtype = dtype
        self.count = count
        super().__init__(name=f"Lanes({dtype}, {count})")


@register_model(Lanes)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.count))


def lane_bits():
    """The width of the vectors, in bits: the kernels' (``bits.full_vector_bits``), else
    256 where x86 has AVX, else 128 (SSE2, NEON and the like)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
    return full_vector_bits() or (256 if x86 and "avx" in enabled_features() else 128)


def _declared(builder, name, return_type, argument_types):
    module = builder.module
    return module.globals.get(name) or ir.Function(
        module, ir.FunctionType(return_type, argument_types), name=name)


def _splat(builder, value, count):
    vector = ir.VectorType(value.type, count)
    one = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, count), [0] * count))


def _floats_of_halves(builder, halves):
    """float32 lanes of a vector of float16 bits (i16), by integer steps as
    ``bits.half_to_float``'s: LLVM's own conversion is a library call on x86 without F16C,
    which Numba 0.60's LLVM left unresolved (a crash)."""
    count = halves.type.count
    words = ir.VectorType(_I32, count)

    def constant(value):
        return ir.Constant(words, [value] * count)

    h = builder.zext(halves, words)
    sign = builder.shl(builder.and_(h, constant(0x8000)), constant(16))
    magnitude = builder.shl(builder.and_(h, constant(0x7FFF)), constant(13))
    exponent = builder.and_(magnitude, constant(0x7C00 << 13))
    floats = ir.VectorType(ir.FloatType(), count)
    # A subnormal (or zero) renormalised through a float subtraction.
    subnormal = builder.bitcast(builder.fsub(
        builder.bitcast(builder.add(magnitude, constant(113 << 23)), floats),
        ir.Constant(floats, [6.103515625e-05] * count)), words)
    bits = builder.select(
        builder.icmp_unsigned("==", exponent, constant(0x7C00 << 13)),
        builder.add(magnitude, constant((255 - 31) << 23)),  # inf, nan: all ones
        builder.select(builder.icmp_unsigned("==", exponent, constant(0)), subnormal,
                       builder.add(magnitude, constant((127 - 15) << 23))))
    return builder.bitcast(builder.or_(bits, sign), floats)


def _first_lanes(builder, n, count):
    """The mask of lanes [0, n) (n an integer: all lanes from ``count`` up, none below 1)."""
    n = builder.trunc(builder.select(builder.icmp_signed(">", n, ir.Constant(n.type, count)),
                                     ir.Constant(n.type, count), n), _I32)
    return builder.icmp_signed("<", ir.Constant(ir.VectorType(_I32, count), list(range(count))),
                               _splat(builder, n, count))


class LaneOperations(NamedTuple):
    """The vector operations of one dtype (``lanes_for``); each an intrinsic."""

    width: int               # lanes in a vector
    load: Callable           # (array, index, n, fill): array[index + i] for i < n, else fill,
                             # converted from the array's float type (float16 as uint16 bits)
    store: Callable          # (array, index, n, vector): array[index + i] = vector[i], i < n
    splat: Callable          # (number): a vector of it
    larger: Callable         # (a, b): lane by lane, the larger (larger_of_numbers')
    largest: Callable        # (a): the largest lane
    total: Callable          # (a): the sum of the lanes, in a tree
    where_equal: Callable    # (a, b, then, otherwise): then where a == b, else otherwise
    where: Callable          # (flag, then, otherwise): then if the boolean flag, else otherwise
    first: Callable          # (n, a): a's lanes below n, zeros above
    where_less: Callable     # (a, b, then, otherwise): then where a < b, else otherwise
    power_of_two: Callable   # (a): 2**k where a's low mantissa bits hold k + the exponent bias


@functools.lru_cache(maxsize=None)
def lanes_for(dtype):
    """The ``LaneOperations`` of vectors of the NumPy float dtype ``dtype`` (float32 or
    float64), ``lane_bits()`` wide. Loads and stores take contiguous 1-D arrays and an
    integer index: stores of that dtype, loads of any float type (``_SOURCES``), converted
    on the way; ``n`` may be anything (lanes beyond the vector are never touched)."""
    dtype = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    count = lane_bits() // dtype.bitwidth
    lanes = Lanes(dtype, count)
    suffix = f"v{count}f{dtype.bitwidth}"
    align = ir.Constant(_I32, dtype.bitwidth // 8)

    def vector_at(context, builder, signature, args, element):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.bitcast(builder.gep(array.data, [index]),
                               ir.VectorType(element, count).as_pointer())

    def an_array(array, sources=(dtype,)):
        return (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
                and array.dtype in sources)

    @intrinsic
    def load(typingctx, array, index, n, fill):
        if not (an_array(array, _SOURCES) and isinstance(index, types.Integer)
                and isinstance(n, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            source = signature.args[0].dtype
            bits = source.bitwidth
            element = ir.IntType(16) if bits == 16 else context.get_value_type(source)
            pointer = vector_at(context, builder, signature, args, element)
            fill = context.cast(builder, args[3], signature.args[3], types.float64)
            if bits == 16:  # (the fill converted after the load, below)
                fills = ir.Constant(ir.VectorType(element, count), None)
            else:
                fills = _splat(builder, builder.fptrunc(fill, element) if bits < 64 else fill,
                               count)
            read = f"v{count}{'i' if bits == 16 else 'f'}{bits}"  # (the array's, not suffix)
            function = _declared(builder, f"llvm.masked.load.{read}.p0",
                                 fills.type, [pointer.type, _I32, ir.VectorType(ir.IntType(1),
                                                                                 count),
                                              fills.type])
            lanes_in = _first_lanes(builder, args[2], count)
            loaded = builder.call(function, [pointer, ir.Constant(_I32, bits // 8), lanes_in,
                                             fills])
            if bits == 16:
                loaded = builder.select(lanes_in, _floats_of_halves(builder, loaded),
                                        _splat(builder, builder.fptrunc(fill, ir.FloatType()),
                                               count))
                bits = 32
            if bits == dtype.bitwidth:
                return loaded
            converted = ir.VectorType(context.get_value_type(dtype), count)
            convert = builder.fpext if bits < dtype.bitwidth else builder.fptrunc
            return convert(loaded, converted)

        return lanes(array, index, n, fill), codegen

    @intrinsic
    def store(typingctx, array, index, n, vector):
        if not (an_array(array) and isinstance(index, types.Integer)
                and isinstance(n, types.Integer) and vector == lanes):
            return None

        def codegen(context, builder, signature, args):
            pointer = vector_at(context, builder, signature, args,
                                context.get_value_type(dtype))
            function = _declared(
                builder, f"llvm.masked.store.{suffix}.p0", ir.VoidType(),
                [args[3].type, pointer.type, _I32, ir.VectorType(ir.IntType(1), count)])
            builder.call(function, [args[3], pointer, align,
                                    _first_lanes(builder, args[2], count)])
            return context.get_dummy_value()

        return types.void(array, index, n, vector), codegen

    @intrinsic
    def splat(typingctx, value):
        if not isinstance(value, (types.Float, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            return _splat(builder, context.cast(builder, args[0], signature.args[0], dtype),
                          count)

        return lanes(value), codegen

    def reduction(name, flags, start):
        @intrinsic
        def reduce(typingctx, vector):
            if vector != lanes:
                return None

            def codegen(context, builder, signature, args):
                element = context.get_value_type(dtype)
                operands = [ir.Constant(element, start)] if start is not None else []
                function = _declared(builder, f"llvm.vector.reduce.{name}.{suffix}", element,
                                     [o.type for o in operands] + [args[0].type])
                return builder.call(function, operands + list(args), fastmath=flags)

            return dtype(vector), codegen

        return reduce

    @intrinsic
    def larger(typingctx, a, b):
        if not a == b == lanes:
            return None

        def codegen(context, builder, signature, args):
            function = _declared(builder, f"llvm.maxnum.{suffix}", args[0].type,
                                 [args[0].type, args[0].type])
            return builder.call(function, args, fastmath=("nnan", "nsz"))

        return lanes(a, b), codegen

    def where_compared(comparison):
        @intrinsic
        def select(typingctx, a, b, then, otherwise):
            if not a == b == then == otherwise == lanes:
                return None

            def codegen(context, builder, signature, args):
                return builder.select(builder.fcmp_ordered(comparison, args[0], args[1]),
                                      args[2], args[3])

            return lanes(a, b, then, otherwise), codegen

        return select

    @intrinsic
    def where(typingctx, flag, then, otherwise):
        if not (isinstance(flag, types.Boolean) and then == otherwise == lanes):
            return None

        def codegen(context, builder, signature, args):
            return builder.select(context.cast(builder, args[0], flag, types.boolean), args[1],
                                  args[2])

        return lanes(flag, then, otherwise), codegen

    @intrinsic
    def first(typingctx, n, a):
        if not (isinstance(n, types.Integer) and a == lanes):
            return None

        def codegen(context, builder, signature, args):
            return builder.select(_first_lanes(builder, args[0], count), args[1],
                                  ir.Constant(args[1].type, None))

        return lanes(n, a), codegen

    @intrinsic
    def power_of_two(typingctx, a):
        if a != lanes:
            return None

        def codegen(context, builder, signature, args):
            integers = ir.VectorType(ir.IntType(dtype.bitwidth), count)
            mantissa_bits = 23 if dtype.bitwidth == 32 else 52
            bits = builder.shl(builder.bitcast(args[0], integers),
                               ir.Constant(integers, [mantissa_bits] * count))
            return builder.bitcast(bits, args[0].type)

        return lanes(a), codegen

    return LaneOperations(
        count, load, store, splat, larger, reduction("fmax", ("nnan", "nsz"), None),
        reduction("fadd", ("reassoc", "nsz"), 0.0), where_compared("=="), where, first,
        where_compared("<"), power_of_two)


def _arithmetic(ops, instruction):
    """Python's ``ops`` (an operator and its in-place form) between two vectors of one type,
    or a vector and a number (spread over its lanes), as LLVM's ``instruction`` with
    ``_FLAGS``: typed and lowered in place, as Numba's own arithmetic is (an ``overload``
    would compile a function for each pair of types, a second longer first call)."""
    def lowered(context, builder, signature, args):
        vector = signature.return_type
        operands = [value if isinstance(ty, Lanes) else _splat(
            builder, context.cast(builder, value, ty, vector.dtype), vector.count)
            for value, ty in zip(args, signature.args)]
        return getattr(builder, instruction)(*operands, flags=_FLAGS)

    for op in ops:
        class Typing(AbstractTemplate):
            key = op

            def generic(self, args, kws):
                vectors = [t for t in args if isinstance(t, Lanes)]
                if (len(args) == 2 and not kws and vectors
                        and all(v == vectors[0] for v in vectors)
                        and all(isinstance(t, (Lanes, types.Float, types.Integer))
                                for t in args)):
                    return typed_signature(vectors[0], *args)
                return None

        infer_global(op)(Typing)
        for operand_types in ((Lanes, Lanes), (Lanes, types.Number), (types.Number, Lanes)):
            lower_builtin(op, *operand_types)(lowered)


_arithmetic((operator.add, operator.iadd), "fadd")
_arithmetic((operator.sub, operator.isub), "fsub")
_arithmetic((operator.mul, operator.imul), "fmul")
