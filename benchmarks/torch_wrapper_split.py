"""nbxent.torch's training step split: forward, backward, and the direct call beside them.

Median ms of 10 steps (after 2 warm-up steps), 16384 x 1000 float32, 2 threads; each
step runs the wrapper's forward, its backward into a fresh ``leaf.grad``, then
``nbxent.cross_entropy_with_grad`` on the same arrays:

    python benchmarks/torch_wrapper_split.py
"""

import time

import numba
import numpy as np
import torch

import nbxent
import nbxent.torch


def main():
    numba.set_num_threads(2)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16384, 1000), dtype=np.float32)
    y = rng.integers(0, 1000, 16384)
    leaf, target = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y)
    forward, backward, direct = [], [], []
    for step in range(12):
        leaf.grad = None
        start = time.perf_counter()
        loss = nbxent.torch.cross_entropy(leaf, target)
        forward_done = time.perf_counter()
        loss.backward()
        backward_done = time.perf_counter()
        nbxent.cross_entropy_with_grad(x, y)
        direct_done = time.perf_counter()
        if step >= 2:
            forward.append(forward_done - start)
            backward.append(backward_done - forward_done)
            direct.append(direct_done - backward_done)
    print(" | ".join(f"{name} {1e3 * np.median(times):.1f}" for name, times in
                     (("forward", forward), ("backward", backward), ("direct", direct))))


if __name__ == "__main__":
    main()
