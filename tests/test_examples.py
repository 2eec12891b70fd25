"""The examples in examples/ run and do what they say (briefly: a couple of epochs)."""

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_numpy_digits_trains_like_plain_numpy():
    pytest.importorskip("sklearn", reason="examples/numpy_digits.py needs scikit-learn")
    result = subprocess.run([sys.executable, str(EXAMPLES / "numpy_digits.py"), "--epochs", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    max_diff = float(re.search(r"max \|loss nbxent - loss numpy\| over \d+ steps: (\S+)",
                               result.stdout).group(1))
    assert max_diff < 1e-5, result.stdout
    accuracy = re.search(r"final test accuracy: nbxent (\S+), numpy (\S+)", result.stdout)
    assert accuracy.group(1) == accuracy.group(2), result.stdout
    assert float(accuracy.group(1)) > 0.5, result.stdout
