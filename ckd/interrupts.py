"""SIGTERM (cluster pre-emption, `kill`, Snakemake stopping its jobs) and SIGINT (Ctrl-C) as flags.

`InterruptFlag` is what the training loop checks between steps (it then checkpoints and stops);
`defer_interrupts()` holds both signals off while a run's final results are saved, so the folder ends
either before the save (resumable) or after it (finished), never in between. SIGKILL cannot be caught:
what it leaves is repaired on the next start (ckd.run_dir, ckd.atomic.recover_directory).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class InterruptFlag:
    """While entered, SIGTERM and SIGINT set `raised` (and `name`) instead of ending the process.

    A second SIGINT (Ctrl-C pressed again) raises KeyboardInterrupt at once, for a user who will not wait.
    Outside the main thread signals cannot be caught, and the flag leaves them alone.
    """

    def __init__(self, second_interrupt_stops: bool = True) -> None:
        self.raised = False
        self.name: str | None = None
        self._second_interrupt_stops = second_interrupt_stops
        self._previous: dict[int, object] = {}

    def __enter__(self) -> InterruptFlag:
        for signum in SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                break
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._second_interrupt_stops and self.name == "SIGINT":
            raise KeyboardInterrupt
        self.raised = True
        self.name = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


@contextlib.contextmanager
def defer_interrupts(what: str) -> Iterator[InterruptFlag]:
    """Finish `what` (e.g. "the final save") before reacting to SIGTERM / SIGINT; a signal that arrived
    meanwhile is reported on stderr afterwards. The caller decides what to do about it (the run is done)."""
    with InterruptFlag(second_interrupt_stops=False) as flag:
        yield flag
    if flag.raised:
        print(f"ckd: {flag.name} arrived during {what}; {what} was completed first", file=sys.stderr)
