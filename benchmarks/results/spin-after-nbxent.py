"""What an nbxent call leaves behind for the next library's call (benchmarks/RESULTS.md,
"Where the VOC map's loss goes ..., Numba's spinning worker beside other libraries"): per
shape, float32 random normal logits, the median of 30 timed calls (ms) of nbxent's loss, its
loss+grad with ``out=``, optax's jitted loss alone, and optax's loss timed right after an
untimed nbxent loss call, GAP ms later (0, 2, 5, 10, 20). Needs JAX and optax. Compare a run
under ``OMP_WAIT_POLICY=passive``.

    python benchmarks/results/spin-after-nbxent.py
    OMP_WAIT_POLICY=passive python benchmarks/results/spin-after-nbxent.py
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nbxent

rng = np.random.default_rng(0)
for text in ("1000000x10", "65536x100", "16384x1000"):
    shape = tuple(int(v) for v in text.split("x"))
    x = rng.standard_normal(shape, dtype=np.float32)
    t = rng.integers(0, shape[1], shape[0])
    grad = np.empty_like(x)
    jx, jt = jnp.asarray(x), jnp.asarray(t)
    jax_loss = jax.jit(lambda a, b: optax.softmax_cross_entropy_with_integer_labels(a, b).mean())

    def loss():
        return nbxent.cross_entropy(x, t)

    def loss_grad():
        return nbxent.cross_entropy_with_grad(x, t, out=grad)

    def optax_loss():
        return jax_loss(jx, jt).block_until_ready()

    for call in (loss, loss_grad, optax_loss):
        call()
        call()

    def median_ms(call, before=None, gap=0.0):
        seconds = []
        for _ in range(30):
            if before:
                before()
            if gap:
                time.sleep(gap)
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        return np.median(seconds) * 1e3

    row = [f"{text}: nbxent loss {median_ms(loss):.2f}",
           f"loss+grad out= {median_ms(loss_grad):.2f}", f"optax {median_ms(optax_loss):.2f}"]
    for gap in (0.0, 0.002, 0.005, 0.010, 0.020):
        row.append(f"optax {gap * 1e3:.0f} ms after nbxent {median_ms(optax_loss, loss, gap):.2f}")
    print(" | ".join(row), flush=True)
