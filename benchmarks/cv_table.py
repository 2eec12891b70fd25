"""The median table of several `nbxent bench --json` runs of the same cases: per case and
op, nbxent's median ms and % of the run's bandwidth (without and with ``out=``), each
peer's median ms, and nbxent's speed-up over the fastest peer of each run (median, then
the range over the runs). Prints Markdown.

    python benchmarks/cv_table.py benchmarks/results/cv-zen4-HEAD-run{1,2,3}.json
"""

import json
import pathlib
import statistics
import sys

PEERS = ("torch", "jax")


def main(paths):
    runs = [json.loads(pathlib.Path(path).read_text()) for path in paths]
    rows = {}
    for run in runs:
        for r in run["results"]:
            if r["status"] == "ok":
                rows.setdefault((r["case"], r["op"]), {}).setdefault(r["impl"], []).append(r)
    print("| case | op | nbxent ms | % BW | `out=` ms | % BW | "
          + " | ".join(f"{p} ms" for p in PEERS) + " | x fastest peer (range) |")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(PEERS) + "---:|")
    for (case, op), impls in rows.items():
        def median(impl, key, scale=1.0):
            found = impls.get(impl)
            return statistics.median(r[key] for r in found) * scale if found else None

        def cell(value, text):
            return "" if value is None else text.format(value)

        ratios = []
        for i, ours in enumerate(impls["nbxent"]):
            peers = [impls[p][i]["median_s"] for p in PEERS + ("numpy",) if p in impls]
            ratios.append(min(peers) / ours["median_s"])
        print(f"| {case} | {op} | {median('nbxent', 'median_s', 1e3):.1f} | "
              f"{median('nbxent', 'bandwidth_fraction', 100):.0f} % | "
              f"{cell(median('nbxent out=', 'median_s', 1e3), '{:.1f}')} | "
              f"{cell(median('nbxent out=', 'bandwidth_fraction', 100), '{:.0f} %')} | "
              + " | ".join(cell(median(p, "median_s", 1e3), "{:.1f}") for p in PEERS)
              + f" | {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    bandwidth = ", ".join(f"{run['bandwidth']['cpu']['read_GBps']:.1f}/"
                          f"{run['bandwidth']['cpu']['copy_GBps']:.1f}" for run in runs)
    print(f"\nread/copy GB/s of the runs: {bandwidth}")


if __name__ == "__main__":
    main(sys.argv[1:])
