"""A pytest plugin that logs each CPU kernel variant a test process asks for first, with
the test asking: how many kernels the suite compiles, and which tests alone need one.

    PYTHONPATH=benchmarks/results NUMBA_ENABLE_CUDASIM=1 python -m pytest -n auto \\
        -p variant_log -q
    cat /tmp/variants-*.txt | cut -f1 | sort -u | wc -l    # distinct variants

Each worker writes ``/tmp/variants-<pid>.txt``: one line per variant, its repr and the
test (``PYTEST_CURRENT_TEST``), tab-separated. (Tests run in subprocesses are not seen.)
"""

import os

import nbxent.cpu.backend as backend
import nbxent.cpu.kernels as kernels

_seen = set()
_kernel_for = kernels.kernel_for
_path = f"/tmp/variants-{os.getpid()}.txt"


def kernel_for(variant):
    """``kernels.kernel_for``, logging a variant's first request."""
    if variant not in _seen:
        _seen.add(variant)
        with open(_path, "a") as log:
            log.write(f"{variant!r}\t{os.environ.get('PYTEST_CURRENT_TEST', '?')}\n")
    return _kernel_for(variant)


kernels.kernel_for = kernel_for
backend.kernel_for = kernel_for
