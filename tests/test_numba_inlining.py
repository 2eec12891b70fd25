"""Numba's inlining copies skipped (``nbxent/_numba_inlining.py``): by the package around its
CPU kernels' compiles and its CUDA kernels' launches only, by the suite everywhere
(``conftest.py``); a nest of ``inline="always"`` helpers compiles to the same machine code
(the same PTX) with and without them."""

import copy
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from numba import njit

import nbxent
from nbxent import _numba_inlining as numba_inlining
from nbxent.cpu import launch
from nbxent.cpu.kernels import _kernels


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


class CountedCopies:
    """The ``copy`` module as ``numba_inlining`` sees it, counting the inliners' deep copies
    (their types' names) in ``made``."""

    def __init__(self):
        self.made = []

    def __getattr__(self, name):
        return getattr(copy, name)

    def deepcopy(self, value, memo=None):
        self.made.append(type(value).__name__)
        return copy.deepcopy(value, memo)


@pytest.fixture
def copies(monkeypatch):
    """The inliners' copies, by type, made while a test runs."""
    counted = CountedCopies()
    monkeypatch.setattr(numba_inlining, "copy", counted)
    return counted.made


_X = np.linspace(-40.0, 3.0, 70).reshape(7, 10)
_TARGET = np.array([0, 3, -1, 9, 2, 5, 1])


def test_same_machine_code_with_the_copies_skipped(copies):
    skipped = _instructions(_kernel(), _X, _TARGET)
    assert copies == []
    with numba_inlining.copies_kept():
        kept = _instructions(_kernel(), _X, _TARGET)
    assert "Block" in copies  # the inliner's copies, made this time
    assert len(skipped) > 100  # the row loop, vectorised: a real kernel's shape
    assert skipped == kept


def test_the_package_skips_the_copies_only_in_its_context_and_thread(copies, monkeypatch):
    monkeypatch.setattr(numba_inlining, "_everywhere", False)  # as outside the suite
    _kernel()(_X, _TARGET)  # a user's function: copied as Numba wrote it
    assert "Block" in copies
    copies.clear()
    with numba_inlining.copies_skipped():
        _kernel()(_X, _TARGET)
        assert copies == []
        other = threading.Thread(target=lambda: _kernel()(_X, _TARGET))
        other.start()
        other.join()
        assert "Block" in copies  # another thread's compile is not the context's
    copies.clear()
    _kernel()(_X, _TARGET)
    assert "Block" in copies


def test_the_cpu_kernels_compile_in_the_context(monkeypatch):
    entered = []
    real = launch.copies_skipped

    def recorded():
        entered.append(True)
        return real()

    monkeypatch.setattr(launch, "copies_skipped", recorded)
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    target = np.array([0, 1, 4])
    want = nbxent.cross_entropy(x, target)
    for kernel in _kernels.values():
        monkeypatch.setattr(kernel, "_runs", {})  # as in a fresh process: compiles (or loads)
    entered.clear()
    assert nbxent.cross_entropy(x, target) == want
    assert entered == [True]


_CUDA_SCRIPT = """
import json, re
from numba import cuda, float32
from nbxent import _numba_inlining as numba_inlining
from test_numba_inlining import CountedCopies

counted = numba_inlining.copy = CountedCopies()
copies = counted.made


def kernel():
    @cuda.jit(device=True, inline="always")
    def clipped(v):
        return v if v > float32(-30.0) else float32(-30.0)

    @cuda.jit(device=True, inline="always")
    def row_max(x, i):
        top = float32(-1e30)
        for c in range(x.shape[1]):
            top = max(top, clipped(x[i, c]))
        return top

    def row_loss(x, out):
        i = cuda.grid(1)
        if i < x.shape[0]:
            out[i] = row_max(x, i) - clipped(x[i, 0])

    return row_loss


signature = "void(float32[:, :], float32[:])"
with numba_inlining.copies_skipped(cuda=True):
    skipped, _ = cuda.compile_ptx(kernel(), signature, cc=(8, 0))
n_skipped = len(copies)
kept, _ = cuda.compile_ptx(kernel(), signature, cc=(8, 0))
skipped, kept = (re.sub(r"_Z\\w*", "SYMBOL", ptx) for ptx in (skipped, kept))  # (a counter)
print(json.dumps({"same": skipped == kept, "skipped": n_skipped, "kept": len(copies),
                  "lines": skipped.count(chr(10))}))
"""


def test_cuda_kernels_compile_to_the_same_ptx_without_the_copies():
    """numba-cuda's inliner in ``copies_skipped(cuda=True)`` (the CUDA backend launches its
    kernels in it) makes no copies and the same PTX; outside it, it copies. In a process
    without the simulator, which cannot compile."""
    for name in ("numba_cuda", "cuda.core"):
        try:
            if importlib.util.find_spec(name) is None:
                pytest.skip(f"needs numba-cuda[cu13] and cuda-core; missing {name}")
        except ImportError:
            pytest.skip(f"needs numba-cuda[cu13] and cuda-core; missing {name}")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    package_root = str(pathlib.Path(nbxent.__file__).resolve().parent.parent)
    tests = str(pathlib.Path(__file__).resolve().parent)  # (for CountedCopies)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, tests,
                                                      env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", _CUDA_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["skipped"] == 0 and result["kept"] > 0
    assert result["same"] and result["lines"] > 20
