"""Publish a finished run folder as the current SID version, and roll back.

Publishing renames runs/<ds>/ to versions/<ds>.r<N>/ (one rename, same file system) and
then replaces CURRENT.json (one os.replace). version.json is written into the run folder
before the rename, so every folder under versions/ has it; it is the completion marker.
A crash between the two operations leaves a complete version that is not current. The
publish journal sid/publishing/<ds>.json names its run id, so publishing the same data
date again (with or without --run-id) finds that version and only moves the pointer.
After the rename no SID file of a version changes; only `onesearch build-data` adds its
training_data/ folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from onesearch_tasks.checkpoints import checkpoint
from onesearch_tasks.storage import (
    StateLayout,
    StorageError,
    VERSION_PATTERN,
    next_version_name,
    pointer_lock,
    read_json,
    read_pointer,
    remove_temp_entries,
    write_json_atomic,
    write_pointer,
)

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
VERSION_FILE = "version.json"
# Steps that must have finished before a run folder may be published.
REQUIRED_STEPS = ("extract", "embed", "rq", "opq", "evaluate")


@dataclass(frozen=True)
class PublishResult:
    version: str
    path: Path
    previous: str | None


def _find_version_by_run_id(layout: StateLayout, ds: str, run_id: str) -> str | None:
    if not layout.versions.is_dir():
        return None
    for entry in sorted(layout.versions.iterdir()):
        match = VERSION_PATTERN.match(entry.name)
        if not match or match.group(1) != ds:
            continue
        info_path = entry / VERSION_FILE
        if info_path.is_file() and read_json(info_path).get("run_id") == run_id:
            return entry.name
    return None


def _point_to(layout: StateLayout, version: str, reason: str) -> str | None:
    with pointer_lock(layout):
        pointer = read_pointer(layout)
        previous = pointer["version"] if pointer else None
        if previous == version:
            return previous
        history = [previous, *pointer.get("history", [])] if pointer else []
        write_pointer(layout, version, history, reason)
        return previous


def _journal_run_id(layout: StateLayout, ds: str) -> str | None:
    """Run id of an unfinished publish of ds, from its journal, or None."""
    journal = layout.publish_journal(ds)
    return read_json(journal).get("run_id") if journal.is_file() else None


def _accepted_gates(run_dir: Path, manifest: dict) -> dict | None:
    """Return the gate override of a run that failed its gates, None when the gates passed.

    Raises StorageError when the gates failed and no override was recorded.
    """
    gates = manifest["steps"]["evaluate"].get("gates", {})
    if gates.get("passed", False):
        return None
    override = gates.get("override")
    if not override:
        raise StorageError(
            f"run folder {run_dir} failed its quality gates ({gates.get('failures')}); it cannot be published. "
            "To publish anyway, rerun evaluate with --override-gates --reason TEXT"
        )
    logger.warning(
        "publishing run folder %s although its quality gates failed (%s): override by %s, reason: %s",
        run_dir, gates.get("failures"), override["by"], override["reason"],
    )
    return override


def publish_run(layout: StateLayout, ds: str, run_id: str | None = None) -> PublishResult:
    """Make the finished run of ds the current version. Safe to call again after a crash."""
    run_dir = layout.run_dir(ds)
    journal = layout.publish_journal(ds)
    if not run_dir.is_dir():
        resumed_run_id = run_id or _journal_run_id(layout, ds)
        if resumed_run_id:
            version = _find_version_by_run_id(layout, ds, resumed_run_id)
            if version:
                previous = _point_to(layout, version, f"publish {ds} (resumed)")
                journal.unlink(missing_ok=True)
                logger.info("run %s was already moved to version %s; pointer updated", resumed_run_id, version)
                return PublishResult(version, layout.version_dir(version), previous)
        raise StorageError(f"no run folder for data date {ds} at {run_dir}; run the refresh for {ds} first")

    manifest = read_json(run_dir / MANIFEST_FILE)
    if run_id and manifest.get("run_id") != run_id:
        raise StorageError(
            f"run folder {run_dir} belongs to run {manifest.get('run_id')}, not {run_id}; "
            "another run replaced it, so rerun the whole refresh for this date"
        )
    unfinished = [step for step in REQUIRED_STEPS if step not in manifest.get("steps", {})]
    if unfinished:
        raise StorageError(f"run folder {run_dir} is incomplete (steps not finished: {', '.join(unfinished)}); rerun them before publishing")
    override = _accepted_gates(run_dir, manifest)

    # A step killed mid-write leaves temporary files; they must not enter the version.
    remove_temp_entries(run_dir)
    version = next_version_name(layout, ds)
    info = {"version": version, "ds": ds, "run_id": manifest["run_id"]}
    reason = f"publish {ds}"
    if override:
        info["gate_override"] = override
        reason += f" (quality gates overridden by {override['by']}: {override['reason']})"
    write_json_atomic(run_dir / VERSION_FILE, info)
    write_json_atomic(journal, {"run_id": manifest["run_id"], "version": version})
    target = layout.version_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(run_dir, target)
    checkpoint("publish.renamed")
    previous = _point_to(layout, version, reason)
    journal.unlink()
    logger.info("published SID version %s (previous: %s) from run %s", version, previous, manifest["run_id"])
    return PublishResult(version, target, previous)


def rollback(layout: StateLayout) -> PublishResult:
    """Point CURRENT back at the version published before the current one."""
    with pointer_lock(layout):
        pointer = read_pointer(layout)
        if not pointer:
            raise StorageError(f"nothing to roll back: no version is published under {layout.sid_root}")
        history = list(pointer.get("history", []))
        while history and not layout.version_dir(history[0]).is_dir():
            logger.warning("skipping missing version %s in the rollback history", history[0])
            history.pop(0)
        if not history:
            raise StorageError(f"cannot roll back from {pointer['version']}: no earlier version is available")
        target = history.pop(0)
        write_pointer(layout, target, history, f"rollback from {pointer['version']}")
    logger.info("rolled back SID version %s -> %s", pointer["version"], target)
    return PublishResult(target, layout.version_dir(target), pointer["version"])
