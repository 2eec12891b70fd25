"""Benchmark cases: shapes, their command-line syntax, inputs and the byte model.

A case is a logits shape, a class axis and a dtype. On the command line a case
is written ``DIMxDIMx...[:axis=K]``: ``16384x1000`` is 16384 rows of 1000
classes (class axis last), ``8x21x512x512:axis=1`` an NCHW segmentation map
with 21 classes along axis 1. Targets are int64 class indices.
"""

from dataclasses import dataclass
from math import prod

import numpy as np

OPS = ("loss", "loss+grad")
DTYPES = ("float16", "float32", "float64")
TARGET_DTYPE = np.dtype(np.int64)

BYTE_MODEL = {
    "loss": "N*C*s (logits read once) + N*8 (int64 targets)",
    "loss+grad": "2*N*C*s (logits read once, gradient written once) + N*8 (int64 targets)",
}
"""The bytes a case must move at least, per op: N rows, C classes, s bytes per logit."""


@dataclass(frozen=True)
class Shape:
    """A logits shape and its class axis (normalised to a non-negative index)."""
    dims: tuple
    axis: int

    @property
    def n_classes(self):
        return self.dims[self.axis]

    @property
    def n_rows(self):
        return prod(self.dims) // self.n_classes

    @property
    def label(self):
        text = "x".join(map(str, self.dims))
        return text if self.axis == len(self.dims) - 1 else f"{text}:axis={self.axis}"


@dataclass(frozen=True)
class Case:
    """One benchmark case: a shape and a logits dtype."""
    shape: Shape
    dtype: str

    def bytes_moved(self, op):
        """Bytes of memory traffic the byte model counts for ``op`` ("loss" or "loss+grad").

        Examples
        --------
        >>> Case(parse_shape("1000x10"), "float32").bytes_moved("loss+grad")
        88000
        """
        logit_bytes = prod(self.shape.dims) * np.dtype(self.dtype).itemsize
        passes = {"loss": 1, "loss+grad": 2}[op]
        return passes * logit_bytes + self.shape.n_rows * TARGET_DTYPE.itemsize


def parse_shape(text):
    """Parse one case written ``DIMxDIMx...[:axis=K]`` into a ``Shape``.

    Raises ``ValueError`` with the accepted syntax when ``text`` does not parse.

    Examples
    --------
    >>> parse_shape("8x21x64x64:axis=1")
    Shape(dims=(8, 21, 64, 64), axis=1)
    >>> parse_shape("4096x32000").n_rows
    4096
    """
    syntax = "expected DIMxDIMx...[:axis=K] with positive integer dims, e.g. 16384x1000 or 8x21x512x512:axis=1"
    dims_text, _, option = text.strip().partition(":")
    try:
        dims = tuple(int(d) for d in dims_text.lower().split("x"))
        axis = -1
        if option:
            key, _, value = option.partition("=")
            if key.strip() != "axis":
                raise ValueError
            axis = int(value)
    except ValueError:
        raise ValueError(f"bad shape {text!r}: {syntax}") from None
    if min(dims) < 1:
        raise ValueError(f"bad shape {text!r}: {syntax}")
    if not -len(dims) <= axis < len(dims):
        raise ValueError(f"bad shape {text!r}: axis {axis} is out of range for {len(dims)} dims")
    return Shape(dims, axis % len(dims))


def parse_shapes(text):
    """Parse a comma-separated list of cases (see ``parse_shape``)."""
    return [parse_shape(part) for part in text.split(",") if part.strip()]


# Each default case holds about 2**24 logits (64 MiB in float32: twice the L3 of
# a common 2-core cloud machine, so timings measure memory, not cache). The NCHW
# case has the 21 classes of Pascal VOC. --quick runs cases an eighth the size.
DEFAULT_SHAPES = ("131072x128", "16384x1024", "512x32768", "4x21x448x448:axis=1")
QUICK_SHAPES = ("16384x128", "2048x1024", "64x32768", "2x21x224x224:axis=1")
DEFAULT_DTYPES = ("float32", "float64")


# Named suites. "cv": the computer-vision shapes (classification with 10, 32, 100 and
# 1000 classes; segmentation maps of Pascal VOC, Cityscapes and ADE20K, class axis 1) and,
# so that nothing regresses, two long-row cases.
SUITES = {
    "default": DEFAULT_SHAPES,
    "cv": ("1000000x10", "262144x32", "65536x100", "16384x1000", "8x21x512x512:axis=1",
           "4x19x512x1024:axis=1", "2x150x512x512:axis=1", "4096x32000", "512x128256"),
}


def default_shapes(quick=False):
    """The default cases' shapes: small, medium and large C, and an NCHW map (axis=1)."""
    return [parse_shape(text) for text in (QUICK_SHAPES if quick else DEFAULT_SHAPES)]


def suite_shapes(name, quick=False):
    """The shapes of the suite ``name`` (see ``SUITES``); ``quick``: the default suite's
    quick cases, or another suite's with the first dimension an eighth (at least 1).

    Examples
    --------
    >>> [s.label for s in suite_shapes("cv")][:2]
    ['1000000x10', '262144x32']
    >>> suite_shapes("cv", quick=True)[0].label
    '125000x10'
    """
    if name == "default":
        return default_shapes(quick)
    shapes = [parse_shape(text) for text in SUITES[name]]
    if not quick:
        return shapes
    return [Shape((max(1, s.dims[0] // 8),) + s.dims[1:], s.axis) for s in shapes]


def make_inputs(case, seed=0):
    """Random logits (standard normal) and valid int64 targets for ``case``, as NumPy arrays."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(case.shape.dims, dtype=np.float32).astype(case.dtype, copy=False)
    target_shape = case.shape.dims[:case.shape.axis] + case.shape.dims[case.shape.axis + 1:]
    target = rng.integers(0, case.shape.n_classes, size=target_shape, dtype=TARGET_DTYPE)
    return logits, target
