"""Run a benchmark: plan the tasks, measure bandwidth, time every contender, build the report.

The report is a plain dict (the ``--json`` document, see ``nbxent.bench.report``);
the table and the plot are drawn from it.
"""

import datetime
import os
from dataclasses import asdict, dataclass

from nbxent.bench import machine, roofline
from nbxent.bench.cases import BYTE_MODEL, Case, default_shapes, make_inputs
from nbxent.bench.peers import (PEERS, TOLERANCE, CaseArrays, framework_contenders,
                                nbxent_contenders, relative_error)
from nbxent.bench.timing import first_call, interleaved_steady_states, steady_state

SCHEMA_VERSION = 1


@dataclass
class Settings:
    """What to run; every field has the default of a bare ``nbxent bench``."""
    shapes: list = None             # list of cases.Shape; None: the default cases
    dtypes: tuple = ("float32", "float64")
    backends: tuple = None          # None: every usable backend
    ops: tuple = ("loss", "loss+grad")
    peers: tuple = tuple(PEERS)     # wanted peers; those not installed are skipped
    repeat: int = None              # samples per contender; None: 3 to 5 within about a second
    threads: int = None             # None: Numba's default
    quick: bool = False
    command: str = ""
    framework: str = None           # "torch" or "jax": time the wrapper's training step


def usable_backends():
    """``{backend: None or the reason it cannot run}`` for "cpu" and "cuda"."""
    _, why_no_gpu = machine.probe_gpu()
    return {"cpu": None, "cuda": why_no_gpu}


def _to_backend(array, backend):
    if backend == "cuda":
        import cupy
        return cupy.asarray(array)
    return array


def _synchronizer(backend):
    if backend == "cuda":
        import cupy
        return cupy.cuda.runtime.deviceSynchronize
    return lambda: None


def plan(settings):
    """What to run: ``(backend, case)`` pairs, each backend's peers, and why wanted peers are not.

    Raises ``RuntimeError`` if a requested backend cannot run here.
    """
    reasons = usable_backends()
    if settings.framework == "jax":     # nbxent.jax reads host memory: JAX's CPU backend
        reasons["cuda"] = "nbxent.jax runs on the CPU only"
    backends = settings.backends or [b for b, why in reasons.items() if why is None]
    for backend in backends:
        if reasons.get(backend):
            raise RuntimeError(f"backend {backend!r} cannot run: {reasons[backend]}")
    peers_by_backend = {}
    for backend in backends:
        peers_by_backend[backend] = [name for name in settings.peers if PEERS[name].runs_on(backend)]
    skipped = [f"peer {name}: " + ("not installed" if not PEERS[name].installed()
                                   else f"cannot run on {', '.join(backends)}")
               for name in settings.peers
               if not any(name in peers for peers in peers_by_backend.values())]
    shapes = settings.shapes or default_shapes(settings.quick)
    cases = [Case(shape, dtype) for shape in shapes for dtype in settings.dtypes]
    return [(backend, case) for backend in backends for case in cases], peers_by_backend, skipped


def _task_count(pairs, peers_by_backend, ops):
    nbxent_variants = {"loss": 1, "loss+grad": 2}
    return sum(nbxent_variants[op] + len(peers_by_backend[backend])
               for backend, _ in pairs for op in ops)


def _row(backend, case, op, name):
    shape = case.shape
    return {"backend": backend, "case": shape.label, "shape": list(shape.dims), "axis": shape.axis,
            "dtype": case.dtype, "n_rows": shape.n_rows, "n_classes": shape.n_classes, "op": op,
            "impl": name, "bytes": case.bytes_moved(op), "status": "ok", "message": None,
            "first_call_s": None, "median_s": None, "best_s": None, "samples": None,
            "calls_per_sample": None, "rows_per_s": None, "GBps": None,
            "bandwidth_fraction": None, "nbxent_speedup": None, "wrapper_overhead": None}


def _first_call(row, call, reference, synchronize):
    """Time ``call``'s first call into ``row``; unless it is the reference, check its result.

    Returns the result and whether it is to be timed further: a result further from
    ``reference`` than the dtype's tolerance marks the row a mismatch.
    """
    row["first_call_s"], result = first_call(call, synchronize)
    if reference is not None:
        error = relative_error(result, reference)
        tolerance = TOLERANCE[row["dtype"]]
        if not error <= tolerance:
            row.update(status="mismatch", message=f"relative error {error:.2e} against nbxent "
                       f"exceeds {tolerance:.0e}; not timed")
            return result, False
    return result, True


def _record(row, steady, limit_GBps):
    row.update(median_s=steady.median_s, best_s=steady.best_s, samples=steady.samples,
               calls_per_sample=steady.calls_per_sample,
               rows_per_s=row["n_rows"] / steady.median_s,
               GBps=row["bytes"] / steady.median_s / 1e9)
    row["bandwidth_fraction"] = row["GBps"] / limit_GBps


def _measure(row, call, reference, synchronize, sampling, limit_GBps):
    """Time ``call`` into ``row``; unless it is the reference, check its first result first.

    Returns the first call's result. A result further from ``reference`` than
    the dtype's tolerance marks the row a mismatch and is not timed further.
    """
    result, timed = _first_call(row, call, reference, synchronize)
    if timed:
        _record(row, steady_state(call, synchronize, **sampling), limit_GBps)
    return result


def _measure_interleaved(rows, contenders, synchronize, sampling, limit_GBps):
    """The wrapper and the direct call: first calls checked against the wrapper's, then
    samples taken in turn, so that the overhead is a ratio of one stretch of time."""
    reference, timed = None, []
    for row, contender in zip(rows, contenders):
        result, ok = _first_call(row, contender.call, reference, synchronize)
        reference = result if reference is None else reference
        timed.append(ok)
    if all(timed):
        steadies = interleaved_steady_states([c.call for c in contenders], synchronize,
                                             **sampling)
        for row, steady in zip(rows, steadies):
            _record(row, steady, limit_GBps)
    return reference


def _run_case_op(case, op, arrays, peer_names, sampling, bandwidth, progress, framework=None):
    """Rows for one case and op: nbxent's variants (with ``framework``: its wrapper, then
    the direct call), then every peer checked against the first."""
    backend, limit_GBps = arrays.backend, bandwidth.limit_for(op)
    measure = dict(synchronize=_synchronizer(backend), sampling=sampling, limit_GBps=limit_GBps)
    rows, reference = [], None
    if framework:
        contenders = framework_contenders(arrays, framework)
        for contender in contenders:
            progress.step(f"{backend} {case.shape.label} {case.dtype} {op}: {contender.name}")
            rows.append(_row(backend, case, op, contender.name))
        reference = _measure_interleaved(rows, contenders, **measure)
    for contender in [] if framework else nbxent_contenders(arrays, op):
        progress.step(f"{backend} {case.shape.label} {case.dtype} {op}: {contender.name}")
        rows.append(_row(backend, case, op, contender.name))
        result = _measure(rows[-1], contender.call, reference, **measure)
        reference = result if reference is None else reference
    for name in peer_names:
        progress.step(f"{backend} {case.shape.label} {case.dtype} {op}: {name}")
        rows.append(_row(backend, case, op, name))
        try:
            _measure(rows[-1], PEERS[name].contender(arrays, op).call, reference, **measure)
        except Exception as exc:    # a peer's own failure is reported, never fatal
            rows[-1].update(status="error", message=f"{type(exc).__name__}: {exc}".splitlines()[0])
    nbxent_median = rows[0]["median_s"]
    for row in rows:
        if row["impl"] in PEERS and row["median_s"] is not None:
            row["nbxent_speedup"] = row["median_s"] / nbxent_median
    if framework and rows[1]["median_s"] is not None:
        rows[0]["wrapper_overhead"] = nbxent_median / rows[1]["median_s"] - 1
    return rows


def _set_threads(threads, peers_by_backend, framework=None):
    """Give Numba (and PyTorch, when it is a peer or the framework) ``threads`` threads;
    returns what each got."""
    import numba

    if threads is not None:
        numba.set_num_threads(threads)
    used = machine.numba_threads()
    libraries = {framework}.union(*peers_by_backend.values())
    if "torch" in libraries:
        import torch
        torch.set_num_threads(used["numba"])
        used["torch"] = torch.get_num_threads()
    if "jax" in libraries:
        used["jax"] = os.environ.get("XLA_FLAGS") or "XLA's default (all cores)"
    return used


def run(settings, progress):
    """Run the benchmark described by ``settings`` and return the report document.

    ``progress`` has ``start(total)``, ``step(label)`` and ``finish()`` (see
    ``nbxent.bench.progress``). Raises ``RuntimeError`` if a requested backend
    cannot run.

    Examples
    --------
    >>> from nbxent.bench.cases import parse_shapes
    >>> from nbxent.bench.progress import QuietProgress
    >>> report = run(Settings(shapes=parse_shapes("64x10"), dtypes=("float32",),
    ...                       quick=True, repeat=2), QuietProgress())
    >>> sorted({row["impl"] for row in report["results"]})[:2]
    ['nbxent', 'nbxent out=']
    """
    pairs, peers_by_backend, skipped = plan(settings)
    host = machine.machine()     # before the run: its load average tells if others are busy
    threads = _set_threads(settings.threads, peers_by_backend, settings.framework)
    backends = list(dict.fromkeys(backend for backend, _ in pairs))
    progress.start(len(backends) + _task_count(pairs, peers_by_backend, settings.ops))
    sampling = {"samples": settings.repeat, "max_samples": 3 if settings.quick else 5}
    bandwidths, results = {}, []
    try:
        for backend in backends:
            progress.step(f"{backend}: measuring memory bandwidth")
            bandwidths[backend] = roofline.measure(backend, settings.quick)
        for backend, case in pairs:
            host_logits, host_target = make_inputs(case)
            arrays = CaseArrays(host_logits, host_target, _to_backend(host_logits, backend),
                                _to_backend(host_target, backend), case.shape.axis, backend)
            for op in settings.ops:
                results += _run_case_op(case, op, arrays, peers_by_backend[backend], sampling,
                                        bandwidths[backend], progress, settings.framework)
    finally:
        progress.finish()
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": settings.command,
        "framework": settings.framework,
        "machine": host,
        "versions": machine.versions(),
        "threads": threads,
        "byte_model": dict(BYTE_MODEL),
        "peers": {name: PEERS[name].describe for name in sorted(
            {name for peers in peers_by_backend.values() for name in peers})},
        "skipped": skipped,
        "bandwidth": {backend: asdict(bw) for backend, bw in bandwidths.items()},
        "repeat": settings.repeat,
        "results": results,
    }
