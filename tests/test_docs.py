"""The examples in the public docstrings run and print what they show."""

import doctest

import pytest

import nbxent._numba_inlining
import nbxent.api
import nbxent.linear
import nbxent.bench.cases
import nbxent.cpu.lanes
import nbxent.cpu.recycling


# nbxent.api's examples hold float64 arrays (NumPy's default): kernel variants the quick
# subset leaves out.
@pytest.mark.parametrize("module", [pytest.param(nbxent.api, marks=pytest.mark.slow),
                                    nbxent.linear, nbxent.bench.cases, nbxent.cpu.recycling,
                                    nbxent.cpu.lanes, nbxent._numba_inlining],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0
    assert failures == 0
