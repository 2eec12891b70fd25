import numpy as np, nbxent
from nbxent import reference as R
rng = np.random.default_rng(5)
worst = {}
for shape, axis in (((20000, 10), -1), ((20000, 32), -1), ((4000, 100), -1), ((2, 21, 64, 96), 1)):
    for scale in (1.0, 10.0, 300.0):
        for kw_name, kw in (("plain", {}), ("weight+smooth", dict(weight=rng.uniform(0.3, 3, shape[axis]), label_smoothing=0.1)), ("z", dict(z_loss=1e-3))):
            x = (rng.standard_normal(shape) * scale).astype(np.float32)
            tshape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
            t = rng.integers(0, shape[axis], tshape)
            l = nbxent.cross_entropy(x, t, axis=axis, reduction="none", **kw).astype(np.float64)
            r = R.cross_entropy(x.astype(np.float64), t, axis=axis, reduction="none", **kw)
            rel = np.abs(l - r) / np.maximum(np.abs(r), 1e-30)
            key = kw_name
            worst[key] = max(worst.get(key, 0), float(np.max(rel)))
            lm = nbxent.cross_entropy(x, t, axis=axis, **kw); rm = R.cross_entropy(x.astype(np.float64), t, axis=axis, **kw)
            worst[key + " mean"] = max(worst.get(key + " mean", 0), abs(float(lm) - rm) / abs(rm))
for k, v in worst.items():
    print(f"{k:20s} {v:.3e}")
