"""Optional cross-check of nbxent itself (every backend) against PyTorch on the
options they share. torch computes in float64 from the very values nbxent got.
Skipped when torch is not installed."""

import numpy as np
import pytest

import nbxent

from _cases import DTYPE_PARAMS, make_index_target, make_logits, make_prob_target
from conftest import assert_close

torch = pytest.importorskip("torch")

from _torch_oracle import torch_loss_and_grad  # noqa: E402 (needs torch)

CASES = [
    pytest.param((17, 10), -1, id="rows"),
    pytest.param((2, 5, 3, 4), 1, id="nchw"),
    pytest.param((6, 9), 0, id="axis0"),
    pytest.param((3, 1000), -1, id="3x1000"),
]


def _on(backend, x):
    return None if x is None else backend.to_backend(x)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("form", ["index", "uint8-255", "prob"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape,axis", CASES)
def test_nbxent_matches_torch(backend, rng, shape, axis, dtype, weighted, form,
                              label_smoothing, reduction):
    if backend.small and max(shape) > 70:
        pytest.skip("too large for the simulator")
    logits = make_logits(rng, shape, dtype)
    ignore_index = 255 if form == "uint8-255" else -100
    if form == "prob":
        target = make_prob_target(rng, shape, axis).astype(dtype)
    else:
        target = make_index_target(rng, shape, axis, ignore_index=ignore_index, ignored=0.25,
                                   dtype=np.uint8 if form == "uint8-255" else np.int64)
    weight = rng.uniform(0.3, 2.0, shape[axis]) if weighted else None
    options = dict(axis=axis, weight=weight, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing)
    loss_shape = tuple(np.delete(np.array(shape), axis % len(shape)))
    grad_output = rng.uniform(-1, 1, loss_shape) if reduction == "none" else 0.5
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, grad_output=grad_output,
                                                       **options)
    device_options = {**options, "weight": _on(backend, weight)}
    go = backend.to_backend(grad_output) if reduction == "none" else grad_output
    loss, grad = nbxent.cross_entropy_with_grad(backend.to_backend(logits),
                                                backend.to_backend(target),
                                                grad_output=go, **device_options)
    assert_close(backend.to_numpy(loss), expected_loss, dtype, "loss")
    assert_close(backend.to_numpy(grad), expected_grad, dtype, "grad")


@pytest.mark.parametrize("extra", [dict(z_loss=1e-2), dict(softcap=5.0),
                                   dict(z_loss=1e-3, softcap=10.0)],
                         ids=["z_loss", "softcap", "both"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_nbxent_z_loss_and_softcap_match_torch_composites(backend, rng, dtype, extra):
    logits = make_logits(rng, (13, 11), dtype, scale=6.0)
    target = make_index_target(rng, (13, 11), -1, ignored=0.2)
    options = dict(label_smoothing=0.1, reduction="mean", **extra)
    expected_loss, expected_grad = torch_loss_and_grad(logits, target, **options)
    loss, grad = nbxent.cross_entropy_with_grad(backend.to_backend(logits),
                                                backend.to_backend(target), **options)
    assert_close(backend.to_numpy(loss), expected_loss, dtype, "loss")
    assert_close(backend.to_numpy(grad), expected_grad, dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_nbxent_normalizers_match_torch(backend, rng, dtype):
    x = make_logits(rng, (4, 7, 5), dtype)
    x[0, :, 0] = -np.inf
    x[1, 2, 1] = -np.inf
    t = torch.tensor(x.astype(np.float64))
    xd = backend.to_backend(x)
    assert_close(backend.to_numpy(nbxent.logsumexp(xd, axis=1)),
                 torch.logsumexp(t, 1).numpy(), dtype, "loss")
    assert_close(backend.to_numpy(nbxent.softmax(xd, axis=1)), torch.softmax(t, 1).numpy(),
                 dtype, "grad")
    tol = {np.float16: (1e-3, 1e-5), np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-12)}
    rtol, atol = tol[np.dtype(dtype).type]
    assert_close(backend.to_numpy(nbxent.log_softmax(xd, axis=1)),
                 torch.log_softmax(t, 1).numpy(), dtype, "grad", rtol=rtol, atol=atol)
    assert_close(backend.to_numpy(nbxent.entropy(xd, axis=1)),
                 torch.special.entr(torch.softmax(t, 1)).sum(1).numpy(), dtype, "loss")
