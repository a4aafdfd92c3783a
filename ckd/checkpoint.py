"""Training-state checkpoints: everything a run needs to continue bit-for-bit, written atomically."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckd.atomic import atomic_directory, recover_directory, remove_stale_temporaries, write_failure
from ckd.errors import CkdError

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
STATE_FILE = "state.pt"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def latest_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LATEST


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Replace the latest checkpoint in one rename; a kill mid-write leaves the previous one intact."""
    target = latest_path(run_dir)
    with atomic_directory(target) as tmp:
        try:
            torch.save({"format_version": FORMAT_VERSION, "threads": torch.get_num_threads(), **state}, tmp / STATE_FILE)
        except Exception as exc:  # torch reports a failed write (e.g. disk full: "unexpected pos") as RuntimeError
            error = write_failure(target / STATE_FILE, exc, kept="the previous checkpoint is kept", what="checkpoint ")
            if error is None:
                raise
            raise error from exc


def load_checkpoint(run_dir: Path, config_fingerprint: str) -> dict[str, Any] | None:
    if recover_directory(latest_path(run_dir)):
        print(f"recovered checkpoint {latest_path(run_dir)} from an interrupted replacement", file=sys.stderr)
    remove_stale_temporaries(run_dir / CHECKPOINT_DIR)
    path = latest_path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a checkpoint that cannot be read cannot be resumed from
        raise CkdError(f"checkpoint {path} is unreadable ({exc.__class__.__name__}): delete {path.parent} to start over") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise CkdError(f"checkpoint {path} was written by an incompatible version: delete {path.parent} to start over")
    if state.get("config_fingerprint") != config_fingerprint:
        raise CkdError(
            f"checkpoint {path} belongs to a different config: use another output_dir or delete {path.parent.parent} to start over"
        )
    threads = state.get("threads")
    if threads is not None and threads != torch.get_num_threads():
        # on CPU, the thread count changes how reductions are split, hence the last bits of every step
        raise CkdError(
            f"checkpoint {path} was written with {threads} CPU thread(s), this run has {torch.get_num_threads()}: "
            f"a resume must use the same count to continue the same numbers; run again with train.threads={threads} "
            f"(or delete {path.parent.parent} to start over)"
        )
    return state


def remove_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
