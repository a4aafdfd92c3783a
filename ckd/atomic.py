"""Atomic file output: write to a temporary name in the same folder, then rename.

A reader therefore sees either the previous complete file/folder or the new complete one, never a
partial one, whenever the writer is killed. Temporaries are named `.<name>.<random>.tmp`; a folder
being replaced is moved aside to `.<name>.old` for the moment between the two renames.
Write failures (disk full, no permission) become an `OutputError` naming the path, with nothing left behind;
libraries that report a failed write in their own words (safetensors' "No space left on device", torch's
"unexpected pos") are translated too (`write_failure`). What is written gets the permissions the process's
umask gives a newly created file or folder (0644 / 0755 under umask 022), like `open()` and `mkdir()`,
not the 0600 / 0700 of Python's `tempfile`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckd.errors import CkdError
from ckd.pause import pause_point

TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"


class OutputError(CkdError):
    """A result file or folder could not be written (disk full, no permission, ...)."""


def output_error(path: str | os.PathLike, exc: OSError, kept: str = "no partial file was left", what: str = "") -> OutputError:
    """One line for a failed write of `path` (a `what`, e.g. "checkpoint "): what failed, what is left (`kept`), the fix."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"cannot write {what}{path}: disk full ({exc.strerror or 'no space left on device'}); {kept}. "
            "Free space there (or point the output elsewhere) and run the same command again"
        )
    return OutputError(
        f"cannot write {what}{path}: {exc.strerror or exc}; {kept}. Check that the folder is writable and run the same command again"
    )


# what libraries say when their write failed because the disk is full
_DISK_FULL_WORDS = ("no space left on device", "os error 28", "disk quota exceeded")
# what they say when a write failed for a reason they do not name (torch's zip writer on a full disk)
_WRITE_FAILED_WORDS = ("unexpected pos", "failed writing", "file write failed", "error while serializing")


def write_failure(
    path: str | os.PathLike, exc: BaseException, kept: str = "no partial file was left", what: str = ""
) -> OutputError | None:
    """The `OutputError` for an exception raised while writing `path`, or None if it is not a write failure."""
    if isinstance(exc, OutputError):
        return exc
    if isinstance(exc, OSError):
        return output_error(path, exc, kept, what)
    text = str(exc).lower()
    if any(words in text for words in _DISK_FULL_WORDS) or (
        any(words in text for words in _WRITE_FAILED_WORDS) and _nearly_full(Path(path))
    ):
        return output_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), kept, what)
    if any(words in text for words in _WRITE_FAILED_WORDS):
        return OutputError(
            f"cannot write {what}{path}: the write failed ({str(exc).splitlines()[0][:200]}); {kept}. "
            "Check the disk and that the folder is writable, then run the same command again"
        )
    return None


def _nearly_full(path: Path) -> bool:
    """Whether the filesystem holding `path` has (almost) no room left: less than 64 KiB free."""
    for folder in (path, *path.parents):
        try:
            stats = os.statvfs(folder)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize < 64 * 1024
    return False


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(folder, exc) from exc


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    _mkdir(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        pause_point(f"file-write:{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        error = write_failure(path, exc) if isinstance(exc, Exception) else None
        if error is not None and error is not exc:
            raise error from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{OLD_SUFFIX}")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` (see `recover_directory`)."""
    path = Path(path)
    _mkdir(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp creates 0700
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        yield tmp
        mask = umask()
        for entry in sorted(tmp.rglob("*")):
            if entry.is_symlink():
                continue
            if entry.is_file():
                os.chmod(entry, 0o666 & ~mask)  # what a library wrote through its own temporary file (0600) too
                _fsync_file(entry)
            elif entry.is_dir():
                os.chmod(entry, 0o777 & ~mask)
        pause_point(f"dir-write:{path.name}")
        old = _old_path(path)
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            pause_point(f"dir-swap:{path.name}")
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
        if old.exists():  # this replacement's previous folder, or one a killed replacement left
            shutil.rmtree(old)
        _fsync_dir(path.parent)
    except BaseException as exc:
        error = write_failure(path, exc) if isinstance(exc, Exception) else None  # before the clean-up frees space
        shutil.rmtree(tmp, ignore_errors=True)
        if error is not None and error is not exc:
            raise error from exc
        raise


def recover_directory(path: str | os.PathLike) -> bool:
    """Undo a replacement interrupted between its two renames: put the previous folder back. True if it did."""
    path = Path(path)
    old = _old_path(path)
    if path.exists() or not old.is_dir():
        return False
    try:
        os.replace(old, path)
    except FileNotFoundError:  # another process of the same run recovered it first
        return False
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what killed atomic writers left in `folder` (not below it); returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        name = entry.name
        stale_tmp = name.startswith(".") and name.endswith(TMP_SUFFIX)
        stale_old = name.startswith(".") and name.endswith(OLD_SUFFIX) and (folder / name[1:-len(OLD_SUFFIX)]).exists()
        if stale_tmp or stale_old:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
    return removed
