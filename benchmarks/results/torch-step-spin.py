"""A PyTorch training step's head with nbxent's loss or PyTorch's (benchmarks/RESULTS.md,
"... Numba's spinning worker beside other libraries"): logits = x @ W.T (16384 x 256 ->
1000 classes, float32, torch on 2 threads), the loss (``nbxent.torch.cross_entropy`` or
``torch.nn.functional.cross_entropy``), backward; 15 rounds, the two in turn; median and
best ms. Compare a run under ``OMP_WAIT_POLICY=passive``.

    python benchmarks/results/torch-step-spin.py
"""
import time

import numpy as np
import torch

import nbxent.torch

torch.set_num_threads(2)
torch.manual_seed(0)
x = torch.randn(16384, 256)
weight = torch.randn(1000, 256, requires_grad=True)
target = torch.randint(0, 1000, (16384,))


def step(loss_function):
    weight.grad = None
    loss_function(x @ weight.T, target).backward()


losses = {"nbxent.torch": nbxent.torch.cross_entropy,
          "torch": torch.nn.functional.cross_entropy}
for function in losses.values():
    step(function)
    step(function)
seconds = {name: [] for name in losses}
for _ in range(15):
    for name, function in losses.items():
        start = time.perf_counter()
        step(function)
        seconds[name].append(time.perf_counter() - start)
for name, times in seconds.items():
    print(f"{name}: median {np.median(times) * 1e3:.2f} ms best {min(times) * 1e3:.2f}")
