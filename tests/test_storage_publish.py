"""Tests for the state layout, atomic writes, the run lock, publish/rollback and config loading."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onesearch_tasks.config import (
    CONFIG_ENV_VAR,
    DEFAULT_HOME,
    HOME_ENV_VAR,
    ConfigError,
    load_config,
    parse_set_options,
    run_overrides,
)
from onesearch_tasks.sid.publish import MANIFEST_FILE, REQUIRED_STEPS, VERSION_FILE, publish_run, rollback
from onesearch_tasks.storage import (
    StateLayout,
    StorageError,
    atomic_path,
    current_version,
    load_npy,
    next_version_name,
    read_json,
    read_pointer,
    resolve_version,
    run_lock,
    save_npy_atomic,
    validate_ds,
    write_json_atomic,
)

DS = "2025-01-31"
SUBPROCESS_TIMEOUT_S = 60

# Runs in a child Python: try to take the lock of one data date and print the outcome.
LOCK_SCRIPT = """
import sys
from pathlib import Path
from onesearch_tasks.storage import StateLayout, StorageError, run_lock
try:
    with run_lock(StateLayout(Path(sys.argv[1])), sys.argv[2]):
        print("acquired")
except StorageError as error:
    print("refused:", error)
"""

# Runs in a child Python: take the lock, report it, then wait to be killed.
HOLD_LOCK_SCRIPT = """
import sys, time
from pathlib import Path
from onesearch_tasks.storage import StateLayout, run_lock
with run_lock(StateLayout(Path(sys.argv[1])), sys.argv[2]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    return StateLayout(tmp_path / "home")


def try_lock_in_child(layout: StateLayout, ds: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LOCK_SCRIPT, str(layout.home), ds],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=True,
    )
    return result.stdout.strip()


# --- validate_ds and the layout ---------------------------------------------------------------


@pytest.mark.parametrize("ds", ["2025-13-01", "20250101", "", "2025-02-30", "2025-1-01", " 2025-01-01"])
def test_validate_ds_rejects(ds: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_ds(ds)

    assert repr(ds) in str(caught.value)


def test_validate_ds_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="20250101"):
        validate_ds(20250101)  # type: ignore[arg-type]


@pytest.mark.parametrize("ds", ["2025-01-31", "2024-02-29"])
def test_validate_ds_accepts(ds: str) -> None:
    assert validate_ds(ds) == ds


def test_layout_paths(layout: StateLayout) -> None:
    assert layout.run_dir(DS) == layout.home / "sid" / "runs" / DS
    assert layout.version_dir(f"{DS}.r2") == layout.home / "sid" / "versions" / f"{DS}.r2"
    assert layout.pointer == layout.home / "sid" / "CURRENT.json"
    assert layout.lock_path(DS) == layout.home / "sid" / "locks" / f"{DS}.lock"


def test_layout_invalid_version_raises(layout: StateLayout) -> None:
    with pytest.raises(ValueError, match="'2025-01-31.v1'"):
        layout.version_dir("2025-01-31.v1")


def test_layout_run_dir_invalid_ds(layout: StateLayout) -> None:
    with pytest.raises(ValueError, match="'2025-13-01'"):
        layout.run_dir("2025-13-01")


# --- atomic writes ---------------------------------------------------------------------------------


def test_atomic_path_replaces_file(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("old", encoding="utf-8")

    with atomic_path(target) as tmp:
        tmp.write_text("new", encoding="utf-8")

    assert target.read_text(encoding="utf-8") == "new"
    assert [entry.name for entry in tmp_path.iterdir()] == ["data.txt"]


def test_atomic_path_keeps_old_on_error(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("old", encoding="utf-8")

    with pytest.raises(RuntimeError, match="step failed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half written", encoding="utf-8")
            raise RuntimeError("step failed")

    assert target.read_text(encoding="utf-8") == "old"
    assert [entry.name for entry in tmp_path.iterdir()] == ["data.txt"]


def test_atomic_path_keeps_old_folder_on_error(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "a.npy").write_text("old", encoding="utf-8")

    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "b.npy").write_text("new", encoding="utf-8")
            raise RuntimeError("step failed")

    assert sorted(entry.name for entry in target.iterdir()) == ["a.npy"]
    assert [entry.name for entry in tmp_path.iterdir()] == ["model"]


def test_atomic_path_replaces_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "a.npy").write_text("old", encoding="utf-8")

    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b.npy").write_text("new", encoding="utf-8")

    assert sorted(entry.name for entry in target.iterdir()) == ["b.npy"]
    assert [entry.name for entry in tmp_path.iterdir()] == ["model"]


def test_write_json_byte_stable(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"

    write_json_atomic(first, {"b": 1, "a": [1, 2], "名称": "红色"})
    write_json_atomic(second, {"名称": "红色", "a": [1, 2], "b": 1})

    assert first.read_bytes() == second.read_bytes()


def test_write_json_numpy_and_path(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"

    write_json_atomic(target, {"count": np.int64(3), "share": np.float32(0.5), "where": Path("/x/y")})

    assert read_json(target) == {"count": 3, "share": 0.5, "where": "/x/y"}


def test_read_json_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="missing file"):
        read_json(tmp_path / "absent.json")


def test_read_json_corrupt_raises(tmp_path: Path) -> None:
    target = tmp_path / "bad.json"
    target.write_text("{", encoding="utf-8")

    with pytest.raises(StorageError, match="corrupt JSON"):
        read_json(target)


def test_npy_round_trip(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.int64).reshape(2, 3)

    save_npy_atomic(tmp_path / "codes.npy", array)

    np.testing.assert_array_equal(load_npy(tmp_path / "codes.npy"), array)


def test_load_npy_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="absent.npy"):
        load_npy(tmp_path / "absent.npy")


# --- run_lock --------------------------------------------------------------------------------------


def test_run_lock_refuses_second_process(layout: StateLayout) -> None:
    with run_lock(layout, DS):
        outcome = try_lock_in_child(layout, DS)

    assert outcome.startswith("refused:")
    assert DS in outcome


def test_run_lock_released_after_exit(layout: StateLayout) -> None:
    with run_lock(layout, DS):
        pass

    assert try_lock_in_child(layout, DS) == "acquired"


def test_run_lock_other_date_free(layout: StateLayout) -> None:
    with run_lock(layout, DS):
        outcome = try_lock_in_child(layout, "2025-02-01")

    assert outcome == "acquired"


def test_run_lock_released_on_kill(layout: StateLayout) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK_SCRIPT, str(layout.home), DS],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], SUBPROCESS_TIMEOUT_S)
        assert ready, f"the lock holder printed nothing within {SUBPROCESS_TIMEOUT_S} s"
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StorageError, match="another process"):
            with run_lock(layout, DS):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=SUBPROCESS_TIMEOUT_S)
        holder.stdout.close()

    with run_lock(layout, DS):
        assert layout.lock_path(DS).read_text(encoding="utf-8") == f"pid={os.getpid()}\n"


# --- publish and rollback --------------------------------------------------------------------------


def make_run(layout: StateLayout, ds: str, run_id: str, steps: tuple[str, ...] = REQUIRED_STEPS, passed: bool = True) -> Path:
    """Write a run folder as the refresh leaves it: a manifest of finished steps and one output."""
    run_dir = layout.run_dir(ds)
    run_dir.mkdir(parents=True)
    finished: dict[str, dict] = {step: {"finished": True} for step in steps}
    if "evaluate" in finished:
        finished["evaluate"]["gates"] = {"passed": passed, "failures": [] if passed else ["min_item_icr"]}
    write_json_atomic(run_dir / MANIFEST_FILE, {"run_id": run_id, "ds": ds, "steps": finished})
    (run_dir / "sids.txt").write_text(run_id, encoding="utf-8")
    return run_dir


def test_publish_first_run(layout: StateLayout) -> None:
    run_dir = make_run(layout, DS, "run-a")

    result = publish_run(layout, DS)

    assert result.version == f"{DS}.r1"
    assert result.path == layout.versions / f"{DS}.r1"
    assert result.previous is None
    assert not run_dir.exists()
    assert (result.path / "sids.txt").read_text(encoding="utf-8") == "run-a"
    assert read_pointer(layout)["version"] == f"{DS}.r1"
    assert read_json(result.path / VERSION_FILE) == {"version": f"{DS}.r1", "ds": DS, "run_id": "run-a"}


def test_publish_same_ds_second_attempt(layout: StateLayout) -> None:
    make_run(layout, DS, "run-a")
    publish_run(layout, DS)
    make_run(layout, DS, "run-b")

    result = publish_run(layout, DS, run_id="run-b")

    assert result.version == f"{DS}.r2"
    assert result.previous == f"{DS}.r1"
    assert current_version(layout) == f"{DS}.r2"
    assert read_pointer(layout)["history"] == [f"{DS}.r1"]
    assert (layout.versions / f"{DS}.r1" / "sids.txt").read_text(encoding="utf-8") == "run-a"


def test_publish_gates_failed_raises(layout: StateLayout) -> None:
    run_dir = make_run(layout, DS, "run-a", passed=False)

    with pytest.raises(StorageError, match="quality gates"):
        publish_run(layout, DS)

    assert run_dir.is_dir()
    assert read_pointer(layout) is None


@pytest.mark.parametrize("missing", REQUIRED_STEPS)
def test_publish_missing_step_raises(layout: StateLayout, missing: str) -> None:
    steps = tuple(step for step in REQUIRED_STEPS if step != missing)
    make_run(layout, DS, "run-a", steps=steps)

    with pytest.raises(StorageError, match=f"steps not finished: {missing}"):
        publish_run(layout, DS)

    assert read_pointer(layout) is None


def test_publish_other_run_id_raises(layout: StateLayout) -> None:
    make_run(layout, DS, "run-a")

    with pytest.raises(StorageError, match="belongs to run run-a, not run-b"):
        publish_run(layout, DS, run_id="run-b")


def test_publish_without_run_raises(layout: StateLayout) -> None:
    with pytest.raises(StorageError, match="no run folder"):
        publish_run(layout, DS)


def test_publish_resumes_after_crash(layout: StateLayout) -> None:
    make_run(layout, "2025-01-30", "run-old")
    publish_run(layout, "2025-01-30")
    # Simulate a crash between the rename and the pointer update.
    run_dir = make_run(layout, DS, "run-a")
    write_json_atomic(run_dir / VERSION_FILE, {"version": f"{DS}.r1", "ds": DS, "run_id": "run-a"})
    os.rename(run_dir, layout.version_dir(f"{DS}.r1"))
    assert current_version(layout) == "2025-01-30.r1"

    result = publish_run(layout, DS, run_id="run-a")

    assert result.version == f"{DS}.r1"
    assert result.previous == "2025-01-30.r1"
    assert current_version(layout) == f"{DS}.r1"
    assert read_pointer(layout)["history"] == ["2025-01-30.r1"]


def test_publish_resume_is_idempotent(layout: StateLayout) -> None:
    make_run(layout, DS, "run-a")
    publish_run(layout, DS, run_id="run-a")

    again = publish_run(layout, DS, run_id="run-a")

    assert again.version == f"{DS}.r1"
    assert current_version(layout) == f"{DS}.r1"
    assert read_pointer(layout)["history"] == []


def test_publish_resume_unknown_run_raises(layout: StateLayout) -> None:
    make_run(layout, DS, "run-a")
    publish_run(layout, DS, run_id="run-a")

    with pytest.raises(StorageError, match="no run folder"):
        publish_run(layout, DS, run_id="run-z")


def test_rollback_to_previous(layout: StateLayout) -> None:
    for ds, run_id in (("2025-01-30", "run-a"), (DS, "run-b")):
        make_run(layout, ds, run_id)
        publish_run(layout, ds)

    result = rollback(layout)

    assert result.version == "2025-01-30.r1"
    assert result.previous == f"{DS}.r1"
    assert current_version(layout) == "2025-01-30.r1"
    assert (layout.version_dir(f"{DS}.r1")).is_dir()


def test_rollback_without_earlier_raises(layout: StateLayout) -> None:
    make_run(layout, DS, "run-a")
    publish_run(layout, DS)

    with pytest.raises(StorageError, match="no earlier version"):
        rollback(layout)

    assert current_version(layout) == f"{DS}.r1"


def test_rollback_twice_then_raises(layout: StateLayout) -> None:
    for ds, run_id in (("2025-01-30", "run-a"), (DS, "run-b")):
        make_run(layout, ds, run_id)
        publish_run(layout, ds)
    rollback(layout)

    with pytest.raises(StorageError, match="no earlier version"):
        rollback(layout)


def test_rollback_nothing_published_raises(layout: StateLayout) -> None:
    with pytest.raises(StorageError, match="nothing to roll back"):
        rollback(layout)


def test_rollback_skips_missing_version(layout: StateLayout) -> None:
    for ds, run_id in (("2025-01-29", "run-a"), ("2025-01-30", "run-b"), (DS, "run-c")):
        make_run(layout, ds, run_id)
        publish_run(layout, ds)
    os.rename(layout.version_dir("2025-01-30.r1"), layout.home / "moved-away")

    result = rollback(layout)

    assert result.version == "2025-01-29.r1"


def test_next_version_name(layout: StateLayout) -> None:
    for name in (f"{DS}.r1", f"{DS}.r7", "2025-02-01.r9", "notes"):
        (layout.versions / name).mkdir(parents=True)

    assert next_version_name(layout, DS) == f"{DS}.r8"
    assert next_version_name(layout, "2025-01-01") == "2025-01-01.r1"


def test_resolve_current(layout: StateLayout) -> None:
    make_run(layout, DS, "run-a")
    publish_run(layout, DS)

    assert resolve_version(layout, "current") == (f"{DS}.r1", layout.version_dir(f"{DS}.r1"))
    assert resolve_version(layout, None)[0] == f"{DS}.r1"


def test_resolve_nothing_published_raises(layout: StateLayout) -> None:
    with pytest.raises(StorageError, match="no SID version is published"):
        resolve_version(layout, "current")


def test_resolve_unknown_version_raises(layout: StateLayout) -> None:
    with pytest.raises(StorageError, match="'2025-01-31.r4' not found"):
        resolve_version(layout, f"{DS}.r4")


# --- config ------------------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(HOME_ENV_VAR, raising=False)
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    path = tmp_path / "config.yaml"
    path.write_text("home: file-home\nrq:\n  k: '16-16-16'\n  mode: full\nopq:\n  m: 4\n", encoding="utf-8")
    return path


def config_error(path: Path, overrides: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


def test_config_reads_file(config_file: Path) -> None:
    config = load_config(config_file)

    assert config.rq.k == (16, 16, 16)
    assert config.rq.mode == "full"
    assert config.opq.m == 4
    assert config.opq.bits == 8  # default for a field the file leaves out


def test_config_override_k_string(config_file: Path) -> None:
    config = load_config(config_file, {"rq.k": "8-8-8", "rq.balanced_type": 1})

    assert config.rq.k == (8, 8, 8)
    assert config.rq.balanced_type == 1
    assert config.rq.depth == 3


def test_config_none_override_ignored(config_file: Path) -> None:
    config = load_config(config_file, {"rq.k": None})

    assert config.rq.k == (16, 16, 16)


def test_config_set_options(config_file: Path) -> None:
    overrides = parse_set_options(["rq.k=8-8", "rq.cap_k=true", "opq.bits=4"])

    config = load_config(config_file, overrides)

    assert config.rq.k == (8, 8)
    assert config.rq.cap_k is True
    assert config.opq.bits == 4


def test_config_set_single_layer_k(config_file: Path) -> None:
    config = load_config(config_file, parse_set_options(["rq.k=16"]))

    assert config.rq.k == (16,)


def test_config_invalid_set_option_raises() -> None:
    with pytest.raises(ConfigError, match="'rq.k'"):
        parse_set_options(["rq.k"])


@pytest.mark.parametrize("value", ["8x8", "8--8", "-8", "8,8"])
def test_config_invalid_k_raises(config_file: Path, value: str) -> None:
    message = config_error(config_file, {"rq.k": value})

    assert "rq.k" in message
    assert repr(value) in message


def test_config_zero_k_raises(config_file: Path) -> None:
    assert "rq.k" in config_error(config_file, {"rq.k": "8-0"})


def test_config_unknown_key_raises(config_file: Path) -> None:
    message = config_error(config_file, {"rq.bogus": 1})

    assert "rq.bogus" in message
    assert "Extra inputs are not permitted" in message


def test_config_unknown_section_raises(config_file: Path) -> None:
    assert "ranking" in config_error(config_file, {"ranking.depth": 2})


def test_config_balanced1_two_layers_raises(config_file: Path) -> None:
    message = config_error(config_file, {"rq.k": "8-8", "rq.balanced_type": 1})

    assert "rq.balanced_type=1" in message
    assert "3 layers" in message


def test_config_balanced2_one_layer_raises(config_file: Path) -> None:
    assert "rq.balanced_type=2" in config_error(config_file, {"rq.k": "8", "rq.balanced_type": 2})


def test_config_referlayer_above_depth_raises(config_file: Path) -> None:
    message = config_error(config_file, {"rq.k": "8-8-8", "rq.referlayer": 4})

    assert "rq.referlayer=4" in message
    assert "depth 3" in message


def test_config_referlayer_default_depth(config_file: Path) -> None:
    assert load_config(config_file).rq.effective_referlayer == 3
    assert load_config(config_file, {"rq.referlayer": 1}).rq.effective_referlayer == 1


def test_config_error_names_file(config_file: Path) -> None:
    assert str(config_file) in config_error(config_file, {"opq.bits": 0})


def test_config_override_into_value_raises(config_file: Path) -> None:
    assert "'home' is not a section" in config_error(config_file, {"home.path": "x"})


def test_config_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_config_env_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config_file))

    assert load_config().rq.k == (16, 16, 16)


def test_config_home_env_wins(config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOME_ENV_VAR, str(tmp_path / "env-home"))

    config = load_config(config_file)

    assert config.home_path == (tmp_path / "env-home").resolve()


def test_config_home_from_file(config_file: Path) -> None:
    config = load_config(config_file)

    assert config.home_path == Path("file-home").resolve()


def test_config_home_default(config_file: Path) -> None:
    config_file.write_text("rq:\n  k: '8-8'\n", encoding="utf-8")

    assert load_config(config_file).home_path == DEFAULT_HOME


def test_run_overrides_maps_names() -> None:
    assert run_overrides(k="8-8-8", opq_bits=4, mode=None) == {"rq.k": "8-8-8", "opq.bits": 4}


def test_run_overrides_unknown_raises() -> None:
    with pytest.raises(ConfigError, match="unknown run settings"):
        run_overrides(depth=3)


def test_pointer_file_is_json(layout: StateLayout) -> None:
    make_run(layout, DS, "run-a")
    publish_run(layout, DS)

    payload = json.loads(layout.pointer.read_text(encoding="utf-8"))

    assert set(payload) == {"version", "history", "reason", "updated_at"}
    assert payload["reason"] == f"publish {DS}"
