"""The training-env command line: clear one-line errors for bad arguments."""

from __future__ import annotations

import subprocess
import sys

import pytest

MAIN = [sys.executable, "-m", "onesearch_tasks.training.main"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*MAIN, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sdft", "--model", "/nonexistent", "--data", "/tmp", "--out", "/tmp/sdft-out"], "--model /nonexistent is not a local Hugging Face model folder"),
        (["extend-vocab", "--base", "/nonexistent", "--sid-vocab", "/tmp/x.json", "--out", "/tmp/y"], "--base /nonexistent is not a local Hugging Face model folder"),
        (["sdft", "--yaml", "/nonexistent.yaml"], "--yaml /nonexistent.yaml not found"),
        (["sft", "--model", "/tmp", "--data", "/tmp", "--out", "/tmp/z", "--stages", "1,x"], "--stages '1,x' is invalid"),
        (["sdft", "--model", "/tmp"], "sdft needs --model, --data and --out, or --yaml"),
    ],
    ids=["sdft-model", "extend-base", "sdft-yaml", "stages", "sdft-args"],
)
def test_bad_arguments_exit_2(args, message):
    result = _run(args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
