"""``nbxent.keep_freed_memory``: large freed blocks reused without page faults (glibc), and
nothing changed elsewhere; the bench says which policy a run had."""

import os
import platform
import subprocess
import sys

import pytest

from nbxent import allocator
from nbxent.bench import machine, run
from nbxent.cli import main

from test_cli import TINY

# Run in a fresh process, so that this one's allocator keeps its defaults: the minor page
# faults of a 96 MiB array allocated, written and freed after the same had been freed once,
# before and after keep_freed_memory().
_FAULTS = """
import resource, numpy as np, nbxent
def faults_of_a_fresh_array():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    array = np.empty(96 << 20, np.uint8)
    array.fill(1)
    del array
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_fresh_array()
default = faults_of_a_fresh_array()
applied = nbxent.keep_freed_memory()
faults_of_a_fresh_array()
print(default, applied, faults_of_a_fresh_array())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_a_freed_block_comes_back_without_page_faults():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    done = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    default, applied, kept = done.stdout.split()
    assert applied == "True"
    # By default each new array is new pages (fewer faults where they are huge pages).
    assert int(default) >= 40
    assert int(kept) <= 4


def test_elsewhere_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(allocator, "_kept", False)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES",
                 "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory() is False
    assert allocator.policy() == "the C library's default (large freed blocks unmapped)"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1000000000")
    assert allocator.policy() == "as the environment sets it (MALLOC_MMAP_THRESHOLD_=1000000000)"


def _kept_in_name_only(monkeypatch):
    """keep_freed_memory() recorded as applied without touching this process's allocator."""
    def keep():
        monkeypatch.setattr(allocator, "_kept", True)
        return True
    monkeypatch.setattr(allocator, "keep_freed_memory", keep)


def test_the_bench_applies_it_before_it_runs(monkeypatch):
    _kept_in_name_only(monkeypatch)
    seen = {}

    def run_that_stops(settings, progress):
        seen["allocator"] = machine.machine()["allocator"]  # what the report records
        raise SystemExit(0)
    monkeypatch.setattr(run, "run", run_that_stops)
    assert main([*TINY, "--keep-freed-memory"]) == 0
    assert seen["allocator"] == "large freed blocks kept for reuse (nbxent.keep_freed_memory)"


def test_the_bench_refuses_it_where_it_cannot_apply(monkeypatch, capsys):
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: False)
    assert main([*TINY, "--keep-freed-memory"]) == 2
    assert "--keep-freed-memory needs glibc's allocator (Linux)" in capsys.readouterr().err
