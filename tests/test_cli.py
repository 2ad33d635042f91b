"""The `onesearch` command as a user runs it: help, clear errors, and a full refresh flow."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import SID_PATTERN, make_day_two, read_jsonl, run_cli, write_config

COMMANDS = [
    [], ["sid"], ["load-kuaisearch"], ["demo-data"], ["opq-encode"],
    ["sid", "refresh"], ["sid", "extract"], ["sid", "embed"], ["sid", "rq"], ["sid", "opq"],
    ["sid", "evaluate"], ["sid", "publish"], ["sid", "export"], ["sid", "metrics"],
    ["sid", "versions"], ["sid", "rollback"], ["build-data"], ["data"], ["data", "stats"],
]


@pytest.fixture
def empty_home(tmp_path):
    config_path = write_config(tmp_path / "config.yaml", tmp_path / "home")
    return {"ONESEARCH_CONFIG": str(config_path), "ONESEARCH_HOME": str(tmp_path / "home")}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda words: " ".join(words) or "root")
def test_help_for_every_command(command):
    result = run_cli([*command, "--help"], {})
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_metrics_before_publish_is_clear(empty_home):
    result = run_cli(["sid", "metrics"], empty_home)
    assert result.returncode == 2
    assert "no SID version is published" in result.stderr


def test_export_unknown_version_is_clear(empty_home, tmp_path):
    result = run_cli(["sid", "export", "--kind", "items", "--version", "2099-01-01.r1", "--out", str(tmp_path / "x.tsv")], empty_home)
    assert result.returncode == 2
    assert "SID version '2099-01-01.r1' not found" in result.stderr


def test_export_malformed_version_is_clear(empty_home, tmp_path):
    result = run_cli(["sid", "export", "--kind", "items", "--version", "latest", "--out", str(tmp_path / "x.tsv")], empty_home)
    assert result.returncode == 2
    assert "invalid SID version 'latest'" in result.stderr


def test_rollback_without_versions_is_clear(empty_home):
    result = run_cli(["sid", "rollback"], empty_home)
    assert result.returncode == 2
    assert "nothing to roll back" in result.stderr


def test_invalid_date_is_clear(empty_home):
    result = run_cli(["sid", "refresh", "--ds", "2025-13-01"], empty_home)
    assert result.returncode == 2
    assert "invalid data date '2025-13-01'" in result.stderr


def test_invalid_k_is_clear(empty_home):
    result = run_cli(["sid", "refresh", "--ds", "2025-01-01", "--k", "8-x-8"], empty_home)
    assert result.returncode == 2
    assert "rq.k='8-x-8'" in result.stderr


def test_unknown_config_key_is_clear(empty_home):
    result = run_cli(["sid", "versions", "--help"], empty_home)
    assert result.returncode == 0
    result = run_cli(["sid", "refresh", "--ds", "2025-01-01", "--set", "rq.kk=3"], empty_home)
    assert result.returncode == 2
    assert "kk" in result.stderr


def test_build_data_unknown_version_is_clear(empty_home):
    result = run_cli(["build-data", "--version", "2099-01-01.r1"], empty_home)
    assert result.returncode == 2
    assert "SID version '2099-01-01.r1' not found" in result.stderr


@pytest.mark.parametrize("args", [["sid", "refrsh"], ["sid", "refresh"], ["sid", "export", "--kind", "users", "--out", "x"], ["sid", "refresh", "--ds", "2025-01-01", "--opq-m", "x"]], ids=["typo", "missing-ds", "bad-choice", "bad-int"])
def test_usage_errors_exit_2_without_traceback(empty_home, args):
    result = run_cli(args, empty_home)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Error" in result.stderr


def test_step_out_of_order_names_fix(empty_home, tmp_path):
    run_dir = tmp_path / "home" / "sid" / "runs" / "2025-01-01"
    run_dir.mkdir(parents=True)
    manifest = {"ds": "2025-01-01", "run_id": "x", "config": {}, "reference_version": None, "steps": {"extract": {}}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli(["sid", "rq", "--ds", "2025-01-01"], empty_home)
    assert result.returncode == 2
    assert "run `onesearch sid embed --ds 2025-01-01`" in result.stderr


def test_missing_config_file_is_clear(tmp_path):
    result = run_cli(["--config", str(tmp_path / "nope.yaml"), "sid", "versions"], {})
    assert result.returncode == 2
    assert "config file not found" in result.stderr


def test_load_missing_source_is_clear(empty_home, tmp_path):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "items.jsonl").write_text("")
    result = run_cli(["load-kuaisearch", "--source", str(tmp_path / "partial"), "--ds", "2025-01-01"], empty_home)
    assert result.returncode == 2
    assert "lacks users.jsonl" in result.stderr


@pytest.mark.spark
def test_cli_refresh_export_encode_rollback(empty_home, tmp_path, kuaisearch_demo):
    """load-kuaisearch, two refreshes, export, metrics, opq-encode and rollback, all via the CLI."""
    assert run_cli(["load-kuaisearch", "--source", str(kuaisearch_demo), "--ds", "2025-04-01"], empty_home).returncode == 0
    first = run_cli(["sid", "refresh", "--ds", "2025-04-01", "--mode", "full"], empty_home)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout)["version"] == "2025-04-01.r1"

    make_day_two(kuaisearch_demo, tmp_path / "day2")
    assert run_cli(["load-kuaisearch", "--source", str(tmp_path / "day2"), "--ds", "2025-04-02"], empty_home).returncode == 0
    second = run_cli(["sid", "refresh", "--ds", "2025-04-02"], empty_home)
    assert second.returncode == 0, second.stderr[-3000:]

    out = tmp_path / "items.tsv"
    assert run_cli(["sid", "export", "--kind", "items", "--out", str(out)], empty_home).returncode == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    catalog = {str(row["item_id"]) for row in read_jsonl(tmp_path / "day2" / "items.jsonl")}
    exported = dict(line.split("\t") for line in lines)
    assert catalog <= set(exported)
    assert all(re.match(SID_PATTERN, sid) for sid in exported.values())

    queries_out = tmp_path / "queries.tsv"
    assert run_cli(["sid", "export", "--kind", "queries", "--version", "2025-04-01.r1", "--out", str(queries_out)], empty_home).returncode == 0
    assert len(queries_out.read_text(encoding="utf-8").splitlines()) > 100

    metrics = run_cli(["sid", "metrics"], empty_home)
    assert json.loads(metrics.stdout)["entities"]["items"]["churn"]["churn"] == 0.0
    summary = run_cli(["sid", "metrics", "--summary"], empty_home)
    assert "items" in summary.stdout
    assert "ICR=" in summary.stdout

    # opq-encode on the stored vectors of the current version reproduces its SIDs.
    version = tmp_path / "home" / "sid" / "versions" / "2025-04-02.r1"
    keys = pd.read_parquet(version / "keys.parquet")
    vectors = np.load(version / "embeddings.npy")
    items = (keys["entity"] == "items").to_numpy()
    table = pd.DataFrame({"key": keys.loc[items, "key"].to_numpy(), "embedding": list(vectors[items])})
    table.to_parquet(tmp_path / "encode_in.parquet")
    encoded = tmp_path / "encoded.tsv"
    result = run_cli(["opq-encode", "--input", str(tmp_path / "encode_in.parquet"), "--out", str(encoded)], empty_home)
    assert result.returncode == 0, result.stderr[-3000:]
    encoded_sids = dict(line.split("\t") for line in encoded.read_text(encoding="utf-8").splitlines())
    assert encoded_sids == {key: exported[key] for key in encoded_sids}

    rollback = run_cli(["sid", "rollback"], empty_home)
    assert rollback.returncode == 0, rollback.stderr
    assert json.loads(rollback.stdout)["version"] == "2025-04-01.r1"
    versions = json.loads(run_cli(["sid", "versions"], empty_home).stdout)
    assert versions["pointer"]["version"] == "2025-04-01.r1"
    assert versions["versions"] == ["2025-04-01.r1", "2025-04-02.r1"]
