"""Security defaults: shipped services bind 127.0.0.1, the Airflow UI needs a login, the
repository contains no credentials, and training data contains no raw user id."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO_ROOT, VENV_BIN, read_jsonl, write_config, write_jsonl
from onesearch_tasks.config import load_config
from onesearch_tasks.data.builder import OUTPUT_DIR, build_training_data
from onesearch_tasks.sid.refresh import layout_for, run_refresh, warehouse_for
from onesearch_tasks.spark.demo_data import generate_demo_data
from onesearch_tasks.spark.kuaisearch import load_kuaisearch
from onesearch_tasks.spark.session import get_spark
from secret_patterns import find_secrets

LOOPBACK = "127.0.0.1"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
API_SERVER_START_SECONDS = 120
# Files that define the secret patterns, or test them, contain pattern-like text on purpose.
SECRET_SCAN_EXCLUDED = {"tests/secret_patterns.py"}


def _sourced_env(tmp_path: Path) -> dict[str, str]:
    """The environment after `source scripts/airflow_env.sh`, with a throwaway home."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "ONESEARCH"))}
    env["ONESEARCH_HOME"] = str(tmp_path / "home")
    result = subprocess.run(
        ["bash", "-c", "source scripts/airflow_env.sh && env -0"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return dict(item.split("=", 1) for item in result.stdout.split("\0") if "=" in item)


def test_airflow_env_binds_loopback(tmp_path):
    env = _sourced_env(tmp_path)
    probe = (
        "import json\n"
        "from airflow.configuration import conf\n"
        "print(json.dumps({\n"
        "    'api_host': conf.get('api', 'host'),\n"
        "    'health_host': conf.get('scheduler', 'scheduler_health_check_server_host'),\n"
        "    'auth_manager': conf.get('core', 'auth_manager'),\n"
        "    'all_admins': conf.get('core', 'simple_auth_manager_all_admins'),\n"
        "}))\n"
    )
    result = subprocess.run([str(VENV_BIN / "python"), "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads(result.stdout.strip().splitlines()[-1])
    assert settings["api_host"] == LOOPBACK
    assert settings["health_host"] == LOOPBACK
    assert settings["auth_manager"] == SIMPLE_AUTH_MANAGER
    assert settings["all_admins"].lower() == "false"
    assert env["SPARK_LOCAL_IP"] == LOOPBACK


def test_shipped_scripts_avoid_open_servers():
    launcher = (REPO_ROOT / "scripts" / "airflow_local.sh").read_text(encoding="utf-8")
    commands = [line.strip() for line in launcher.splitlines() if line.strip().startswith("airflow ")]
    by_component = {command.split()[1]: command for command in commands}
    assert f"--host {LOOPBACK}" in by_component["api-server"]
    assert "--skip-serve-logs" in by_component["scheduler"]
    assert "--skip-serve-logs" in by_component["triggerer"]
    for script in sorted((REPO_ROOT / "scripts").glob("*.sh")):
        text = script.read_text(encoding="utf-8")
        assert not re.search(r"^\s*airflow standalone", text, re.MULTILINE), script.name
        assert "0.0.0.0" not in text, script.name
        assert not re.search(r"SIMPLE_AUTH_MANAGER_ALL_ADMINS=[\"']?true", text, re.IGNORECASE), script.name


def test_compose_ports_bind_loopback():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))
    services = compose.get("services") or {}
    for name, service in services.items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else str(port.get("host_ip", "")) + ":"
            assert published.startswith(f"{LOOPBACK}:"), f"service {name} publishes {port} beyond loopback"


@pytest.mark.spark
def test_spark_session_loopback_without_ui(tmp_path):
    config = load_config(write_config(tmp_path / "config.yaml", tmp_path / "home"))
    spark = get_spark(config)
    assert spark.conf.get("spark.ui.enabled") == "false"
    assert spark.conf.get("spark.driver.bindAddress") == LOOPBACK
    assert spark.conf.get("spark.driver.host") == LOOPBACK


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _status_of(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.mark.airflow
def test_api_server_requires_login(tmp_path):
    env = _sourced_env(tmp_path)
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    airflow = str(VENV_BIN / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]

    port = _free_loopback_port()
    server = subprocess.Popen(
        [airflow, "api-server", "--host", LOOPBACK, "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + API_SERVER_START_SECONDS
        status = None
        while status is None and time.monotonic() < deadline and server.poll() is None:
            time.sleep(1)
            status = _status_of(f"http://{LOOPBACK}:{port}/api/v2/version")
        assert status is not None, "the API server did not answer on 127.0.0.1"
        dags = _status_of(f"http://{LOOPBACK}:{port}/api/v2/dags")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert dags in (401, 403), f"GET /api/v2/dags without a login returned {dags}"
    assert (tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated").is_file()


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True)
    files = []
    for name in listed.stdout.split("\0"):
        path = REPO_ROOT / name
        if not name or name in SECRET_SCAN_EXCLUDED or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        files.append(path)
    return files


def test_repository_has_no_secrets():
    files = _tracked_text_files()
    assert len(files) > 50, "git ls-files should list the repository's files"
    for path in files:
        found = find_secrets(path.read_text(encoding="utf-8", errors="replace"))
        assert found == [], f"{path.relative_to(REPO_ROOT)}: {found}"


def test_secret_patterns_match_examples():
    """The scan can fail: each pattern matches a made-up example of its kind."""
    examples = [
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        "AKIA" + "ABCDEFGHIJKLMNOP",
        "hf_" + "a" * 34,
        "password=" + "'hunter22'",
        "postgresql://airflow:" + "s3cret@db/airflow",
    ]
    for example in examples:
        assert find_secrets(example) != [], example


# --- training data ------------------------------------------------------------------------------


def _disguise_user_ids(source: Path) -> set[str]:
    """Replace every numeric user id in source with a distinctive string and return them.

    Distinctive ids make a substring scan meaningful: "u-7f3q-0017" cannot occur by chance
    in a SID, a count or a hash, while a bare "17" can.
    """
    raw_ids: set[str] = set()
    for name in ("users.jsonl", "recall.jsonl", "rank.jsonl"):
        rows = read_jsonl(source / name)
        for row in rows:
            if row.get("user_id") is not None:
                row["user_id"] = f"u-7f3q-{int(row['user_id']):04d}"
                raw_ids.add(row["user_id"])
        write_jsonl(source / name, rows)
    return raw_ids


@pytest.mark.spark
def test_training_files_hide_user_ids(tmp_path, monkeypatch):
    monkeypatch.delenv("ONESEARCH_HOME", raising=False)
    monkeypatch.delenv("ONESEARCH_CONFIG", raising=False)
    ds = "2025-09-01"
    generate_demo_data(tmp_path / "source", n_items=200, n_users=40, seed=9)
    raw_ids = _disguise_user_ids(tmp_path / "source")
    assert len(raw_ids) == 40

    config = load_config(write_config(tmp_path / "config.yaml", tmp_path / "home", rq={"mode": "full"}))
    layout = layout_for(config)
    load_kuaisearch(get_spark(config), tmp_path / "source", warehouse_for(config, layout), ds)
    published = run_refresh(config, ds)
    stats = build_training_data(config, layout, warehouse_for(config, layout))
    assert sum(stats["tasks"]["grpo"].values()) > 0, "the data should have per-user RL rows"
    # The raw ids do reach the pipeline: the version's extract keeps them for the builder.
    profiles = pd.read_parquet(published.path / "extract" / "user_profiles.parquet", columns=["user_id"])
    assert set(profiles["user_id"]) == raw_ids

    files = [path for path in (published.path / OUTPUT_DIR).rglob("*") if path.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_text(encoding="utf-8")
        leaked = sorted(user for user in raw_ids if user in data)
        assert leaked == [], f"{path.relative_to(published.path)} contains raw user ids {leaked[:5]}"
