"""Progress on stderr while the benchmark runs: a rich bar on a terminal, plain lines otherwise.

Each reporter has ``start(total)``, ``step(label)`` (a task begins; the one
before it is done) and ``finish()``. The table goes to stdout, so progress
never mixes with it.
"""

import sys


class QuietProgress:
    """Reports nothing (for tests and library use)."""

    def start(self, total):
        pass

    def step(self, label):
        pass

    def finish(self):
        pass


class PlainProgress:
    """One line per task on stderr: ``[3/20] cpu 16384x1024 float32 loss: torch``."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.total = self.done = 0

    def start(self, total):
        self.total, self.done = total, 0

    def step(self, label):
        self.done += 1
        print(f"[{self.done}/{self.total}] {label}", file=self.stream, flush=True)

    def finish(self):
        pass


class RichProgress:
    """A rich progress bar with elapsed time on stderr, removed when the run ends."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self.task = None
        self.steps = 0

    def start(self, total):
        self.bar.start()
        self.task = self.bar.add_task("starting", total=total)

    def step(self, label):
        if self.steps:
            self.bar.advance(self.task)
        self.steps += 1
        self.bar.update(self.task, description=label)

    def finish(self):
        self.bar.update(self.task, completed=self.steps)
        self.bar.stop()


def make_progress(enabled=True):
    """The best reporter available: rich on a terminal, plain lines when piped or without rich."""
    if not enabled:
        return QuietProgress()
    if sys.stderr.isatty():
        try:
            return RichProgress()
        except ImportError:
            pass
    return PlainProgress()
