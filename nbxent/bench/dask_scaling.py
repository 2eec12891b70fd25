"""``nbxent bench --backend dask``: loss throughput on a LocalCluster of 1, then 2 workers.

Each worker is a process with one thread, and Numba runs one thread in it, so
going from 1 to 2 workers doubles the cores in use. The logits are generated
on the workers and held in their memory (``persist``) before timing: the
figures are nbxent's per-chunk kernels plus Dask's scheduling, not the
transfer of inputs. A timed call computes the loss (a 0-d result) or the loss
and the gradient, which stays in the workers' memory as it would in a
distributed training step. Every case also runs nbxent in memory on one
thread, in this process, as the baseline a single core reaches without Dask.

The JSON document (``--json``)::

    schema_version  1
    kind            "dask-scaling"
    created, command, machine, versions  as in ``nbxent.bench.report``
    byte_model      as in ``nbxent.bench.report``
    results         one row per case x op x workers ("in memory" for the baseline):
        case, dtype, chunks, layout ("rows" | "classes"), op, workers,
        first_call_s, median_s, best_s, samples, rows_per_s, GBps,
        speedup_vs_1_worker (null for 1 worker and the baseline)
"""

import datetime
import importlib.util
import uuid
from dataclasses import dataclass

import numpy as np

from nbxent.bench import machine
from nbxent.bench.cases import BYTE_MODEL, Case, make_inputs, parse_shape
from nbxent.bench.report import format_number
from nbxent.bench.timing import first_call, steady_state

SCHEMA_VERSION = 1
WORKER_COUNTS = (1, 2)


@dataclass(frozen=True)
class DaskCase:
    """A case and how its logits are chunked: rows split 8 ways, or classes split 4 ways too."""
    case: Case
    layout: str          # "rows" or "classes"

    @property
    def chunks(self):
        dims, axis = self.case.shape.dims, self.case.shape.axis
        row_split = 8 if self.layout == "rows" else 2
        class_split = 1 if self.layout == "rows" else 4
        first = 0 if axis else 1        # the batch dim that gets split
        return tuple(-(-n // class_split) if d == axis else
                     -(-n // row_split) if d == first else n for d, n in enumerate(dims))


DEFAULT_SHAPE, QUICK_SHAPE = "16384x1000", "2048x1000"


def default_cases(shapes=None, dtypes=("float32",), quick=False):
    """Each shape (default 16384x1000) chunked along the rows and along both rows and classes."""
    shapes = shapes or [parse_shape(QUICK_SHAPE if quick else DEFAULT_SHAPE)]
    return [DaskCase(Case(shape, dtype), layout) for shape in shapes for dtype in dtypes
            for layout in ("rows", "classes")]


def why_not():
    """None when Dask and distributed are installed, else what to install."""
    if all(importlib.util.find_spec(name) for name in ("dask", "distributed")):
        return None
    return "needs dask[array] and distributed: pip install 'nbxent[dask]'"


def _same(block):
    return block


def _renamed(array):
    """``array`` under a new name: Dask reuses results it still holds for the same keys, and
    the previous sample's are released asynchronously; a timed call must recompute them."""
    return array.map_blocks(_same, dtype=array.dtype, name=f"input-{uuid.uuid4().hex}")


def _calls(client, logits, target, axis):
    """{op: call}: build the lazy loss (and gradient), compute it, keep the gradient on the
    workers and wait for it."""
    import distributed

    import nbxent

    def loss():
        return nbxent.cross_entropy(_renamed(logits), _renamed(target), axis=axis).compute()

    def loss_and_grad():
        outputs = nbxent.cross_entropy_with_grad(_renamed(logits), _renamed(target), axis=axis)
        distributed.wait(client.persist(list(outputs)))

    return {"loss": loss, "loss+grad": loss_and_grad}


def _in_memory_calls(dask_case):
    import nbxent

    logits, target = make_inputs(dask_case.case)
    axis = dask_case.case.shape.axis
    return {"loss": lambda: nbxent.cross_entropy(logits, target, axis=axis),
            "loss+grad": lambda: nbxent.cross_entropy_with_grad(logits, target, axis=axis)}


def _row(dask_case, op, workers, first_s, steady):
    case = dask_case.case
    return {"case": case.shape.label, "dtype": case.dtype, "chunks": list(dask_case.chunks),
            "layout": dask_case.layout, "op": op, "workers": workers,
            "first_call_s": first_s, "median_s": steady.median_s, "best_s": steady.best_s,
            "samples": steady.samples, "rows_per_s": case.shape.n_rows / steady.median_s,
            "GBps": case.bytes_moved(op) / steady.median_s / 1e9, "speedup_vs_1_worker": None}


def _on_cluster(workers, cases, ops, sampling, progress):
    import dask.array as da
    import distributed

    # One Numba thread per single-threaded worker: 2 workers use 2 cores, 1 uses 1.
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  env={"NUMBA_NUM_THREADS": "1"}) as cluster, \
            distributed.Client(cluster) as client:
        rows = []
        for dask_case in cases:
            case = dask_case.case
            generator = da.random.default_rng(0)
            logits = generator.standard_normal(case.shape.dims, dtype=np.float32,
                                               chunks=dask_case.chunks).astype(case.dtype)
            row_chunks = tuple(c for d, c in enumerate(dask_case.chunks) if d != case.shape.axis)
            target = generator.integers(0, case.shape.n_classes, logits.shape[:case.shape.axis]
                                        + logits.shape[case.shape.axis + 1:], chunks=row_chunks)
            logits, target = client.persist([logits, target])
            distributed.wait([logits, target])
            for op, call in _calls(client, logits, target, case.shape.axis).items():
                if op not in ops:
                    continue
                progress.step(f"dask {workers} worker(s) {case.shape.label} {case.dtype} "
                              f"{dask_case.layout} {op}")
                first_s, _ = first_call(call)
                rows.append(_row(dask_case, op, workers, first_s, steady_state(call, **sampling)))
        return rows


def _in_memory(cases, ops, sampling, progress):
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        rows = []
        for dask_case in cases:
            if dask_case.layout != "rows":
                continue
            for op, call in _in_memory_calls(dask_case).items():
                if op in ops:
                    progress.step(f"in memory, 1 thread: {dask_case.case.shape.label} {op}")
                    first_s, _ = first_call(call)
                    row = _row(dask_case, op, "in memory", first_s, steady_state(call, **sampling))
                    rows.append(dict(row, layout="whole array", chunks=None))
        return rows
    finally:
        numba.set_num_threads(threads)


def run(settings, progress):
    """Time the cases of ``settings`` (a ``nbxent.bench.run.Settings``) on 1 and 2 workers.

    Returns the report document (module docstring). Raises ``RuntimeError``
    when Dask is not installed.
    """
    reason = why_not()
    if reason:
        raise RuntimeError(f"backend 'dask' cannot run: {reason}")
    cases = default_cases(settings.shapes, settings.dtypes, settings.quick)
    sampling = {"samples": settings.repeat, "max_samples": 3 if settings.quick else 5}
    host = machine.machine()
    progress.start(len(cases) * len(settings.ops) * len(WORKER_COUNTS)
                   + len(cases) // 2 * len(settings.ops))
    try:
        results = _in_memory(cases, settings.ops, sampling, progress)
        for workers in WORKER_COUNTS:
            results += _on_cluster(workers, cases, settings.ops, sampling, progress)
    finally:
        progress.finish()
    one_worker = {(r["case"], r["dtype"], r["layout"], r["op"]): r["median_s"]
                  for r in results if r["workers"] == 1}
    for row in results:
        if row["workers"] not in (1, "in memory"):
            base = one_worker[(row["case"], row["dtype"], row["layout"], row["op"])]
            row["speedup_vs_1_worker"] = base / row["median_s"]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "dask-scaling",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": settings.command,
        "machine": host,
        "versions": dict(machine.versions(), **_dask_versions()),
        "byte_model": dict(BYTE_MODEL),
        "results": results,
    }


def _dask_versions():
    import dask
    import distributed
    return {"dask": dask.__version__, "distributed": distributed.__version__}


COLUMNS = ("case", "dtype", "chunks", "op", "workers", "median ms", "best ms", "first call ms",
           "Mrows/s", "GB/s", "speed-up vs 1 worker")


def format_table(report):
    """Header lines and a Markdown table of the report."""
    host, versions = report["machine"], report["versions"]
    lines = [f"nbxent {versions['nbxent']} on Dask {versions['dask']} (distributed "
             f"{versions['distributed']}), {host['cpu']} ({host['cpu_count']} cores)",
             "each worker: one process, one thread, NUMBA_NUM_THREADS=1; logits persisted on "
             "the workers; loss+grad keeps the gradient there",
             "'in memory' = nbxent on the whole NumPy array in one process, 1 Numba thread",
             "bytes per call: loss " + report["byte_model"]["loss"] + "; loss+grad "
             + report["byte_model"]["loss+grad"], ""]
    cells = [list(COLUMNS)]
    for row in report["results"]:
        chunks = "x".join(map(str, row["chunks"])) if row["chunks"] else row["layout"]
        speedup = row["speedup_vs_1_worker"]
        cells.append([row["case"], row["dtype"], chunks, row["op"], str(row["workers"]),
                      *(format_number(row[k] * 1e3) for k in ("median_s", "best_s",
                                                              "first_call_s")),
                      format_number(row["rows_per_s"] / 1e6), format_number(row["GBps"]),
                      "" if speedup is None else f"{format_number(speedup)}x"])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    for i, r in enumerate(cells):
        lines.append("| " + " | ".join(c.rjust(w) if j >= 5 else c.ljust(w)
                                       for j, (c, w) in enumerate(zip(r, widths))) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 1) + ":" if j >= 5 else "-" * (w + 2)
                                        for j, w in enumerate(widths)) + "|")
    return "\n".join(lines)
