"""Does a peer's call just before slow nbxent's next one? Times nbxent's 1000000x10 loss
(best and median of 15 calls, 2 threads) alone, then each call right after one call of
PyTorch's or JAX's cross-entropy (their own time not counted), in one process.

    python benchmarks/results/peer-spin.py
    OMP_WAIT_POLICY=passive python benchmarks/results/peer-spin.py
"""

import time

import numpy as np

import nbxent


def times_after(before, call, repeat=15):
    times = []
    for _ in range(repeat):
        before()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return f"best {min(times) * 1e3:.2f} median {np.median(times) * 1e3:.2f} ms"


def main():
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000000, 10), dtype=np.float32)
    t = rng.integers(0, 10, 1000000)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    xj, tj = jnp.asarray(x), jnp.asarray(t)
    jax_loss = jax.jit(lambda a, b: optax.softmax_cross_entropy_with_integer_labels(a, b).mean())

    def ours():
        nbxent.cross_entropy(x, t)

    def torch_call():
        torch.nn.functional.cross_entropy(xt, tt)

    def jax_call():
        jax_loss(xj, tj).block_until_ready()

    for call in (ours, torch_call, jax_call):
        call()
    for _ in range(2):
        print("alone", times_after(lambda: None, ours), "| after torch",
              times_after(torch_call, ours), "| after jax", times_after(jax_call, ours))


if __name__ == "__main__":
    main()
