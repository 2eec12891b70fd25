"""Which vector width LLVM gives a simple float32 loop for a CPU name, with and without
``bits.vectors_at_full_width()``: the registers of its multiplies. Compile only, any x86
host with AVX-512 (the host's features, the CPU name from the environment):

    for cpu in znver4 znver5 skylake-avx512 icelake-server sapphirerapids emeraldrapids; do
        NUMBA_CPU_NAME=$cpu NUMBA_CPU_FEATURES=<host's> python vector-width-by-cpu.py; done
"""
import os
import re

import numpy as np
from numba import njit

from nbxent.cpu.bits import vectors_at_full_width


def compiled(full):
    @njit
    def scale(x, y):
        if full:
            vectors_at_full_width()
        for i in range(x.size):
            y[i] = x[i] * np.float32(2.5) + np.float32(1.0)

    x = np.ones(100, np.float32)
    scale(x, np.empty_like(x))
    return next(iter(scale.inspect_asm().values()))


for full in (False, True):
    registers = sorted(set(re.findall(r"vmulps\s.*%([xyz]mm)", compiled(full))))
    print(os.environ.get("NUMBA_CPU_NAME", "host"), "full width asked" if full else "LLVM's choice",
          registers)
