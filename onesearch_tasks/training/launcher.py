"""Start training commands in the training env. Imported by the Airflow env; no torch here.

The training env's Python (training.python, default .venv-train/bin/python) runs
`onesearch_tasks.training.main` as a local subprocess.

NOTE: only the local subprocess is implemented. On a cluster, a task on a Celery `gpu`
queue or a KubernetesPodOperator requesting `nvidia.com/gpu` would start the same command
line from `training_command`.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from onesearch_tasks.config import CONFIG_ENV_VAR, REPO_ROOT, OneSearchConfig

logger = logging.getLogger(__name__)

DEFAULT_TRAINING_PYTHON = REPO_ROOT / ".venv-train" / "bin" / "python"


class TrainingEnvError(RuntimeError):
    """The training env is missing or a training command failed."""


def training_python(config: OneSearchConfig) -> Path:
    python = Path(config.training.python) if config.training.python else DEFAULT_TRAINING_PYTHON
    if not python.exists():
        raise TrainingEnvError(f"training env Python not found: {python}; build it with `make train-env` or set training.python")
    return python


def training_command(config: OneSearchConfig, arguments: list[str], config_path: str | None = None) -> list[str]:
    command = [str(training_python(config)), "-m", "onesearch_tasks.training.main"]
    if config_path:
        command += ["--config", config_path]
    return command + list(arguments)


def run_training_command(config: OneSearchConfig, arguments: list[str], config_path: str | None = None) -> int:
    """Run one training command as a local subprocess; output goes to this process's streams."""
    command = training_command(config, arguments, config_path)
    logger.info("starting in the training env: %s", " ".join(command))
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if config_path:
        environment[CONFIG_ENV_VAR] = config_path
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, check=False)
    if completed.returncode != 0:
        raise TrainingEnvError(f"training command failed with exit code {completed.returncode}: {' '.join(command)}")
    return completed.returncode
