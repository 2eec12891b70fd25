"""The suite compiles with Numba's inlining copies skipped (``numba_inlining``, installed by
``conftest.py``): a nest of ``inline="always"`` helpers compiles to the same machine code
with and without them."""

import copy
import re

import numpy as np
from numba import njit

import numba_inlining


def _kernel():
    """A fresh dispatcher (compiled anew) over three levels of inlined helpers, with the
    loops, branches and closures the package's kernels have."""
    scale = 0.5

    @njit(inline="always")
    def clipped(v):
        return v if v > -30.0 else -30.0

    @njit(inline="always")
    def row_max(x, i):
        top = -np.inf
        for c in range(x.shape[1]):
            top = max(top, clipped(x[i, c]))
        return top

    @njit(inline="always")
    def row_loss(x, i, t):
        top = row_max(x, i)
        total = 0.0
        for c in range(x.shape[1]):
            total += np.exp(scale * (clipped(x[i, c]) - top))
        return np.log(total) + scale * (top - x[i, t])

    @njit
    def loss(x, target):
        out = 0.0
        for i in range(x.shape[0]):
            out += row_loss(x, i, target[i]) if target[i] >= 0 else 0.0
        return out

    return loss


def _instructions(dispatcher, *args):
    """The compiled machine code's instructions, its symbols' unique names left out."""
    dispatcher(*args)
    asm = dispatcher.inspect_asm(dispatcher.signatures[0])
    lines = []
    for line in asm.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith((".", ";")):
            lines.append(re.sub(r"[\w$.]*(_Z|numba|cpython)[\w$.]*", "SYMBOL", line))
    return lines


def test_the_suite_skips_the_copies():
    assert "numba.core.inline_closurecall" in numba_inlining.skip_copies()


def test_same_machine_code_with_the_copies_skipped(monkeypatch):
    copies = []

    class Counted:  # the copy module as numba_inlining sees it: counts the inliner's copies
        def __getattr__(self, name):
            return getattr(copy, name)

        @staticmethod
        def deepcopy(value, memo=None):
            copies.append(type(value).__name__)
            return copy.deepcopy(value, memo)

    monkeypatch.setattr(numba_inlining, "copy", Counted())
    x = np.linspace(-40.0, 3.0, 70).reshape(7, 10)
    target = np.array([0, 3, -1, 9, 2, 5, 1])
    skipped = _instructions(_kernel(), x, target)
    assert copies == []
    with numba_inlining.copies_kept():
        kept = _instructions(_kernel(), x, target)
    assert "Block" in copies  # the inliner's copies, made this time
    assert len(skipped) > 100  # the row loop, vectorised: a real kernel's shape
    assert skipped == kept
