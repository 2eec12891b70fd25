"""Write the golden files: what PyTorch, SciPy and optax compute on their own test inputs.

``tests/test_golden.py`` checks nbxent (and its NumPy oracle) against these files
with NumPy alone, so CI needs neither PyTorch nor JAX nor SciPy. This script needs
all of them and never imports nbxent.

Regenerate (from the repository root; a virtual environment outside the checkout)::

    python3 -m venv /tmp/golden-venv && . /tmp/golden-venv/bin/activate
    pip install torch==2.13.0        # first, and a CPU build (a local CPU wheel will do)
    pip install scipy jax jaxlib optax numpy expecttest
    python tests/golden/make_golden.py

(torch first, so that nothing installed after it pulls another torch version;
``torch.testing._internal`` needs ``expecttest``). Each file records the versions it was made with,
and the script prints them.

Files written (compressed ``.npz``; arrays under ``"<case id>/<name>"`` keys, and a
``meta`` JSON string describing every case and the versions):

- ``torch_cross_entropy.npz``: PyTorch's own test inputs for cross-entropy, in float64
  on the CPU: every ``ModuleInput`` of ``torch.nn.CrossEntropyLoss`` in
  ``torch.testing._internal.common_modules.module_db`` (no-batch-dim 1-D logits with
  a 0-d target, 2-D to 6-D logits with classes on dim 1, index and probability
  targets, class weights, ignore_index, label smoothing, each reduction; the module
  has no training-dependent behaviour and ``training=True`` and ``False`` yield the
  same cases, so they are stored once), and every ``SampleInput`` of
  ``nn.functional.cross_entropy`` in ``common_methods_invocations.op_db`` (which adds
  unnormalised probability targets and negative class weights). Stored per case: the
  logits, target, weight, ignore_index, reduction, label_smoothing, the loss, the
  upstream gradient used (1.0 for a scalar loss, a seeded random array of the loss's
  shape for ``reduction='none'``) and d(loss)/d(logits) times that upstream.
- ``torch_normalizers.npz``: the op_db samples of ``log_softmax``, ``softmax`` and
  ``logsumexp`` (float64, CPU): input, dim, keepdim, result, and the vector-Jacobian
  product with a stored seeded upstream. Skipped, since nbxent's API cannot express
  them: the ``with_dtype`` variants (a ``dtype=`` keyword; in float64 they repeat the
  plain samples), 0-d inputs (nbxent needs a class axis), the ``(5, 0, 0)`` sample
  (zero classes: nbxent raises ValueError, torch returns an empty result) and
  ``logsumexp`` over several dims at once. ``keepdim=True`` is stored and the test
  reshapes.
- ``special_values.npz``: rows holding +inf, -inf, all -inf, nan, equal huge values
  (1e300, 1e308, the float max) and mixes, in float64 and float32, with
  ``scipy.special.logsumexp / softmax / log_softmax``, ``scipy.stats.entropy`` of
  the softmax probabilities, and PyTorch's ``logsumexp / softmax / log_softmax`` and
  entropy ``torch.special.entr(softmax(x)).sum()``, each computed in the row's dtype;
  the rows where SciPy and PyTorch differ are listed in ``meta``.
- ``optax_cross_entropy.npz``: ``optax.softmax_cross_entropy`` (probability labels)
  and ``optax.softmax_cross_entropy_with_integer_labels`` on the inputs of optax's own
  tests (``optax/losses/_classification_test.py``: the ``ys``/``ts`` arrays, the -inf
  rows of its safe-softmax test, the ``[4, 5, 6]`` arrays of its axis tests with axis
  0, 1 and 2) plus a few cases of ours (large logits, more classes), in float32 and
  float64 (``jax_enable_x64``): per-example losses and the vjp with a stored seeded
  upstream. Skipped: optax's ``where=`` masks and class axes spread over several
  dims (nbxent has neither). PyTorch's answer for the same case is stored beside it.
"""

import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
SEED = 20240611


def versions():
    import jax
    import optax
    import scipy
    import torch
    return {"torch": torch.__version__, "scipy": scipy.__version__, "jax": jax.__version__,
            "optax": optax.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}


def save(name, cases, arrays, extra=None):
    meta = {"versions": versions(), "cases": cases, **(extra or {})}
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["meta"] = np.array(json.dumps(meta, sort_keys=True))
    path = HERE / name
    np.savez_compressed(path, **payload)
    print(f"{path.relative_to(HERE.parent.parent)}: {len(cases)} cases, "
          f"{path.stat().st_size / 1024:.1f} KiB")


def _upstream(rng, shape):
    """1.0 for a scalar loss, a seeded random array for an array-valued one."""
    return np.float64(1.0) if shape == () else rng.uniform(-1.5, 1.5, shape)


# ------------------------------------------------------------ PyTorch: cross-entropy

def torch_cross_entropy():
    import torch
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db

    rng = np.random.default_rng(SEED)
    cases, arrays = [], {}

    def record(case_id, source, logits, target, kwargs):
        kwargs = dict(kwargs)
        weight = kwargs.pop("weight", None)
        reduction = kwargs.pop("reduction", "mean")
        ignore_index = int(kwargs.pop("ignore_index", -100))
        label_smoothing = float(kwargs.pop("label_smoothing", 0.0))
        assert not kwargs, kwargs
        x = logits.detach().clone().requires_grad_(True)
        t = target.detach().clone()
        w = None if weight is None else weight.detach().clone()
        loss = torch.nn.functional.cross_entropy(
            x, t, weight=w, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing)
        go = _upstream(rng, tuple(loss.shape))
        loss.backward(torch.tensor(go))
        axis = 1 if x.ndim >= 2 else 0
        cases.append(dict(id=case_id, source=source, shape=list(x.shape), axis=axis,
                          reduction=reduction, ignore_index=ignore_index,
                          label_smoothing=label_smoothing, weighted=w is not None,
                          target=("index" if not t.is_floating_point() else "probability")))
        arrays[f"{case_id}/logits"] = x.detach().numpy()
        arrays[f"{case_id}/target"] = t.numpy()
        if w is not None:
            arrays[f"{case_id}/weight"] = w.numpy()
        arrays[f"{case_id}/loss"] = loss.detach().numpy()
        arrays[f"{case_id}/grad_output"] = go
        arrays[f"{case_id}/grad"] = x.grad.numpy()

    info = next(m for m in module_db if m.module_cls is torch.nn.CrossEntropyLoss)
    inputs = {}
    for training in (True, False):
        torch.manual_seed(SEED)
        got = info.module_inputs_func(info, device="cpu", dtype=torch.float64,
                                      requires_grad=True, training=training)
        inputs[training] = got
    assert [m.desc for m in inputs[True]] == [m.desc for m in inputs[False]]
    for m in inputs[True]:
        logits, target = m.forward_input.args
        record(f"module-{m.desc}", "module_db", logits, target, m.constructor_input.kwargs)

    op = next(o for o in op_db if o.name == "nn.functional.cross_entropy")
    torch.manual_seed(SEED)
    for i, s in enumerate(op.sample_inputs("cpu", torch.float64, requires_grad=True)):
        record(f"op-{i:02d}", "op_db", s.input, s.args[0], s.kwargs)
    save("torch_cross_entropy.npz", cases, arrays)
    return cases


# ------------------------------------------------------------ PyTorch: normalisers

def torch_normalizers():
    import torch
    from torch.testing._internal.common_methods_invocations import op_db

    rng = np.random.default_rng(SEED + 1)
    cases, arrays, skipped = [], {}, []
    for name in ("log_softmax", "softmax", "logsumexp"):
        op = next(o for o in op_db if o.name == name and o.variant_test_name == "")
        torch.manual_seed(SEED)
        for i, s in enumerate(op.sample_inputs("cpu", torch.float64, requires_grad=True)):
            case_id = f"{name}-{i:02d}"
            if name == "logsumexp":
                dims, keepdim = s.args
                if len(dims) != 1:
                    skipped.append(f"{case_id}: dims {dims} (several dims at once)")
                    continue
                dim = dims[0]
            else:
                (dim,), keepdim = s.args, False
            if s.kwargs:
                skipped.append(f"{case_id}: keywords {s.kwargs}")
                continue
            if s.input.ndim == 0:
                skipped.append(f"{case_id}: 0-d input")
                continue
            if s.input.shape[dim] == 0:
                skipped.append(f"{case_id}: zero classes, shape {tuple(s.input.shape)}")
                continue
            x = s.input.detach().clone().requires_grad_(True)
            fn = getattr(torch, name)
            result = fn(x, dim, keepdim) if name == "logsumexp" else fn(x, dim)
            go = rng.uniform(-1.5, 1.5, tuple(result.shape))
            result.backward(torch.tensor(go))
            cases.append(dict(id=case_id, op=name, shape=list(x.shape), dim=int(dim),
                              keepdim=bool(keepdim)))
            arrays[f"{case_id}/input"] = x.detach().numpy()
            arrays[f"{case_id}/result"] = result.detach().numpy()
            arrays[f"{case_id}/grad_output"] = go
            arrays[f"{case_id}/grad"] = x.grad.numpy()
    print("  skipped op_db samples:", *skipped, sep="\n    ")
    save("torch_normalizers.npz", cases, arrays, {"skipped": skipped})
    return cases


# ------------------------------------------------------------ SciPy vs PyTorch, special values

def special_rows(dtype):
    """(id, row) pairs of 4 classes each, for ``dtype``."""
    inf, nan = np.inf, np.nan
    big = np.finfo(dtype).max
    rows = [
        ("plain", [0.5, -1.0, 2.0, 0.0]),
        ("+inf_one", [inf, 0.0, 1.0, 2.0]),
        ("+inf_two", [inf, inf, 0.0, 1.0]),
        ("+inf_all", [inf, inf, inf, inf]),
        ("-inf_one", [-inf, 0.0, 1.0, 2.0]),
        ("-inf_all_but_one", [-inf, -inf, 3.0, -inf]),
        ("-inf_all", [-inf, -inf, -inf, -inf]),
        ("+inf_and_-inf", [inf, -inf, 0.0, 1.0]),
        ("nan_one", [nan, 0.0, 1.0, 2.0]),
        ("nan_all", [nan, nan, nan, nan]),
        ("nan_and_+inf", [nan, inf, 0.0, 1.0]),
        ("nan_and_-inf", [nan, -inf, 0.0, 1.0]),
        ("max_all", [big, big, big, big]),
        ("max_one", [big, 0.0, 1.0, 2.0]),
        ("max_and_-max", [big, -big, 0.0, 1.0]),
        ("-max_all", [-big, -big, -big, -big]),
        ("max_and_+inf", [big, inf, 0.0, 1.0]),
        ("max_and_-inf", [big, big, -inf, 0.0]),
    ]
    if dtype == np.float64:
        rows += [("1e300_all", [1e300] * 4), ("1e308_all", [1e308] * 4),
                 ("1e308_two", [1e308, 1e308, 0.0, -1e308]),
                 ("-1e300_all", [-1e300] * 4), ("1e300_and_1e300+", [1e300, 1.0000001e300, 0, 0])]
    else:
        rows += [("1e38_all", [1e38] * 4), ("3e38_all", [3e38] * 4),
                 ("3e38_two", [3e38, 3e38, 0.0, -3e38]),
                 ("-1e38_all", [-1e38] * 4), ("1e38_and_1e38+", [1e38, 1.0001e38, 0, 0])]
    return [(rid, np.array(row, dtype)) for rid, row in rows]


def special_values():
    import scipy.special
    import scipy.stats
    import torch

    cases, arrays, differ = [], {}, []
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        ids, rows = zip(*special_rows(dtype))
        x = np.stack(rows)
        t = torch.tensor(x)
        with np.errstate(all="ignore"):
            p_scipy = scipy.special.softmax(x, axis=-1)
            sp = {"logsumexp": scipy.special.logsumexp(x, axis=-1),
                  "softmax": p_scipy,
                  "log_softmax": scipy.special.log_softmax(x, axis=-1),
                  "entropy": scipy.stats.entropy(p_scipy, axis=-1)}
        th = {"logsumexp": torch.logsumexp(t, -1).numpy(),
              "softmax": torch.softmax(t, -1).numpy(),
              "log_softmax": torch.log_softmax(t, -1).numpy(),
              "entropy": torch.special.entr(torch.softmax(t, -1)).sum(-1).numpy()}
        arrays[f"{name}/input"] = x
        for fn in sp:
            arrays[f"{name}/scipy/{fn}"] = np.asarray(sp[fn], dtype)
            arrays[f"{name}/torch/{fn}"] = np.asarray(th[fn], dtype)
            a, b = np.asarray(sp[fn], np.float64), np.asarray(th[fn], np.float64)
            if a.ndim == 1:
                a, b = a[:, None], b[:, None]
            tol = 1e-12 if dtype == np.float64 else 1e-5
            with np.errstate(all="ignore"):
                same = ((np.isnan(a) & np.isnan(b)) | (a == b)
                        | (np.isfinite(a) & np.isfinite(b)
                           & (np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b)))))
            for r in np.flatnonzero(~same.all(axis=-1)):
                differ.append(dict(dtype=name, row=ids[r], function=fn,
                                   input=[float(v) for v in x[r]],
                                   scipy=[float(v) for v in np.atleast_1d(sp[fn][r])],
                                   torch=[float(v) for v in np.atleast_1d(th[fn][r])]))
        cases.append(dict(dtype=name, rows=list(ids)))
    print("  SciPy and PyTorch differ on:")
    for d in differ:
        print(f"    {d['dtype']} {d['row']} {d['function']}: input {d['input']}"
              f" scipy {d['scipy']} torch {d['torch']}")
    save("special_values.npz", cases, arrays, {"differ": differ})
    return cases


# ------------------------------------------------------------ optax

def optax_cases():
    """(id, logits, labels, axis) on the inputs of optax's classification tests + ours."""
    inf = np.inf
    rng = np.random.default_rng(SEED + 2)
    # SoftmaxCrossEntropyTest / SoftmaxCrossEntropyWithIntegerLabelsTest.setUp
    ys = np.array([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2]], dtype=np.float32)
    ts = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    ts_int = np.array([1, 0], dtype=np.int32)
    # SafeSoftmaxCrossEntropyTest.setUp
    safe_ys = np.array([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2], [-inf, 0.0, 0.0],
                        [-inf, 0.0, 0.0], [-inf, 0.0, -inf]], dtype=np.float32)
    safe_ts = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5],
                        [0.4, 0.3, 0.3], [0.0, 1.0, 0.0]], dtype=np.float32)
    out = [
        ("optax-ys-ts", ys, ts, -1),
        ("optax-ys0-ts0", ys[0], ts[0], -1),
        ("optax-ys-int", ys, ts_int, -1),
        ("optax-ys0-int0", ys[0], ts_int[0], -1),
        ("optax-safe-ys-ts", safe_ys, safe_ts, -1),
        ("optax-safe-ys-int", safe_ys, np.array([1, 0, 1, 2, 1], np.int32), -1),
    ]
    # test_axis of both classes: shape [4, 5, 6], axis 0, 1, 2 (their arrays are unseeded)
    shape = [4, 5, 6]
    for axis in (0, 1, 2):
        preds = rng.normal(size=shape)
        probs = np.moveaxis(rng.dirichlet(np.ones(shape[axis]),
                                          size=shape[:axis] + shape[axis + 1:]), -1, axis)
        labels = rng.integers(shape[axis], size=shape[:axis] + shape[axis + 1:])
        out.append((f"optax-axis{axis}-probs", preds, probs, axis))
        out.append((f"optax-axis{axis}-int", preds, labels, axis))
    # ours: wide rows, large and very negative logits, smoothed labels, one class
    wide = rng.normal(0, 4, (7, 37))
    out.append(("ours-wide-int", wide, rng.integers(0, 37, 7), -1))
    out.append(("ours-wide-smoothed", wide, 0.9 * np.eye(37)[rng.integers(0, 37, 7)] + 0.1 / 37,
                -1))
    large = np.array([[1e4, 0.0, -1e4], [3e4, 3e4 - 1, 3e4 + 2], [-1e4, -1e4 - 5, -1e4 + 3]])
    out.append(("ours-large-int", large, np.array([2, 0, 1]), -1))
    out.append(("ours-large-probs", large, np.array([[0.2, 0.3, 0.5], [1, 0, 0], [0, 0.5, 0.5]]),
                -1))
    out.append(("ours-one-class-int", rng.normal(0, 1, (3, 1)), np.array([0, 0, 0]), -1))
    return out


def optax_cross_entropy():
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    import jax.numpy as jnp
    import optax
    import torch

    rng = np.random.default_rng(SEED + 3)
    cases, arrays, differ = [], {}, []
    for dtype in (np.float32, np.float64):
        for base_id, logits, labels, axis in optax_cases():
            case_id = f"{np.dtype(dtype).name}-{base_id}"
            x = np.asarray(logits, dtype)
            is_index = np.issubdtype(np.asarray(labels).dtype, np.integer)
            lab = np.asarray(labels, np.int32 if is_index else dtype)
            optax_fn = (optax.softmax_cross_entropy_with_integer_labels if is_index
                        else optax.softmax_cross_entropy)
            loss, vjp = jax.vjp(lambda z: optax_fn(z, jnp.asarray(lab), axis=axis),
                                jnp.asarray(x))
            loss = np.asarray(loss)
            go = rng.uniform(-1.5, 1.5, loss.shape).astype(dtype)
            (grad,) = vjp(jnp.asarray(go))
            grad = np.asarray(grad)
            # PyTorch's answer for the same case (classes on dim 1, or 0 for one row).
            cdim = 1 if x.ndim >= 2 else 0
            tx = torch.tensor(np.moveaxis(x, axis, cdim), requires_grad=True)
            tt = torch.tensor(lab.astype(np.int64) if is_index else np.moveaxis(lab, axis, cdim))
            tloss = torch.nn.functional.cross_entropy(tx, tt, reduction="none")
            tloss.backward(torch.tensor(go))
            tgrad = np.moveaxis(tx.grad.numpy(), cdim, axis)
            tloss = tloss.detach().numpy()
            cases.append(dict(id=case_id, dtype=np.dtype(dtype).name, axis=axis,
                              shape=list(x.shape),
                              target="index" if is_index else "probability",
                              fn=("softmax_cross_entropy_with_integer_labels" if is_index
                                  else "softmax_cross_entropy")))
            for k, v in (("logits", x), ("labels", lab), ("loss", loss), ("grad_output", go),
                         ("grad", grad), ("torch_loss", tloss), ("torch_grad", tgrad)):
                arrays[f"{case_id}/{k}"] = v
            tol = 1e-5 if dtype == np.float32 else 1e-12
            for what, a, b in (("loss", loss, tloss), ("grad", grad, tgrad)):
                with np.errstate(all="ignore"):
                    same = ((np.isnan(a) & np.isnan(b)) | (a == b)
                            | (np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b))))
                if not same.all():
                    differ.append(dict(id=case_id, what=what,
                                       optax=np.asarray(a, np.float64).tolist(),
                                       torch=np.asarray(b, np.float64).tolist()))
    print("  optax and PyTorch differ on:")
    for d in differ:
        print(f"    {d['id']} {d['what']}: optax {d['optax']} torch {d['torch']}")
    save("optax_cross_entropy.npz", cases, arrays, {"differ": differ})
    return cases


def main():
    print("versions:", json.dumps(versions()))
    torch_cross_entropy()
    torch_normalizers()
    special_values()
    optax_cross_entropy()
    total = sum(p.stat().st_size for p in HERE.glob("*.npz"))
    print(f"total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
