"""Train a small image classifier in plain NumPy, with nbxent giving the loss and gradient.

The data are scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; they ship
with scikit-learn, nothing is downloaded). The model is a one-hidden-layer MLP
(64 -> 64 ReLU -> 10) trained by minibatch SGD. The same loop runs twice from the same
seed: once with ``nbxent.cross_entropy_with_grad`` (one fused pass, the gradient
written over the logits), once with the usual NumPy loss and gradient (log-sum-exp
after subtracting the row max). Both reach the same accuracy and their loss curves agree
to float rounding; the script prints the largest difference.

    pip install nbxent scikit-learn
    python examples/numpy_digits.py                 # 30 epochs, a few seconds
    python examples/numpy_digits.py --epochs 2 --dtype float64

The point here is the drop-in use, not speed: at batches of 64 rows x 10 classes NumPy
computes the whole loss in tens of microseconds, less than nbxent's fixed cost per call
(argument checks, the class-index scan, a parallel kernel launch: about 0.1-0.2 ms on an
idle machine, more when other processes hold the cores, since a parallel launch waits
for every thread; ``NUMBA_NUM_THREADS=1`` helps there). nbxent's lead comes with many
rows and classes (``nbxent bench``).
"""

import argparse
import time

import numpy as np

import nbxent


def numpy_loss_and_grad(logits, labels):
    """Mean cross-entropy and its gradient, the way it is usually written in NumPy."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = -log_probs[rows, labels].mean()
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1.0
    grad /= len(labels)
    return loss, grad


def nbxent_loss_and_grad(logits, labels):
    """The same with nbxent: one pass; the logits are not needed after, so the gradient
    overwrites them (``out=logits``)."""
    return nbxent.cross_entropy_with_grad(logits, labels, out=logits)


def load_data(dtype, seed):
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(dtype)  # pixels are 0..16
    order = np.random.default_rng(seed).permutation(len(labels))
    images, labels = images[order], labels[order].astype(np.int64)
    n_train = int(0.8 * len(labels))
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


def init_params(n_in, n_hidden, n_classes, dtype, seed):
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)).astype(dtype),
        "b1": np.zeros(n_hidden, dtype),
        "w2": (rng.standard_normal((n_hidden, n_classes)) * np.sqrt(1.0 / n_hidden)).astype(dtype),
        "b2": np.zeros(n_classes, dtype),
    }


def predict(params, images):
    hidden = np.maximum(images @ params["w1"] + params["b1"], 0)
    return hidden @ params["w2"] + params["b2"]


def train(loss_and_grad, data, *, epochs, batch_size, learning_rate, n_hidden, dtype, seed):
    """SGD over shuffled minibatches; returns per-step losses and per-epoch (accuracy,
    seconds per epoch, seconds in the loss)."""
    train_x, train_y, test_x, test_y = data
    params = init_params(train_x.shape[1], n_hidden, 10, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    step_losses, epochs_log = [], []
    for _ in range(epochs):
        start, in_loss = time.perf_counter(), 0.0
        order = rng.permutation(len(train_y))
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            images, labels = train_x[batch], train_y[batch]
            pre = images @ params["w1"] + params["b1"]
            hidden = np.maximum(pre, 0)
            logits = hidden @ params["w2"] + params["b2"]
            loss_start = time.perf_counter()
            loss, grad_logits = loss_and_grad(logits, labels)
            in_loss += time.perf_counter() - loss_start
            step_losses.append(float(loss))
            grad_hidden = (grad_logits @ params["w2"].T) * (pre > 0)
            params["w2"] -= learning_rate * (hidden.T @ grad_logits)
            params["b2"] -= learning_rate * grad_logits.sum(axis=0)
            params["w1"] -= learning_rate * (images.T @ grad_hidden)
            params["b1"] -= learning_rate * grad_hidden.sum(axis=0)
        seconds = time.perf_counter() - start
        accuracy = float((predict(params, test_x).argmax(axis=1) == test_y).mean())
        epochs_log.append((accuracy, seconds, in_loss))
    return np.array(step_losses), epochs_log


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    data = load_data(dtype, args.seed)

    # The first call compiles nbxent's kernel (or loads it from Numba's disk cache): once
    # per process, kept out of the epoch times.
    start = time.perf_counter()
    nbxent.cross_entropy_with_grad(np.zeros((2, 10), dtype), np.zeros(2, np.int64))
    print(f"nbxent first call (compile or cache load): {time.perf_counter() - start:.2f} s")

    options = dict(epochs=args.epochs, batch_size=args.batch_size,
                   learning_rate=args.learning_rate, n_hidden=args.hidden, dtype=dtype,
                   seed=args.seed)
    losses_nb, log_nb = train(nbxent_loss_and_grad, data, **options)
    losses_np, log_np = train(numpy_loss_and_grad, data, **options)

    print(f"digits: {len(data[1])} train / {len(data[3])} test images, MLP 64-{args.hidden}-10, "
          f"batch {args.batch_size}, {args.dtype}")
    print(f"{'epoch':>5} | {'loss nbxent':>11} {'loss numpy':>11} | {'acc nbxent':>10} "
          f"{'acc numpy':>9} | {'ms/epoch nbxent':>15} {'numpy':>6} | {'ms in loss nbxent':>17} "
          f"{'numpy':>6}")
    steps = len(losses_nb) // args.epochs
    for epoch, ((acc_nb, s_nb, l_nb), (acc_np, s_np, l_np)) in enumerate(zip(log_nb, log_np)):
        mean_nb = losses_nb[epoch * steps:(epoch + 1) * steps].mean()
        mean_np = losses_np[epoch * steps:(epoch + 1) * steps].mean()
        print(f"{epoch + 1:5d} | {mean_nb:11.6f} {mean_np:11.6f} | {acc_nb:10.4f} {acc_np:9.4f} | "
              f"{s_nb * 1e3:15.2f} {s_np * 1e3:6.2f} | {l_nb * 1e3:17.2f} {l_np * 1e3:6.2f}")
    max_diff = float(np.max(np.abs(losses_nb - losses_np)))
    print(f"max |loss nbxent - loss numpy| over {len(losses_nb)} steps: {max_diff:.3g}")
    print(f"final test accuracy: nbxent {log_nb[-1][0]:.4f}, numpy {log_np[-1][0]:.4f}")
    return max_diff, log_nb[-1][0], log_np[-1][0]


if __name__ == "__main__":
    main()
