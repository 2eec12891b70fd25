"""The loop the random searches (``torch_fuzz.py``, ``oracle_fuzz.py``) share."""

import time

import numpy as np


def search(seed, seconds, draw_case, check, describe):
    """Draw ``draw_case(rng)`` (None: skip it) and ``check(rng, case)`` (a disagreement's
    text, or None) until ``seconds`` have passed; print each failing case as
    ``describe(case)``, then the counts. Returns the exit status: 1 if any failed."""
    rng = np.random.default_rng(seed)
    deadline = time.time() + seconds
    n_cases = n_failed = 0
    while time.time() < deadline:
        case = draw_case(rng)
        if case is None:
            continue
        n_cases += 1
        with np.errstate(all="ignore"):
            problem = check(rng, case)
        if problem:
            n_failed += 1
            print("FAILED", describe(case), problem, flush=True)
    print(f"{n_cases} cases, {n_failed} failed")
    return 1 if n_failed else 0


def options_text(options):
    """A call's keyword arguments for a failing case's line: arrays named, not printed."""
    return str({k: "array" if isinstance(v, np.ndarray) else v for k, v in options.items()})
