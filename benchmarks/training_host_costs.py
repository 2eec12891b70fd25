"""Two host-side costs of the training layer: 'mean' with class weights, a z-loss and
sample weights (best of 15 calls of cross_entropy_with_grad, 16384 x 1000 float32), and
the peak memory a KL divergence adds (ru_maxrss growth during one call, 2048 x 32000
float32 logits and target, after a warm-up call on 8 rows).

    python benchmarks/training_host_costs.py

Run it with the old and the new tree on ``PYTHONPATH``; the memory figure needs a fresh
process each time (ru_maxrss only grows).
"""

import resource
import time

import numpy as np

import nbxent


def weighted_mean_ms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16384, 1000), dtype=np.float32)
    t = rng.integers(0, 1000, 16384)
    w = rng.uniform(0.5, 2, 1000).astype(np.float32)
    s = rng.uniform(0, 2, 16384).astype(np.float32)

    def call():
        return nbxent.cross_entropy_with_grad(x, t, weight=w, z_loss=1e-4, sample_weight=s)

    call()
    times = []
    for _ in range(15):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def kl_peak_mib():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 32000), dtype=np.float32)
    p = rng.random((2048, 32000), dtype=np.float32)
    p /= p.sum(1, keepdims=True)
    nbxent.kl_divergence(x[:8], p[:8])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = nbxent.kl_divergence(x, p)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return grown, float(loss)


if __name__ == "__main__":
    grown, loss = kl_peak_mib()  # first: the timing's arrays would raise the baseline
    print(f"kl_divergence 2048x32000 float32: peak RSS +{grown:.0f} MiB, loss {loss:.6f}")
    print(f"weighted 'mean' with z-loss, 16384x1000 float32: best {weighted_mean_ms():.1f} ms")
