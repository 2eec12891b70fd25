"""One shape / dtype / option matrix for every test file, odd sizes beside round ones.

- ``SHAPES``: (rows, C) with the classes last; ``small`` ones run under the CUDA
  simulator too. C = 200_000 is marked ``slow`` (still run by default).
- ``LAYOUTS``: the class axis elsewhere (axis 0, NCHW axis=1, negative axes) and
  strided views (row steps, trimmed classes, transposed, reversed, views that
  need a copy), each built from a contiguous base by a view function, so a
  backend can take the same view of its own copy.
- ``OPTIONS``: option sets, alone and in the combinations that interact.
- ``make_inputs`` turns (shape, axis, dtype, option set) into arrays + keywords.
"""

from dataclasses import dataclass, field

import numpy as np
import pytest

DTYPES = [np.float16, np.float32, np.float64]
# The quick subset (-m "not slow") runs the matrices in float32: each dtype compiles its
# own kernel variants, the bulk of the suite's time.
DTYPE_PARAMS = [pytest.param(np.dtype(d), id=np.dtype(d).name,
                             marks=[] if d is np.float32 else [pytest.mark.slow])
                for d in DTYPES]
REDUCTIONS = ["none", "mean", "sum"]

# Integer target dtypes, each with the ignore_index that suits it (uint8 masks use 255).
TARGET_DTYPES = [
    (np.int8, -100), (np.int16, -100), (np.int32, -100), (np.int64, -100),
    (np.uint8, 255), (np.uint16, -100), (np.uint32, -100), (np.uint64, -100),
]
TARGET_DTYPE_PARAMS = [pytest.param(np.dtype(d), ii, id=f"{np.dtype(d).name}-ii{ii}")
                       for d, ii in TARGET_DTYPES]

SIM_MAX_CLASSES = 70
SIM_MAX_ROWS = 40


def _shape(rows, n_classes, *marks):
    return pytest.param((rows, n_classes), id=f"{rows}x{n_classes}", marks=list(marks))


# rows in 0, 1, 3, 64, 1000; C in 1, 2, 7, 10, 127, 1000, 32000, 200_000.
SHAPES = [
    _shape(0, 7), _shape(1, 1), _shape(3, 1), _shape(1, 2), _shape(64, 2), _shape(3, 7),
    _shape(37, 7), _shape(1, 10), _shape(64, 10), _shape(1000, 10), _shape(1, 127),
    _shape(3, 127), _shape(64, 127), _shape(1000, 127), _shape(3, 1000), _shape(64, 1000),
    _shape(1, 32000), _shape(3, 32000), _shape(64, 32000),
    _shape(1, 200_000, pytest.mark.slow), _shape(3, 200_000, pytest.mark.slow),
]
# The shapes small enough for the simulator (C <= ~70, rows <= ~40).
SMALL_SHAPES = [p for p in SHAPES
                if p.values[0][0] <= SIM_MAX_ROWS and p.values[0][1] <= SIM_MAX_CLASSES]


def is_small(shape, axis=-1):
    """True when a logits shape is tiny enough for the simulator."""
    n_classes = shape[axis]
    rows = int(np.prod(shape)) // max(n_classes, 1)
    return n_classes <= SIM_MAX_CLASSES and rows <= SIM_MAX_ROWS


@dataclass(frozen=True)
class Layout:
    """Logits of ``base_shape`` seen through ``view`` (a function of an array), classes on ``axis``."""
    id: str
    base_shape: tuple
    axis: int
    view: object = field(default=lambda x: x)

    def shape(self):
        return self.view(np.empty(self.base_shape, np.int8)).shape

    def make(self, rng, dtype, scale=2.0):
        """A contiguous base of random logits (the view is taken by the caller)."""
        return make_logits(rng, self.base_shape, dtype, scale)

    def param(self):
        return pytest.param(self, id=self.id)


def _identity(x):
    return x


LAYOUTS = [
    Layout("last-3d", (2, 3, 11), -1, _identity),
    Layout("axis0", (10, 6), 0, _identity),
    Layout("axis0-1000", (1000, 3), 0, _identity),
    Layout("nchw", (2, 7, 3, 5), 1, _identity),
    Layout("nchw-neg3", (2, 7, 3, 5), -3, _identity),
    Layout("nc1hw", (2, 1, 3, 3), 1, _identity),
    Layout("class-middle-3d", (3, 9, 4), 1, _identity),
    Layout("single-row-1d", (13,), 0, _identity),
    Layout("rows-step2", (20, 9), -1, lambda x: x[::2]),
    Layout("classes-trimmed", (6, 13), -1, lambda x: x[:, :-3]),
    Layout("transposed", (9, 6), -1, lambda x: x.T),
    Layout("transposed-axis0", (6, 9), 0, lambda x: x.T),
    Layout("reversed", (5, 8), -1, lambda x: x[::-1, ::-1]),
    Layout("nchw-w-step2", (2, 7, 3, 6), 1, lambda x: x[:, :, :, ::2]),
    Layout("needs-copy-3d", (4, 3, 7), -1, lambda x: x[::2, ::2]),
    Layout("classes-step3", (5, 21), -1, lambda x: x[:, ::3]),
]
LAYOUT_PARAMS = [layout.param() for layout in LAYOUTS]


@dataclass(frozen=True)
class Options:
    """One option set. ``target``: "index", "prob" (soft labels), "onehot", or "unnormalized"
    (non-negative rows not summing to 1); ``ignored``: fraction of index targets set to
    ``ignore_index``; ``weight``: draw class weights."""
    id: str
    target: str = "index"
    weight: bool = False
    ignore_index: int = -100
    ignored: float = 0.0
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float = None

    def param(self, *marks):
        return pytest.param(self, id=self.id, marks=list(marks))


OPTIONS = [
    Options("plain"),
    Options("weight", weight=True),
    Options("ignore", ignored=0.25),
    Options("ignore-pos", ignore_index=1, ignored=0.25),
    Options("smooth", label_smoothing=0.1),
    Options("smooth-1", label_smoothing=1.0),
    Options("weight-ignore", weight=True, ignored=0.3),
    Options("weight-smooth-ignore", weight=True, ignored=0.3, label_smoothing=0.2),
    Options("z_loss", z_loss=1e-2),
    Options("z_loss-ignore", z_loss=0.1, ignored=0.3),
    Options("softcap", softcap=3.0),
    Options("softcap-smooth", softcap=5.0, label_smoothing=0.1),
    Options("everything", weight=True, ignored=0.3, label_smoothing=0.2, z_loss=1e-3,
            softcap=5.0),
    Options("prob", target="prob"),
    Options("onehot", target="onehot"),
    Options("prob-weight-smooth", target="prob", weight=True, label_smoothing=0.15),
    Options("prob-zloss-softcap", target="prob", z_loss=1e-2, softcap=4.0),
    Options("prob-smooth-softcap", target="prob", label_smoothing=0.1, softcap=4.0),
    Options("unnormalized-weight", target="unnormalized", weight=True),
]
# Option sets the quick subset leaves out: the soft cap without smoothing, and under
# probability targets, compile kernel variants of their own; "softcap-smooth" and
# "everything" take the cap through the quick subset.
SLOW_OPTION_IDS = {"softcap", "prob-zloss-softcap", "prob-smooth-softcap"}


def option_params(ids):
    """``option_id`` parameters, those in ``SLOW_OPTION_IDS`` marked slow."""
    return [pytest.param(i, id=i, marks=[pytest.mark.slow] if i in SLOW_OPTION_IDS else [])
            for i in ids]


OPTION_PARAMS = [o.param(*([pytest.mark.slow] if o.id in SLOW_OPTION_IDS else []))
                 for o in OPTIONS]
OPTIONS_BY_ID = {o.id: o for o in OPTIONS}
# The option sets every layout (the tile kernel's among them) is checked with.
LAYOUT_OPTION_IDS = ("plain", "everything", "prob-weight-smooth")


def kernel_choices(option_ids):
    """The compile-time choices of the cross-entropy kernels that ``option_ids`` reach,
    as (probability targets, label smoothing, soft cap); the other options (class
    weights, ignore_index, z-loss, the reduction) are values a compiled kernel takes."""
    return sorted({(OPTIONS_BY_ID[i].target != "index", OPTIONS_BY_ID[i].label_smoothing > 0,
                    OPTIONS_BY_ID[i].softcap is not None) for i in option_ids})


def loss_shape(shape, axis):
    axis %= len(shape)
    return tuple(shape[:axis]) + tuple(shape[axis + 1:])


def make_logits(rng, shape, dtype, scale=2.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def make_index_target(rng, shape, axis, *, dtype=np.int64, ignore_index=-100, ignored=0.0):
    """Class indices for logits of ``shape``; about ``ignored`` of them set to ignore_index."""
    n_classes = shape[axis]
    hi = min(n_classes, np.iinfo(dtype).max + 1)
    target = rng.integers(0, hi, loss_shape(shape, axis))
    if ignored and target.size:
        mask = rng.random(target.shape) < ignored
        if mask.all():
            mask.flat[0] = False
        target = np.where(mask, ignore_index, target)
    return target.astype(dtype)


def make_prob_target(rng, shape, axis, form="prob"):
    """Floating targets of logits' ``shape``: soft labels, one-hot, or unnormalised."""
    n_classes = shape[axis]
    rows_shape = loss_shape(shape, axis)
    if form == "onehot":
        last = np.eye(n_classes)[rng.integers(0, n_classes, rows_shape)]
    elif form == "unnormalized":
        # Rows summing to 0.5..2, not 1 (torch takes them as they are); a total mass of
        # O(1) keeps sum(q)*p - q free of cancellation beyond float32's own rounding.
        last = rng.uniform(0.0, 1.0, rows_shape + (n_classes,))
        last *= rng.uniform(0.5, 2.0, rows_shape + (1,)) / last.sum(axis=-1, keepdims=True)
    else:
        raw = rng.standard_normal(rows_shape + (n_classes,)) * 2
        raw -= raw.max(axis=-1, keepdims=True) if raw.size else 0
        last = np.exp(raw)
        last /= last.sum(axis=-1, keepdims=True)
    return np.moveaxis(last, -1, axis)


def make_inputs(rng, shape, axis, dtype, options, *, target_dtype=np.int64, scale=2.0):
    """(logits, target, keywords) for one call; keywords hold every option (weight included)."""
    logits = make_logits(rng, shape, dtype, scale=5.0 if options.softcap else scale)
    ignore_index = options.ignore_index
    if options.target == "index":
        target = make_index_target(rng, shape, axis, dtype=target_dtype,
                                   ignore_index=ignore_index, ignored=options.ignored)
    else:
        target = make_prob_target(rng, shape, axis, options.target).astype(dtype)
    weight = rng.uniform(0.25, 2.0, shape[axis]).astype(dtype) if options.weight else None
    keywords = dict(axis=axis, weight=weight, ignore_index=ignore_index,
                    label_smoothing=options.label_smoothing, z_loss=options.z_loss,
                    softcap=options.softcap)
    return logits, target, keywords


class FakeGpuArray:
    """Any ``__cuda_array_interface__`` producer (a class property, as CuPy and Numba have
    it): the dispatcher sees a GPU array; it holds no memory, so no kernel may run on it."""

    def __init__(self, shape=(4, 5), typestr="<f4"):
        self.shape = shape
        self.dtype = np.dtype(typestr)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (0, False),
                "version": 3, "strides": None}


def bad_training_options(ones):
    """Bad training options of a call on (3, 4) logits and class indices [0, 1, 2], as
    ``pytest.param(options, error, match)``; ``ones(*shape)`` makes the framework's arrays
    (``torch.ones``, ``jnp.ones``). The framework wrappers raise the direct call's errors."""
    rows = [
        ("sample_weight-shape", dict(sample_weight=ones(4)), ValueError,
         r"sample_weight of shape \(4,\) does not fit logits of shape \(3, 4\): expected \(3,\)"),
        ("denominator-negative", dict(denominator=-1.0), ValueError,
         "denominator must be a finite number >= 0"),
        ("denominator-str", dict(denominator="3"), TypeError, "denominator must be a real number"),
        ("denominator-shape", dict(denominator=ones(2)), ValueError,
         r"0-d array; got an array of shape \(2,\)"),
        ("denominator-sum", dict(denominator=2.0, reduction="sum"), ValueError,
         "denominator= replaces"),
        ("empty", dict(empty="ignore"), ValueError, "empty must be one of"),
        ("metrics", dict(metrics="accuracy"), ValueError, "unknown metric 'accuracy'"),
        ("top_k", dict(metrics="top_k", top_k=0), ValueError, "top_k must be >= 1"),
    ]
    return [pytest.param(options, error, match, id=name) for name, options, error, match in rows]
