"""State layout under $ONESEARCH_HOME and the atomic file operations every step uses.

Layout::

    $ONESEARCH_HOME/
      warehouse/<table>/ds=YYYY-MM-DD/*.parquet   embedded Spark tables
      sid/runs/<ds>/                             working folder of the run for one data date
      sid/versions/<ds>.r<N>/                    published SID versions (SID files never change;
                                                 build-data adds training_data/)
      sid/CURRENT.json                           pointer to the current version, with history
      sid/locks/<ds>.lock                        one writer per data date
      sid/locks/pointer.lock                     one writer of CURRENT.json at a time
      sid/publishing/<ds>.json                   publish journal: run id and version name,
                                                 present only while a publish is unfinished

A run folder is built step by step and renamed into ``versions/`` on publish. The pointer
is replaced with ``os.replace``, so readers see either the old or the new version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DS_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
VERSION_PATTERN = re.compile(r"^(\d{4}-\d{2}-\d{2})\.r(\d+)$")
POINTER_NAME = "CURRENT.json"


class StorageError(RuntimeError):
    """A state folder is missing, locked or inconsistent."""


class LockedError(StorageError):
    """Another process holds the lock of a data date; retrying later can succeed."""


def validate_ds(ds: str) -> str:
    """Return ds if it is a real YYYY-MM-DD date, else raise ValueError naming it."""
    if not isinstance(ds, str) or not DS_PATTERN.match(ds):
        raise ValueError(f"invalid data date {ds!r}: expected YYYY-MM-DD, for example 2025-01-31")
    try:
        dt.date.fromisoformat(ds)
    except ValueError as error:
        raise ValueError(f"invalid data date {ds!r}: {error}") from error
    return ds


@dataclass(frozen=True)
class StateLayout:
    """Paths of all state under one home folder."""

    home: Path

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse"

    @property
    def sid_root(self) -> Path:
        return self.home / "sid"

    @property
    def runs(self) -> Path:
        return self.sid_root / "runs"

    @property
    def versions(self) -> Path:
        return self.sid_root / "versions"

    @property
    def pointer(self) -> Path:
        return self.sid_root / POINTER_NAME

    def run_dir(self, ds: str) -> Path:
        return self.runs / validate_ds(ds)

    def version_dir(self, version: str) -> Path:
        if not VERSION_PATTERN.match(version):
            raise ValueError(f"invalid SID version {version!r}: expected YYYY-MM-DD.rN, for example 2025-01-31.r1")
        return self.versions / version

    def lock_path(self, ds: str) -> Path:
        return self.sid_root / "locks" / f"{validate_ds(ds)}.lock"

    @property
    def pointer_lock_path(self) -> Path:
        return self.sid_root / "locks" / "pointer.lock"

    def publish_journal(self, ds: str) -> Path:
        return self.sid_root / "publishing" / f"{validate_ds(ds)}.json"


# --- atomic writes -------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside target, then rename it onto target on success.

    Works for files and folders. On error the temporary path is removed and target is
    left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            # os.replace cannot swap a non-empty folder, so move the old one aside first.
            old = target.parent / f".{target.name}.old-{os.urandom(4).hex()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


# Names that atomic_path and the extract step give their temporary entries. A process
# killed mid-write leaves them behind.
TEMP_ENTRY_PATTERN = re.compile(r"^\..+\.(tmp-\d+-[0-9a-f]{8}|old-[0-9a-f]{8})$")


def remove_temp_entries(folder: Path, pattern: re.Pattern[str] = TEMP_ENTRY_PATTERN, recursive: bool = True) -> list[Path]:
    """Delete the temporary files and folders that killed writers left in folder.

    Call this only while holding the lock that every writer of those entries takes,
    because a live writer's temporary entry looks the same. Returns the removed paths.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    candidates = folder.rglob(".*") if recursive else folder.glob(".*")
    for path in sorted(candidates):
        if not pattern.match(path.name):
            continue
        if not path.exists():
            continue  # inside a temporary folder removed earlier in this loop
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    if removed:
        logger.warning("removed %d temporary entries left by a killed process under %s: %s", len(removed), folder, [p.name for p in removed])
    return removed


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomic(target: Path, payload: Any) -> None:
    """Write JSON with sorted keys, so the same payload always gives the same bytes."""
    text = json.dumps(payload, ensure_ascii=False, indent=2, sort_keys=True, default=_json_default)
    write_bytes_atomic(target, (text + "\n").encode("utf-8"))


def _json_default(value: Any) -> Any:
    # numpy scalars and paths appear in metrics; convert without importing numpy here.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as error:
        raise StorageError(f"missing file {path}") from error
    except json.JSONDecodeError as error:
        raise StorageError(f"corrupt JSON in {path}: {error}; delete the folder and rerun the step") from error


def write_parquet_atomic(target: Path, table: Any) -> None:
    """Write a pyarrow Table or pandas DataFrame to one parquet file atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def save_npy_atomic(target: Path, array: Any) -> None:
    import numpy as np

    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path) -> Any:
    import numpy as np

    if not path.exists():
        raise StorageError(f"missing array file {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise StorageError(f"array file {path} cannot be read ({error}); the file is truncated or corrupt") from error


# --- locking ----------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(layout: StateLayout, ds: str) -> Iterator[None]:
    """Hold an exclusive lock for one data date, or raise StorageError at once if another
    process holds it. The lock is released when the process exits, even on SIGKILL."""
    path = layout.lock_path(ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise LockedError(
                    f"another process is working on data date {ds} (lock {path}); wait for it to finish"
                ) from error
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid={os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


@contextlib.contextmanager
def pointer_lock(layout: StateLayout) -> Iterator[None]:
    """Hold the lock of CURRENT.json, waiting until it is free.

    Runs of different data dates share the pointer, so every read-modify-write of it
    happens under this lock."""
    path = layout.pointer_lock_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- published versions ---------------------------------------------------------------------


def read_pointer(layout: StateLayout) -> dict[str, Any] | None:
    """Return the CURRENT pointer ({version, history, ...}) or None before the first publish."""
    if not layout.pointer.exists():
        return None
    return read_json(layout.pointer)


def current_version(layout: StateLayout) -> str | None:
    pointer = read_pointer(layout)
    return pointer["version"] if pointer else None


def resolve_version(layout: StateLayout, version: str | None) -> tuple[str, Path]:
    """Map 'current', None or an explicit version id to (version, folder)."""
    if version in (None, "", "current"):
        name = current_version(layout)
        if name is None:
            raise StorageError(
                f"no SID version is published under {layout.sid_root}; run the refresh first "
                "(make demo, or onesearch sid refresh --ds DATE)"
            )
    else:
        name = version
    folder = layout.version_dir(name)
    if not folder.is_dir():
        raise StorageError(f"SID version {name!r} not found at {folder}; list versions with `ls {layout.versions}`")
    return name, folder


def next_version_name(layout: StateLayout, ds: str) -> str:
    """Pick `<ds>.r<N>` with N one above the highest existing attempt for that date."""
    attempts = [0]
    if layout.versions.is_dir():
        for entry in layout.versions.iterdir():
            match = VERSION_PATTERN.match(entry.name)
            if match and match.group(1) == ds:
                attempts.append(int(match.group(2)))
    return f"{ds}.r{max(attempts) + 1}"


def write_pointer(layout: StateLayout, version: str, history: list[str], reason: str) -> None:
    """Point CURRENT at version atomically. history lists earlier versions, newest first."""
    payload = {
        "version": version,
        "history": history,
        "reason": reason,
        "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(layout.pointer, payload)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
