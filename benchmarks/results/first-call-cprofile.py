# The first call of a 1024 x 100 float32 loss under cProfile (run with an empty NUMBA_CACHE_DIR):
# cumulative times (copy.deepcopy, LLVM). RESULTS.md, "Where a first call's time went".
import cProfile, pstats, time, numpy as np, sys
import nbxent
rng = np.random.default_rng(0)
x = rng.standard_normal((1024, 100)).astype(np.float32); t = rng.integers(0, 100, 1024)
pr = cProfile.Profile(); t0 = time.perf_counter(); pr.enable()
nbxent.cross_entropy(x, t)
pr.disable(); print("first call", time.perf_counter() - t0)
st = pstats.Stats(pr); st.sort_stats("cumulative").print_stats(45)
