"""
### OneSearch training (`onesearch_training`)

Triggered by hand. Trains on the training data of one SID version:

1. `prepare_model`: the base model with every SID token added (`onesearch train extend-vocab`).
   Without a `base_model` Param or `training.base_model` config, a tiny model is built first
   (`onesearch train make-tiny-model`), which is only useful for smoke tests.
2. `sft`: LLaMA-Factory SFT stages 1 → 2 → 3 (`onesearch train sft`).
3. `sdft`: joint self-distillation from the stage-3 model (`onesearch train sdft`), when
   `training.sdft.use_joint_sdft` is true.

Each task runs its command in the training env through the launcher (a local subprocess
here). Models and the generated stage YAMLs go to `$ONESEARCH_HOME/models/<version>/`.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task

from onesearch_tasks.config import CONFIG_ENV_VAR, load_config
from onesearch_tasks.orchestration.common import fail_fast, onesearch_dag

logger = logging.getLogger(__name__)

DAG_ID = "onesearch_training"
TASK_RETRIES = 1
RETRY_DELAY = dt.timedelta(minutes=10)
TAGS = ["onesearch", "training", "llamafactory", "gpu"]

PARAMS: dict[str, Param] = {
    "version": Param("current", type="string", pattern=r"^(current|\d{4}-\d{2}-\d{2}\.r\d+)$", description="SID version whose training_data/ is used."),
    "base_model": Param(None, type=["null", "string"], description="Local Hugging Face checkpoint. Empty: training.base_model, else a tiny smoke-test model."),
    "stages": Param("1,2,3", type="string", pattern=r"^[123](,[123])*$", description="SFT stages to run, in order."),
}


def _paths(context: Any) -> dict[str, str]:
    import os

    from onesearch_tasks.sid.refresh import layout_for
    from onesearch_tasks.storage import resolve_version

    config = load_config()
    name, folder = resolve_version(layout_for(config), context["params"]["version"])
    data = folder / "training_data"
    if not (data / "stats.json").is_file():
        from onesearch_tasks.storage import StorageError

        raise StorageError(f"SID version {name} has no training data; run the onesearch_training_data DAG or `onesearch build-data --version {name}`")
    models = config.home_path / "models" / name
    return {"version": name, "data": str(data), "models": str(models), "config": os.environ.get(CONFIG_ENV_VAR, "")}


def _train(paths: dict[str, str], arguments: list[str]) -> None:
    from onesearch_tasks.training.launcher import run_training_command

    run_training_command(load_config(), arguments, paths["config"] or None)


def build_dag() -> DAG:
    with onesearch_dag(DAG_ID, schedule=None, params=PARAMS, tags=TAGS, doc_md=__doc__, retries=TASK_RETRIES, retry_delay=RETRY_DELAY) as dag:

        @task
        @fail_fast
        def prepare_model() -> dict[str, str]:
            """Add the SID tokens to the base model (built tiny when none is configured)."""
            context = get_current_context()
            paths = _paths(context)
            base = context["params"].get("base_model") or load_config().training.base_model
            if not base:
                base = str(Path(paths["models"]) / "tiny")
                logger.warning("no base model configured: building a tiny smoke-test model at %s", base)
                _train(paths, ["make-tiny-model", "--out", base, "--text", paths["data"]])
            paths["base"] = str(Path(paths["models"]) / "base")
            _train(paths, ["extend-vocab", "--base", base, "--sid-vocab", str(Path(paths["data"]) / "sid_vocab.json"), "--out", paths["base"]])
            return paths

        @task
        @fail_fast
        def sft(paths: dict[str, str]) -> dict[str, str]:
            """SFT stages with llamafactory-cli, each from the previous stage's output."""
            stages = get_current_context()["params"]["stages"]
            _train(paths, ["sft", "--model", paths["base"], "--data", paths["data"], "--out", paths["models"], "--stages", stages])
            return {**paths, "last_stage": str(Path(paths["models"]) / f"stage{stages.split(',')[-1]}")}

        @task
        @fail_fast
        def sdft(paths: dict[str, str]) -> dict[str, str]:
            """Joint self-distillation from the last SFT stage, when enabled in the config."""
            if not load_config().training.sdft.use_joint_sdft:
                logger.info("training.sdft.use_joint_sdft is false: skipping SDFT")
                return paths
            _train(paths, ["sdft", "--model", paths["last_stage"], "--data", paths["data"], "--out", str(Path(paths["models"]) / "sdft")])
            return paths

        prepared = prepare_model()

        trained = sft(prepared)

        sdft(trained)

    return dag
