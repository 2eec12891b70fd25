"""Checks for a refactor of the kernels: same results bit for bit, same speed, same
cold compile. Run each mode once with the old tree and once with the new one on the
path (``PYTHONPATH=...``), alternating, and compare the printed lines.

    python benchmarks/refactor_check.py hashes [-v]   # SHA-256 of 378 results
    python benchmarks/refactor_check.py speed         # 1 thread, process time, ms
    python benchmarks/refactor_check.py cold          # first calls, empty cache

``hashes`` runs every kernel layout (short rows, tile, NCHW, long rows, split rows) in
float32, float64 and float16 with four option sets (class weights, smoothing, z-loss,
softcap, each reduction, grad_output, probability targets), in place, and the
normalisations. Run it twice per tree, with an empty ``NUMBA_CACHE_DIR`` and then
with the cache it filled: a kernel compiled in the process and the same kernel
loaded from the cache may differ in the last bit (benchmarks/RESULTS.md).
``cold`` needs an empty ``NUMBA_CACHE_DIR``; ``speed`` is best of 9 calls on one
thread in process time, which a shared machine disturbs less than wall time.
"""

import argparse
import hashlib
import itertools
import time

import numba
import numpy as np

import nbxent

HASH_CASES = [((700, 10), -1), ((300, 100), -1), ((64, 1000), -1), ((3, 40000), -1),
              ((1, 70000), -1), ((2, 21, 9, 17), 1), ((300, 129), -1)]
SPEED_CASES = [((1000000, 10), -1), ((65536, 100), -1), ((16384, 1000), -1),
               ((4096, 32000), -1), ((8, 21, 512, 512), 1)]


def _target_shape(shape, axis):
    return tuple(s for i, s in enumerate(shape) if i != axis % len(shape))


def hashes(verbose):
    numba.set_num_threads(2)
    rng = np.random.default_rng(7)
    digest, lines = hashlib.sha256(), []

    def add(name, *arrays):
        h = hashlib.sha256()
        for a in arrays:
            a = np.ascontiguousarray(np.asarray(a))
            h.update(str(a.dtype).encode())
            h.update(a.tobytes())
        digest.update(h.digest())
        lines.append(f"{name} {h.hexdigest()[:16]}")

    for (shape, axis), dtype in itertools.product(HASH_CASES,
                                                  (np.float32, np.float64, np.float16)):
        label = f"{shape} {dtype.__name__}"
        x = (rng.standard_normal(shape) * 5).astype(dtype)
        x.flat[3] = 1e4 if dtype != np.float16 else 6e4
        n_classes, t_shape = shape[axis], _target_shape(shape, axis)
        t = rng.integers(0, n_classes, t_shape)
        t.flat[::5] = -100
        w = rng.random(n_classes) + 0.5
        p = rng.random(shape).astype(dtype)
        p /= p.sum(axis=axis, keepdims=True)
        go = rng.random(t_shape).astype(dtype)
        for weight, eps, reduction, z, cap in [(None, 0.0, "mean", 0.0, None),
                                               (w, 0.1, "none", 1e-4, None),
                                               (None, 0.2, "sum", 0.0, 30.0),
                                               (w, 0.0, "mean", 1e-3, None)]:
            kw = dict(axis=axis, weight=weight, label_smoothing=eps, reduction=reduction,
                      z_loss=z, softcap=cap)
            options = f"{label} weight={weight is not None} eps={eps} {reduction} cap={cap}"
            add(f"with_grad {options}", *nbxent.cross_entropy_with_grad(x, t, **kw))
            add(f"loss {options}", nbxent.cross_entropy(x, t, **kw))
            if reduction == "none":
                add(f"grad_output {options}",
                    *nbxent.cross_entropy_with_grad(x, t, grad_output=go, **kw))
            add(f"prob {options}", *nbxent.cross_entropy_with_grad(x, p, **kw))
        in_place = x.copy()
        nbxent.cross_entropy_with_grad(in_place, t, axis=axis, out=in_place)
        add(f"in place {label}", in_place)
        for f in (nbxent.logsumexp, nbxent.log_softmax, nbxent.softmax, nbxent.entropy):
            add(f"{f.__name__} {label}", f(x, axis=axis))
    if verbose:
        print("\n".join(lines))
    print(len(lines), "results, SHA-256", digest.hexdigest())


def _best_of(f, n=9, clock=time.process_time):
    f()
    times = []
    for _ in range(n):
        t0 = clock()
        f()
        times.append(clock() - t0)
    return min(times)


def speed():
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    for shape, axis in SPEED_CASES:
        x = rng.standard_normal(shape, dtype=np.float32)
        t = rng.integers(0, shape[axis], _target_shape(shape, axis))
        out = np.empty_like(x)
        loss = _best_of(lambda: nbxent.cross_entropy(x, t, axis=axis))
        fused = _best_of(lambda: nbxent.cross_entropy_with_grad(x, t, axis=axis, out=out))
        print(f"{'x'.join(map(str, shape))} axis={axis}: loss {loss * 1e3:.2f} ms, "
              f"loss+grad out= {fused * 1e3:.2f} ms")


def cold():
    rng = np.random.default_rng(0)
    short = rng.standard_normal((5000, 10)).astype(np.float32), rng.integers(0, 10, 5000)
    long_ = rng.standard_normal((64, 1000)).astype(np.float32), rng.integers(0, 1000, 64)
    for name, f in (("tile loss+grad", lambda: nbxent.cross_entropy_with_grad(*short)),
                    ("row loss+grad", lambda: nbxent.cross_entropy_with_grad(*long_)),
                    ("row loss", lambda: nbxent.cross_entropy(*long_))):
        t0 = time.perf_counter()
        f()
        print(f"first {name}: {time.perf_counter() - t0:.2f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("hashes", "speed", "cold"))
    parser.add_argument("-v", "--verbose", action="store_true", help="hashes: one line each")
    args = parser.parse_args()
    if args.mode == "hashes":
        hashes(args.verbose)
    else:
        {"speed": speed, "cold": cold}[args.mode]()


if __name__ == "__main__":
    main()
