"""Shared fixtures: paths to the public KuaiSearch demo, test configs and day-two data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DEMO = REPO_ROOT.parent / "shared" / "kuaisearch-demo"
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
VENV_BIN = Path(sys.executable).parent
SID_PATTERN = r"^<a_\d+><b_\d+><c_\d+><d_\d+><d_(2[5-9]\d|[3-9]\d\d)>$"

# Day two of the KuaiSearch demo, built by make_day_two.
CHANGED_ITEMS = 3
NEW_ITEMS = 5
REMOVED_ITEMS = 2


@pytest.fixture(scope="session")
def kuaisearch_demo() -> Path:
    if not SHARED_DEMO.is_dir():
        pytest.skip(f"public KuaiSearch demo not found at {SHARED_DEMO}")
    return SHARED_DEMO


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_day_two(source: Path, target: Path) -> dict[str, list[str]]:
    """Copy the demo and edit the catalog: change 3 titles, add 5 items, drop 2 items.

    Returns the affected item ids as strings under keys changed, new, removed.
    """
    target.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.jsonl"):
        shutil.copy(path, target / path.name)
    items = read_jsonl(source / "items.jsonl")
    changed = items[:CHANGED_ITEMS]
    for row in changed:
        row["item_title"] = row["item_title"] + " 2025新款"
    removed = items[CHANGED_ITEMS : CHANGED_ITEMS + REMOVED_ITEMS]
    kept = [row for row in items if row not in removed]
    new_rows = []
    for offset in range(NEW_ITEMS):
        row = dict(items[20 + offset])
        row["item_id"] = 99_000_000 + offset
        row["item_title"] = "上新 " + row["item_title"] + f" 第{offset}款"
        new_rows.append(row)
    write_jsonl(target / "items.jsonl", kept + new_rows)
    return {
        "changed": [str(row["item_id"]) for row in changed],
        "new": [str(row["item_id"]) for row in new_rows],
        "removed": [str(row["item_id"]) for row in removed],
    }


def write_config(path: Path, home: Path, **sections: dict) -> Path:
    """Write a config file: configs/demo.yaml plus `home` and the given section overrides."""
    tree = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    tree["home"] = str(home)
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop ONESEARCH_* variables of the calling shell, so tests use their own config and home."""
    monkeypatch.delenv("ONESEARCH_HOME", raising=False)
    monkeypatch.delenv("ONESEARCH_CONFIG", raising=False)


def run_cli(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed `onesearch` command the way a user would."""
    return subprocess.run(
        [str(VENV_BIN / "onesearch"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
