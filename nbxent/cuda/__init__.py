"""The CUDA backend of nbxent (numba-cuda kernels for CuPy and Numba device arrays).

``backend`` is what the dispatcher imports; ``kernels`` holds the ``@cuda.jit``
kernel factories and their ``VARIANTS``; ``arrays`` the caller's kind and
stream; ``_sim`` every difference of the CUDA simulator; ``config`` the tunables.
Importing this package imports neither numba.cuda nor CuPy.
"""
