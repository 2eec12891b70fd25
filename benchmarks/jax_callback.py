"""The cost of nbxent.jax's host callback under jax.jit, against plain JAX and nbxent on NumPy.

Median ms per loss-and-gradient call, float32, integer labels:

    python benchmarks/jax_callback.py [--repeat 7]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import nbxent
import nbxent.jax


def _median_ms(fn, repeat):
    fn()  # compile, warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _plain_jax(logits, labels):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    shapes = [(256, 10), (16384, 1000)]
    rows = {"nbxent.cross_entropy_with_grad on NumPy arrays": [],
            "jit(value_and_grad(nbxent.jax.cross_entropy))": [],
            "jit(value_and_grad(...)) of the same loss in plain JAX": [],
            "jit: a callback that does nothing, given the logits": []}
    for n, c in shapes:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c), dtype=np.float32)
        y = rng.integers(0, c, n)
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        ours = jax.jit(jax.value_and_grad(nbxent.jax.cross_entropy))
        plain = jax.jit(jax.value_and_grad(_plain_jax))
        empty = jax.jit(lambda a: jax.pure_callback(
            lambda v: np.zeros((), np.float32), jax.ShapeDtypeStruct((), jnp.float32), a))
        timed = [lambda: nbxent.cross_entropy_with_grad(x, y),
                 lambda: jax.block_until_ready(ours(xj, yj)),
                 lambda: jax.block_until_ready(plain(xj, yj)),
                 lambda: jax.block_until_ready(empty(xj))]
        for values, fn in zip(rows.values(), timed):
            values.append(_median_ms(fn, args.repeat))
    print(f"jax {jax.__version__}; median ms per call")
    print("| per call | " + " | ".join(f"{n} x {c}" for n, c in shapes) + " |")
    print("| --- |" + " --- |" * len(shapes))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.3g}" for v in values) + " |")


if __name__ == "__main__":
    main()
