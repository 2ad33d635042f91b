"""Crash safety of the SID steps: real `onesearch` processes are killed with SIGKILL inside
RQ, OPQ and publish, then the same data date is rerun and compared byte for byte with an
uninterrupted run. Also covers the per-date lock between two real processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import VENV_BIN, run_cli, write_config
from onesearch_tasks.config import load_config
from onesearch_tasks.sid.refresh import layout_for, run_embed, run_extract, run_refresh, warehouse_for
from onesearch_tasks.spark.demo_data import generate_demo_data
from onesearch_tasks.spark.kuaisearch import load_kuaisearch
from onesearch_tasks.spark.session import get_spark
from onesearch_tasks.storage import StateLayout, read_pointer, run_lock
from secret_patterns import find_secrets

pytestmark = pytest.mark.spark

PREVIOUS_DS, DS = "2025-06-01", "2025-06-02"
STEPS_AFTER_EMBED = ("rq", "opq", "evaluate", "publish")
# Upper bound for a paused step to reach its checkpoint; the pause itself lasts longer.
MARKER_WAIT_SECONDS = 120
PAUSE_SECONDS = "300"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A home with a published version for PREVIOUS_DS and the run folder of DS after embed.

    Each test copies this home, so every case starts from the same bytes.
    """
    root = tmp_path_factory.mktemp("crash")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ONESEARCH_HOME", raising=False)
        patch.delenv("ONESEARCH_CONFIG", raising=False)
        generate_demo_data(root / "source", n_items=300, n_users=60, seed=3)
        config = load_config(write_config(root / "config.yaml", root / "template", rq={"mode": "full"}))
        layout = layout_for(config)
        spark = get_spark(config)
        for ds in (PREVIOUS_DS, DS):
            load_kuaisearch(spark, root / "source", warehouse_for(config, layout), ds)
        run_refresh(config, PREVIOUS_DS)
        run_extract(config, DS)
        run_embed(config, DS)
    return SimpleNamespace(root=root, template=root / "template")


def _clone(prepared, tmp_path: Path) -> SimpleNamespace:
    home = tmp_path / "home"
    shutil.copytree(prepared.template, home)
    config_path = write_config(tmp_path / "config.yaml", home, rq={"mode": "full"})
    env = {"ONESEARCH_CONFIG": str(config_path), "ONESEARCH_HOME": str(home)}
    return SimpleNamespace(home=home, layout=StateLayout(home), env=env, logs=[])


def _step(case: SimpleNamespace, step: str) -> None:
    result = run_cli(["sid", step, "--ds", DS], case.env)
    case.logs.append(result.stderr)
    assert result.returncode == 0, f"onesearch sid {step} failed:\n{result.stderr[-3000:]}"


def _kill_at(case: SimpleNamespace, step: str, checkpoint: str, tmp_path: Path) -> subprocess.Popen:
    """Start `onesearch sid STEP`, wait until it pauses at checkpoint, and SIGKILL it."""
    marker = tmp_path / f"{checkpoint}.marker"
    env = {**os.environ, **case.env, "ONESEARCH_PAUSE_AT": checkpoint, "ONESEARCH_PAUSE_MARKER": str(marker), "ONESEARCH_PAUSE_SECONDS": PAUSE_SECONDS}
    process = subprocess.Popen([str(VENV_BIN / "onesearch"), "sid", step, "--ds", DS], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_marker(process, marker)
        pid = int(marker.read_text(encoding="utf-8"))
        assert pid == process.pid, "the paused process should be the one this test started"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    case.logs.append(process.stderr.read())
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return process


def _wait_for_marker(process: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + MARKER_WAIT_SECONDS
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"the step exited with {process.returncode} before its checkpoint:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint marker {marker} within {MARKER_WAIT_SECONDS} s")
        time.sleep(0.2)


def _normalized_manifest(path: Path) -> bytes:
    """manifest.json without the fields that differ between two runs of the same data.

    Dropped: each step's finished_at (wall-clock time) and config.home (the two runs
    live in different ONESEARCH_HOME folders). Every other field is compared.
    """
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["config"].pop("home", None)
    for info in manifest["steps"].values():
        info.pop("finished_at", None)
    return json.dumps(manifest, sort_keys=True).encode("utf-8")


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below folder, by relative path."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        relative = str(path.relative_to(folder))
        data = _normalized_manifest(path) if relative == "manifest.json" else path.read_bytes()
        digests[relative] = hashlib.sha256(data).hexdigest()
    return digests


def _assert_pointer_complete(layout: StateLayout) -> None:
    """The pointer names a folder that has its completion marker, version.json."""
    pointer = read_pointer(layout)
    assert pointer is not None
    folder = layout.version_dir(pointer["version"])
    assert (folder / "version.json").is_file(), f"CURRENT.json names {folder}, which lacks version.json"
    info = json.loads((folder / "version.json").read_text(encoding="utf-8"))
    assert info["version"] == pointer["version"]


@pytest.fixture(scope="module")
def baseline(prepared, tmp_path_factory) -> dict[str, str]:
    """Digests of the version that an uninterrupted run of DS publishes."""
    case = _clone(prepared, tmp_path_factory.mktemp("baseline"))
    for step in STEPS_AFTER_EMBED:
        _step(case, step)
    pointer = read_pointer(case.layout)
    assert pointer["version"] == f"{DS}.r1"
    return _digest(case.layout.version_dir(pointer["version"]))


@pytest.mark.parametrize(("step", "checkpoint"), [("rq", "rq.saved"), ("opq", "opq.saved"), ("publish", "publish.renamed")])
def test_kill_then_rerun_identical(prepared, baseline, tmp_path, step, checkpoint):
    case = _clone(prepared, tmp_path)
    position = STEPS_AFTER_EMBED.index(step)
    for earlier in STEPS_AFTER_EMBED[:position]:
        _step(case, earlier)

    _kill_at(case, step, checkpoint, tmp_path)
    _assert_pointer_complete(case.layout)
    assert read_pointer(case.layout)["version"] == f"{PREVIOUS_DS}.r1"

    # Rerun as an Airflow retry does: the killed step, then every later step.
    for later in STEPS_AFTER_EMBED[position:]:
        _step(case, later)

    _assert_pointer_complete(case.layout)
    pointer = read_pointer(case.layout)
    assert pointer["version"] == f"{DS}.r1"
    assert pointer["history"] == [f"{PREVIOUS_DS}.r1"]
    assert _digest(case.layout.version_dir(pointer["version"])) == baseline
    assert sorted(path.name for path in case.layout.versions.iterdir()) == [f"{PREVIOUS_DS}.r1", f"{DS}.r1"]
    assert list(case.layout.runs.iterdir()) == []
    assert not case.layout.publish_journal(DS).exists()
    with run_lock(case.layout, DS):
        pass  # the killed process left no lock behind
    for log in case.logs:
        assert find_secrets(log) == []


def test_stale_temp_files_not_published(prepared, baseline, tmp_path):
    """Temporary files that a writer killed mid-write leaves never enter a version."""
    case = _clone(prepared, tmp_path)
    for step in STEPS_AFTER_EMBED[:-1]:
        _step(case, step)
    run_dir = case.layout.run_dir(DS)
    (run_dir / ".rq_codes.npy.tmp-4242-0badf00d").write_bytes(b"half an array")
    (run_dir / "model" / ".opq.faiss.tmp-4242-deadbeef").write_bytes(b"half an index")
    (run_dir / ".model.old-12345678").mkdir()
    _step(case, "publish")
    assert _digest(case.layout.version_dir(f"{DS}.r1")) == baseline


def test_stale_extract_staging_removed(prepared, tmp_path):
    """Staging folders of a killed extract are removed by the next extract of that date."""
    case = _clone(prepared, tmp_path)
    stale = case.layout.runs / f".{DS}.staging-abc123"
    stale.mkdir()
    other_date = case.layout.runs / ".2025-06-03.staging-abc123"
    other_date.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONESEARCH_HOME", str(case.home))
        run_extract(load_config(case.env["ONESEARCH_CONFIG"]), DS)
    assert not stale.exists()
    assert other_date.exists(), "an extract must not touch other dates' staging folders"


def test_cli_lock_rejects_second_process(prepared, tmp_path):
    case = _clone(prepared, tmp_path)
    marker = tmp_path / "lock.marker"
    env = {**os.environ, **case.env, "ONESEARCH_PAUSE_AT": "rq.saved", "ONESEARCH_PAUSE_MARKER": str(marker), "ONESEARCH_PAUSE_SECONDS": PAUSE_SECONDS}
    holder = subprocess.Popen([str(VENV_BIN / "onesearch"), "sid", "rq", "--ds", DS], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_marker(holder, marker)
        same_step = run_cli(["sid", "rq", "--ds", DS], case.env)
        whole_refresh = run_cli(["sid", "refresh", "--ds", DS], case.env)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stderr.close()

    assert same_step.returncode == 2
    assert f"another process is working on data date {DS}" in same_step.stderr
    assert "Traceback" not in same_step.stderr
    assert whole_refresh.returncode == 2
    assert f"another process is working on data date {DS}" in whole_refresh.stderr
    # Once the holder is gone the lock is free again.
    _step(case, "rq")
