"""A run folder that knows whose it is: its owner record, its lock, and the checks made before a run
skips, resumes or overwrites anything in it.

Files (besides what the run writes: record.json, predictions.json, model/, checkpoints/, tb/):

    owner.json          written first: the command kind (finetune | distill), task, method, the config
                        fingerprint, the result-relevant config and the input files' stamps of the run
                        that owns the folder
    owner.record.json   the finished run's record, written just before record.json becomes a second name
                        (hard link) of it: a record.json removed by a workflow manager (Snakemake deletes a
                        job's outputs before re-running it) is restored instead of recomputed when the same
                        config asks for it again, with the same ckd (version and commit) and unchanged inputs
    run.lock            held (fcntl.flock, exclusive) by the process writing the folder; the kernel releases
                        it when that process ends, killed or not, so a crash never leaves the folder locked

`claim` makes every check before anything loads: the folder is not an input (teacher, student, cached
logits, data, first stage) and holds none; it is a folder and writable; a finished run of the same config
is skipped, one of another config is refused with the differing keys named (unless --force, which never
replaces a run of another kind); an unfinished run resumes only with the same config; a second writer is
refused while the first holds the lock. Every refusal is a `RunFolderError` (one line, exit 2).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckd import __version__
from ckd.atomic import TMP_SUFFIX, OutputError, atomic_write_json, output_error, recover_directory, remove_stale_temporaries
from ckd.checkpoint import CHECKPOINT_DIR, remove_checkpoints
from ckd.config import result_fingerprint, result_relevant
from ckd.errors import CkdError
from ckd.pause import pause_point
from ckd.run_record import PREDICTIONS_FILE, RECORD_FILE

OWNER_FILE = "owner.json"
SEALED_RECORD = "owner.record.json"
LOCK_FILE = "run.lock"
MODEL_DIR = "model"
# what a ckd run folder may hold; a non-empty folder with none of these is not one
RUN_ENTRIES = {OWNER_FILE, SEALED_RECORD, LOCK_FILE, RECORD_FILE, PREDICTIONS_FILE, MODEL_DIR, CHECKPOINT_DIR, "tb",
               "stage1", "train_logits.pt"}
COMMAND_OF_KIND = {"finetune": "finetune", "distill": "distill", "intermediate": "distill"}


class RunFolderError(CkdError):
    """The output folder cannot take this run (it is an input, another run's, in use, not writable, ...)."""


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing, empty, truncated or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The run record if `run_dir` holds a finished run: a record.json that is a JSON object with a config
    fingerprint. A 0-byte, truncated or foreign record.json is not a finished run."""
    record = read_json_object(Path(run_dir) / RECORD_FILE)
    if record is None or not isinstance(record.get("config_fingerprint"), str) or "kind" not in record:
        return None
    return record


def owner_of(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The owner record of a run: what `claim` compares before it touches a folder. `inputs` stamps the
    files the run reads (size and modification time), so that a removed record is only restored while
    they are unchanged (a re-trained teacher means the run must be redone)."""
    return {
        "kind": kind,
        "task": config.get("task"),
        "method": config.get("method_name") or config.get("method") or "finetune",
        "config_fingerprint": result_fingerprint(config),
        "config": result_relevant(config),
        "inputs": input_stamps(run_inputs(kind, config)),
        "ckd_version": __version__,
    }


def input_stamps(inputs: Mapping[str, Path]) -> dict[str, list]:
    """[name, size, mtime_ns] of each input file, and of the files directly inside each input folder."""
    stamps: dict[str, list] = {}
    for key, path in sorted(inputs.items()):
        try:
            files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
            stamps[key] = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        except OSError:
            stamps[key] = []
    return stamps


def _present_owner(run_dir: Path) -> dict[str, Any] | None:
    """Who owns `run_dir`: owner.json, else (a folder from before owner records) its finished record."""
    owner = read_json_object(run_dir / OWNER_FILE)
    if owner is not None and isinstance(owner.get("kind"), str):
        return owner
    record = finished_record(run_dir)
    if record is not None:
        return {
            "kind": COMMAND_OF_KIND.get(record["kind"], record["kind"]), "task": record.get("task"),
            "method": record.get("method"), "config_fingerprint": record["config_fingerprint"],
            "config": result_relevant(record["config"]) if isinstance(record.get("config"), dict) else None,
        }
    return None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differing_keys(old: Mapping[str, Any] | None, new: Mapping[str, Any], limit: int = 4) -> str:
    """'train.lr 0.001 -> 0.002, seed 1 -> 2' for two result-relevant configs (at most `limit` keys named)."""
    if not isinstance(old, Mapping):
        return "its config is not recorded"
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    if not keys:
        return "the same keys with another fingerprint (written by another ckd version?)"
    shown = ", ".join(f"{k} {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def describe_owner(owner: Mapping[str, Any]) -> str:
    return f"a {owner.get('kind')} run ({owner.get('task')}, {owner.get('method')})"


# -------------------------------------------------------------------------- inputs vs the output


def _local_path(value: Any) -> Path | None:
    """`value` as a resolved local path when it names one that exists or looks like one; None for hub ids,
    package:<module> and the synthetic tokenizer."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        return None
    text = str(value)
    if text.startswith("package:") or text == "synthetic":
        return None
    path = Path(text).expanduser()
    if not path.exists() and not text.startswith((".", "/", "~")) and text.count("/") <= 1:
        return None  # a hub id such as bert-base-uncased or google/bert_uncased_L-4_H-256_A-4
    return path.resolve()


def run_inputs(kind: str, config: Mapping[str, Any]) -> dict[str, Path]:
    """The local paths a run reads, by config key: models, cached logits or teacher cache, a first stage,
    the data folder."""
    inputs: dict[str, Any] = {}
    for role in ("model", "teacher", "student"):
        spec = config.get(role)
        if isinstance(spec, Mapping):
            inputs[f"{role}.name_or_path"] = spec.get("name_or_path")
            inputs[f"{role}.tokenizer"] = spec.get("tokenizer")
    inputs["teacher_logits"] = config.get("teacher_logits")
    inputs["teacher_cache"] = config.get("teacher_cache")
    inputs["init_from_run"] = config.get("init_from_run")
    inputs["methods_file"] = config.get("methods_file")
    data = config.get("data") or {}
    if data.get("source") in ("auto", "glue_dir") and not str(config.get("task", "")).lower().startswith("syn"):
        inputs["data.glue_dir"] = data.get("glue_dir") or os.environ.get("GLUE_DIR")
    paths = {key: _local_path(value) for key, value in inputs.items()}
    return {key: path for key, path in paths.items() if path is not None}


def check_not_an_input(output_dir: Path, inputs: Mapping[str, Path]) -> None:
    """Refuse an output folder equal to, inside or containing anything the run reads."""
    out = output_dir.expanduser().resolve()
    for key, path in inputs.items():
        if out == path:
            relation = "is"
        elif path in out.parents:
            relation = "is inside"
        elif out in path.parents:
            relation = "contains"
        else:
            continue
        raise RunFolderError(
            f"output_dir {output_dir} {relation} an input of this run ({key}={path}): writing there could overwrite "
            "what the run reads; choose another output_dir"
        )


# -------------------------------------------------------------------------- the lock


@dataclass
class RunLock:
    """An exclusive flock on <run_dir>/run.lock; released by `release()` or by the kernel when the process ends."""

    path: Path
    fd: int | None

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        path = run_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise _unwritable(run_dir, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_fd(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(
                    f"output_dir {run_dir} is in use by another ckd process ({holder or 'holder unknown'}, per {path}): "
                    "wait for it to finish or choose another output_dir"
                ) from None
            raise RunFolderError(f"cannot lock {path} ({exc.strerror}): the filesystem must support flock; choose another output_dir") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError:
            pass  # the note is for people; the lock holds without it
        return cls(path, fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _unwritable(run_dir: Path, exc: OSError) -> CkdError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return output_error(run_dir, exc, kept="nothing was written")
    return RunFolderError(
        f"output_dir {run_dir} is not writable ({exc.strerror or exc}): choose a writable output_dir "
        "(checked before any model or data is loaded)"
    )


# -------------------------------------------------------------------------- claiming a folder


@dataclass
class RunFolder:
    """A claimed run folder (on the writing process: with its lock)."""

    path: Path
    owner: dict[str, Any]
    lock: RunLock | None
    created: bool = False  # the claim made the folder

    def abandon(self) -> None:
        """After a run failed: remove the folder again if the claim made it and nothing but the owner
        record and the lock is in it (a refusal before training leaves no trace)."""
        if self.lock is None or not self.created:
            return
        try:
            if {p.name for p in self.path.iterdir()} <= {OWNER_FILE, LOCK_FILE}:
                (self.path / OWNER_FILE).unlink(missing_ok=True)
                (self.path / LOCK_FILE).unlink(missing_ok=True)
                self.path.rmdir()
        except OSError:
            pass

    def write_record(self, record: Mapping[str, Any]) -> None:
        """Write the run record under both names: owner.record.json first (atomically), then record.json as a
        second name of that file, renamed into place. So whenever record.json exists, owner.record.json
        holds the same bytes; a kill in between leaves owner.record.json alone, which the next start
        restores (the run was complete). Without hard links: record.json alone, written atomically."""
        sealed = self.path / SEALED_RECORD
        try:
            atomic_write_json(sealed, record)
        except OutputError as exc:  # name the file people know
            raise OutputError(str(exc).replace(str(sealed), str(self.path / RECORD_FILE))) from exc
        tmp = self.path / f".{RECORD_FILE}.{os.getpid()}{TMP_SUFFIX}"
        try:
            tmp.unlink(missing_ok=True)
            os.link(sealed, tmp)
        except OSError:
            sealed.unlink(missing_ok=True)
            atomic_write_json(self.path / RECORD_FILE, record)
            return
        try:
            pause_point(f"file-write:{RECORD_FILE}")
            os.replace(tmp, self.path / RECORD_FILE)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise output_error(self.path / RECORD_FILE, exc) from exc
            raise

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """`with folder:` around a run's body: on any failure (Ctrl-C included) the folder is abandoned, and
        the lock is released in every case."""
        try:
            if exc_type is not None:
                self.abandon()  # a run refused before it wrote anything leaves no folder behind
        finally:
            self.release()


def tidy_finished(run_dir: Path) -> None:
    """Remove what a kill right after a run finished left (checkpoints, temporaries), if the folder is free
    to lock; a folder in use or on a read-only filesystem is left as it is."""
    try:
        lock = RunLock.acquire(run_dir)
    except CkdError:
        return
    try:
        remove_checkpoints(run_dir)
        remove_stale_temporaries(run_dir)
    finally:
        lock.release()


def _refuse_other_kind(run_dir: Path, present: Mapping[str, Any], kind: str) -> None:
    if present.get("kind") != kind:
        raise RunFolderError(
            f"output_dir {run_dir} belongs to {describe_owner(present)}, not to a {kind} run: choose another output_dir "
            "(--force never replaces a run of another kind)"
        )


def _restore_sealed_record(run_dir: Path, owner: Mapping[str, Any]) -> dict[str, Any] | None:
    """A finished run whose record.json was removed (by Snakemake before a re-run): put the record back,
    if it is this config's, written by this ckd (same version and commit), and the inputs the run read
    are unchanged since (owner.json's stamps). Otherwise the run is done again."""
    sealed = run_dir / SEALED_RECORD
    record = read_json_object(sealed)
    if record is None or record.get("config_fingerprint") != owner["config_fingerprint"] or (run_dir / RECORD_FILE).exists():
        return None
    from ckd.run_record import git_commit

    if record.get("ckd_version") != __version__ or record.get("git_commit") != git_commit():
        print(f"{run_dir / RECORD_FILE} was removed and ckd changed since the run (version or commit): running it again",
              file=sys.stderr)
        return None
    stamped = (read_json_object(run_dir / OWNER_FILE) or {}).get("inputs")
    if stamped != owner["inputs"]:
        changed = sorted(k for k in set(stamped or {}) | set(owner["inputs"]) if (stamped or {}).get(k) != owner["inputs"].get(k))
        print(f"{run_dir / RECORD_FILE} was removed and the run's inputs changed since it ran ({', '.join(changed) or 'not recorded'}): "
              "running it again", file=sys.stderr)
        return None
    if record.get("predictions") and not (run_dir / PREDICTIONS_FILE).is_file():
        return None
    if (record.get("config") or {}).get("train", {}).get("save_model", True) and not (run_dir / MODEL_DIR).is_dir():
        return None
    try:
        os.link(sealed, run_dir / RECORD_FILE)
    except FileExistsError:
        pass
    except OSError:
        return None
    return record


def check_claim(kind: str, config: Mapping[str, Any], run_dir: Path, force: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The read-only checks (any process may make them): (this run's owner record, the finished record
    when the folder already holds this very run and it is not forced)."""
    check_not_an_input(run_dir, run_inputs(kind, config))
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"output_dir {run_dir} is a file, not a folder: choose another output_dir (or remove the file)")
    owner = owner_of(kind, config)
    if not run_dir.is_dir():
        return owner, None
    present = _present_owner(run_dir)
    if present is None:
        entries = sorted(p.name for p in run_dir.iterdir() if not (p.name.startswith(".") and p.name.endswith((".tmp", ".old"))))
        if entries and not set(entries) & RUN_ENTRIES:
            raise RunFolderError(
                f"output_dir {run_dir} already holds other files ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}) "
                "and no ckd run: choose a new or empty output_dir"
            )
        return owner, None
    _refuse_other_kind(run_dir, present, kind)
    finished = finished_record(run_dir)
    same = present.get("config_fingerprint") == owner["config_fingerprint"]
    if finished is not None and not force:
        if finished["config_fingerprint"] == owner["config_fingerprint"]:
            return owner, finished
        raise RunFolderError(
            f"output_dir {run_dir} holds a finished run of another config ({differing_keys(_present_owner_config(finished), owner['config'])}): "
            "choose another output_dir, or add --force to replace that run"
        )
    if finished is None and same and not force and (restored := _restore_sealed_record(run_dir, owner)):
        print(f"{run_dir / RECORD_FILE} was removed; restored it from {SEALED_RECORD} (same config, finished run)", file=sys.stderr)
        return owner, restored
    if finished is None and not same and not force and (run_dir / CHECKPOINT_DIR).is_dir():
        raise RunFolderError(
            f"output_dir {run_dir} holds an unfinished run of another config ({differing_keys(present.get('config'), owner['config'])}): "
            "resume it with its own config, choose another output_dir, or add --force to start this one over"
        )
    return owner, None


def _present_owner_config(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    config = record.get("config")
    return result_relevant(config) if isinstance(config, dict) else None


def claim(
    kind: str, config: Mapping[str, Any], *, force: bool, is_main: bool = True,
    agree: Callable[[Any], Any] = lambda outcome: outcome,
) -> RunFolder | None:
    """Check and take the output folder of a run before anything loads; None when it already holds this
    finished run (nothing to do). In a torchrun job only the main process (`is_main`) writes and locks;
    `agree` hands its outcome to every process (it takes this process's outcome and returns the main
    process's), so that all of them stop, skip or go on together instead of waiting for each other."""
    run_dir = Path(config["output_dir"])
    owner, finished = check_claim(kind, config, run_dir, force)
    if finished is not None:
        return None
    lock = None
    created = not run_dir.exists()
    outcome: tuple[str, str | None] = ("go", None)
    if is_main:
        try:
            lock = _take(kind, config, run_dir, force)
            if lock is None:
                outcome = ("done", None)
        except CkdError as exc:
            agree(("error", str(exc)))
            raise
    status, message = agree(outcome)
    if status == "error":
        raise RunFolderError(message)
    if status == "done":
        return None
    return RunFolder(run_dir, owner, lock, created=created and lock is not None)


def _take(kind: str, config: Mapping[str, Any], run_dir: Path, force: bool) -> RunLock | None:
    """Create, lock and prepare the folder (main process only); None if another process finished this run meanwhile."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(run_dir, exc) from exc
    if not os.access(run_dir, os.W_OK):
        raise _unwritable(run_dir, OSError(errno.EACCES, os.strerror(errno.EACCES)))
    lock = RunLock.acquire(run_dir)
    try:
        # again under the lock: another process may have finished or claimed the folder meanwhile
        owner, finished = check_claim(kind, config, run_dir, force)
        if finished is not None:
            lock.release()
            return None
        if force:
            for name in (RECORD_FILE, SEALED_RECORD):
                (run_dir / name).unlink(missing_ok=True)
            remove_checkpoints(run_dir)
        if recover_directory(run_dir / MODEL_DIR):
            print(f"recovered {run_dir / MODEL_DIR} from an interrupted replacement", file=sys.stderr)
        remove_stale_temporaries(run_dir)  # e.g. .model.old next to a complete model/, left by a kill
        if read_json_object(run_dir / OWNER_FILE) != owner:
            if not (run_dir / RECORD_FILE).exists():
                (run_dir / SEALED_RECORD).unlink(missing_ok=True)  # the record it named belongs to the previous owner
            atomic_write_json(run_dir / OWNER_FILE, owner)
    except BaseException:
        lock.release()
        raise
    return lock
