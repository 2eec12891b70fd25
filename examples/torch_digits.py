"""Softmax regression on scikit-learn's 8x8 digits, trained with nbxent's loss and with torch's.

Both runs start from the same weights and see the same mini-batches; the script prints
the two training-loss curves side by side with the test accuracy, and checks that they
agree to float32 rounding (the losses and gradients are the same functions, computed by
different kernels). The data ship with scikit-learn: nothing is downloaded.

    pip install 'nbxent[torch]' scikit-learn
    python examples/torch_digits.py --epochs 20
"""

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from nbxent.torch import CrossEntropyLoss

TOLERANCE = 1e-5  # max relative difference of the per-epoch losses


def load(seed):
    """(train_x, train_y, test_x, test_y): float32 pixels scaled to [0, 1], a 80/20 split."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(y))
    train, test = order[:n_train], order[n_train:]
    return x[train], y[train], x[test], y[test]


def train(criterion, data, *, epochs, seed, batch_size=64):
    """Per-epoch mean training loss and the final test accuracy of one run."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10)
    # Softmax regression with weight decay is strongly convex: SGD contracts the tiny
    # rounding differences between the two losses instead of amplifying them, as a
    # deeper network's chaotic training would after a few epochs.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5, weight_decay=1e-3)
    batches = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        order = torch.randperm(len(train_y), generator=batches)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            loss = criterion(model(train_x[rows]), train_y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
            count += len(rows)
        curve.append(total / count)
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    return np.array(curve), accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-smoothing", type=float, default=0.05)
    args = parser.parse_args(argv)

    data = load(args.seed)
    criteria = {"nbxent": CrossEntropyLoss(label_smoothing=args.label_smoothing),
                "torch": torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)}
    # Out of the timings: the imports an optimizer's first use triggers, and nbxent's
    # first call, which compiles its kernel (or loads it from Numba's disk cache).
    started = time.perf_counter()
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for criterion in criteria.values():
        criterion(torch.zeros(2, 10, requires_grad=True), torch.tensor([0, 1])).backward()
    warm_up = time.perf_counter() - started

    runs = {}
    for name, criterion in criteria.items():
        started = time.perf_counter()
        curve, accuracy = train(criterion, data, epochs=args.epochs, seed=args.seed)
        runs[name] = (curve, accuracy, time.perf_counter() - started)

    (ours, our_accuracy, our_time), (theirs, their_accuracy, their_time) = runs.values()
    relative = np.abs(ours - theirs) / np.abs(theirs)
    print(f"{'epoch':>5}  {'nbxent loss':>12}  {'torch loss':>12}  {'rel. diff':>9}")
    for epoch, (a, b, r) in enumerate(zip(ours, theirs, relative), 1):
        print(f"{epoch:5d}  {a:12.7f}  {b:12.7f}  {r:9.2e}")
    print(f"test accuracy: nbxent {our_accuracy:.4f}, torch {their_accuracy:.4f}")
    print(f"training time: nbxent {our_time:.2f} s, torch {their_time:.2f} s (warm-up before "
          f"them: {warm_up:.2f} s)")
    worst = float(relative.max())
    assert worst < TOLERANCE, f"loss curves differ: max relative difference {worst:.3g}"
    assert our_accuracy == their_accuracy, "test accuracies differ"
    print(f"loss curves agree: max relative difference {worst:.2e} < {TOLERANCE:g}")


if __name__ == "__main__":
    main()
