"""Sweep the class count C at a fixed number of logits and record the figures in RESULTS.md.

For each thread count this runs ``python -m nbxent bench`` once, in its own
process, over C = 2, 8, 32, ..., 262144 with N = LOGITS / C rows, and writes:

- ``benchmarks/results/sweep-<backend>-<T>t.json``: the bench's JSON document;
- ``benchmarks/sweep-<backend>-<T>t.png``: its plot;
- a section of ``benchmarks/RESULTS.md`` between ``<!-- sweep:<backend>-<T>t:begin -->``
  and ``<!-- ...:end -->`` markers, replaced on each run; the rest of the file is kept.

Usage (from the repository root)::

    python benchmarks/sweep.py                      # CPU, 1 and 2 threads, float32 and float64
    python benchmarks/sweep.py --threads 2 --classes 128,32768
    python benchmarks/sweep.py --backend cuda --threads 1 --logits 268435456

With one thread JAX is limited to one thread too (XLA_FLAGS); with more it
uses XLA's default, all cores. Every figure written comes from the JSON of
the run that just finished.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from nbxent.bench.report import format_number

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
DEFAULT_CLASSES = tuple(2 ** k for k in range(1, 19, 2)) + (2 ** 18,)   # 2, 8, ..., 128k, 256k
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def sweep_shapes(classes, logits):
    """``NxC`` cases holding about ``logits`` logits each, one per class count."""
    return ",".join(f"{max(1, logits // c)}x{c}" for c in classes)


def run_bench(backend, threads, shapes, dtypes, peers, name):
    """Run ``nbxent bench`` in a fresh process; return its JSON document and the command."""
    json_path = HERE / "results" / f"{name}.json"
    json_path.parent.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "nbxent", "bench", "--backend", backend, "--threads",
               str(threads), "--shapes", shapes, "--dtype", dtypes, "--peers", peers,
               "--json", str(json_path.relative_to(HERE.parent)),
               "--plot", str((HERE / f"{name}.png").relative_to(HERE.parent))]
    env = dict(os.environ)
    if threads == 1:
        env.setdefault("XLA_FLAGS", ONE_THREAD_XLA)
    subprocess.run(command, check=True, env=env, cwd=HERE.parent, stdout=subprocess.DEVNULL)
    return json.loads(json_path.read_text())


def _by_case(document, op):
    """``{(n_classes, dtype): {impl: row}}`` for one op."""
    table = {}
    for row in document["results"]:
        if row["op"] == op:
            table.setdefault((row["n_classes"], row["dtype"]), {})[row["impl"]] = row
    return table


def _ms(row):
    return format_number(row["median_s"] * 1e3) if row and row["status"] == "ok" else "—"


def _ratio(row):
    if row is None:
        return "—"
    return row["status"] if row["status"] != "ok" else format_number(row["nbxent_speedup"])


def op_table(document, op, peers):
    """Markdown table of one op: nbxent's time, GB/s and % of bandwidth, then each peer's ratio."""
    kind = "read" if op == "loss" else "copy"
    columns = ["C", "N", "dtype", "nbxent ms"] + (["out= ms"] if op == "loss+grad" else []) \
        + ["GB/s", f"% of {kind} BW"] + [f"{peer} ×" for peer in peers]
    lines = ["| " + " | ".join(columns) + " |", "|---:|---:|---|" + "---:|" * (len(columns) - 3)]
    for (n_classes, dtype), rows in sorted(_by_case(document, op).items()):
        ours = rows["nbxent"]
        cells = [str(n_classes), str(ours["n_rows"]), dtype, _ms(ours)]
        if op == "loss+grad":
            cells.append(_ms(rows.get("nbxent out=")))
        cells += [format_number(ours["GBps"]), f"{ours['bandwidth_fraction']:.0%}"]
        cells += [_ratio(rows.get(peer)) for peer in peers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def source_revision():
    """The commit measured, with "+ uncommitted changes" when nbxent/ differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True,
                              text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "nbxent") else "")


def section(document, name, command, logits, revision):
    """The RESULTS.md section for one sweep run, between its markers."""
    machine, versions, threads = document["machine"], document["versions"], document["threads"]
    peers = [p for p in ("numpy", "torch", "jax", "cupy") if p in document["peers"]]
    backend = next(iter(document["bandwidth"]))
    bw = document["bandwidth"][backend]
    device = (machine["gpu"]["name"] if backend == "cuda" and machine["gpu"]
              else f"{machine['cpu']} ({machine['cpu_count']} logical cores)")
    peer_versions = ", ".join(f"{p} {versions[p]}" for p in peers)
    thread_note = f"numba {threads['numba']} ({threads['threading_layer']} layer)"
    if "torch" in threads:
        thread_note += f", torch {threads['torch']}"
    if "jax" in threads:
        thread_note += f", jax: {threads['jax']}"
    load = machine["load_average"]
    text = [
        f"<!-- sweep:{name}:begin -->",
        f"## Sweep over C: {backend}, {threads['numba']} thread{'s' * (threads['numba'] > 1)}",
        "",
        f"Measured {document['created']} on {device}, {machine['platform']}. "
        f"nbxent {versions['nbxent']}, numpy {versions['numpy']}, numba {versions['numba']}; "
        f"peers: {peer_versions or 'none'}. Threads: {thread_note}.",
        f"Memory bandwidth measured in the same run: read {bw['read_GBps']:.1f} GB/s, "
        f"copy {bw['copy_GBps']:.1f} GB/s (best of {bw['runs']} over "
        f"{bw['buffer_bytes'] >> 20} MiB)."
        + (f" Load average when the run began: {load:.2f}." if load is not None else ""),
        f"Each case holds about {logits} logits (N = {logits} / C rows), int64 targets, "
        "mean reduction. Times are medians; \"peer ×\" is the peer's time over nbxent's "
        "(above 1: nbxent is faster). GB/s and % of bandwidth by the byte model: "
        f"loss {document['byte_model']['loss']}; loss+grad {document['byte_model']['loss+grad']}.",
        "",
        f"Command: `{command}` at commit {revision}.",
    ]
    for op in ("loss", "loss+grad"):
        if any(row["op"] == op for row in document["results"]):
            text += ["", f"### {op}", "", op_table(document, op, peers)]
    text += ["", f"![throughput against C]({name}.png)", f"<!-- sweep:{name}:end -->"]
    return "\n".join(text)


def write_section(text, name):
    """Replace (or append) the section ``name`` in RESULTS.md, keeping everything else."""
    current = RESULTS.read_text() if RESULTS.exists() else "# nbxent benchmark results\n"
    pattern = re.compile(rf"<!-- sweep:{re.escape(name)}:begin -->.*?<!-- sweep:{re.escape(name)}:end -->",
                         re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text, current)
    else:
        updated = current.rstrip("\n") + "\n\n" + text + "\n"
    RESULTS.write_text(updated)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", default="1,2", help="comma-separated Numba thread counts")
    parser.add_argument("--classes", default=",".join(map(str, DEFAULT_CLASSES)),
                        help="comma-separated class counts C")
    parser.add_argument("--logits", type=int, default=2 ** 24,
                        help="logits per case, N*C (default 2**24: 64 MiB in float32)")
    parser.add_argument("--dtype", default="float32,float64")
    parser.add_argument("--peers", default="all")
    args = parser.parse_args(argv)
    shapes = sweep_shapes([int(c) for c in args.classes.split(",")], args.logits)
    revision = source_revision()
    for threads in (int(t) for t in args.threads.split(",")):
        name = f"{args.backend}-{threads}t"
        document = run_bench(args.backend, threads, shapes, args.dtype, args.peers, name)
        command = shlex.join(["python", "benchmarks/sweep.py", *(argv if argv is not None
                                                                  else sys.argv[1:])])
        write_section(section(document, name, command, args.logits, revision), name)
        print(f"wrote the {name} section of {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
