"""The dependency versions nbxent states, and the private parts of Numba and of
numba-cuda's simulator that it relies on.

These tests fail when an upgrade changes what nbxent assumes (instead of the
kernel cache quietly switching off, or simulated kernels quietly misbehaving),
and check the fallbacks a user on such a version gets.
"""

import importlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from nbxent import _block_labels, _versions
from nbxent.cpu import disk_cache

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _start(script, **env):
    """Start ``script`` in a fresh interpreter (``env`` added to the environment)."""
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    environ.update(env)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)


def _finish(process):
    """(return code, stdout, stderr) of a process from ``_start``."""
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _run(script, **env):
    """Run ``script`` in a fresh interpreter (``env`` added to the environment)."""
    return _finish(_start(script, **env))


# --------------------------------------------------------------- stated ranges

def _pyproject():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_pyproject_states_the_tested_ranges():
    project = _pyproject()
    dependencies = set(project["dependencies"])
    assert f"numpy{_versions.TESTED['numpy']}" in dependencies
    assert f"numba{_versions.TESTED['numba']}" in dependencies
    for extra in ("cuda", "test"):
        assert f"numba-cuda[cu13]{_versions.TESTED['numba-cuda']}" in (
            project["optional-dependencies"][extra]), extra


def test_oldest_constraints_pin_the_lower_bounds():
    """CI's oldest-versions run installs exactly the lower bound of each range."""
    pins = {}
    for line in (ROOT / ".ci" / "oldest-constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    for name, spec in _versions.TESTED.items():
        lower = spec.split(",")[0].removeprefix(">=")
        assert name in pins, f"{name} is not pinned in .ci/oldest-constraints.txt"
        assert pins[name] == lower or pins[name].startswith(lower + "."), (name, pins[name], spec)


@pytest.mark.parametrize("distribution", sorted(_versions.TESTED))
def test_installed_versions_are_in_the_tested_ranges(distribution):
    specifiers = pytest.importorskip("packaging.specifiers")
    installed = _versions.installed_version(distribution)
    if installed == "not installed":
        pytest.skip(f"{distribution} is not installed")
    assert installed in specifiers.SpecifierSet(_versions.TESTED[distribution]), (
        f"{distribution} {installed} is outside the tested range "
        f"{_versions.TESTED[distribution]}: check the guards in nbxent/cpu/disk_cache.py "
        "and nbxent/cuda/_sim.py against it, then widen the range in pyproject.toml and "
        "nbxent/_versions.py")


# --------------------------------------------------------------- the CPU kernel cache

def test_numba_cache_internals_are_as_expected():
    problem = disk_cache.internals_problem()
    assert problem is None, (
        f"the CPU kernels' on-disk cache would be off with {_versions.describe('numba')}: "
        f"{problem}")


def _closure_kernel():
    from numba import njit

    @njit
    def helper(x):
        return x + 1

    @njit
    def kernel(x):
        return helper(x)

    return kernel


def test_cache_off_with_one_warning_when_internals_differ(monkeypatch):
    monkeypatch.setattr(disk_cache, "internals_problem", lambda: "something changed")
    monkeypatch.setattr(_versions, "_warned", set())
    kernel = _closure_kernel()
    with pytest.warns(_versions.CompatibilityWarning, match=r"something changed.*numba \S+ "
                      r"\(nbxent is tested with numba>="):
        assert disk_cache.cached((1, 2), kernel) is kernel
    assert kernel.stats.cache_path is None  # Numba's no-op cache: compiled, never stored
    with _no_warning():
        disk_cache.cached((1, 3), _closure_kernel())
    assert kernel(1) == 2


def test_cache_off_with_one_warning_when_it_cannot_be_set_up(monkeypatch):
    def failing(py_func, variant):
        raise RuntimeError("no writable directory")

    monkeypatch.setattr(disk_cache, "_variant_cache_class", lambda: failing)
    monkeypatch.setattr(_versions, "_warned", set())
    kernel = _closure_kernel()
    with pytest.warns(_versions.CompatibilityWarning, match="no writable directory"):
        assert disk_cache.cached((1, 2), kernel) is kernel
    assert kernel(1) == 2


class _no_warning:
    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)
        assert not [w for w in self._caught
                    if issubclass(w.category, _versions.CompatibilityWarning)]


_CACHE_SCRIPT = """
    import json, warnings
    import numpy as np
    import nbxent
    from nbxent._versions import CompatibilityWarning
    from nbxent.cpu import kernels

    warnings.simplefilter("error", CompatibilityWarning)
    loss = nbxent.cross_entropy(np.linspace(-2, 2, 20, dtype=np.float32).reshape(4, 5),
                                np.array([0, 1, 4, 2]))
    stats = {repr(v): [sum(sum(b.stats.cache_hits.values()) for b in k.functions),
                       sum(sum(b.stats.cache_misses.values()) for b in k.functions)]
             for v, k in kernels._kernels.items()}
    print(json.dumps({"loss": float(loss), "stats": stats}))
"""


def test_kernels_load_from_the_disk_cache_in_a_new_process(tmp_path):
    """A first process compiles and stores its kernel; a second one loads it, compiling nothing."""
    runs = []
    for _ in range(2):
        done = _run(_CACHE_SCRIPT, NUMBA_CACHE_DIR=str(tmp_path))
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["stats"] and first["stats"].keys() == second["stats"].keys()
    for variant, (hits, misses) in first["stats"].items():
        assert (hits, misses) == (0, 1), f"first process, {variant}: {hits} hits, {misses} misses"
    for variant, (hits, misses) in second["stats"].items():
        assert (hits, misses) == (1, 0), (
            f"second process, {variant}: {hits} hits, {misses} misses (compiled again)")
    assert first["loss"] == second["loss"]


@pytest.mark.slow  # compiles a kernel in a fresh cache (seconds)
def test_processes_started_together_compile_each_kernel_once(tmp_path):
    """Two processes sharing a cache directory, started together: one compiles the
    kernel, the other waits for it and loads it (they each compiled it before)."""
    processes = [_start(_CACHE_SCRIPT, NUMBA_CACHE_DIR=str(tmp_path)) for _ in range(2)]
    runs = []
    for done in map(_finish, processes):
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0]["stats"].keys() == runs[1]["stats"].keys()
    for variant in runs[0]["stats"]:
        hits, misses = (sum(run["stats"][variant][i] for run in runs) for i in (0, 1))
        assert (hits, misses) == (1, 1), f"{variant}: {hits} loads, {misses} compiles"
    assert runs[0]["loss"] == runs[1]["loss"]


def _compiled_apart(function, seen):
    """The dispatchers ``function`` calls without inlining them, through its closure's
    cells, at any depth (``seen``: the objects already visited)."""
    found = []
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if id(value) in seen or not hasattr(value, "py_func"):
            continue
        seen.add(id(value))
        if value.targetoptions.get("inline") != "always":
            found.append(value)
        found += _compiled_apart(value.py_func, seen)
    return found


@pytest.mark.parametrize("tiled", [False, True], ids=["row", "tile"])
def test_kernel_variants_never_share_a_function_name(tiled):
    """Numba names a compiled function after its qualified name and a counter of the
    process compiling it; a process that loads two cached kernels holding functions
    of one name links both to the first. So the functions each variant compiles apart
    (the kernel and what it calls without inlining) carry names of their own."""
    from nbxent.cpu.arguments import WRITE_GRAD, WRITE_NOTHING, TargetKind, Variant
    from nbxent.cpu.kernels import kernel_for

    names = {}
    for write in (WRITE_NOTHING, WRITE_GRAD):
        variant = Variant(tiled=tiled, half=False, compute64=False, widened=False,
                          target=TargetKind.INDEX, target_half=False, smoothing=False,
                          softcap=False, entropy=False, write=write, metrics=False)
        functions = []
        for blocks in kernel_for(variant).functions:
            functions += [blocks] + _compiled_apart(blocks.py_func, {id(blocks)})
        names[write] = {f.py_func.__qualname__: f for f in functions}
        # (and no two of one variant's block functions share one either)
        assert len(names[write]) == len({id(f) for f in functions})
    assert len(names[WRITE_NOTHING]) >= 2
    for name in names[WRITE_NOTHING].keys() & names[WRITE_GRAD].keys():
        # Only a function both variants share (one object, one code) may keep its name.
        assert names[WRITE_NOTHING][name] is names[WRITE_GRAD][name], name


# --------------------------------------------------------------- Numba's block labels

def test_block_label_counters_are_where_expected():
    """The counters ``restart_block_labels`` resets exist under the names it uses, and
    numba-cuda's compilations hold the lock it takes."""
    for name in _block_labels._COUNTER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # numba-cuda not installed
            continue
        assert isinstance(module._the_max_label._value, int)
    try:
        from numba.cuda.core.compiler_lock import global_compiler_lock as cuda_lock
    except ImportError:
        return
    with cuda_lock:
        assert _block_labels.global_compiler_lock.is_locked()


def test_restart_block_labels_waits_for_no_compilation(monkeypatch):
    from numba.core import compiler_lock, ir_utils

    monkeypatch.setattr(ir_utils._the_max_label, "_value", 10**30)
    with compiler_lock.global_compiler_lock:  # as inside a compilation: labels in use
        _block_labels.restart_block_labels()
    assert ir_utils._the_max_label._value == 10**30
    _block_labels.restart_block_labels()
    assert ir_utils._the_max_label._value == 0


def test_a_cuda_kernel_restarts_the_labels_before_it_compiles(monkeypatch):
    ir_utils = pytest.importorskip("numba.cuda.core.ir_utils")
    from nbxent.cuda import kernels

    monkeypatch.setattr(ir_utils._the_max_label, "_value", 10**30)
    _, variant = kernels.VARIANTS[0]
    kernels.kernel_for.__wrapped__(variant)  # a new dispatcher, not the memoised one
    assert ir_utils._the_max_label._value == 0


@pytest.mark.slow
def test_a_kernel_compiles_after_many_kernels_compiled(tmp_path):
    """Numba's label counter as after some fifty kernels compiled in one process
    (labels over LLVM's 1024 characters): the next kernel still compiles."""
    done = _run("""
        import numpy as np
        from numba.core import ir_utils
        import nbxent

        ir_utils._the_max_label._value = 10**1100
        loss = nbxent.cross_entropy(np.linspace(-2, 2, 20, dtype=np.float32).reshape(4, 5),
                                    np.array([0, 1, 4, 2]))
        print(float(loss), len(str(ir_utils._the_max_label._value)))
    """, NUMBA_CACHE_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    loss, digits = done.stdout.split()
    assert float(loss) > 0 and int(digits) < 100


# --------------------------------------------------------------- the CUDA simulator

def _sim_module():
    try:
        from numba import cuda  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"numba.cuda does not import: {exc}")
    from nbxent.cuda import _sim

    return _sim


def test_simulator_internals_are_as_expected():
    essential, shared_lock = _sim_module().simulator_problems()
    assert not essential + shared_lock, (
        f"the CUDA simulator stand-ins cannot work with {_versions.describe('numba-cuda')}: "
        f"{essential + shared_lock}")


def test_simulator_stand_ins_give_the_right_results():
    _sim = _sim_module()
    if _sim.SIMULATED:
        _sim.probe()
        return
    done = _run("from nbxent.cuda import _sim; _sim.probe()", NUMBA_ENABLE_CUDASIM="1")
    assert done.returncode == 0, done.stderr


def test_unsupported_simulator_is_a_clear_error():
    _sim_module()
    done = _run("""
        import numba.cuda.simulator.kernel as kernel
        del kernel.BlockThread.syncthreads
        import nbxent.cuda._sim
    """, NUMBA_ENABLE_CUDASIM="1")
    assert done.returncode != 0
    assert "RuntimeError: nbxent cannot run its CUDA kernels in this CUDA simulator" in (
        done.stderr), done.stderr
    assert "BlockThread has no syncthreads()" in done.stderr
    assert "nbxent is tested with numba-cuda>=" in done.stderr


def test_simulator_without_the_shared_array_lock_warns():
    _sim_module()
    done = _run("""
        import warnings
        from numba.cuda.simulator.kernelapi import FakeCUDAShared
        FakeCUDAShared.array = lambda self, shape, dtype: None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import nbxent.cuda._sim
        print([str(w.message) for w in caught])
    """, NUMBA_ENABLE_CUDASIM="1")
    assert done.returncode == 0, done.stderr
    assert "shared arrays are left unlocked" in done.stdout, done.stdout
