"""Compile every CUDA kernel variant x dtype x compute capability; report registers and spills.

Runs without a GPU (numba-cuda's NVVM wheels compile, nvJitLink links): each
kernel is compiled to LTO-IR, linked for the real architecture by nvJitLink
through ``cuda.core.Linker`` (registers, spills, stack from its verbose log),
and for the first compute capability to PTX, which is scanned for float64 arithmetic
in float16/float32 kernels (the ``float32 / int64`` trap: it comes from the front end's
IR, the same for every compute capability). Must not run under ``NUMBA_ENABLE_CUDASIM``.

A development tool, not part of the installed package; ``tests/test_ptx.py`` runs it.
Usage, from the repository root with nbxent importable (``pip install -e .``)::

    python benchmarks/ptx_report.py [--cc 8.0 9.0] [--jobs 2] [--json FILE] [--markdown]
                                    [--skip-inlining-copies]

Exit status 1 when a kernel fails to compile, spills, or does f64 arithmetic
where it must not; the table goes to stdout either way.
"""

import argparse
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor


DTYPES = ("float16", "float32", "float64")
# PTX instructions that compute in float64 (conversions to/from f64 are allowed only
# in f64 kernels too, so every .f64 instruction counts, but for the metrics' output).
_F64_OP = re.compile(r"^\s*(?:@%p\d+\s+)?([a-z]+(?:\.[a-z0-9]+)*\.f64)\b", re.M)
# Kernels with metrics write float64 rows (``nbxent._metrics``): they may convert to
# float64, select and store it, and still do no float64 arithmetic.
_F64_OUTPUT = {"cvt.f64", "cvt.rn.f64", "selp.f64", "st.global.f64"}


def _signature(name, dtype):
    """The launch signature the backend uses for this kernel and logits dtype."""
    from numba import types
    from nbxent.cuda import kernels

    logit = types.float16 if dtype == "float16" else getattr(types, dtype)
    acc = types.float64 if dtype == "float64" else types.float32
    arr = lambda t: types.Array(t, 1, "C")  # noqa: E731
    geom = types.UniTuple(types.int64, len(kernels.Geometry._fields))
    dims = types.UniTuple(types.int64, len(kernels.Dims._fields))
    scalars = types.UniTuple(acc, len(kernels.Scalars._fields))
    if name in ("denominator", "row-sums"):
        kernel = (kernels.denominator_kernel(dtype == "float64", True) if name == "denominator"
                  else kernels.row_sums_kernel(dtype == "float64"))
        return kernel, (arr(types.int64), geom, arr(types.float32), geom, arr(acc), arr(acc),
                        arr(types.int64), dims, scalars)
    if name == "copy":
        tup = types.UniTuple(types.int64, 3)
        return kernels.copy_kernel(3), (arr(logit), arr(logit), tup, tup, types.int64)
    variant = dict(kernels.VARIANTS)[name]._replace(acc64=dtype == "float64")
    target = {kernels.TargetKind.INDEX: types.int64}.get(variant.target, logit)
    weight = types.float32 if variant.has_weight else logit
    grad_output = types.float32 if variant.has_grad_output else logit
    # the loss array is float32 (float64 for f64 logits), or acc_ws standing in: acc either
    # way; the metrics' rows are float64, or acc_ws standing in without metrics
    row_metrics = types.float64 if variant.metrics else acc
    return kernels.kernel_for(variant), (
        arr(logit), geom, arr(target), geom, arr(weight), geom, arr(grad_output), geom,
        arr(acc), arr(row_metrics), arr(logit), geom, arr(acc), arr(types.int64), dims, scalars)


def _parse_log(log):
    def grab(pattern):
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0
    return {"registers": grab(r"Used (\d+) registers"),
            "spill_stores": grab(r"(\d+) bytes spill stores"),
            "spill_loads": grab(r"(\d+) bytes spill loads"),
            "stack": grab(r"(\d+) bytes stack frame"),
            "smem": grab(r"(\d+) bytes smem")}


def _ltoir_per_cc(kernel, sig, ccs):
    """{cc: LTO-IR} for one kernel: the Numba front end runs once, NVVM once per cc."""
    from numba import cuda
    try:
        from numba.cuda.compiler import _compile_pyfunc_with_fixup
    except ImportError:  # private in numba-cuda 0.30: fall back to one full compile per cc
        return {cc: cuda.compile(kernel.py_func, sig, device=False, abi="numba", cc=cc,
                                 output="ltoir")[0] for cc in ccs}
    library, _ = _compile_pyfunc_with_fixup(
        kernel.py_func, sig, debug=None, lineinfo=False, device=False, fastmath=False,
        cc=ccs[0], opt=None, abi="numba", abi_info=None, forceinline=False,
        launch_bounds=None, lto=True)
    return {cc: library.get_ltoir(cc=cc) for cc in ccs}


def _link(ltoir, cc, output):
    from cuda.core import Linker, LinkerOptions, ObjectCode
    options = LinkerOptions(arch=f"sm_{cc[0]}{cc[1]}", link_time_optimization=True,
                            verbose=output == "cubin", ptx=output == "ptx")
    linker = Linker(ObjectCode.from_ltoir(ltoir), options=options)
    code = linker.link(output)
    if output == "ptx":
        ptx = code.code
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    log = linker.get_info_log()
    return log.decode(errors="replace") if isinstance(log, bytes) else log


def register_budget(name, dtype):
    """Most registers a thread may use so a block of the default size can launch."""
    from nbxent.cuda.config import Settings
    threads = (Settings.block_threads_f64 if dtype == "float64" else Settings.block_threads)
    if "-warp" in name:
        threads = Settings.threads
    return min(255, 65536 // threads)


def _f64_ops(ptx, name):
    """The float64 instructions of a float16/float32 kernel's PTX that it must not have."""
    allowed = _F64_OUTPUT if "-metrics-" in name else set()
    return sorted(set(_F64_OP.findall(ptx)) - allowed)


def compile_one(job):
    """Compile one kernel and dtype for every cc; result rows (never raises)."""
    name, dtype, ccs = job
    rows = []
    started = time.perf_counter()
    try:
        kernel, sig = _signature(name, dtype)
        ltoirs = _ltoir_per_cc(kernel, sig, ccs)
        error = None
    except Exception as exc:  # reported, and fails the run
        ltoirs, error = {}, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    for cc in ccs:
        row = {"kernel": name, "dtype": dtype, "cc": f"{cc[0]}.{cc[1]}", "error": error,
               "budget": register_budget(name, dtype)}
        if error is None:
            try:
                # (float64 arithmetic comes from the front end's IR, the same for every
                # cc: the first cc's PTX is scanned, the others' links only to a cubin.)
                if dtype != "float64" and cc == ccs[0]:
                    row["f64_ops"] = _f64_ops(_link(ltoirs[cc], cc, "ptx"), name)
                row.update(_parse_log(_link(ltoirs[cc], cc, "cubin")))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        rows.append(row)
    for row in rows:
        row["seconds"] = round((time.perf_counter() - started) / len(ccs), 2)
    return rows


def skip_inlining_copies():
    """Compile as the test suite does: Numba's inliner without its copies of each callee's
    fresh IR (``nbxent/_numba_inlining.py``: the same code, about a fifth less compile time)."""
    from nbxent import _numba_inlining
    _numba_inlining.skip_copies()


def jobs(ccs=((8, 0), (9, 0)), dtypes=DTYPES, names=None):
    """Every (kernel name, dtype, ccs) to compile."""
    from nbxent.cuda import kernels
    all_names = [name for name, _ in kernels.VARIANTS] + ["denominator", "row-sums", "copy"]
    chosen = all_names if names is None else [n for n in all_names if n in names]
    return [(name, dtype, tuple(ccs)) for name in chosen for dtype in dtypes]


def defects(row):
    """Why a result row fails the check ('' when it passes)."""
    if row["error"]:
        return row["error"]
    problems = []
    if row.get("registers", 0) > row.get("budget", 255):
        problems.append(f"{row['registers']} registers > budget {row['budget']}")
    if row.get("spill_stores") or row.get("spill_loads"):
        problems.append(f"spills {row['spill_stores']}/{row['spill_loads']} bytes")
    if row.get("f64_ops"):
        problems.append("f64 arithmetic: " + ", ".join(row["f64_ops"][:4]))
    return "; ".join(problems)


def table(rows, markdown=False):
    """The rows as a fixed-width (or Markdown) table."""
    head = ("kernel", "dtype", "cc", "regs", "budget", "spill st/ld", "stack", "check")
    lines = []
    body = [(r["kernel"], r["dtype"], r["cc"], str(r.get("registers", "-")),
             str(r.get("budget", "-")),
             f"{r.get('spill_stores', '-')}/{r.get('spill_loads', '-')}",
             str(r.get("stack", "-")), defects(r) or "ok") for r in rows]
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    else:
        widths = [max(len(h), *(len(c[k]) for c in body)) for k, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines.append(fmt.format(*head))
        lines += [fmt.format(*cells) for cells in body]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", nargs="+", default=["8.0", "9.0"])
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES))
    parser.add_argument("--kernel", nargs="+", default=None, help="kernel names (default all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--skip-inlining-copies", action="store_true",
                        help="compile as the test suite does (nbxent/_numba_inlining.py)")
    args = parser.parse_args(argv)
    from numba import config
    if config.ENABLE_CUDASIM:
        parser.error("unset NUMBA_ENABLE_CUDASIM: the simulator cannot compile")
    ccs = [tuple(int(p) for p in cc.split(".")) for cc in args.cc]
    todo = jobs(ccs, args.dtype, args.kernel)
    setup = skip_inlining_copies if args.skip_inlining_copies else None
    if setup:
        setup()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=setup) as pool:
            rows = [row for rows in pool.map(compile_one, todo) for row in rows]
    else:
        rows = [row for job in todo for row in compile_one(job)]
    print(table(rows, args.markdown))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    bad = [r for r in rows if defects(r)]
    total = sum(r["seconds"] for r in rows)
    print(f"\n{len(rows)} compilations, {len(bad)} failing, {total:.0f} s of compile time",
          file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
