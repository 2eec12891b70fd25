"""Entropy in any base, conditional entropy, KL divergence: no kernel of their own.

Every measure here runs kernels that the cross-entropy and the normalisations already
compile, and finishes with array arithmetic in the backend's array module (NumPy, CuPy,
Dask; NumPy on the host for Numba device arrays), as ``nbxent._training`` does:

- entropy in base b: the entropy kernel's nats times 1 / log b; with sample weights (or
  ``empty=``) the kernel's per-row entropies are weighted and reduced by
  ``nbxent._training``, every row counting as for probability targets;
- conditional entropy H(Y|X) = sum_r s_r H_r / sum_r s_r: the entropy under 'mean' with
  sample weights s;
- KL(p || softmax(x)) per row = CE_r(x, p) + sum_c w_c p_c log p_c (0 log 0 = 0), CE_r the
  probability-target cross-entropy with class weights w. The second term does not depend
  on the logits, so the gradient is the cross-entropy's: the fused pass gives it and CE_r,
  and the target term is added to each row before ``nbxent._training`` weights and
  reduces them. With ``log_target`` the target holds log-probabilities (or any logits):
  p = exp(log_softmax(target)), one run of the log_softmax kernel.
"""

import math
from dataclasses import replace

import numpy as np

from . import _training
from ._plan import make_normalize_plan


def entropy(module, plan, *, base, sample_weight, empty):
    """The entropy of a checked ``entropy`` plan in ``base`` (None: nats)."""
    if _training.wanted(sample_weight, None, empty, plan.reduction):
        def run(z_loss, scale, fresh_out):
            return module.normalize(replace(plan, reduction="none")), None

        result, _ = _training.weighted_loss(module, plan, run, sample_weight=sample_weight,
                                            denominator=None, empty=empty, grad_output=1.0)
    else:
        result = module.normalize(plan)
    if base is None:
        return result
    xp = module.namespace_of(result)
    scaled = module.to_namespace(result).astype(xp.float64) * (1.0 / math.log(base))
    return module.from_namespace(xp.asarray(scaled, dtype=plan.logits.loss_dtype), result)


def _p_log_p(xp, p, log_p):
    """p log p elementwise: 0 where p == 0, nan where p < 0 or p is nan."""
    return xp.where(p > 0, p * log_p, xp.where(p == 0, 0.0, np.nan))


def kl_target(module, plan, *, log_target, want_terms):
    """(p, terms) for a checked KL divergence ``plan`` whose target is the caller's.

    ``p``: the probabilities the cross-entropy takes as its target, in the backend's kind
    (the target itself, or exp(log_softmax(target)) in the target's dtype, float32 for
    float16). ``terms``: each row's sum_c w_c p_c log p_c in float64, an array of
    ``namespace_of``'s module of the rows' shape, or None unless ``want_terms``.
    """
    logits, options = plan.logits, plan.loss
    like = logits.view.array
    xp = module.namespace_of(like)
    host = module.to_namespace
    target = options.target.array
    log_p = None
    if log_target:
        if target.dtype == np.float16:  # float16 log-probabilities would round p to 5e-4
            target = module.from_namespace(host(target).astype(xp.float32), like)
        log_p = host(module.normalize(make_normalize_plan(
            "log_softmax", target, axis=logits.axis, copy_contiguous=module.copy_contiguous,
            stream=plan.stream)))
        p_host = xp.exp(log_p)
        p = module.from_namespace(p_host, like)
    else:
        p, p_host = target, host(target)
    if not want_terms:
        return p, None
    weight = None if options.weight is None else host(options.weight.array).astype(xp.float64)
    return p, _target_terms(xp, p_host, log_p, weight, logits.axis)


# Elements of the target taken at a time for its terms: each float64 temporary of the
# arithmetic is 32 MiB, whatever the size of the target.
_BLOCK_ELEMENTS = 1 << 22


def _target_terms(xp, p, log_p, weight, axis):
    """sum_c w_c p_c log p_c per row in float64 (``log_p``: the target's log-probabilities,
    or None to take them from ``p``), over blocks of rows so that the temporaries stay
    bounded; the rows' shape, in ``xp``'s kind."""
    axis %= p.ndim
    if p.ndim == 1 or p.size <= _BLOCK_ELEMENTS:
        return _block_terms(xp, p, log_p, weight, axis)
    split = 1 if axis == 0 else 0  # a rows' axis: blocks along it hold whole rows
    step = max(1, _BLOCK_ELEMENTS // (p.size // p.shape[split]))
    parts = []
    for start in range(0, p.shape[split], step):
        block = (slice(None),) * split + (slice(start, start + step),)
        parts.append(_block_terms(xp, p[block], None if log_p is None else log_p[block],
                                  weight, axis))
    return xp.concatenate(parts, axis=split if split < axis else split - 1)


def _block_terms(xp, p, log_p, weight, axis):
    p64 = p.astype(xp.float64)
    if log_p is None:
        log_p = xp.log(xp.where(p64 > 0, p64, 1.0))
    terms = _p_log_p(xp, p64, log_p.astype(xp.float64))
    if weight is not None:
        terms = terms * weight.reshape((-1,) + (1,) * (p.ndim - axis - 1))
    return terms.sum(axis=axis)
