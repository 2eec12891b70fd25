"""Score logits that do not fit in a worker's memory: a .npy file on disk, a LocalCluster, nbxent.

    pip install -e '.[dask]'
    python benchmarks/dask_out_of_core.py                      # 2 GiB of float32 logits
    python benchmarks/dask_out_of_core.py --rows 131072 --memory-limit 400MiB
    python benchmarks/dask_out_of_core.py --scheduler tcp://scheduler:8786 --dir /shared/tmp

Writes random logits (N x C float32) and int64 targets as .npy files, then
starts two single-threaded worker processes whose memory limit (512 MiB: a
worker with Numba loaded holds about 200 MiB before any data) is a quarter of
the logits' size. Each task opens the .npy file as a memmap *by path* in
the worker and reads only its rows, so the graph holds file names, not data,
and no worker ever holds more than a few chunks. The loss (mean over rows, and
the per-row losses reduced to their max) is computed with nbxent's kernels on
every chunk; the first chunk is checked against nbxent in memory. Prints the
throughput. With --scheduler it uses that cluster instead (the directory must
then be one every worker can read).
"""

import argparse
import os
import tempfile
import time

import dask.array as da
import distributed
import numpy as np

import nbxent


def write_inputs(directory, n_rows, n_classes, rows_per_write=16384):
    """Random logits and targets as .npy files, written a slab at a time (never all in memory)."""
    rng = np.random.default_rng(0)
    logits_path = os.path.join(directory, "logits.npy")
    target_path = os.path.join(directory, "target.npy")
    logits = np.lib.format.open_memmap(logits_path, mode="w+", dtype=np.float32,
                                       shape=(n_rows, n_classes))
    for start in range(0, n_rows, rows_per_write):
        stop = min(start + rows_per_write, n_rows)
        logits[start:stop] = rng.standard_normal((stop - start, n_classes), dtype=np.float32)
    logits.flush()
    del logits
    np.save(target_path, rng.integers(0, n_classes, n_rows))
    return logits_path, target_path


def read_rows(path, block_info=None):
    """The rows of the .npy file at ``path`` that this block covers, read in the worker."""
    where = tuple(slice(*bounds) for bounds in block_info[None]["array-location"])
    return np.array(np.load(path, mmap_mode="r")[where])


def on_disk(path, chunk_rows):
    """A Dask array over a .npy file: each chunk opens the file by path and reads its rows."""
    header = np.load(path, mmap_mode="r")
    shape, dtype = header.shape, header.dtype
    del header
    chunks = ((chunk_rows,) * (shape[0] // chunk_rows)
              + ((shape[0] % chunk_rows,) if shape[0] % chunk_rows else ()),) + tuple(
                  (n,) for n in shape[1:])
    return da.map_blocks(read_rows, path, chunks=chunks, dtype=dtype,
                         meta=np.empty((0,) * len(shape), dtype))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=524288, help="N (default 524288)")
    parser.add_argument("--classes", type=int, default=1024, help="C (default 1024)")
    parser.add_argument("--chunk-rows", type=int, default=8192,
                        help="rows per chunk (default 8192: 32 MiB of float32 at C=1024)")
    parser.add_argument("--memory-limit", default="512MiB",
                        help="memory limit of each local worker (default 512MiB)")
    parser.add_argument("--scheduler", help="address of an existing scheduler, e.g. "
                        "tcp://scheduler:8786 (default: start a LocalCluster)")
    parser.add_argument("--dir", help="where to write the .npy files (default: a temporary "
                        "directory, removed afterwards)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        start = time.perf_counter()
        logits_path, target_path = write_inputs(directory, args.rows, args.classes)
        size = os.path.getsize(logits_path)
        print(f"wrote {size / 2**30:.2f} GiB of logits ({args.rows} x {args.classes} float32) "
              f"to {logits_path} in {time.perf_counter() - start:.1f} s")

        if args.scheduler:
            client = distributed.Client(args.scheduler)
        else:
            cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                               processes=True, host="127.0.0.1",
                                               dashboard_address=None,
                                               memory_limit=args.memory_limit)
            client = distributed.Client(cluster)
        with client:
            workers = client.scheduler_info()["workers"].values()
            limit = min(w["memory_limit"] for w in workers)
            print(f"{len(workers)} workers, memory limit {limit / 2**20:.0f} MiB or more each: "
                  f"the logits are {size / limit:.1f}x one worker's limit")

            logits = on_disk(logits_path, args.chunk_rows)
            target = on_disk(target_path, args.chunk_rows)
            per_row = nbxent.cross_entropy(logits, target, reduction="none")
            lazy = [nbxent.cross_entropy(logits, target), per_row.max()]

            first = np.load(logits_path, mmap_mode="r")[:args.chunk_rows]
            first_target = np.load(target_path)[:args.chunk_rows]
            expected = nbxent.cross_entropy(np.array(first), first_target, reduction="none")
            np.testing.assert_allclose(per_row[:args.chunk_rows].compute(), expected,
                                       rtol=1e-6, atol=1e-6)

            start = time.perf_counter()
            mean, worst = client.compute(lazy, sync=True)
            seconds = time.perf_counter() - start
            print(f"mean loss {float(mean):.6f}, largest row loss {float(worst):.4f}")
            print(f"scored {args.rows} rows in {seconds:.2f} s: "
                  f"{args.rows / seconds / 1e6:.3f} Mrows/s, {size / seconds / 1e9:.2f} GB/s "
                  f"of logits read from disk (page cache permitting)")


if __name__ == "__main__":
    main()
