# exp's largest relative error on tests/test_fastexp.py's points, for the fastexp importable
# (PYTHONPATH=<tree>): how the Horner form was compared (horner-exp-tried.txt).
import os, sys, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import test_fastexp as tf
for ap in tf._APPLY:
    f, r32 = ap.values
    for which, dtype, (lo, hi), rtol, flush in tf._CASES:
        x = np.concatenate([np.linspace(lo, hi, 200001), np.random.default_rng(0).uniform(lo, hi, 100000)]).astype(dtype)
        got = f(x, which).astype(np.float64); want = np.exp(x.astype(np.float64))
        print(ap.id, which, (lo, hi), f"{np.max(np.abs(got-want)/want):.3g}", "bound", rtol or r32)
