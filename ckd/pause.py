"""Test-only pause points, so a test can kill a run at a named moment instead of at a random time.

With `CKD_TEST_PAUSE_AT=<phase>[,<phase>...]` set, the process writes the line `ckd-pause: <phase>`
to stderr (in one write, so other processes' output on the same pipe cannot split it) and stops
itself (SIGSTOP) each time it reaches one of those phases; the test then sends SIGKILL (die there),
SIGTERM + SIGCONT (pre-emption there) or SIGCONT (go on). Unset, a pause point costs one environment
lookup. Phases:

    train-step          after an optimiser step, before its evaluation/checkpoint (ckd/train.py)
    eval                at the start of a dev evaluation inside the training loop (ckd/train.py)
    dir-write:<name>    an atomic directory's contents are written, not yet renamed into place (ckd/atomic.py)
    dir-swap:<name>     the previous directory is moved aside, the new one not yet in place (ckd/atomic.py)
    file-write:<name>   an atomic file's temporary is written, not yet renamed (ckd/atomic.py); for
                        record.json: owner.record.json is written, record.json not yet in place (ckd/run_dir.py)
    run-finished        the run is complete (record written, checkpoints removed), the process not yet ended (ckd/runs.py)

e.g. `dir-write:latest` (a checkpoint), `dir-swap:model` (the final model), `file-write:record.json` (the run record).
"""

from __future__ import annotations

import os
import signal
import sys
import time

ENV = "CKD_TEST_PAUSE_AT"
PENDING_SIGNAL_WAIT_S = 0.05  # after a pause: lets a signal sent during it reach its handler first


def pause_point(phase: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted or phase not in wanted.split(","):
        return
    # One write(2) of a short line: a pipe never splits it, so processes sharing stderr (torchrun's
    # workers) cannot interleave their pause lines. print() makes two writes (text, then "\n") on an
    # unbuffered stream such as `python -u`, as torchrun starts its workers, and two ranks pausing at
    # once then wrote "ckd-pause: Xckd-pause: X\n\n", which a test reading lines saw as one pause.
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), f"ckd-pause: {phase}\n".encode())
    os.kill(os.getpid(), signal.SIGSTOP)
    # A SIGTERM or SIGINT that the test sent while this process was stopped is delivered at SIGCONT, to any
    # of its threads (torch's too); CPython then runs the handler in the main thread at its next check. Without
    # this wait the main thread could pass the training loop's stop check before that, run the next step and
    # stop again at the next pause with nobody to continue it (1 run in 6 of the SIGINT test hung so).
    time.sleep(PENDING_SIGNAL_WAIT_S)
