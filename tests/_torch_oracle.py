"""PyTorch's loss and gradient in float64, in nbxent's layout: the tests' torch oracle.

Imported by the tests that cross-check against PyTorch (after they skip where torch is
missing) and by benchmarks/torch_fuzz.py; it has no other side effects.
"""

import numpy as np
import torch

F = torch.nn.functional
F64 = np.float64


def _torch_class_dim(ndim):
    return 1 if ndim >= 2 else 0


def _to_torch_layout(x, axis):
    return np.moveaxis(np.asarray(x, F64), axis, _torch_class_dim(np.ndim(x)))


def torch_loss_and_grad(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                        reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                        grad_output=1.0):
    """(loss, d loss/d logits * grad_output) from torch in float64, in nbxent's layout."""
    ndim = logits.ndim
    cdim = _torch_class_dim(ndim)
    x = torch.tensor(_to_torch_layout(logits, axis), requires_grad=True)
    xc = x if softcap is None else softcap * torch.tanh(x / softcap)
    target = np.asarray(target)
    is_index = np.issubdtype(target.dtype, np.integer)
    if is_index:
        t = torch.tensor(target.astype(np.int64))
        valid = t != ignore_index
    else:
        t = torch.tensor(_to_torch_layout(target, axis))
        valid = torch.ones(t.sum(cdim).shape, dtype=torch.bool)
    w = None if weight is None else torch.tensor(np.asarray(weight, F64))
    loss = F.cross_entropy(xc, t, weight=w, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if z_loss:
        lse = torch.logsumexp(xc, dim=cdim)
        z_rows = torch.where(valid, lse, torch.zeros_like(lse)) ** 2
        if reduction == "none":
            loss = loss + z_loss * z_rows
        elif reduction == "sum":
            loss = loss + z_loss * z_rows.sum()
        else:
            loss = loss + z_loss * z_rows.sum() / valid.sum()
    go = torch.tensor(np.broadcast_to(np.asarray(grad_output, F64), tuple(loss.shape)).copy())
    loss.backward(go)
    grad = np.moveaxis(x.grad.numpy(), cdim, axis)
    return loss.detach().numpy(), grad
