"""The ``nbxent`` command: bench end to end on a tiny case, its JSON schema, usage errors, info."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from nbxent import reference
from nbxent.bench import peers, progress, report, run
from nbxent.bench.cases import Case, parse_shape
from nbxent.cli import main

TINY = ["bench", "--quick", "--shapes", "64x10", "--dtype", "float32", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny bench run with the NumPy peer: (exit code, stdout, JSON document, its path)."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    capture = pytest.MonkeyPatch()
    lines = []
    capture.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    try:
        code = main([*TINY, "--repeat", "2", "--peers", "numpy", "--json", str(path)])
    finally:
        capture.undo()
    return code, "\n".join(lines), json.loads(path.read_text()), path


def test_bench_runs_end_to_end(tiny_run):
    code, stdout, document, _ = tiny_run
    assert code == 0
    assert "bytes per call: loss N*C*s" in stdout
    assert "memory bandwidth measured in this run" in stdout
    assert f"C allocator: {document['machine']['allocator']}" in stdout
    impls = [(row["op"], row["impl"], row["status"]) for row in document["results"]]
    assert impls == [("loss", "nbxent", "ok"), ("loss", "numpy", "ok"),
                     ("loss+grad", "nbxent", "ok"), ("loss+grad", "nbxent out=", "ok"),
                     ("loss+grad", "numpy", "ok")]
    for row in document["results"]:
        assert f"| {row['impl']}" in stdout
        assert 0 < row["best_s"] <= row["median_s"] < row["first_call_s"] + 1.0
        assert row["GBps"] == pytest.approx(row["bytes"] / row["median_s"] / 1e9)
    numpy_loss = document["results"][1]
    assert numpy_loss["nbxent_speedup"] == pytest.approx(
        numpy_loss["median_s"] / document["results"][0]["median_s"])


def test_json_validates_against_the_schema(tiny_run):
    jsonschema = pytest.importorskip("jsonschema")
    _, _, document, _ = tiny_run
    jsonschema.Draft202012Validator.check_schema(report.REPORT_SCHEMA)
    jsonschema.validate(document, report.REPORT_SCHEMA)
    broken = dict(document, results=[dict(document["results"][0], status="fine")])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, report.REPORT_SCHEMA)


def test_byte_model():
    case = Case(parse_shape("8x21x4x4:axis=1"), "float64")
    assert case.shape.n_rows == 8 * 4 * 4 and case.shape.n_classes == 21
    assert case.bytes_moved("loss") == 8 * 21 * 16 * 8 + 128 * 8
    assert case.bytes_moved("loss+grad") == 2 * 8 * 21 * 16 * 8 + 128 * 8


@pytest.mark.parametrize("argv, message", [
    (["bench", "--shapes", "64by10"], "DIMxDIMx...[:axis=K]"),
    (["bench", "--shapes", "64x10:axis=2"], "axis 2 is out of range"),
    (["bench", "--dtype", "int8"], "unknown dtype 'int8'"),
    (["bench", "--peers", "numpy,tensorflow"], "unknown peer 'tensorflow'"),
    (["bench", "--op", "grad"], "invalid choice: 'grad'"),
    (["bench", "--threads", "0"], "expected a positive integer"),
    (["bench", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ([], "choose a command"),
])
def test_bad_option_is_a_usage_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unusable_backend_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(run, "usable_backends", lambda: {"cpu": None, "cuda": "no GPU here"})
    assert main([*TINY, "--backend", "cuda"]) == 2
    assert "--backend cuda cannot run here: no GPU here" in capsys.readouterr().err


def test_plot_without_matplotlib_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*TINY, "--plot", "out.png"]) == 2
    assert "pip install 'nbxent[bench]'" in capsys.readouterr().err


def test_plot_writes_a_png(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    _, _, document, _ = tiny_run
    path = tmp_path / "bench.png"
    report.plot(document, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_describes_the_setup(tiny_run, capsys):
    # After tiny_run this process has compiled the kernels info calls: no compile here.
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("nbxent", "numpy", "numba", "numba-cuda", "cupy", "threads", "allocator",
                  "cache", "gpu"):
        assert f"\n{label} " in "\n" + out
    assert "cache       warm" in out


def test_header_and_info_name_the_compile_target(tiny_run, capsys):
    """Figures are read against the CPU the kernels were compiled for and its vector ISA."""
    _, stdout, document, _ = tiny_run
    target = document["machine"]["cpu_target"]
    assert target["vector_isa"] in ("AVX-512", "AVX2", "AVX", "SVE", "NEON", "SSE2")
    assert f"kernels compiled for {target['name']}, {target['vector_isa']}" in stdout
    cache = document["machine"]["cache_bytes"]
    assert cache is None or f"the CPU's largest cache {cache >> 20} MiB" in stdout
    assert main(["info"]) == 0
    assert f"compiled    for {target['name']}, {target['vector_isa']}" in capsys.readouterr().out


def test_compile_target_follows_numba_overrides(monkeypatch):
    from numba.core import config

    from nbxent.bench import machine
    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx,+avx2,+fma,-avx512f")
    assert machine.cpu_target() == {"name": "haswell", "vector_isa": "AVX2"}
    monkeypatch.setattr(config, "CPU_FEATURES", "+neon")
    assert machine.cpu_target()["vector_isa"] == "NEON"


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
def test_x86_targets_with_and_without_fused_multiply_adds(monkeypatch):
    """exp takes ln2 as one constant only where a multiply-add is fused; the x86-64
    baseline ("generic", no features listed) has SSE2 and no FMA."""
    from numba.core import config

    from nbxent.bench import machine
    from nbxent.cpu import target
    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx,+avx2,+fma,-avx512f")
    assert target.fuses_multiply_add()
    monkeypatch.setattr(config, "CPU_NAME", "generic")
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    assert not target.fuses_multiply_add()
    assert machine.cpu_target() == {"name": "generic", "vector_isa": "SSE2"}


def test_largest_cache_and_the_bandwidth_probe_sized_from_it(tmp_path):
    """The CPU bandwidth probe's buffers are 4 times the largest cache Linux lists (a
    server's L3 of hundreds of MiB held part of a 256 MiB buffer: reads 1.7x memory's)."""
    from nbxent.bench import machine, roofline
    for cpu, index, size in [(0, 0, "48K"), (0, 2, "2048K"), (0, 3, "300M"), (1, 3, "4G"),
                             (2, 1, "junk")]:
        directory = tmp_path / f"cpu{cpu}" / "cache" / f"index{index}"
        directory.mkdir(parents=True)
        (directory / "size").write_text(size + "\n")
    assert machine.largest_cache_bytes(tmp_path) == 4 << 30
    (tmp_path / "cpu1" / "cache" / "index3" / "size").write_text("307200K\n")
    assert machine.largest_cache_bytes(tmp_path) == 300 << 20
    assert machine.largest_cache_bytes(tmp_path / "absent") is None
    assert roofline.cpu_buffer_bytes(300 << 20, 64 << 30) == 1200 << 20
    assert roofline.cpu_buffer_bytes(None, None) == roofline.cpu_buffer_bytes(8 << 20, None) \
        == 256 << 20
    assert roofline.cpu_buffer_bytes(300 << 20, 4 << 30) == 512 << 20   # an eighth of memory


def test_suite_names_a_set_of_cases(capsys):
    from nbxent.cli import _settings, build_parser
    args = build_parser().parse_args(["bench", "--suite", "cv"])
    args.argv = ["bench", "--suite", "cv"]
    labels = [shape.label for shape in _settings(args).shapes]
    assert labels[:3] == ["1000000x10", "262144x32", "65536x100"]
    assert "2x150x512x512:axis=1" in labels and labels[-1] == "512x128256"
    args = build_parser().parse_args(["bench", "--suite", "cv", "--quick"])
    args.argv = []
    assert _settings(args).shapes[0].label == "125000x10"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--suite", "cv", "--shapes", "64x10"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "nbxent", "bench", "--help"], capture_output=True,
                          text=True, env=os.environ, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "DIMxDIMx...[:axis=K]" in done.stdout


def test_plain_progress_counts_tasks(capsys):
    reporter = progress.PlainProgress()
    reporter.start(2)
    reporter.step("first")
    reporter.step("second")
    assert capsys.readouterr().err.splitlines() == ["[1/2] first", "[2/2] second"]


@pytest.mark.parametrize("text, want_grad", [("6x5", False), ("6x5", True),
                                             ("2x5x3x2:axis=1", True)])
def test_numpy_peer_matches_the_oracle(text, want_grad, rng):
    shape = parse_shape(text)
    logits = rng.standard_normal(shape.dims)
    target = rng.integers(0, shape.n_classes, size=shape.dims[:shape.axis] + shape.dims[shape.axis + 1:])
    result = peers.usual_cross_entropy(np, logits, target, shape.axis, want_grad)
    loss = result[0] if want_grad else result
    np.testing.assert_allclose(loss, reference.cross_entropy(logits, target, axis=shape.axis))
    if want_grad:
        np.testing.assert_allclose(result[1], reference.cross_entropy_grad(
            logits, target, axis=shape.axis), atol=1e-15)


def test_a_peer_that_disagrees_is_reported_not_timed(monkeypatch):
    def wrong_call(arrays, op):
        return lambda: 2 * peers.usual_cross_entropy(np, arrays.logits, arrays.target,
                                                     arrays.axis, False)

    monkeypatch.setitem(peers.PEERS, "numpy", peers.Peer("numpy", "numpy", ("cpu",), wrong_call, ""))
    settings = run.Settings(shapes=[parse_shape("16x7")], dtypes=("float32",), ops=("loss",),
                            peers=("numpy",), repeat=1, quick=True)
    document = run.run(settings, progress.QuietProgress())
    peer_row = document["results"][-1]
    assert peer_row["status"] == "mismatch" and "not timed" in peer_row["message"]
    assert peer_row["median_s"] is None and peer_row["nbxent_speedup"] is None
    assert " mismatch |" in report.format_table(document)


# --------------------------------------------------------------- --framework

def _framework_run(tmp_path, framework, *extra):
    path = tmp_path / "bench.json"
    code = main(["bench", "--framework", framework, "--shapes", "64x10,2x3x4x4:axis=1",
                 "--repeat", "2", "--quick", "--no-progress", "--json", str(path), *extra])
    return code, json.loads(path.read_text())


def _check_framework_rows(document, framework, peer_expected):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(document, report.REPORT_SCHEMA)
    assert document["framework"] == framework
    wrapper = f"nbxent.{framework}"
    impls = [(row["case"], row["op"], row["impl"], row["status"]) for row in document["results"]]
    expected = []
    for case in ("64x10", "2x3x4x4:axis=1"):
        expected += [(case, "loss+grad", wrapper, "ok"), (case, "loss+grad", "nbxent", "ok")]
        if peer_expected:
            expected.append((case, "loss+grad", framework, "ok"))
    assert impls == expected
    rows = document["results"]
    step = 3 if peer_expected else 2
    for first in range(0, len(rows), step):
        ours, direct = rows[first], rows[first + 1]
        assert ours["wrapper_overhead"] == pytest.approx(ours["median_s"] / direct["median_s"] - 1)
        assert direct["wrapper_overhead"] is None
        assert ours["samples"] == direct["samples"] == 2      # taken in turn
        if peer_expected:
            peer = rows[first + 2]
            assert peer["nbxent_speedup"] == pytest.approx(peer["median_s"] / ours["median_s"])
    table = report.format_table(document)
    assert "| vs direct |" in table and f"--framework {framework}:" in table
    assert f"| {wrapper} " in table


def test_framework_torch_times_the_wrapper_the_direct_call_and_torch(tmp_path):
    pytest.importorskip("torch")
    code, document = _framework_run(tmp_path, "torch")
    assert code == 0
    _check_framework_rows(document, "torch", peer_expected=True)
    assert document["threads"]["torch"] == document["threads"]["numba"]


def test_framework_jax_times_the_wrapper_the_direct_call_and_optax(tmp_path):
    pytest.importorskip("jax")
    code, document = _framework_run(tmp_path, "jax")
    assert code == 0
    has_optax = peers.PEERS["jax"].installed()
    _check_framework_rows(document, "jax", peer_expected=has_optax)
    if not has_optax:
        assert "peer jax: not installed" in document["skipped"]


def test_framework_defaults():
    from nbxent.cli import _settings, build_parser
    for argv, shapes in ((["bench", "--framework", "torch"], ["16384x1000"]),
                         (["bench", "--framework", "jax", "--quick"], ["2048x1000"])):
        args = build_parser().parse_args(argv)
        args.argv = argv
        settings = _settings(args)
        assert [shape.label for shape in settings.shapes] == shapes
        assert settings.dtypes == ("float32",) and settings.ops == ("loss+grad",)
        assert settings.peers == (argv[2],) and settings.framework == argv[2]
    args = build_parser().parse_args(["bench"])
    args.argv = ["bench"]
    assert _settings(args).dtypes == ("float32", "float64") and _settings(args).framework is None


@pytest.mark.parametrize("argv, message", [
    (["--framework", "jax", "--backend", "cuda"], "--framework jax runs on the CPU only"),
    (["--framework", "torch", "--op", "loss"], "--op loss+grad (the default) only"),
    (["--framework", "torch", "--backend", "dask"], "not with --backend dask"),
    (["--framework", "tensorflow"], "invalid choice: 'tensorflow'"),
])
def test_framework_usage_errors(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_framework_not_installed_says_what_to_install(capsys, monkeypatch):
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax" else real_find_spec(name, *a))
    assert main(["bench", "--framework", "jax"]) == 2
    assert "pip install 'nbxent[jax]'" in capsys.readouterr().err


def test_interleaved_samples_alternate():
    from nbxent.bench.timing import interleaved_steady_states
    log = []
    states = interleaved_steady_states([lambda: log.append("a"), lambda: log.append("b")],
                                       samples=3)
    a_count, b_count = (state.calls_per_sample for state in states)
    assert log == ["a", "b"] + (["a"] * a_count + ["b"] * b_count) * 3
