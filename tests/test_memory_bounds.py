"""The CPU kernels read and write nothing past their arrays' ends.

The tile kernel copies each tile's logits, and probability targets, into scratch laid out
for its vector loops, and copies the results out: every copy must stop at the caller's
arrays' ends, whatever the tile's last positions. Each array here ends where an
inaccessible page begins (Linux), so a read or write past its end stops the process (a
segmentation fault names the test).
"""

import ctypes
import mmap
import sys

import numpy as np
import pytest

import nbxent
from nbxent import reference as R

from _cases import make_index_target, make_prob_target
from conftest import assert_close

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="guard pages through mprotect (Linux)")

_PROT_NONE = 0
_keep = []  # the mappings stay alive (and their guard pages in place) until the end


def _before_guard_page(values):
    """A copy of ``values`` whose last byte is followed by a page that faults."""
    values = np.ascontiguousarray(values)
    page = mmap.PAGESIZE
    n_pages = -(-max(values.nbytes, 1) // page)
    mapping = mmap.mmap(-1, (n_pages + 1) * page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(start + n_pages * page, page, _PROT_NONE) == 0, ctypes.get_errno()
    _keep.append(mapping)
    guarded = np.frombuffer(mapping, values.dtype, values.size,
                            n_pages * page - values.nbytes).reshape(values.shape)
    guarded[...] = values
    return guarded


# (shape, class axis): NCHW maps whose last tile is shorter than a vector of positions, or
# ends a few positions past whole vectors; short rows whose last tile does.
LAYOUTS = [((1, 5, 7), 1), ((2, 5, 37), 1), ((1000, 10), -1)]


@pytest.mark.parametrize("shape, axis", LAYOUTS)
@pytest.mark.parametrize("target_kind", ["index", "prob"])
def test_tile_kernel_stays_inside_the_arrays(shape, axis, target_kind, rng):
    x = _before_guard_page(rng.standard_normal(shape).astype(np.float32))
    if target_kind == "index":
        target = _before_guard_page(make_index_target(rng, shape, axis, ignored=0.2))
    else:
        target = _before_guard_page(make_prob_target(rng, shape, axis).astype(np.float32))
    out = _before_guard_page(np.zeros(shape, np.float32))
    x64 = x.astype(np.float64)
    t64 = target.astype(np.float64) if target_kind == "prob" else target

    loss = nbxent.cross_entropy(x, target, axis=axis, reduction="none", label_smoothing=0.1)
    _, grad = nbxent.cross_entropy_with_grad(x, target, axis=axis, reduction="none",
                                             label_smoothing=0.1, out=out)

    assert grad is out
    assert_close(loss, R.cross_entropy(x64, t64, axis=axis, reduction="none",
                                       label_smoothing=0.1), np.float32, "loss")
    assert_close(out, R.cross_entropy_grad(x64, t64, axis=axis, reduction="none",
                                           label_smoothing=0.1), np.float32)
