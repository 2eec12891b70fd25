"""Encodings shared by the compile-time variants of the CPU and the CUDA kernels."""

from enum import IntEnum


class TargetKind(IntEnum):
    """What a row's target is.

    An integer, so a kernel factory can compare it as a plain constant;
    ``kind.name.lower()`` ("none", "index", "prob") is its readable form.
    """
    NONE = 0    # no target: logsumexp, log_softmax, softmax, entropy
    INDEX = 1   # a class index per row
    PROB = 2    # a distribution over the classes per row
