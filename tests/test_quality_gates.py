"""Quality gates on constructed data. An ICR collapse and a churn spike on unchanged keys
fail the gate and keep the previous version current. A manual override publishes anyway
and records who and why, through the CLI and through the DAG."""

from __future__ import annotations

import getpass
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import VENV_BIN, read_jsonl, run_cli, write_config, write_jsonl
from onesearch_tasks.config import load_config
from onesearch_tasks.sid.refresh import QualityGateError, layout_for, run_refresh, warehouse_for
from onesearch_tasks.spark.demo_data import generate_demo_data
from onesearch_tasks.spark.kuaisearch import load_kuaisearch
from onesearch_tasks.spark.session import get_spark
from onesearch_tasks.storage import current_version, read_json, read_pointer
from secret_patterns import find_secrets
from test_dags import DAG_TEST_TIMEOUT_SECONDS, _airflow_env

pytestmark = pytest.mark.spark

DAY1, DAY2, DAY3, DAY4 = "2025-07-01", "2025-07-02", "2025-07-03", "2025-07-04"
COLLAPSED_SHARE = 0.8
SAME_TITLE = "同款 纯棉 短袖 T恤"
REASON = "catalog migration merges titles on purpose"


def _collapse_titles(source: Path, target: Path) -> None:
    """Copy source and give most items the same title, so they share one embedding."""
    shutil.copytree(source, target)
    items = read_jsonl(source / "items.jsonl")
    for row in items[: int(len(items) * COLLAPSED_SHARE)]:
        row["item_title"] = SAME_TITLE
    write_jsonl(target / "items.jsonl", items)


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """DAY1 published from good data, then DAY2 on collapsed titles, which fails its gate."""
    root = tmp_path_factory.mktemp("gates")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ONESEARCH_HOME", raising=False)
        patch.delenv("ONESEARCH_CONFIG", raising=False)
        generate_demo_data(root / "source", n_items=300, n_users=60, seed=5)
        _collapse_titles(root / "source", root / "collapsed")
        config_path = write_config(root / "config.yaml", root / "home")
        config = load_config(config_path)
        layout = layout_for(config)
        spark = get_spark(config)
        load_kuaisearch(spark, root / "source", warehouse_for(config, layout), DAY1)
        run_refresh(config, DAY1)
        shutil.copytree(root / "home", root / "day1-home")

        load_kuaisearch(spark, root / "collapsed", warehouse_for(config, layout), DAY2)
        with pytest.raises(QualityGateError) as failure:
            run_refresh(config, DAY2)
    return SimpleNamespace(root=root, config_path=config_path, layout=layout, spark=spark, failure=failure.value,
                           env={"ONESEARCH_CONFIG": str(config_path), "ONESEARCH_HOME": str(root / "home")})


def test_icr_collapse_fails_gate(gated):
    assert "items.icr=" in str(gated.failure)
    assert "Nothing was published" in str(gated.failure)
    metrics = read_json(gated.layout.run_dir(DAY2) / "metrics.json")
    assert metrics["entities"]["items"]["icr"] < 0.5
    assert metrics["gates"]["passed"] is False
    assert "override" not in metrics["gates"]


def test_icr_collapse_keeps_previous(gated):
    assert not (gated.layout.versions / f"{DAY2}.r1").exists()
    result = run_cli(["sid", "publish", "--ds", DAY2], gated.env)
    assert result.returncode == 2
    assert "failed its quality gates" in result.stderr
    assert "--override-gates --reason" in result.stderr
    assert current_version(gated.layout) == f"{DAY1}.r1"


def test_churn_spike_fails_gate(gated, tmp_path):
    """A corrupted reference (perturbed RQ codes) gives unchanged keys new SIDs."""
    home = tmp_path / "home"
    shutil.copytree(gated.root / "day1-home", home)
    reference = home / "sid" / "versions" / f"{DAY1}.r1"
    codes = np.load(reference / "rq_codes.npy")
    k_last = json.loads((reference / "model" / "rq_model.json").read_text())["k"][-1]
    codes[::2, -1] = (codes[::2, -1] + 1) % k_last
    np.save(reference / "rq_codes.npy", codes)

    config = load_config(write_config(tmp_path / "config.yaml", home))
    layout = layout_for(config)
    load_kuaisearch(gated.spark, gated.root / "source", warehouse_for(config, layout), DAY2)
    with pytest.raises(QualityGateError, match=r"items\.churn=0\.[1-9]\d* \(max 0\.0\)"):
        run_refresh(config, DAY2)
    assert current_version(layout) == f"{DAY1}.r1"
    metrics = read_json(layout.run_dir(DAY2) / "metrics.json")
    assert metrics["entities"]["items"]["status"].get("unchanged", 0) > 0


def test_override_needs_reason(gated):
    without_reason = run_cli(["sid", "evaluate", "--ds", DAY2, "--override-gates"], gated.env)
    assert without_reason.returncode == 2
    assert "needs a non-empty reason" in without_reason.stderr
    reason_only = run_cli(["sid", "evaluate", "--ds", DAY2, "--reason", REASON], gated.env)
    assert reason_only.returncode == 2
    assert "--reason is only used with --override-gates" in reason_only.stderr


def test_override_cli_publishes_with_author(gated):
    user = getpass.getuser()
    evaluated = run_cli(["sid", "evaluate", "--ds", DAY2, "--override-gates", "--reason", REASON], gated.env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    warnings = [line for line in evaluated.stderr.splitlines() if " WARNING " in line and "Overridden by" in line]
    assert len(warnings) == 1
    assert user in warnings[0]
    assert REASON in warnings[0]

    published = run_cli(["sid", "publish", "--ds", DAY2], gated.env)
    assert published.returncode == 0, published.stderr[-3000:]
    version = gated.layout.versions / f"{DAY2}.r1"
    assert current_version(gated.layout) == f"{DAY2}.r1"
    info = read_json(version / "version.json")
    assert info["gate_override"]["by"] == user
    assert info["gate_override"]["reason"] == REASON
    assert read_json(version / "metrics.json")["gates"]["override"]["by"] == user
    assert read_json(version / "manifest.json")["steps"]["evaluate"]["gates"]["override"]["reason"] == REASON
    assert f"overridden by {user}: {REASON}" in read_pointer(gated.layout)["reason"]


@pytest.mark.airflow
def test_override_dag_param_publishes(gated, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(gated.root / "day1-home", home)
    config_path = write_config(tmp_path / "config.yaml", home)
    env = _airflow_env(tmp_path, config_path)
    airflow = str(VENV_BIN / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]

    conf = {"source_dir": str(gated.root / "collapsed"), "override_gates": True, "override_reason": REASON}
    result = subprocess.run(
        [airflow, "dags", "test", "onesearch_sid_refresh", DAY3, "-c", json.dumps(conf)],
        env=env, capture_output=True, text=True, timeout=DAG_TEST_TIMEOUT_SECONDS, check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-3000:]
    # `airflow dags test` triggers its runs as the user "dag_test".
    info = json.loads((home / "sid" / "versions" / f"{DAY3}.r1" / "version.json").read_text())
    assert info["gate_override"]["by"] == "dag_test"
    assert info["gate_override"]["reason"] == REASON
    assert "Overridden by dag_test, reason: " + REASON in log
    assert find_secrets(log) == []
    # `airflow dags test` prints task logs to its output; scan any log files it also wrote.
    for path in (tmp_path / "airflow").rglob("*.log"):
        assert find_secrets(path.read_text(encoding="utf-8", errors="replace")) == [], path

    # An override without a reason fails before any work, without retries.
    result = subprocess.run(
        [airflow, "dags", "test", "onesearch_sid_refresh", DAY4, "-c", json.dumps({"override_gates": True})],
        env=env, capture_output=True, text=True, timeout=DAG_TEST_TIMEOUT_SECONDS, check=False,
    )
    log = result.stdout + result.stderr
    assert "needs a non-empty reason" in log
    assert "state=failed" in log, log[-3000:]
    assert "up_for_retry" not in log
    assert json.loads((home / "sid" / "CURRENT.json").read_text())["version"] == f"{DAY3}.r1"
