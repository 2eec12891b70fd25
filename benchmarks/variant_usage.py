"""Which CPU kernel variants the tests call, and what compiling them cost: a pytest plugin.

    PYTHONPATH=benchmarks python -m pytest -p variant_usage -m "not slow" -n auto
    python benchmarks/variant_usage.py            # the report, from the workers' files

Each worker writes ``variant-usage-<worker>.json`` in the current folder: the variants
each test called, and the seconds each variant's block function took to compile (once per
run: a kernel compiled by one worker is loaded from the disk cache, or waited for, by the
other). The report lists each variant with those seconds and the tests that call it,
fewest first: a variant that few tests of a subset call is what a subset pays most for.
"""

import collections
import glob
import hashlib
import json
import os
import time

_current = {"test": None}
_calls = collections.defaultdict(set)
_by_tag = {}  # the digest in a variant's function names -> the variant, described
_compile_seconds = {}  # described variant -> seconds


def pytest_configure(config):
    from numba.core import event

    import nbxent.cpu.backend as backend

    kernel_for = backend.kernel_for

    def recorded(variant):
        # (the digest nbxent.cpu.disk_cache.named_for puts in the variant's function names)
        _by_tag[hashlib.sha256(repr(tuple(variant)).encode()).hexdigest()[:16]] = \
            _describe(variant)
        if _current["test"] is not None:
            _calls[_current["test"]].add(_describe(variant))
        return kernel_for(variant)

    backend.kernel_for = recorded

    class Compiles(event.Listener):
        def __init__(self):
            self.starts = []

        def on_start(self, ev):
            self.starts.append(time.perf_counter())

        def on_end(self, ev):
            seconds = time.perf_counter() - self.starts.pop()
            name = getattr(getattr(ev.data.get("dispatcher"), "py_func", None),
                           "__qualname__", "")
            variant = _by_tag.get(name.rsplit("_", 1)[-1])
            if not self.starts and variant is not None:  # a block function, with its callees
                _compile_seconds[variant] = _compile_seconds.get(variant, 0.0) + seconds

    event.register("numba:compile", Compiles())


def pytest_runtest_setup(item):
    _current["test"] = item.nodeid


def pytest_runtest_teardown(item):
    _current["test"] = None


def pytest_unconfigure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"variant-usage-{worker}.json", "w") as f:
        json.dump({"calls": {test: sorted(variants) for test, variants in _calls.items()},
                   "compile_s": _compile_seconds}, f)


def _describe(variant):
    """A variant in a few words: kernel, compute type, target, write, the flags set."""
    fields = variant._asdict()
    words = ["tile" if fields.pop("tiled") else "row"]
    half, compute64, widened = fields.pop("half"), fields.pop("compute64"), fields.pop("widened")
    words.append("f16" if half else "f32 widened" if widened else "f64" if compute64 else "f32")
    words.append(fields.pop("target").name.lower())
    words.append("write=" + str(fields.pop("write")))
    return " ".join(words + [name for name, value in fields.items() if value])


def report():
    calls, compile_seconds = {}, collections.Counter()
    for path in glob.glob("variant-usage-*.json"):
        with open(path) as f:
            record = json.load(f)
        calls.update(record["calls"])
        compile_seconds.update(record["compile_s"])
    users = collections.defaultdict(list)
    for test, variants in calls.items():
        for variant in variants:
            users[variant].append(test)
    print(f"{len(users)} variants called by {len(calls)} tests, "
          f"{sum(compile_seconds.values()):.0f} s compiling them")
    for variant, tests in sorted(users.items(), key=lambda kv: len(kv[1])):
        functions = collections.Counter(t.split("::")[-1].split("[")[0] for t in tests)
        print(f"{len(tests):5d} tests {compile_seconds[variant]:6.1f} s  {variant:42s} "
              f"{dict(functions.most_common(6))}")


if __name__ == "__main__":
    report()
