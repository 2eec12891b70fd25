"""The cost of nbxent.jax's two routes under jax.jit, against plain JAX and nbxent on NumPy.

Best (and median) ms per loss-and-gradient call, float32, integer labels, every
contender timed in the same process, round-robin so that a busy machine slows
them alike; the ratio columns divide by plain JAX:

    python benchmarks/jax_callback.py [--repeat 9] [--shapes 256x10,16384x1000]
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import nbxent
import nbxent.jax


def _plain_jax(logits, labels):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def _on_route(route):
    """jit(value_and_grad(nbxent.jax.cross_entropy)) traced on ``route``."""
    os.environ["NBXENT_JAX_ROUTE"] = route
    assert nbxent.jax.host_route()[0] == route, nbxent.jax.host_route()
    return jax.jit(jax.value_and_grad(lambda x, y: nbxent.jax.cross_entropy(x, y)))


def _contenders(x, y):
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    calls = {"`nbxent.cross_entropy_with_grad` on NumPy arrays":
             lambda: nbxent.cross_entropy_with_grad(x, y)}
    for route in nbxent.jax.ROUTES:
        compiled = _on_route(route)
        compiled(xj, yj)     # trace now, under this route
        calls[f"`jit(value_and_grad(nbxent.jax.cross_entropy))`, {route}"] = \
            lambda f=compiled: jax.block_until_ready(f(xj, yj))
    plain = jax.jit(jax.value_and_grad(_plain_jax))
    calls["`jit(value_and_grad(...))` of the same loss in plain JAX"] = \
        lambda: jax.block_until_ready(plain(xj, yj))
    empty = jax.jit(lambda a: jax.pure_callback(
        lambda v: np.zeros((), np.float32), jax.ShapeDtypeStruct((), jnp.float32), a))
    calls["`jit`: a callback that does nothing, given the logits"] = \
        lambda: jax.block_until_ready(empty(xj))
    return calls


def _time(calls, repeat):
    """{name: (best ms, median ms)}, the contenders interleaved sample by sample."""
    for call in calls.values():
        call()
    samples = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: (1e3 * min(s), 1e3 * float(np.median(s))) for name, s in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--shapes", default="256x10,16384x1000")
    args = parser.parse_args()
    shapes = [tuple(int(d) for d in text.split("x")) for text in args.shapes.split(",")]
    results = []
    for n, c in shapes:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c), dtype=np.float32)
        y = rng.integers(0, c, n)
        results.append(_time(_contenders(x, y), args.repeat))
    plain = [r["`jit(value_and_grad(...))` of the same loss in plain JAX"][0] for r in results]
    print(f"jax {jax.__version__}; best / median ms per call, best of {args.repeat}; "
          f"x plain JAX = best / plain JAX's best")
    print("| per call | " + " | ".join(f"{n} x {c}: ms | x plain JAX" for n, c in shapes) + " |")
    print("| --- |" + " ---: | ---: |" * len(shapes))
    for name in results[0]:
        cells = []
        for result, base in zip(results, plain):
            best, median = result[name]
            cells += [f"{best:.3g} / {median:.3g}", f"{best / base:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
