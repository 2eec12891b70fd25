"""nbxent: fast, numerically stable softmax cross-entropy and its gradient.

NumPy arrays run on Numba CPU kernels; CuPy (and any ``__cuda_array_interface__``)
arrays run on numba-cuda GPU kernels. See ``nbxent.cross_entropy``.
"""

from ._dispatch import backend_of
from .allocator import keep_freed_memory
from .api import (conditional_entropy, cross_entropy, cross_entropy_grad,
                  cross_entropy_with_grad, entropy, kl_divergence, kl_divergence_grad,
                  kl_divergence_with_grad, log_softmax, logsumexp, mean_denominator, softmax)
from .linear import linear_cross_entropy, linear_cross_entropy_with_grad

__version__ = "0.1.0"

__all__ = ["cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad", "logsumexp",
           "log_softmax", "softmax", "entropy", "conditional_entropy", "kl_divergence",
           "kl_divergence_grad", "kl_divergence_with_grad", "linear_cross_entropy",
           "linear_cross_entropy_with_grad", "backend_of", "mean_denominator",
           "keep_freed_memory", "__version__"]
