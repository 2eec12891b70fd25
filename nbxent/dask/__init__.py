"""The Dask backend (``pip install 'nbxent[dask]'``): nbxent's functions on Dask arrays.

Nothing to import from here: pass Dask arrays to ``nbxent.cross_entropy`` and
the other public functions, and the dispatcher picks this backend. See
``nbxent.dask.backend`` for the graphs and ``nbxent.dask.partials`` for the
per-chunk math.
"""
