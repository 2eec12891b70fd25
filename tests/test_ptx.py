"""Every CUDA kernel variant x dtype compiles for sm_80 and sm_90, without spills or f64 leaks.

Runs ``python benchmarks/ptx_report.py --skip-inlining-copies`` (a development tool, not
installed with the package; the flag compiles with the test suite's inlining,
``nbxent/_numba_inlining.py``) in a subprocess with ``NUMBA_ENABLE_CUDASIM`` removed (the
simulator cannot compile, and the variable is read when numba is imported), so it works
under a simulator CI run.
Needs numba-cuda with its NVVM / nvJitLink wheels and cuda.core; no GPU.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

import nbxent

# Compiles every CUDA kernel variant (minutes): left out of the quick subset.
pytestmark = [pytest.mark.ptx, pytest.mark.slow]

PTX_REPORT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "ptx_report.py"


def _missing(name):
    try:
        return importlib.util.find_spec(name) is None
    except ImportError:  # the parent package is absent
        return True


_MISSING = [name for name in ("numba_cuda", "cuda.core") if _missing(name)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if _MISSING:
        pytest.skip(f"needs numba-cuda[cu13] and cuda-core; missing {', '.join(_MISSING)}")
    out = tmp_path_factory.mktemp("ptx") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    # The script's own folder heads sys.path: point it at the nbxent under test.
    package_root = str(pathlib.Path(nbxent.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(PTX_REPORT), "--json", str(out), "--skip-inlining-copies",
         "--jobs", str(max(1, min(4, os.cpu_count() or 1)))],
        env=env, capture_output=True, text=True, timeout=1200)
    if not out.exists():
        pytest.fail(f"ptx_report crashed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text()), done


def test_every_variant_dtype_and_cc_was_compiled(report):
    from nbxent.cuda import kernels  # importing kernels is fine under the simulator
    rows, _ = report
    seen = {(r["kernel"], r["dtype"], r["cc"]) for r in rows}
    names = [name for name, _ in kernels.VARIANTS] + ["denominator", "row-sums", "copy"]
    expected = {(n, d, cc) for n in names for d in ("float16", "float32", "float64")
                for cc in ("8.0", "9.0")}
    assert seen == expected


def test_no_compile_errors(report):
    rows, done = report
    errors = [(r["kernel"], r["dtype"], r["cc"], r["error"]) for r in rows if r["error"]]
    assert not errors, "\n".join(map(str, errors)) + "\n" + done.stderr[-2000:]


def test_no_spills_and_registers_within_budget(report):
    rows, _ = report
    spilling = [(r["kernel"], r["dtype"], r["cc"], r.get("spill_stores"), r.get("spill_loads"))
                for r in rows if r.get("spill_stores") or r.get("spill_loads")]
    assert not spilling, spilling
    over = [(r["kernel"], r["dtype"], r["cc"], r["registers"], r["budget"])
            for r in rows if r.get("registers", 0) > r["budget"]]
    assert not over, over


def test_no_float64_arithmetic_in_float16_or_float32_kernels(report):
    rows, _ = report
    scanned = {(r["kernel"], r["dtype"]) for r in rows if "f64_ops" in r}
    assert scanned == {(r["kernel"], r["dtype"]) for r in rows if r["dtype"] != "float64"}
    leaks = [(r["kernel"], r["dtype"], r["cc"], r["f64_ops"]) for r in rows
             if r["dtype"] != "float64" and r.get("f64_ops")]
    assert not leaks, leaks
