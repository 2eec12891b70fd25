"""The ``nbxent`` command: ``nbxent bench`` measures throughput, ``nbxent info`` describes the setup.

Also runs as ``python -m nbxent``. See ``nbxent bench --help``.
"""

import argparse
import importlib.util
import shlex
import sys

from nbxent.bench.cases import (DEFAULT_DTYPES, DTYPES, OPS, SUITES, parse_shapes,
                                suite_shapes)
from nbxent.bench.peers import FRAMEWORKS, PEER_NAMES

SHAPES_HELP = ("comma-separated cases DIMxDIMx...[:axis=K]; the class axis is the last dim "
               "unless axis=K says otherwise, e.g. 16384x1000,4096x32000 or "
               "8x21x512x512:axis=1 (NCHW). Default: C = 128, 1024, 32768 and an NCHW map "
               "with 21 classes, about 2**24 logits each")


def _comma_list(allowed, what):
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
        return tuple(dict.fromkeys(items))
    return parse


def _shapes(text):
    try:
        return parse_shapes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _peers(text):
    if text.strip() in ("none", "all"):
        return () if text.strip() == "none" else PEER_NAMES
    return _comma_list(PEER_NAMES, "peer")(text)


def build_parser():
    """The argument parser of the ``nbxent`` command (subcommands ``bench`` and ``info``)."""
    parser = argparse.ArgumentParser(prog="nbxent", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="{bench,info}")
    bench = commands.add_parser(
        "bench", help="time loss and loss+gradient against peers and the measured memory bandwidth",
        description="Time nbxent's cross-entropy (loss, and loss+gradient) on each case and "
        "backend against the peers that are installed, and against the memory bandwidth "
        "measured on the same device in the same run. Progress goes to stderr, the table "
        "to stdout.")
    cases = bench.add_mutually_exclusive_group()
    cases.add_argument("--shapes", type=_shapes, help=SHAPES_HELP)
    cases.add_argument("--suite", choices=(*SUITES, "linear"),
                       help="a named set of cases: default, or cv (classification with 10 to "
                       "1000 classes, VOC/Cityscapes/ADE20K segmentation maps, two long-row "
                       "cases), or linear (the fused classifier head "
                       "linear_cross_entropy_with_grad, float32, against its three GEMMs and "
                       "torch's linear_cross_entropy, with peak memory: N x d x C = "
                       "4096x512x32768, 8192x256x100000, 16384x128x65536 in a 1 GiB budget); "
                       "--quick takes an eighth of each")
    bench.add_argument("--dtype", type=_comma_list(DTYPES, "dtype"),
                       help=f"comma-separated logits dtypes (default {','.join(DEFAULT_DTYPES)}; "
                       "float32 with --framework)")
    bench.add_argument("--backend", choices=("cpu", "cuda", "dask"),
                       help="one backend (default: cpu, and cuda when a GPU is usable); dask "
                       "times a LocalCluster of 1, then 2 workers (default case 16384x1000 "
                       "float32, chunked along the rows and along both rows and classes)")
    bench.add_argument("--op", choices=(*OPS, "both"), default="both",
                       help="loss only, loss and gradient in one call, or both (default)")
    bench.add_argument("--threads", type=_positive_int,
                       help="Numba threads (numba.set_num_threads), also given to PyTorch")
    bench.add_argument("--framework", choices=FRAMEWORKS,
                       help="time a training step's loss part through the framework's "
                       "autograd: nbxent's wrapper (nbxent.torch, or nbxent.jax under "
                       "jax.jit + jax.value_and_grad) against nbxent.cross_entropy_with_grad "
                       "on the same arrays (its overhead) and the framework's own "
                       "cross-entropy (the peer of the same name); op loss+grad, default "
                       "case 16384x1000 float32")
    bench.add_argument("--peers", type=_peers,
                       help=f"comma-separated peers from {','.join(PEER_NAMES)}, or all "
                       "(default; with --framework, that framework alone) or none; peers "
                       "not installed are skipped")
    bench.add_argument("--repeat", type=_positive_int,
                       help="timed samples per contender (default: 3 to 5, fewer when "
                       "they would take over a second; at most 3 with --quick)")
    bench.add_argument("--quick", action="store_true",
                       help="default cases an eighth the size, fewer samples, smaller "
                       "bandwidth buffers")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON "
                       "(schema: nbxent.bench.report.REPORT_SCHEMA)")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="also draw throughput against C into a PNG (needs matplotlib)")
    bench.add_argument("--keep-freed-memory", action="store_true",
                       help="call nbxent.keep_freed_memory() first: the C library keeps large "
                       "freed blocks for reuse, so that no contender (JAX's outputs, "
                       "PyTorch's tensors, NumPy's arrays) pays page faults for memory it "
                       "allocates anew at every call (glibc only; the header says which "
                       "policy the run had)")
    bench.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    bench.set_defaults(handler=_bench, subparser=bench)
    info = commands.add_parser("info", help="versions, threads, kernel cache and GPU",
                               description="Print versions, Numba threads and threading "
                               "layer, how the C allocator treats large freed blocks, whether "
                               "Numba's on-disk cache of nbxent's kernels is warm (a first "
                               "float32 call shows whether Numba compiles: seconds when it "
                               "does), and the GPU or why none is usable.")
    info.set_defaults(handler=_info, subparser=info)
    return parser


def main(argv=None):
    """Run the ``nbxent`` command with ``argv`` (default ``sys.argv[1:]``); return its exit code.

    0 on success, 2 for a usage error (with a message on stderr), 1 when the run fails.

    Examples
    --------
    >>> main(["bench", "--quick", "--shapes", "64x10", "--no-progress"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("choose a command: bench or info")
        args.argv = argv
        return args.handler(args)
    except SystemExit as exc:       # argparse's error() exits 2, --help exits 0
        return exc.code


def _bench(args):
    from nbxent.bench import progress, report, run

    bench_parser = args.subparser
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        bench_parser.error(report.PLOT_INSTALL_HINT)     # now, not after a minute of timing
    if args.threads is not None:
        import numba
        if args.threads > numba.config.NUMBA_NUM_THREADS:
            bench_parser.error(f"--threads {args.threads} is more than Numba's "
                               f"{numba.config.NUMBA_NUM_THREADS} (raise NUMBA_NUM_THREADS)")
    if args.framework:
        _check_framework(args)
    if args.keep_freed_memory:
        from nbxent import allocator
        if not allocator.keep_freed_memory():
            bench_parser.error("--keep-freed-memory needs glibc's allocator (Linux)")
    if args.backend == "dask":
        return _bench_dask(args)
    if args.suite == "linear":
        return _bench_linear(args)
    if args.backend is not None:
        why_not = run.usable_backends()[args.backend]
        if why_not:
            bench_parser.error(f"--backend {args.backend} cannot run here: {why_not}")
    settings = _settings(args)
    result = run.run(settings, progress.make_progress(not args.no_progress))
    print(report.format_table(result))
    if args.json:
        report.write_json(result, args.json)
    if args.plot:
        report.plot(result, args.plot)
    return 0


FRAMEWORK_DEFAULT_SHAPES = "16384x1000"
FRAMEWORK_QUICK_SHAPES = "2048x1000"


def _check_framework(args):
    """Usage errors for ``--framework`` that would otherwise surface mid-run."""
    parser = args.subparser
    if args.backend == "dask":
        parser.error("--framework times nbxent's torch or jax wrapper; not with --backend dask")
    if args.framework == "jax" and args.backend == "cuda":
        parser.error("--framework jax runs on the CPU only (nbxent.jax reads host memory)")
    if args.op == "loss":
        parser.error("--framework times a training step's loss part, forward and backward: "
                     "--op loss+grad (the default) only")
    if importlib.util.find_spec(args.framework) is None:
        parser.error(f"--framework {args.framework} needs {args.framework}: "
                     f"pip install 'nbxent[{args.framework}]'")


def _settings(args):
    from nbxent.bench import run

    framework = getattr(args, "framework", None)
    shapes = args.shapes or (suite_shapes(args.suite, args.quick) if args.suite else None)
    if framework and shapes is None:
        shapes = parse_shapes(FRAMEWORK_QUICK_SHAPES if args.quick else FRAMEWORK_DEFAULT_SHAPES)
    dtypes = args.dtype or (("float32",) if framework else DEFAULT_DTYPES)
    peers = args.peers
    if peers is None:
        peers = (framework,) if framework else PEER_NAMES
    ops = OPS if args.op == "both" else (args.op,)
    return run.Settings(
        shapes=shapes, dtypes=dtypes,
        backends=None if args.backend is None else (args.backend,),
        ops=("loss+grad",) if framework else ops, peers=peers,
        repeat=args.repeat, threads=args.threads, quick=args.quick,
        command=shlex.join(["nbxent", *args.argv]), framework=framework)


def _bench_dask(args):
    from nbxent.bench import dask_scaling, progress, report

    why_not = dask_scaling.why_not()
    if why_not:
        args.subparser.error(f"--backend dask cannot run here: {why_not}")
    if args.plot:
        args.subparser.error("--plot draws throughput against C; the dask bench has no plot")
    result = dask_scaling.run(_settings(args), progress.make_progress(not args.no_progress))
    print(dask_scaling.format_table(result))
    if args.json:
        report.write_json(result, args.json)
    return 0


def _bench_linear(args):
    from nbxent.bench import linear, progress, report

    if args.plot:
        args.subparser.error("--plot draws throughput against C; the linear suite has no plot")
    if args.backend not in (None, "cpu"):
        args.subparser.error("--suite linear runs on the CPU backend only")
    settings = linear.Settings(quick=args.quick, repeat=args.repeat, threads=args.threads or 2,
                               command=shlex.join(["nbxent", *args.argv]))
    result = linear.run(settings, progress.make_progress(not args.no_progress))
    print(linear.format_table(result))
    if args.json:
        report.write_json(result, args.json)
    return 0


def _info(args):
    from nbxent.bench import machine

    versions = machine.versions()
    threads = machine.numba_threads()
    host = machine.machine()

    def version(name):
        return versions[name] or "not installed"

    print(f"nbxent      {versions['nbxent']}")
    print(f"python      {versions['python']}")
    for name in ("numpy", "numba", "numba_cuda", "cupy"):
        print(f"{name.replace('_', '-'):<11} {version(name)}")
    print(f"cpu         {host['cpu']} ({host['cpu_count']} logical cores)")
    target = host["cpu_target"]
    print(f"compiled    for {target['name']}, {target['vector_isa']} "
          f"(NUMBA_CPU_NAME and NUMBA_CPU_FEATURES choose another)")
    print(f"threads     numba uses {threads['numba']} of {threads['numba_max']}, "
          f"threading layer {threads['threading_layer']}")
    print(f"allocator   {host['allocator']}")
    seconds, compiled = machine.first_calls()
    if compiled:
        print(f"cache       cold: a first float32 loss and loss+grad call compiled "
              f"{len(compiled)} kernel variant(s) in {seconds:.1f} s "
              f"({', '.join(sorted(set(compiled)))})")
    else:
        print(f"cache       warm: a first float32 loss and loss+grad call took {seconds:.2f} s, "
              f"every kernel loaded from Numba's on-disk cache")
    for module, state in machine.kernel_cache().items():
        if not module.startswith("nbxent.bench"):
            print(f"            {state['index_files']} index file(s) for {module} in "
                  f"{state['dir']}" + (f", {state['stale']} older than the source"
                                       if state["stale"] else ""))
    gpu = host["gpu"]
    if gpu:
        print(f"gpu         {gpu['name']}, {gpu['memory_bytes'] / 2**30:.1f} GiB, "
              f"compute capability {gpu['compute_capability']}")
    else:
        print(f"gpu         none usable: {host['why_no_gpu']}")
    return 0
