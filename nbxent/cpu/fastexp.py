"""exp, log and tanh from arithmetic that LLVM vectorises.

pip's llvmlite has no SVML, so ``math.exp`` in a Numba loop is a scalar libm
call and the loop around it does not vectorise. These bodies use only
multiplies, adds, selects and integer/float bit casts: range reduction
x = k ln2 + r with |r| <= ln2/2, a polynomial for e^r, and 2^k placed in the
exponent bits. The throughput of each is in benchmarks/RESULTS.md
("Figures moved from docstrings").

Accuracy, measured against float64 (the kernels only take exp of x - max <= 0):
``exp32`` within 8e-8 relative on [-87.3, 88], 1.2e-7 inlined in a loop with the
kernels' fastmath flags (a degree-6 polynomial, 5 of its coefficients fitted; results
below 1.2e-38 flush to 0), ``exp_nonpositive32`` within 1.2e-7 above -20 and
3e-7 below, ``exp64`` within 2.4e-14
relative on [-700, 700] (degree-12 Taylor polynomial), ``log1p32`` within 2e-7
relative and ``log1p64`` within 4e-16 (subnormal x included), ``tanh`` within 2e-15
relative in float64 (4e-7 in float32) and non-decreasing over neighbouring float64
(float32: float16) inputs. Special values follow IEEE: exp(-inf) = 0, exp(inf) = inf,
nan in gives nan out; log1p(inf) = inf.

The per-logit exps of the kernels take x - max, never positive: ``exp_nonpositive32``
and ``exp_nonpositive64`` drop the overflow and nan selects of a general exp (a nan
passes through the polynomial) and flush to 0 a little lower, where the scale 2**k
reaches 0 (below -87.7 in float32, -708.7 in float64; tests/test_fastexp.py checks both
against NumPy). ``exp_negative32`` also gives 0 at +0.0, for a sum that leaves out the
max's own terms. ``exp_nonpositive_lanes`` is either of them for a vector of lanes
(``lanes``), where a loop is written in vectors rather than left to LLVM's vectoriser.
"""

import numpy as np
from numba import njit

from .bits import bitcast
from .lanes import lanes_for
from .target import fuses_multiply_add

# Inline and without fastmath of their own: the callers' flags apply.
_F32 = np.float32
# ln2 as one constant takes k * ln2 unrounded, in a fused multiply-add; where the target
# has none, the product's rounding (up to 1e-6 of r at x = -20) would be exp's error.
_ONE_LN2 = fuses_multiply_add()


# 1.5 * 2**23 + 127: adding it to a float32 t in [-2**22, 2**22] rounds t to the nearest
# integer k (the sum's unit in the last place is 1) and leaves k + 127 in the sum's low
# mantissa bits, where a shift turns them into the exponent of 2**k.
_ROUND32 = _F32(12583039.0)
_LOG2E32 = _F32(1.4426950408889634)
_LN2_32 = _F32(0.6931471805599453)
_LN2_HI32, _LN2_LO32 = _F32(0.693359375), _F32(-2.12194440e-4)  # (split: _reduced32)


@njit(fastmath={"contract"}, error_model="numpy")
def _reduced32(x, split_ln2):
    """(k, r, bits): x = k ln2 + r with k an integer (as a float32) and |r| <= ln2/2
    (about), and the float32 bits whose low mantissa bits hold k + 127.

    With ``split_ln2``, ln2 in two parts so that k * ln2_hi is exact (Cody-Waite);
    without, ln2 rounded to float32 in one multiply-add, whose error k * 1.9e-9 adds to
    r's: e**x's relative error grows to 1.2e-7 at x = -20 and 3e-7 at -87, where
    e**x < 2e-9 weighs nothing in a kernel's sums, for one multiply-add less per logit
    in loops bound by them (benchmarks/RESULTS.md).

    With contraction (fused multiply-adds) but no other fastmath of its own: under
    reassociation LLVM folds (t + c) - c to t, and an older LLVM (Numba 0.60's) turned
    k * ln2 = (t + c - c) * ln2 into (t + c) * ln2 - c * ln2, which loses r's digits.
    """
    x = np.float32(x)
    shifted = x * _LOG2E32 + _ROUND32
    k = shifted - _ROUND32
    if split_ln2:
        r = x - k * _LN2_HI32 - k * _LN2_LO32
    else:
        r = x - k * _LN2_32
    return k, r, bitcast(shifted, np.int32)


@njit(inline="always")
def exp_polynomial32(r):
    """e**r for a float32 |r| <= ln2/2: 1 + r + r**2 q(r), q of degree 4 fitted in float64
    for the least largest relative error of e**r (Lawson's iteration of weighted least
    squares on Chebyshev nodes): 3.3e-9, far below float32's rounding."""
    q = _F32(1.3813142e-3)
    q = q * r + _F32(8.3694188e-3)
    q = q * r + _F32(4.1668456e-2)
    q = q * r + _F32(1.6666515e-1)
    q = q * r + _F32(4.9999994e-1)
    return q * (r * r) + r + _F32(1.0)


@njit(inline="always")
def _exp32_scaled(x, general):
    """e**x as polynomial(r) * 2**k, x = k ln2 + r. ``general``: k clamped to [-126, 127]
    and ln2 split (``_reduced32``); else k must lie in [-127, 127] (k = -127 gives 2**k =
    0, bits all zero) and ln2 is one constant where the target fuses multiply-adds."""
    k, r, k_bits = _reduced32(x, general or not _ONE_LN2)
    p = exp_polynomial32(r)
    if general:
        k = min(max(k, _F32(-126.0)), _F32(127.0))
        return p * bitcast(np.int32((np.int32(k) + 127) << 23), np.float32)
    return p * bitcast(np.int32(k_bits << 23), np.float32)


@njit(inline="always")
def exp32(x):
    """e**x for a float32 x."""
    y = _exp32_scaled(x, True)
    y = _F32(0.0) if x < _F32(-87.33654) else y
    y = _F32(np.inf) if x > _F32(88.72283) else y
    return y if x == x else x


# The lowest arguments the non-positive exps evaluate (``exp_floor``).
_FLOOR32, _FLOOR64 = _F32(-88.0), -709.0


@njit(inline="always")
def exp_floor(x, use64):
    """``x`` raised to the lowest argument the non-positive exps evaluate (-88 in
    float32, -709 in float64), below which they return 0; nan stays nan."""
    # A nan fails the comparison and goes on: the polynomial returns it.
    if use64:
        return _FLOOR64 if x < _FLOOR64 else x
    return _FLOOR32 if x < _FLOOR32 else x


@njit(inline="always")
def exp_nonpositive32(x):
    """e**x for a float32 x <= 0 (or nan, which it returns); no overflow or nan
    selects, ln2 one constant (``_reduced32``). Below -87.7 (where k reaches -127, a
    scale of 0) it returns 0."""
    return _exp32_scaled(exp_floor(x, False), False)


# The bits of float32 -88.0 as a signed integer. In that order the bits of -0.0 to -88.0
# lie below it, and those of +0.0, of every number below -88 and of the nans above it.
_FLOOR32_BITS = np.int32(-1028653056)


@njit(inline="always")
def negative_floor32(x):
    """A float32 x in [-88, -0.0] as it is, anything else (+0.0, below -88, nan) as -88:
    one integer minimum of the bits."""
    return bitcast(min(bitcast(np.float32(x), np.int32), _FLOOR32_BITS), np.float32)


@njit(inline="always")
def exp_negative32(x):
    """``exp_nonpositive32`` but 0 for x = +0.0 (and for nan): a row's exp(x - max) with
    the max's own term left out, for its sum of the rest, in one integer minimum
    (``negative_floor32``, whose -88 gives 0) instead of a comparison, a select and
    ``exp_floor``'s clamp. -0.0 gives 1, as exp does: a caller takes a zero max as -0.0,
    from which both zeros are +0.0 away, and finds nans apart."""
    return _exp32_scaled(negative_floor32(x), False)


_SCALE64 = 1.5 * 2.0**52 + 1023.0
# n! for n from 12 down to 0: their reciprocals are the float64 polynomial's coefficients,
# in Horner's order.
_FACTORIALS64 = (479001600.0, 39916800.0, 3628800.0, 362880.0, 40320.0, 5040.0, 720.0,
                 120.0, 24.0, 6.0, 2.0, 1.0, 1.0)
_LOG2E64 = 1.4426950408889634
_LN2_HI64, _LN2_LO64 = 0.6931471803691238, 1.9082149292705877e-10


@njit(fastmath={"contract"}, error_model="numpy")
def _reduced64(x):
    """(k, r): x = k ln2 + r with k an integer (as a float64), ln2 in two parts whose first
    times k is exact (Cody-Waite). Without the callers' reassociation, as ``_reduced32``:
    LLVM may regroup x - k ln2_hi - k ln2_lo as x - k (ln2_hi + ln2_lo), which loses r's
    digits where the products are not fused into multiply-adds (x86 without FMA)."""
    k = np.floor(x * _LOG2E64 + 0.5)
    return k, x - k * _LN2_HI64 - k * _LN2_LO64


@njit(inline="always")
def _exp64_scaled(x, clamp):
    """float64 ``_exp32_scaled``: k clamped to [-1022, 1023] if ``clamp``."""
    k, r = _reduced64(x)
    p = 1.0 / _FACTORIALS64[0]
    for n in _FACTORIALS64[1:]:
        p = p * r + 1.0 / n
    if clamp:
        k = min(max(k, -1022.0), 1023.0)
    # 2**k from the bits of k + 1.5 * 2**52 + 1023, whose low mantissa bits hold k + 1023
    # (as exp32's rounding does): AVX2 has no vector float64 -> int64 conversion, and
    # LLVM converted each lane apart.
    return p * bitcast(bitcast(k + _SCALE64, np.int64) << 52, np.float64)


@njit(inline="always")
def exp64(x):
    """e**x for a float64 x."""
    y = _exp64_scaled(x, True)
    y = 0.0 if x < -708.3964185322641 else y
    y = np.inf if x > 709.782712893384 else y
    return y if x == x else x


@njit(inline="always")
def exp_nonpositive64(x):
    """float64 ``exp_nonpositive32``: returns 0 below -708.7."""
    return _exp64_scaled(exp_floor(x, True), False)


# The bits of sqrt(1/2): subtracted from a float's bits, its exponent field counts from
# there, so that the mantissa lands in [sqrt(1/2), sqrt(2)).
_SQRT_HALF_BITS32 = np.int32(0x3F3504F3)
_SQRT_HALF_BITS64 = np.int64(0x3FE6A09E667F3BCD)
# The bits of 2**52: OR-ed with an integer below 2**52, the float 2**52 + that integer
# (AVX2 has no vector int64 -> float64 conversion).
_TWO52_BITS = np.int64(0x4330000000000000)


@njit(fastmath=False, error_model="numpy")
def _dropped_from_one_plus(x, u):
    """x - (u - 1), for u = 1 + x rounded to [1, 2): what that rounding dropped, exactly.
    Compiled apart, without fastmath, as ``_reduced64``: a reassociating caller would
    fold it to 0. (Said explicitly: a function that leaves ``fastmath`` unset inherits
    the flags of the caller that first compiles it, for every caller after.)"""
    return x - (u - type(u)(1.0))


@njit(inline="always")
def log1p32(x):
    """log(1 + x) for a float32 x >= 0, precise for tiny x; inf and nan pass through.

    One path for every x, without a division: u = 1 + x rounded is 2**k m with m in
    [sqrt(1/2), sqrt(2)), log(m) is Cephes' logf polynomial in f = m - 1 (exact), and
    below u = 2 the term the rounding of u dropped (``_dropped_from_one_plus``, exact)
    is added back, which keeps a tiny x's digits (added as it is, not over u: at most
    2**-24 of the result). Above 2 that term is below 2**-24 relative; left out.
    """
    u = _F32(1.0) + x
    bits = np.int32(bitcast(u, np.int32) - _SQRT_HALF_BITS32)
    k = _F32(bits >> 23)
    f = bitcast(np.int32((bits & 0x007FFFFF) + _SQRT_HALF_BITS32), np.float32) - _F32(1.0)
    dropped = _dropped_from_one_plus(x, u) if u < _F32(2.0) else _F32(0.0)
    z = f * f
    y = _F32(7.0376836292e-2)
    for c in (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
              -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1):
        y = y * f + _F32(c)
    # (ln2 in two parts: k times the first is exact)
    y = y * z * f + (k * _F32(-2.12194440e-4) + dropped) - _F32(0.5) * z
    y = f + y + k * _F32(0.693359375)
    return y if x < _F32(np.inf) else x  # inf and nan pass through


@njit(inline="always")
def log1p64(x):
    """log(1 + x) for a float64 x >= 0, precise for tiny x; inf and nan pass through.

    ``log1p32``'s one path in float64, log(m) from fdlibm's polynomial in s = f / (2 + f)
    (a vector division, where ``math.log1p`` is a scalar call that keeps the loop around
    it from vectorising). Not for a reassociating caller: there LLVM folded the dropped
    term away all the same (tiny x gave 0), which ``log1p32``'s survived.
    """
    u = 1.0 + x
    bits = bitcast(u, np.int64) - _SQRT_HALF_BITS64
    k = bitcast((bits >> 52) | _TWO52_BITS, np.float64) - 2.0**52
    f = bitcast((bits & 0x000FFFFFFFFFFFFF) + _SQRT_HALF_BITS64, np.float64) - 1.0
    dropped = _dropped_from_one_plus(x, u) if u < 2.0 else 0.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = (z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 + w * (
        1.818357216161805012e-01 + w * 1.479819860511658591e-01)))
        + w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01
                                                + w * 1.531383769920937332e-01)))
    half_f2 = 0.5 * f * f
    # (ln2 in two parts: k times the first is exact)
    y = k * 6.93147180369123816490e-01 - ((half_f2 - (
        s * (half_f2 + r) + (k * 1.90821492927058770002e-10 + dropped))) - f)
    return y if x < np.inf else x  # inf and nan pass through


def exp_nonpositive_for(use64):
    """e**x for x <= 0 (the kernels' x - max) in the kernel's compute type:
    ``exp_nonpositive64`` when ``use64`` else ``exp_nonpositive32``, chosen in Python
    (``access.loader`` says why).
    """
    return exp_nonpositive64 if use64 else exp_nonpositive32


def exp_floor_lanes(dtype):
    """``exp_floor`` of a vector of ``dtype`` lanes (``lanes.lanes_for``): each lane raised
    to the lowest argument the non-positive exps evaluate; nan stays nan."""
    lanes = lanes_for(dtype)
    splat, where_less = lanes.splat, lanes.where_less
    lowest = _FLOOR64 if np.dtype(dtype) == np.float64 else _FLOOR32

    @njit(inline="always")
    def floor(x):
        return where_less(x, splat(lowest), splat(lowest), x)

    return floor


def exp_nonpositive_lanes(dtype):
    """``exp_nonpositive32`` or ``exp_nonpositive64`` of a vector of ``dtype`` lanes
    (``lanes.lanes_for``): the same floor (a nan passes), reduction, polynomial and scale
    2**k from the bits of the sum that rounds k, with the lanes' own flags (contraction, no
    reassociation: as ``_reduced32``'s). float64 rounds k to the nearest integer by that
    sum (1.5 * 2**52 + 1023) rather than ``np.floor``: the same reduction but at exact
    ties, |r| <= ln2/2 either way. Checked against the scalar ones in tests/test_fastexp.py.
    """
    lanes = lanes_for(dtype)
    splat, power_of_two = lanes.splat, lanes.power_of_two
    floor = exp_floor_lanes(dtype)

    @njit(inline="always")
    def exp32(x):
        x = floor(x)
        shifted = x * _LOG2E32 + _ROUND32
        k = shifted - _ROUND32
        r = x - k * _LN2_32 if _ONE_LN2 else x - k * _LN2_HI32 - k * _LN2_LO32
        return exp_polynomial32(r) * power_of_two(shifted)

    @njit(inline="always")
    def exp64(x):
        x = floor(x)
        shifted = x * _LOG2E64 + _SCALE64
        k = shifted - _SCALE64
        r = x - k * _LN2_HI64 - k * _LN2_LO64
        p = splat(1.0 / _FACTORIALS64[0])
        for n in _FACTORIALS64[1:]:
            p = p * r + 1.0 / n
        return p * power_of_two(shifted)

    return exp64 if np.dtype(dtype) == np.float64 else exp32


def tanh_for(use64):
    """tanh(x) from ``exp_nonpositive_for(use64)``, so that a loop of it vectorises:
    sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) <= 1, and below |x| = 0.02 (float64;
    0.15 in float32), where 1 - e would cancel, the series x (1 - x**2/3 + 2 x**4/15 -
    17 x**6/315). ±inf gives ±1, nan passes through."""
    exp_nonpositive = exp_nonpositive_for(use64)
    series_below = 0.02 if use64 else 0.15

    @njit(inline="always")
    def tanh(x):
        ftype = type(x)
        a = abs(x)
        e = exp_nonpositive(ftype(-2.0) * a)
        far = (ftype(1.0) - e) / (ftype(1.0) + e)
        s = a * a
        near = a * (ftype(1.0) - s * (ftype(1.0 / 3.0) - s * (ftype(2.0 / 15.0)
                                                             - s * ftype(17.0 / 315.0))))
        t = near if a < ftype(series_below) else far
        return t if x >= ftype(0.0) else -t

    return tanh
