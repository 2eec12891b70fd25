"""nbxent.jax with and without ``inplace_backward``, where the logits come from.

Median (and best) ms per call under jax.jit, float32, integer labels, every contender
timed in the same process, round-robin so that a busy machine slows them alike:

- ``argument``: ``value_and_grad`` of the loss of logits passed to the jitted function
  (what ``nbxent bench --framework jax`` times);
- ``donated``: the same with ``donate_argnums=0``, on a fresh copy of the logits each call
  (the copy is made before the clock starts);
- ``step``: a training step's loss part with the logits an intermediate,
  ``value_and_grad`` with respect to W of the loss of ``h @ W`` (h of N x H, W of H x C);
- optax's ``softmax_cross_entropy_with_integer_labels`` in the same three, and
  ``nbxent.cross_entropy_with_grad`` on NumPy arrays.

    python benchmarks/jax_inplace.py [--shape 16384x1000] [--hidden 16] [--repeat 15]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import nbxent
import nbxent.jax


def _losses():
    import optax

    def optax_mean(x, y):
        return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()

    return {"nbxent.jax": lambda x, y: nbxent.jax.cross_entropy(x, y),
            "nbxent.jax inplace_backward": lambda x, y: nbxent.jax.cross_entropy(
                x, y, inplace_backward=True),
            "optax": optax_mean}


def _contenders(logits, labels, h, w):
    """{(loss name, setting): (prepare, run)}: ``prepare()`` outside the clock, then
    ``run(prepared)`` timed."""
    contenders = {}
    for name, loss in _losses().items():
        on_logits = jax.value_and_grad(loss)
        argument, donating = jax.jit(on_logits), jax.jit(on_logits, donate_argnums=0)
        step = jax.jit(jax.value_and_grad(lambda w, h, y, loss=loss: loss(h @ w, y)))
        contenders[name, "argument"] = (lambda: None, lambda _, f=argument: f(logits, labels))
        contenders[name, "donated"] = (
            lambda: jax.block_until_ready(jnp.array(logits, copy=True)),
            lambda fresh, f=donating: f(fresh, labels))
        contenders[name, "step"] = (lambda: None, lambda _, f=step: f(w, h, labels))
    host_logits, host_labels = np.asarray(logits), np.asarray(labels)
    contenders["nbxent.cross_entropy_with_grad", "NumPy"] = (
        lambda: None, lambda _: nbxent.cross_entropy_with_grad(host_logits, host_labels))
    return contenders


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="16384x1000")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    n, c = (int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((n, c), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, c, n).astype(np.int32))
    h = jnp.asarray(rng.standard_normal((n, args.hidden), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((args.hidden, c), dtype=np.float32) * 0.1)
    contenders = _contenders(logits, labels, h, w)
    times = {key: [] for key in contenders}
    for round_ in range(args.repeat + 1):       # round 0 compiles and warms up
        for key, (prepare, run) in contenders.items():
            prepared = prepare()
            start = time.perf_counter()
            jax.block_until_ready(run(prepared))
            if round_:
                times[key].append(time.perf_counter() - start)
    print(f"{n}x{c} float32, h @ W with H = {args.hidden}, {args.repeat} rounds; "
          f"median (best) ms")
    for (name, setting), seconds in times.items():
        ms = 1e3 * np.asarray(seconds)
        print(f"{name:32s} {setting:9s} {np.median(ms):8.2f} ({ms.min():.2f})")


if __name__ == "__main__":
    main()
