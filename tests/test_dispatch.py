"""Dispatch: the kind comes from the array's type, CuPy is never imported
to decide, mixing kinds is a TypeError naming both, ``backend=`` overrides, and a
backend is a registered module."""

import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import nbxent
from nbxent import _dispatch
from nbxent import reference as R

from _cases import FakeGpuArray


class OtherFakeGpuArray(FakeGpuArray):
    pass


@pytest.mark.parametrize("arrays", [
    pytest.param((np.zeros((2, 3)),), id="ndarray"),
    pytest.param((np.zeros((2, 3), np.float16), np.array([0, 1])), id="two-ndarrays"),
    pytest.param(([[1.0, 2.0]], [0]), id="lists"),
    pytest.param((1.0,), id="float"),
    pytest.param((3,), id="int"),
    pytest.param((True,), id="bool"),
    pytest.param((np.float32(1.0),), id="numpy-scalar"),
    pytest.param((np.zeros((2, 3)), None, 1.0), id="with-None-and-scalar"),
    pytest.param((np.zeros((4, 3))[::2, ::-1],), id="strided-view"),
    pytest.param((np.ma.zeros(3),), id="masked-array"),
    pytest.param((), id="nothing"),
    pytest.param((None,), id="None"),
])
def test_cpu_kinds(arrays):
    assert nbxent.backend_of(*arrays) == "cpu"


@pytest.mark.parametrize("arrays", [
    pytest.param((FakeGpuArray(),), id="fake"),
    pytest.param((FakeGpuArray(), FakeGpuArray((4,), "<i8")), id="two-fakes"),
    pytest.param((FakeGpuArray(), None, 2.0, 1), id="fake-None-scalars"),
    pytest.param((None, OtherFakeGpuArray()), id="subclass"),
])
def test_cuda_array_interface_counts_as_cuda(arrays):
    assert nbxent.backend_of(*arrays) == "cuda"


@pytest.mark.parametrize("order", ["numpy-first", "gpu-first"])
def test_mixing_kinds_names_both(order):
    a, b = np.zeros((4, 5), np.float32), FakeGpuArray()
    arrays = (a, b) if order == "numpy-first" else (b, a)
    with pytest.raises(TypeError) as info:
        nbxent.backend_of(*arrays)
    message = str(info.value)
    assert "numpy.ndarray" in message and "FakeGpuArray" in message
    assert "(cpu)" in message and "(cuda)" in message


def test_mixing_list_and_gpu_array():
    with pytest.raises(TypeError, match=r"builtins\.list \(cpu\).*FakeGpuArray \(cuda\)"):
        nbxent.backend_of([1.0, 2.0], FakeGpuArray())


def test_kind_is_read_from_the_type_once_per_class():
    class Counting:
        looked_up = 0

        def __getattr__(self, name):  # only reached for missing attributes
            type(self).looked_up += 1
            raise AttributeError(name)

    for _ in range(3):
        assert _dispatch.array_kind(Counting()) == "cpu"
    assert Counting.looked_up == 0, "the kind must come from the class, not the instance"


def test_backend_keyword_overrides_detection(rng):
    logits = rng.standard_normal((5, 4))
    target = np.array([0, 1, 2, 3, 0])
    loss = nbxent.cross_entropy(logits, target, backend="cpu")
    np.testing.assert_allclose(loss, R.cross_entropy(logits, target), rtol=1e-12)
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'; known: .*cpu.*cuda"):
        nbxent.cross_entropy(logits, target, backend="tpu")
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'"):
        nbxent.logsumexp(logits, backend="tpu")


# ------------------------------------------------------------------ the registry

def _fake_backend_module(name, calls):
    module = types.ModuleType(name)

    def asarray(x):
        return np.asarray(x)

    def copy_contiguous(x):
        return np.ascontiguousarray(x)

    def cross_entropy(plan):
        calls.append(plan)
        return np.asarray(42.0, plan.logits.loss_dtype), None

    def normalize(plan):
        calls.append(plan)
        return np.zeros(plan.logits.result_shape, plan.logits.loss_dtype)

    module.asarray, module.copy_contiguous = asarray, copy_contiguous
    module.copy_into = np.copyto
    module.cross_entropy, module.normalize = cross_entropy, normalize
    return module


@pytest.fixture
def registry_snapshot():
    saved = (dict(_dispatch._backends), dict(_dispatch._loaded), list(_dispatch._kind_tests))
    yield
    _dispatch._backends.clear()
    _dispatch._backends.update(saved[0])
    _dispatch._loaded.clear()
    _dispatch._loaded.update(saved[1])
    _dispatch._kind_tests[:] = saved[2]
    _dispatch._kind_by_type.clear()


def test_register_backend_serves_public_calls(monkeypatch, registry_snapshot, rng):
    """A backend is a module with the kernel-launching functions: register it, name it, use it."""
    calls = []
    module = _fake_backend_module("fake_nbxent_backend", calls)
    assert all(callable(getattr(module, f, None)) for f in _dispatch.BACKEND_FUNCTIONS), (
        "the fake must provide every function a backend module provides")
    monkeypatch.setitem(sys.modules, "fake_nbxent_backend", module)
    _dispatch.register_backend("fake", "fake_nbxent_backend")
    logits = rng.standard_normal((3, 4)).astype(np.float32)
    loss = nbxent.cross_entropy(logits, np.array([0, 1, 2]), backend="fake", label_smoothing=0.1)
    assert float(loss) == 42.0
    plan = calls[-1]
    assert (plan.logits.n_classes, plan.logits.n_rows) == (4, 3)
    assert plan.loss.label_smoothing == pytest.approx(0.1)
    nbxent.logsumexp(logits, backend="fake")
    assert calls[-1].op == "logsumexp"


def test_register_backend_with_kind_test_claims_types(monkeypatch, registry_snapshot, rng):
    class DaskLike(np.ndarray):
        pass

    calls = []
    monkeypatch.setitem(sys.modules, "fake_dask_backend",
                        _fake_backend_module("fake_dask_backend", calls))
    _dispatch.register_backend("dasklike", "fake_dask_backend",
                               kind_test=lambda cls: issubclass(cls, DaskLike))
    x = rng.standard_normal((3, 4)).view(DaskLike)
    assert nbxent.backend_of(x) == "dasklike"
    assert nbxent.backend_of(np.zeros(3)) == "cpu"
    with pytest.raises(TypeError, match=r"DaskLike \(dasklike\)"):
        nbxent.backend_of(np.zeros(3), x)
    nbxent.cross_entropy(x, np.array([0, 1, 2]).view(DaskLike))
    assert len(calls) == 1


def test_gpu_array_without_cuda_packages_says_what_to_install(monkeypatch, registry_snapshot):
    """The 'cuda' backend failing to import gives an ImportError naming nbxent[cuda]."""
    _dispatch._loaded.pop("cuda", None)
    monkeypatch.setitem(_dispatch._backends, "cuda", "nbxent_missing_cuda_backend_for_test")
    with pytest.raises(ImportError, match=r"pip install 'nbxent\[cuda\]'"):
        nbxent.cross_entropy(FakeGpuArray(), FakeGpuArray((4,), "<i8"))


# ------------------------------------------------------------------ no CUDA imports for NumPy

def _run(code, **env_extra):
    import os
    env = {**os.environ, **env_extra}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_numpy_calls_do_not_import_cupy_or_numba_cuda():
    result = _run("""
        import sys
        import numpy as np
        import nbxent
        x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
        t = np.array([0, 1, 2, 3, 4, -100])
        nbxent.cross_entropy_with_grad(x, t, label_smoothing=0.1)
        nbxent.cross_entropy(x, t, reduction="none")
        nbxent.logsumexp(x); nbxent.softmax(x); nbxent.log_softmax(x); nbxent.entropy(x)
        nbxent.backend_of(x, t)
        loaded = sorted(m for m in sys.modules
                        if m == "cupy" or m.startswith("cupy.") or m.startswith("numba.cuda")
                        or m.startswith("numba_cuda") or m.startswith("nbxent.cuda"))
        print("LOADED", loaded)
    """)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout


def test_import_nbxent_works_without_cuda_packages():
    """With cupy and numba.cuda made unimportable, import and the CPU path still work."""
    result = _run("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "cupy" or name.startswith("cupy.") or name.startswith("numba.cuda") \\
                        or name.startswith("numba_cuda"):
                    raise ImportError(f"blocked {name}")
                return None
        sys.meta_path.insert(0, Block())
        import numpy as np
        import nbxent
        loss = nbxent.cross_entropy(np.zeros((2, 3)), np.array([0, 1]))
        print("LOSS", float(loss))
        class FakeGpu:
            shape, dtype = (2, 3), np.dtype("float32")
            @property
            def __cuda_array_interface__(self):
                return {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}
        try:
            nbxent.cross_entropy(FakeGpu(), FakeGpu())
        except ImportError as exc:
            print("IMPORTERROR", exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "LOSS 1.0986" in result.stdout
    assert "IMPORTERROR" in result.stdout and "nbxent[cuda]" in result.stdout, result.stdout
