"""Run the SID refresh benchmark once at a small size: it must finish and write its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL_RUN = ["--keys", "6000", "--dim", "16", "--k", "16-16-16", "--dict-terms", "1500", "--new-fraction", "0.01,0.1"]
STEPS = ("load", "keywords", "rq_layer_1", "rq_layer_2", "rq_layer_3", "rq", "opq_train", "opq_encode", "write", "metrics")


def test_benchmark_small_run(tmp_path: Path) -> None:
    output = tmp_path / "result.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sid_refresh.py"), *SMALL_RUN, "--workdir", str(tmp_path / "work"), "--json", str(output)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(output.read_text(encoding="utf-8"))

    for name in ("total_seconds", "floor_seconds", "matmul_gflops", "icr", "peak_rss_mb"):
        assert result[name] > 0, name
    for step in STEPS:
        assert f"{step}_seconds" in result, step
    assert 0.5 < result["icr"] <= 1.0
    assert result["baseline"]["icr"] > 0.5
    assert result["balanced"]["stored_last_layer_centroids"] > 0
    assert [run["new_fraction"] for run in result["incremental"]] == [0.01, 0.1]
    assert [run["new_keys"] for run in result["incremental"]] == [60, 600]
    assert all(run["churn"] == 0.0 for run in result["incremental"])
    assert {target["name"] for target in result["targets"]} >= {"keyword enhancement keys/s >= 200k", "full ICR >= plain faiss ICR"}
    assert "SID refresh benchmark" in completed.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--k", "8-8", "--referlayer", "3"], "--referlayer 3 must be between 0 and the 2 layers"),
        (["--k", "64-x-64"], "--k '64-x-64' must be positive cluster counts"),
        (["--dim", "0"], "--dim must be at least 1, got 0"),
        (["--new-fraction", "0.1,abc"], "must be comma-separated numbers"),
        (["--query-share", "1.5"], "--query-share must be between 0 and 1"),
        (["--opq-m", "3"], "--opq-m 3 must divide --dim 64"),
        (["--keys", "100"], "--opq-bits 8 needs at most 16 bits and at least 256 keys"),
    ],
)
def test_benchmark_rejects_bad_flags(arguments: list[str], message: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sid_refresh.py"), *arguments],
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert completed.returncode == 2
    assert message in completed.stderr
