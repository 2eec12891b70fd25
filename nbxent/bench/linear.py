"""``nbxent bench --suite linear``: the fused classifier head against its GEMMs and PyTorch.

A case is N rows of d features, a (C, d) weight and a bias: loss and the three
gradients (``nbxent.linear_cross_entropy_with_grad``, float32, 'mean', int64
targets). Contenders, each timed in the same run:

- ``nbxent``: the fused call, default tiles (1/12 of the logits: inside every
  case's budget);
- ``3 GEMMs``: the three products alone (forward, d_features, d_weight) on
  blocks of at most 4096 rows (fewer when the case states a budget), the floor
  any implementation that forms the logits pays;
- ``torch``: ``torch.nn.functional.linear_cross_entropy`` forward + autograd
  backward, unchunked (``options=None``), skipped when its logits and their
  gradient exceed the case's budget;
- ``torch chunked``: the same with ``options=LinearCrossEntropyOptions(
  batch_chunk_size=R)``, R the rows of nbxent's tiles (the same memory for the
  logits; torch's own default, ``chunking_method="auto"``, picks a few dozen rows
  here and runs minutes per call on this CPU).

A contender whose first call takes over ``SLOW_S`` seconds is timed by one more
call, its first taken as the warm-up (as ``steady_state`` does for the others): a
first call pays for its outputs' first page faults, and a ratio between a first
call and a steady one is no ratio of speeds.

**Peak extra memory** is measured in a fresh process per contender: the peak
resident set (VmHWM, reset through ``/proc/self/clear_refs`` after the inputs
are built and a small warm-up call has run) minus the resident set before the
call and minus the outputs (loss and gradients); as a fraction of the N x C
float32 logits. **Accuracy** (nbxent's row): the largest error of the loss,
d_features (first 256 rows), d_weight and d_bias (first 256 classes), each
relative to that output's largest magnitude, against float64 with the logits
materialised a block of rows at a time (``cross_entropy_with_grad``, then the
products). Linux only (``/proc``).

The JSON document (``--json``)::

    schema_version  1
    kind            "linear-cross-entropy"
    created, command, machine, versions, threads   as in ``nbxent.bench.report``
    results         one row per case x contender:
        case, n_rows, n_features, n_classes, dtype, budget_bytes, impl, status
        ("ok" | "mismatch" | "error" | "over budget" | "not installed"), message,
        first_call_s, median_s, best_s, samples, ratio_to_gemms (best over best),
        peak_extra_bytes, peak_extra_fraction (of the N x C logits), max_error
"""

import datetime
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from nbxent.bench import machine
from nbxent.bench.report import format_number
from nbxent.bench.timing import first_call, steady_state

SCHEMA_VERSION = 1
GEMM_BLOCK_ROWS = 4096
REFERENCE_BLOCK_ROWS = 256
CHECKED = 256           # rows of d_features, classes of d_weight/d_bias checked in float64
TOLERANCE = 2e-3        # a peer's gradients against nbxent's, relative to the largest value
IMPLS = ("nbxent", "3 GEMMs", "torch", "torch chunked")
SLOW_S = 10.0


@dataclass(frozen=True)
class LinearCase:
    """N rows, d features, C classes; ``budget`` bytes of extra memory, or None."""
    n_rows: int
    n_features: int
    n_classes: int
    budget: int = None

    @property
    def label(self):
        return f"N={self.n_rows} d={self.n_features} C={self.n_classes}"

    @property
    def logits_bytes(self):
        return self.n_rows * self.n_classes * 4


# The third case's logits alone take 4 GiB, their gradient as much: the unfused head does
# not fit its stated budget of 1 GiB.
CASES = (LinearCase(4096, 512, 32768), LinearCase(8192, 256, 100_000),
         LinearCase(16384, 128, 65536, budget=1 << 30))


def cases(quick=False):
    """The suite's cases; ``quick``: an eighth of the rows (and of the budget)."""
    if not quick:
        return CASES
    return tuple(LinearCase(c.n_rows // 8, c.n_features, c.n_classes,
                            None if c.budget is None else c.budget // 8) for c in CASES)


def make_inputs(case, seed=0):
    """float32 features, weight (scaled to logits of about unit size), bias; int64 targets."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((case.n_rows, case.n_features), dtype=np.float32)
    weight = rng.standard_normal((case.n_classes, case.n_features), dtype=np.float32)
    weight *= np.float32(1 / np.sqrt(case.n_features))
    bias = rng.standard_normal(case.n_classes, dtype=np.float32)
    target = rng.integers(0, case.n_classes, case.n_rows)
    return features, weight, bias, target


# ---------------------------------------------------------------- contenders

def _nbxent(case, arrays):
    import nbxent

    features, weight, bias, target = arrays
    return lambda: nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias)


def gemm_block_rows(case):
    rows = GEMM_BLOCK_ROWS
    if case.budget is not None:
        rows = min(rows, case.budget // (2 * case.n_classes * 4))
    return min(rows, case.n_rows)


def _gemms(case, arrays):
    features, weight, _, _ = arrays
    rows = gemm_block_rows(case)
    logits = np.empty((rows, case.n_classes), np.float32)

    def call():
        d_features = np.empty_like(features)
        d_weight = np.empty_like(weight)
        scratch = np.empty_like(weight) if rows < case.n_rows else None
        for start in range(0, case.n_rows, rows):
            block = slice(start, start + rows)
            z = logits[:len(features[block])]
            np.matmul(features[block], weight.T, out=z)
            np.matmul(z, weight, out=d_features[block])
            if start == 0:
                np.matmul(z.T, features[block], out=d_weight)
            else:
                np.matmul(z.T, features[block], out=scratch)
                d_weight += scratch
        return d_features, d_weight
    return call


def _torch(case, arrays, chunked):
    import torch

    from nbxent.linear import tile_shape

    features, weight, bias, target = (torch.from_numpy(a) for a in arrays)
    leaves = [t.requires_grad_() for t in (features, weight, bias)]
    options = None
    if chunked:
        rows = tile_shape(case.n_rows, case.n_features, case.n_classes, 4)[0]
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=rows)

    def call():
        for leaf in leaves:
            leaf.grad = None
        loss = torch.nn.functional.linear_cross_entropy(features, weight, target,
                                                        linear_bias=bias, options=options)
        loss.backward()
        return (loss.detach().numpy(), *(leaf.grad.numpy() for leaf in leaves))
    return call


def _why_not(case, impl):
    """None when ``impl`` runs on ``case``, else (status, message)."""
    if impl.startswith("torch"):
        try:
            import torch
        except ImportError:
            return "not installed", "torch is not installed"
        if not hasattr(torch.nn.functional, "linear_cross_entropy"):
            return "not installed", f"torch {torch.__version__} has no linear_cross_entropy"
        need = 2 * case.logits_bytes
        if impl == "torch" and case.budget is not None and need > case.budget:
            return "over budget", (f"its logits and their gradient take {need / 2**30:.0f} "
                                   f"GiB, over the budget of {case.budget / 2**30:.2g} GiB")
        free = _available_memory()
        if impl == "torch" and free is not None and 1.5 * need > free:
            return "over budget", (f"its logits and their gradient take {need / 2**30:.1f} "
                                   f"GiB; {free / 2**30:.1f} GiB are available")
    return None


def _available_memory():
    """MemAvailable of /proc/meminfo in bytes, None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return None


def contender(case, impl, arrays):
    """The no-argument call that runs ``impl`` once on ``arrays``."""
    if impl == "nbxent":
        return _nbxent(case, arrays)
    if impl == "3 GEMMs":
        return _gemms(case, arrays)
    return _torch(case, arrays, chunked=impl == "torch chunked")


# ---------------------------------------------------------------- accuracy

def reference(case, arrays):
    """float64 (loss, d_features[:CHECKED], d_weight[:CHECKED], d_bias[:CHECKED]), the
    logits materialised REFERENCE_BLOCK_ROWS rows at a time."""
    import nbxent

    features, weight, bias, target = (a.astype(np.float64) if a.dtype.kind == "f" else a
                                      for a in arrays)
    loss, d_weight, d_bias = 0.0, 0.0, 0.0
    d_features = np.empty((min(CHECKED, case.n_rows), case.n_features))
    for start in range(0, case.n_rows, REFERENCE_BLOCK_ROWS):
        block = slice(start, start + REFERENCE_BLOCK_ROWS)
        logits = features[block] @ weight.T + bias
        part, grad = nbxent.cross_entropy_with_grad(logits, target[block], reduction="sum",
                                                    grad_output=1 / case.n_rows, out=logits)
        loss += float(part) / case.n_rows
        if start < CHECKED:
            d_features[block] = (grad @ weight)[:CHECKED - start]
        d_weight = d_weight + grad[:, :CHECKED].T @ features[block]
        d_bias = d_bias + grad[:, :CHECKED].sum(axis=0)
    return loss, d_features, d_weight, d_bias


def _checked_parts(result):
    loss, d_features, d_weight, d_bias = result
    return loss, d_features[:CHECKED], d_weight[:CHECKED], d_bias[:CHECKED]


def max_error(result, expected):
    """Largest error over the four outputs, each relative to its largest magnitude."""
    errors = []
    for got, want in zip(result, expected):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        errors.append(float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)))
    return max(errors)


# ---------------------------------------------------------------- memory

_PEAK_SCRIPT = """
import json, resource, sys
import numpy as np
from nbxent.bench import linear
case = linear.LinearCase(*json.loads(sys.argv[1]))
impl, threads = sys.argv[2], int(sys.argv[3])
linear.set_threads(threads)
arrays = linear.make_inputs(case)
small = linear.LinearCase(64, case.n_features, case.n_classes)  # the same kernel variants
linear.contender(small, impl, linear.make_inputs(small))()        # compile, load, pools
call = linear.contender(case, impl, arrays)
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                                   # reset the peak (VmHWM)
before = resident()
result = call()
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
outputs = sum(np.asarray(a).nbytes for a in result if a is not None)
print(json.dumps({"peak_extra_bytes": peak - before - outputs}))
"""


def peak_extra_bytes(case, impl, threads):
    """Peak memory of one ``impl`` call beyond its inputs and outputs, in a fresh process."""
    fields = [case.n_rows, case.n_features, case.n_classes, case.budget]
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, json.dumps(fields), impl,
                           str(threads)], capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


# ---------------------------------------------------------------- run

def set_threads(threads):
    """Numba and PyTorch threads (NumPy's BLAS takes OPENBLAS_NUM_THREADS / OMP_NUM_THREADS
    from the environment); returns what each uses."""
    import numba

    numba.set_num_threads(threads)
    used = {"numba": numba.get_num_threads(),
            "blas": os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get(
                "OMP_NUM_THREADS") or "the BLAS's default (all cores)"}
    try:
        import torch
    except ImportError:
        return used
    torch.set_num_threads(threads)
    used["torch"] = torch.get_num_threads()
    return used


def _row(case, impl):
    return {"case": case.label, "n_rows": case.n_rows, "n_features": case.n_features,
            "n_classes": case.n_classes, "dtype": "float32", "budget_bytes": case.budget,
            "impl": impl, "status": "ok", "message": None, "first_call_s": None,
            "median_s": None, "best_s": None, "samples": None, "ratio_to_gemms": None,
            "peak_extra_bytes": None, "peak_extra_fraction": None, "max_error": None}


def _warm_up(threads):
    """Compile or load every contender's code on a small case (nbxent's kernels, torch)."""
    small = LinearCase(64, 16, 512)
    arrays = make_inputs(small)
    for impl in IMPLS:
        if _why_not(small, impl) is None:
            contender(small, impl, arrays)()
    reference(small, arrays)


def _run_case(case, settings, threads, progress):
    arrays = make_inputs(case)
    rows, nbxent_result = [], None
    for impl in IMPLS:
        progress.step(f"{case.label}: {impl}")
        row = _row(case, impl)
        rows.append(row)
        why_not = _why_not(case, impl)
        if why_not:
            row["status"], row["message"] = why_not
            continue
        call = contender(case, impl, arrays)
        try:
            row["first_call_s"], result = first_call(call)
            if impl == "nbxent":
                nbxent_result = result
                row["max_error"] = max_error(_checked_parts(result), reference(case, arrays))
            elif impl.startswith("torch"):
                error = max_error(result, nbxent_result)
                if not error <= TOLERANCE:
                    row.update(status="mismatch", message=f"relative error {error:.1e} "
                               f"against nbxent exceeds {TOLERANCE:.0e}; not timed")
                    continue
            del result
            if row["first_call_s"] > SLOW_S:
                seconds = first_call(call)[0]
                row.update(median_s=seconds, best_s=seconds, samples=1,
                           message=f"one call after the first (over {SLOW_S:g} s)")
            else:
                steady = steady_state(call, samples=settings.repeat or 2)
                row.update(median_s=steady.median_s, best_s=steady.best_s,
                           samples=steady.samples)
            if impl != "3 GEMMs" and settings.measure_memory:
                row["peak_extra_bytes"] = peak_extra_bytes(case, impl, threads)
                row["peak_extra_fraction"] = row["peak_extra_bytes"] / case.logits_bytes
        except Exception as exc:    # a peer's failure is reported, never fatal
            if impl == "nbxent":
                raise
            row.update(status="error", message=f"{type(exc).__name__}: {exc}".splitlines()[0])
    gemms = rows[1]["best_s"]
    for row in rows:
        if row["best_s"] is not None and gemms:
            row["ratio_to_gemms"] = row["best_s"] / gemms
    return rows


@dataclass
class Settings:
    """What to run: the suite's cases (an eighth of the rows with ``quick``)."""
    quick: bool = False
    repeat: int = None          # timed samples after the warm-up call; None: 2
    threads: int = 2
    measure_memory: bool = True
    command: str = ""


def run(settings, progress):
    """Run the linear suite; returns the JSON document (module docstring)."""
    host = machine.machine()
    threads = set_threads(settings.threads)
    selected = cases(settings.quick)
    progress.start(len(selected) * len(IMPLS))
    results = []
    _warm_up(settings.threads)
    try:
        for case in selected:
            results += _run_case(case, settings, settings.threads, progress)
    finally:
        progress.finish()
    return {"schema_version": SCHEMA_VERSION, "kind": "linear-cross-entropy",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": settings.command, "machine": host, "versions": machine.versions(),
            "threads": threads, "results": results}


COLUMNS = ("case", "budget", "impl", "median s", "best s", "first call s", "x 3 GEMMs",
           "peak extra MiB", "% of logits", "max error", "note")


def format_table(report):
    """Header lines and a Markdown table of the report."""
    host, versions = report["machine"], report["versions"]
    lines = [f"nbxent {versions['nbxent']} linear_cross_entropy_with_grad, float32, on "
             f"{host['cpu']} ({host['cpu_count']} cores, load average {host['load_average']}), "
             f"threads {report['threads']}; C allocator: {host['allocator']}",
             "x 3 GEMMs: best over the best of the three products alone; peak extra: beyond "
             "inputs and outputs, in a fresh process; max error: against float64", ""]
    cells = [list(COLUMNS)]
    for row in report["results"]:
        budget = "" if row["budget_bytes"] is None else f"{row['budget_bytes'] / 2**30:g} GiB"
        ratio, fraction = row["ratio_to_gemms"], row["peak_extra_fraction"]
        peak = row["peak_extra_bytes"]
        cells.append([row["case"], budget, row["impl"],
                      *(format_number(row[k]) for k in ("median_s", "best_s", "first_call_s")),
                      "" if ratio is None else f"{ratio:.2f}",
                      "" if peak is None else format_number(peak / 2**20),
                      "" if fraction is None else f"{100 * fraction:.1f}%",
                      "" if row["max_error"] is None else f"{row['max_error']:.1e}",
                      row["message"] or ""])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    numeric = range(3, 10)
    for i, r in enumerate(cells):
        lines.append("| " + " | ".join(c.rjust(w) if j in numeric else c.ljust(w)
                                       for j, (c, w) in enumerate(zip(r, widths))) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 1) + ":" if j in numeric else "-" * (w + 2)
                                        for j, w in enumerate(widths)) + "|")
    return "\n".join(lines)
