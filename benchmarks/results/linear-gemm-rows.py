"""One BLAS thread's GEMM time per row against the rows a tile holds (benchmarks/RESULTS.md,
"The linear head's kernel on one thread a share"): float32, d = 512, 16384 classes (a share's
half of 32768); per M rows, the logits' product (features @ weight.T), d_features' (grad @
weight) and d_weight's (grad.T @ features, in eight blocks of 2048 classes), best of 5, in
microseconds a row; then d_features for a 298-row tile by halves of its rows against halves
of its columns (both halves, in turn: what two shares do side by side).

    python benchmarks/results/linear-gemm-rows.py
"""
import time

import numpy as np
from threadpoolctl import threadpool_limits

rng = np.random.default_rng(0)
d, c = 512, 16384
features = rng.standard_normal((4096, d), dtype=np.float32)
weight = rng.standard_normal((c, d), dtype=np.float32)
grad = rng.standard_normal((4096, c), dtype=np.float32)
logits = np.empty((4096, c), np.float32)
d_features = np.empty((4096, d), np.float32)
d_weight = np.empty((c, d), np.float32)


def best(call, n=5):
    call()
    seconds = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


with threadpool_limits(1, "blas"):
    for m in (128, 256, 288, 298, 320, 384, 512, 1024):
        forward = best(lambda: np.matmul(features[:m], weight.T, out=logits[:m]))
        backward = best(lambda: np.matmul(grad[:m], weight, out=d_features[:m]))
        blocks = best(lambda: np.matmul(grad[:m, :2048].T, features[:m], out=d_weight[:2048]))
        print(f"{m:5d} rows: logits {forward / m * 1e6:.1f}, d_features {backward / m * 1e6:.1f},"
              f" d_weight {blocks * 8 / m * 1e6:.1f} us a row")
    tile = grad[:298]
    by_rows = best(lambda: (np.matmul(tile[:149], weight, out=d_features[:149]),
                            np.matmul(tile[149:], weight, out=d_features[149:298])))
    by_columns = best(lambda: (np.matmul(tile, weight[:, :256], out=d_features[:298, :256]),
                               np.matmul(tile, weight[:, 256:], out=d_features[:298, 256:])))
    print(f"298-row tile's d_features: by rows {by_rows * 1e3:.1f} ms, by columns "
          f"{by_columns * 1e3:.1f} ms")
