"""Where a CPU kernel spends its time, by instruction, without hardware counters.

Runs the call under ``perf record -e cpu-clock`` in a fresh Numba cache (so that the
kernel is compiled in that process and its code can be read back), then maps the
samples onto the JIT code, disassembled with capstone (x86-64 only; ``pip install
capstone``; ``perf`` from the distribution). Prints each compiled function's share of
all samples (compilation included: use enough calls) and, for the hottest one, its
samples per 64-byte block of code and the hottest instructions: the offsets are
the function's, a loop shows as a run of neighbouring blocks.

    NUMBA_NUM_THREADS=1 python benchmarks/profile_kernel.py 65536x100 loss --calls 1500
    NUMBA_NUM_THREADS=1 python benchmarks/profile_kernel.py 2x19x512x1024 grad --axis 1
    NUMBA_NUM_THREADS=1 python benchmarks/profile_kernel.py 16384x1000 loss --metrics lse,correct
    NUMBA_NUM_THREADS=1 python benchmarks/profile_kernel.py 1000000x10 loss --listing 2980:2a80
    NUMBA_NUM_THREADS=1 python benchmarks/profile_kernel.py 1000000x10 loss --dtype float64
"""

import argparse
import bisect
import collections
import ctypes
import os
import pickle
import subprocess
import sys
import tempfile
import time

import numpy as np


def run_calls(args, symbols_path):
    """Time the calls, then save the kernels' symbols and the executable code pages."""
    import nbxent
    import nbxent.cpu.kernels as kernels

    shape = tuple(int(n) for n in args.shape.split("x"))
    axis = args.axis % len(shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32).astype(args.dtype)
    target = rng.integers(0, shape[axis], shape[:axis] + shape[axis + 1:])
    out = np.empty_like(x)
    metrics = tuple(args.metrics.split(",")) if args.metrics else None
    if args.op == "loss":
        def call():
            return nbxent.cross_entropy(x, target, axis=axis, metrics=metrics)
    else:
        def call():
            return nbxent.cross_entropy_with_grad(x, target, axis=axis, out=out,
                                                  metrics=metrics)
    call()
    start = time.perf_counter()
    for _ in range(args.calls):
        call()
    print(f"{(time.perf_counter() - start) / args.calls * 1e3:.2f} ms per call")
    symbols = {}
    for kernel in kernels._kernels.values():
        for overload in (o for blocks in kernel.functions for o in blocks.overloads.values()):
            library = overload.library
            for function in library._final_module.functions:
                if not function.is_declaration:
                    address = library.get_pointer_to_function(function.name)
                    if address:
                        symbols[address] = function.name
    pages = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, mode = line.split()[:2]
            lo, hi = (int(v, 16) for v in span.split("-"))
            if "x" in mode and any(lo <= a < hi for a in symbols):
                pages.append((lo, ctypes.string_at(lo, hi - lo)))
    with open(symbols_path, "wb") as f:
        pickle.dump((symbols, pages), f)


def report(data_path, symbols_path, top, function=None, listing=None):
    import capstone

    with open(symbols_path, "rb") as f:
        symbols, pages = pickle.load(f)
    ips = subprocess.run(["perf", "script", "-i", data_path, "-F", "ip"], check=True,
                         capture_output=True, text=True).stdout.split()
    samples = collections.Counter(int(ip, 16) for ip in ips)
    total = sum(samples.values())
    starts = sorted(symbols)
    per_function = collections.Counter()
    for ip, n in samples.items():
        i = bisect.bisect_right(starts, ip) - 1
        if i >= 0 and any(lo <= ip < lo + len(code) for lo, code in pages):
            per_function[starts[i]] += n
    print(f"JIT code: {100 * sum(per_function.values()) / total:.1f} % of {total} samples")
    for start, n in per_function.most_common(5):
        print(f"{100 * n / total:5.1f} %  {symbols[start][:100]}")
    if not per_function:
        return
    hottest = next(start for start, _ in per_function.most_common()
                   if function is None or function in symbols[start])
    following = [a for a in starts if a > hottest]
    end = following[0] if following else hottest + (1 << 20)
    lo, code = next((lo, code) for lo, code in pages if lo <= hottest < lo + len(code))
    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    instructions = list(disassembler.disasm(code[hottest - lo:min(end, lo + len(code)) - lo],
                                            hottest))
    blocks = collections.Counter()
    for ins in instructions:
        blocks[(ins.address - hottest) // 64 * 64] += samples.get(ins.address, 0)
    print(f"\nsamples per 64-byte block of {symbols[hottest][:80]} (>= 0.4 %):")
    for offset, n in sorted(blocks.items()):
        if n >= 0.004 * total:
            print(f"  {offset:#7x}  {100 * n / total:5.2f} %")
    print(f"\nits {top} hottest instructions:")
    for ins in sorted(instructions, key=lambda i: -samples.get(i.address, 0))[:top]:
        print(f"  {ins.address - hottest:#7x}  {100 * samples.get(ins.address, 0) / total:5.2f} %"
              f"  {ins.mnemonic} {ins.op_str}")
    if listing:
        lo_offset, hi_offset = (int(v, 16) for v in listing.split(":"))
        print(f"\nits code from {lo_offset:#x} to {hi_offset:#x}:")
        for ins in instructions:
            if lo_offset <= ins.address - hottest < hi_offset:
                print(f"  {ins.address - hottest:#7x}  "
                      f"{100 * samples.get(ins.address, 0) / total:5.2f} %  "
                      f"{ins.mnemonic} {ins.op_str}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", help="e.g. 65536x100 or 2x19x512x1024")
    parser.add_argument("op", choices=["loss", "grad"], help="grad: with out=")
    parser.add_argument("--axis", type=int, default=-1)
    parser.add_argument("--dtype", default="float32", help="the logits' dtype")
    parser.add_argument("--metrics", help="metrics in the same pass, e.g. lse,correct")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--function", help="detail the hottest function whose name holds "
                        "this (default: the hottest of all)")
    parser.add_argument("--listing", metavar="LO:HI", help="also list that function's code "
                        "between these hexadecimal offsets, each instruction's samples beside it")
    parser.add_argument("--symbols", help=argparse.SUPPRESS)  # set in the profiled process
    args = parser.parse_args()
    if args.symbols:
        run_calls(args, args.symbols)
        return
    with tempfile.TemporaryDirectory() as scratch:
        data, symbols_path = os.path.join(scratch, "perf.data"), os.path.join(scratch, "sym")
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(scratch, "numba-cache"))
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-o", data, sys.executable,
                        __file__, *sys.argv[1:], "--symbols", symbols_path], env=env,
                       check=True)
        report(data, symbols_path, args.top, args.function, args.listing)


if __name__ == "__main__":
    main()
