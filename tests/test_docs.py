"""The examples in the public docstrings run and print what they show."""

import doctest

import pytest

import nbxent.api
import nbxent.linear
import nbxent.bench.cases


@pytest.mark.parametrize("module", [nbxent.api, nbxent.linear, nbxent.bench.cases], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0
    assert failures == 0
