"""The benchmark's outputs, all drawn from one report document: table, JSON and plot.

The JSON document (``nbxent bench --json FILE``) follows ``REPORT_SCHEMA``, a
JSON Schema (draft 2020-12). In short::

    schema_version  1
    created         ISO 8601 time (UTC) of the run
    command         the command line
    framework       null, or "torch" / "jax" for ``--framework``: each case's first rows
                     are then nbxent's wrapper ("nbxent.torch" / "nbxent.jax", forward +
                     backward through the framework's autograd) and "nbxent" called
                     directly on the same arrays, their samples taken in turn; peers'
                     speed-ups are against the wrapper
    machine         {platform, cpu, cpu_target: {name (LLVM's CPU name the kernels are
                     compiled for), vector_isa}, cpu_count, cache_bytes (the largest
                     CPU cache's size: nbxent.bench.machine.largest_cache_bytes(); null or
                     absent where unknown), load_average (1-minute, when the
                     run began; null where unknown), allocator (how the C library treats
                     large freed blocks: nbxent.allocator.policy()), gpu: {name, memory_bytes,
                     compute_capability} or null, why_no_gpu: str or null}
    versions        {python, nbxent, numpy, numba, numba_cuda, cupy, torch, jax,
                     optax, rich, matplotlib}: version string, or null if absent
    threads         {numba, numba_max, threading_layer, torch?, jax?}
    byte_model      {loss, loss+grad}: how "bytes" is counted
    peers           {name: what exactly is timed}
    skipped         ["peer jax: not installed", ...]
    bandwidth       {backend: {read_GBps, copy_GBps, buffer_bytes, runs}}
    repeat          samples per contender asked for, or null: 3 to 5, fewer
                     when they would take over a second (each row's "samples")
    results         one row per backend x case x dtype x op x impl:
        backend, case ("16384x1000" or "8x21x64x64:axis=1"), shape, axis, dtype,
        n_rows, n_classes, op ("loss" | "loss+grad"),
        impl ("nbxent" | "nbxent out=" | "numpy" | "torch" | "jax" | "cupy"),
        bytes (by the byte model), status ("ok" | "mismatch" | "error"),
        message (why not ok, else null), first_call_s (null after an error),
        and when ok (else null): median_s, best_s, samples, calls_per_sample,
        rows_per_s, GBps (bytes / median_s / 1e9),
        bandwidth_fraction (GBps / the backend's read (loss) or copy (loss+grad) GB/s),
        nbxent_speedup (peers only: peer median_s / nbxent's median_s, or the
        wrapper's with --framework), wrapper_overhead (the wrapper's row only: its
        median_s / the direct call's - 1; null elsewhere)

Times are seconds per call; GB is 1e9 bytes.
"""

import json
import math

_NUMBER = {"type": "number"}
_OPT_NUMBER = {"type": ["number", "null"]}
_OPT_INT = {"type": ["integer", "null"]}
_OPT_STRING = {"type": ["string", "null"]}

REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "nbxent bench report",
    "type": "object",
    "required": ["schema_version", "created", "command", "machine", "versions", "threads",
                 "byte_model", "peers", "skipped", "bandwidth", "repeat", "results"],
    "properties": {
        "schema_version": {"const": 1},
        "created": {"type": "string"},
        "command": {"type": "string"},
        "framework": {"enum": [None, "torch", "jax"]},
        "machine": {
            "type": "object",
            "required": ["platform", "cpu", "cpu_count", "load_average", "allocator", "gpu",
                         "why_no_gpu"],
            "properties": {
                "platform": {"type": "string"},
                "cpu": {"type": "string"},
                "cpu_target": {"type": "object", "required": ["name", "vector_isa"],
                               "properties": {"name": {"type": "string"},
                                              "vector_isa": {"type": "string"}}},
                "cpu_count": _OPT_INT,
                "cache_bytes": _OPT_INT,
                "load_average": _OPT_NUMBER,
                "allocator": {"type": "string"},
                "gpu": {"oneOf": [{"type": "null"}, {
                    "type": "object", "required": ["name", "memory_bytes", "compute_capability"],
                    "properties": {"name": {"type": "string"}, "memory_bytes": {"type": "integer"},
                                   "compute_capability": {"type": "string"}}}]},
                "why_no_gpu": _OPT_STRING,
            },
        },
        "versions": {"type": "object", "required": ["python", "nbxent", "numpy", "numba"],
                     "additionalProperties": _OPT_STRING},
        "threads": {"type": "object", "required": ["numba", "numba_max", "threading_layer"],
                    "properties": {"numba": {"type": "integer", "minimum": 1},
                                   "numba_max": {"type": "integer", "minimum": 1},
                                   "threading_layer": {"type": "string"},
                                   "torch": {"type": "integer"}, "jax": {"type": "string"}}},
        "byte_model": {"type": "object", "required": ["loss", "loss+grad"],
                       "additionalProperties": {"type": "string"}},
        "peers": {"type": "object", "additionalProperties": {"type": "string"}},
        "skipped": {"type": "array", "items": {"type": "string"}},
        "bandwidth": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["read_GBps", "copy_GBps", "buffer_bytes", "runs"],
            "properties": {"read_GBps": _NUMBER, "copy_GBps": _NUMBER,
                           "buffer_bytes": {"type": "integer"}, "runs": {"type": "integer"}}}},
        "repeat": {"type": ["integer", "null"], "minimum": 1},
        "results": {"type": "array", "items": {
            "type": "object",
            "required": ["backend", "case", "shape", "axis", "dtype", "n_rows", "n_classes", "op",
                         "impl", "bytes", "status", "message", "first_call_s", "median_s",
                         "best_s", "samples", "calls_per_sample", "rows_per_s", "GBps",
                         "bandwidth_fraction", "nbxent_speedup"],
            "additionalProperties": False,
            "properties": {
                "backend": {"enum": ["cpu", "cuda"]},
                "case": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "axis": {"type": "integer", "minimum": 0},
                "dtype": {"enum": ["float16", "float32", "float64"]},
                "n_rows": {"type": "integer"}, "n_classes": {"type": "integer"},
                "op": {"enum": ["loss", "loss+grad"]},
                "impl": {"enum": ["nbxent", "nbxent out=", "nbxent.torch", "nbxent.jax",
                                  "numpy", "torch", "jax", "cupy"]},
                "bytes": {"type": "integer"},
                "status": {"enum": ["ok", "mismatch", "error"]},
                "message": _OPT_STRING,
                "first_call_s": _OPT_NUMBER, "median_s": _OPT_NUMBER, "best_s": _OPT_NUMBER,
                "samples": _OPT_INT, "calls_per_sample": _OPT_INT,
                "rows_per_s": _OPT_NUMBER, "GBps": _OPT_NUMBER,
                "bandwidth_fraction": _OPT_NUMBER, "nbxent_speedup": _OPT_NUMBER,
                "wrapper_overhead": _OPT_NUMBER,
            },
        }},
    },
}


def write_json(report, path):
    """Write the report document to ``path`` (indented JSON)."""
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


# ------------------------------------------------------------------ table

def format_number(value):
    """``value`` to 3 significant digits without an exponent (1234 stays "1234")."""
    if value is None:
        return ""
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{min(2 - math.floor(math.log10(abs(value))), 5)}f}"


def _target(machine):
    """"znver4, AVX-512": the CPU the kernels were compiled for and its vector ISA."""
    target = machine.get("cpu_target") or {"name": "?", "vector_isa": "?"}
    return f"{target['name']}, {target['vector_isa']}"


def header(report):
    """The lines above the table: machine, threads, measured bandwidth and the byte model."""
    machine, threads, versions = report["machine"], report["threads"], report["versions"]
    peers = ", ".join(f"{name} {versions.get(name) or ''}".strip() for name in report["peers"])
    lines = [
        f"nbxent {versions['nbxent']} bench on {machine['cpu']} ({machine['cpu_count']} cores; "
        f"kernels compiled for {_target(machine)})"
        + (f" + {machine['gpu']['name']}" if machine["gpu"] else ""),
        f"threads: numba {threads['numba']} ({threads['threading_layer']})"
        + (f", torch {threads['torch']}" if "torch" in threads else "")
        + (f", jax {threads['jax']}" if "jax" in threads else "")
        + f"; numpy {versions['numpy']}, numba {versions['numba']}"
        + (f"; peers: {peers}" if peers else "; peers: none"),
        f"C allocator: {machine['allocator']}",
    ]
    for backend, bw in report["bandwidth"].items():
        lines.append(f"{backend} memory bandwidth measured in this run: read {bw['read_GBps']:.1f} "
                     f"GB/s, copy {bw['copy_GBps']:.1f} GB/s (best of {bw['runs']}, "
                     f"{bw['buffer_bytes'] >> 20} MiB buffers"
                     + (f"; the CPU's largest cache {machine['cache_bytes'] >> 20} MiB)"
                        if backend == "cpu" and machine.get("cache_bytes") else ")"))
    lines += [
        "bytes per call: loss " + report["byte_model"]["loss"]
        + "; loss+grad " + report["byte_model"]["loss+grad"],
        "GB/s = bytes / median time. % BW = GB/s over the measured read (loss) or copy "
        "(loss+grad) bandwidth. speed-up = peer's median time / nbxent's (x > 1: nbxent faster).",
        "first call = JIT compile or cache load + one run; excluded from median and best.",
    ]
    framework = report.get("framework")
    if framework:
        lines.append(
            f"--framework {framework}: nbxent.{framework} = nbxent's {framework} wrapper, "
            f"forward + backward through {framework}'s autograd ("
            + ("nbxent.torch.cross_entropy, loss.backward()" if framework == "torch" else
               "jax.jit(jax.value_and_grad(nbxent.jax.cross_entropy))")
            + "); nbxent = nbxent.cross_entropy_with_grad on the same arrays, its samples "
            "taken in turn with the wrapper's. vs direct = "
            f"nbxent.{framework}'s median / the direct call's - 1; speed-ups are against "
            f"nbxent.{framework}.")
    lines += [f"skipped {reason}" for reason in report["skipped"]]
    load = machine["load_average"]
    if load is not None and load > 0.5:
        lines.append(f"warning: the load average was {load:.2f} when the run began: other "
                     f"processes were using the CPU, so timings may be slow and noisy")
    return lines


TABLE_COLUMNS = ("backend", "case", "dtype", "op", "impl", "median ms", "best ms",
                 "first call ms", "Mrows/s", "GB/s", "% BW", "nbxent speed-up")


def _columns(report):
    return TABLE_COLUMNS + (("vs direct",) if report.get("framework") else ())


def table_rows(report):
    """The table's cells, one list of strings per result row."""
    cells = []
    overhead_column = bool(report.get("framework"))
    for row in report["results"]:
        if row["status"] != "ok":
            timing = [row["status"]] + [""] * 6
            speedup = row["message"]
        else:
            timing = [format_number(row[key] * 1e3) for key in ("median_s", "best_s",
                                                                 "first_call_s")]
            timing += [format_number(row["rows_per_s"] / 1e6), format_number(row["GBps"]),
                       f"{row['bandwidth_fraction']:.0%}"]
            speedup = ("" if row["nbxent_speedup"] is None
                       else f"{format_number(row['nbxent_speedup'])}x")
        cells.append([row["backend"], row["case"], row["dtype"], row["op"], row["impl"],
                      *timing[:6], speedup])
        if overhead_column:
            overhead = row.get("wrapper_overhead")
            cells[-1].append("" if overhead is None else f"{overhead:+.1%}")
    return cells


def format_table(report):
    """The report as text: header lines, then a Markdown table (aligned, readable as is)."""
    columns = _columns(report)
    rows = [list(columns)] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    numeric = set(range(5, len(columns)))

    def line(cells):
        padded = [c.rjust(w) if i in numeric else c.ljust(w)
                  for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join(header(report) + ["", line(rows[0]), rule] + [line(r) for r in rows[1:]])


# ------------------------------------------------------------------ plot

PLOT_INSTALL_HINT = "--plot needs matplotlib: pip install 'nbxent[bench]'"
# nbxent in blues, drawn thick and on top; each peer keeps one colour in every plot.
IMPL_STYLE = {"nbxent": ("#1f4e9c", 2.6, 5), "nbxent out=": ("#5fa2e8", 2.0, 4),
              "nbxent.torch": ("#17becf", 2.6, 6), "nbxent.jax": ("#17becf", 2.6, 6),
              "numpy": ("#ff7f0e", 1.4, 3), "torch": ("#d62728", 1.4, 3),
              "jax": ("#2ca02c", 1.4, 3), "cupy": ("#9467bd", 1.4, 3)}
DTYPE_LINESTYLE = {"float16": ":", "float32": "-", "float64": "--"}


def _class_count_label(value, _position):
    return f"{value / 1024:g}k" if value >= 1024 else f"{value:g}"


def _draw_panel(ax, report, op):
    """One op's panel: a line per (backend, impl, dtype) over class-last cases, NCHW as diamonds."""
    series = {}
    for r in report["results"]:
        if r["op"] == op and r["status"] == "ok":
            class_last = r["axis"] == len(r["shape"]) - 1
            series.setdefault((r["impl"], r["dtype"], r["backend"], class_last), []).append(
                (r["n_classes"], r["GBps"]))
    order = list(IMPL_STYLE)
    several_backends = len(report["bandwidth"]) > 1
    for (impl, dtype, backend, class_last), points in sorted(
            series.items(), key=lambda item: (order.index(item[0][0]),) + item[0][1:]):
        color, width, layer = IMPL_STYLE[impl]
        label = f"{impl} {dtype}" + (f" ({backend})" if several_backends else "")
        style = dict(color=color, zorder=layer, marker="o" if backend == "cpu" else "s",
                     markersize=2 * width + 1)
        if class_last:
            ax.plot(*zip(*sorted(points)), linestyle=DTYPE_LINESTYLE[dtype], linewidth=width,
                    label=label, **style)
        else:      # an NCHW map is another memory layout: a point of its own, not on the line
            style.update(marker="D", markerfacecolor="white" if dtype == "float64" else color)
            ax.plot(*zip(*points), linestyle="none", label="_nolegend_", **style)
    kind = "read" if op == "loss" else "copy"
    for backend, bw in report["bandwidth"].items():
        limit = bw[f"{kind}_GBps"]
        ax.axhline(limit, color="black", linewidth=1.2, linestyle=(0, (6, 3)), zorder=2)
        ax.annotate(f"{backend} memory, {kind}: {limit:.0f} GB/s (measured)", (0.01, limit),
                    xycoords=("axes fraction", "data"), xytext=(0, 3),
                    textcoords="offset points", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(_class_count_label)
    ax.set_title(f"{op}: bytes = {'N·C·s + 8N' if op == 'loss' else '2·N·C·s + 8N'}",
                 fontsize=11)
    ax.set_xlabel("classes C")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def plot(report, path):
    """Draw throughput (GB/s) against C for each backend, contender and dtype into ``path``.

    One panel per op, nbxent drawn thick in blue, peers thinner; the
    bandwidth measured in the same run is the dashed line bounding each
    panel; NCHW cases (class axis not last) are diamonds off the lines.
    Raises ``ImportError`` with the install hint when matplotlib is missing.

    Examples
    --------
    >>> import json
    >>> plot(json.load(open("bench.json")), "bench.png")  # doctest: +SKIP
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(PLOT_INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ops = [op for op in ("loss", "loss+grad") if any(r["op"] == op for r in report["results"])]
    fig, axes = plt.subplots(1, len(ops), figsize=(6.2 * len(ops) + 2, 5), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, op in zip(axes[0], ops):
        _draw_panel(ax, report, op)
    axes[0][0].set_ylabel("GB/s by the byte model (median time)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if any(r["axis"] != len(r["shape"]) - 1 for r in report["results"]):
        handles.append(Line2D([], [], color="grey", marker="D", linestyle="none"))
        labels.append("NCHW map, axis=1\n(hollow: float64)")
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    machine = report["machine"]
    device = machine["gpu"]["name"] if machine["gpu"] else \
        f"{machine['cpu']} ({_target(machine)}), {report['threads']['numba']} threads"
    title = (f"softmax cross-entropy throughput: nbxent {report['versions']['nbxent']} "
             f"and peers on {device} ({report['created'][:10]}); higher is better")
    load = machine["load_average"]
    if load is not None and load > 0.5:
        title += f"\nmachine busy when measured (load average {load:.1f}): figures are noisy"
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)
