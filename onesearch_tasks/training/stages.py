"""Progressive SFT through `llamafactory-cli train`, one generated YAML per stage.

Stage 1 starts from the base model (after `extend-vocab`), stage 2 from stage 1's output and
stage 3 from stage 2's. Each stage's YAML is saved next to its output as
`onesearch_stage<N>.yaml`, so `llamafactory-cli train <that file>` repeats it by hand. The
SDFT run (onesearch_tasks.training.sdft) starts from stage 3's output with the same keys
plus the `sdft_*` ones. Runs in the training env.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from onesearch_tasks.config import TrainingConfig

logger = logging.getLogger(__name__)

STAGES = (1, 2, 3)
SDFT_TASK = "sdft_personalized_item_sid"
DATASET_PREFIX = "onesearch"


class TrainingSetupError(ValueError):
    """The training data or a model folder does not fit the requested run."""


def available_tasks(dataset_dir: Path) -> dict[str, int]:
    """Task -> number of train examples, from the training data's stats.json."""
    stats_path = dataset_dir / "stats.json"
    if not stats_path.is_file():
        raise TrainingSetupError(f"{dataset_dir} has no stats.json; build it with `onesearch build-data` first")
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    return {task: counts.get("train", 0) for task, counts in stats["tasks"].items()}


def stage_datasets(config: TrainingConfig, stage: int | str, dataset_dir: Path) -> list[str]:
    """LLaMA-Factory dataset names of a stage; tasks without train examples are left out."""
    counts = available_tasks(dataset_dir)
    tasks = [SDFT_TASK] if stage == "sdft" else config.stage_tasks.get(int(stage), [])
    names = []
    for task in tasks:
        if counts.get(task, 0) > 0:
            names.append(f"{DATASET_PREFIX}_{task}_train")
        else:
            logger.warning("stage %s: task %s has no train examples, left out", stage, task)
    if not names:
        raise TrainingSetupError(f"stage {stage}: none of the tasks {tasks} has train examples in {dataset_dir}; see its stats.json")
    return names


def _use_bf16(config: TrainingConfig) -> bool:
    if config.bf16 is not None:
        return config.bf16
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def stage_arguments(config: TrainingConfig, stage: int | str, model_path: Path, dataset_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Build the LLaMA-Factory training arguments of one stage (stage 1-3 or 'sdft')."""
    arguments: dict[str, Any] = {
        "model_name_or_path": str(model_path),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": ",".join(stage_datasets(config, stage, dataset_dir)),
        "dataset_dir": str(dataset_dir),
        "template": config.template,
        "cutoff_len": config.cutoff_len,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.0,
        "logging_steps": config.logging_steps,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": _use_bf16(config),
    }
    if config.max_samples:
        arguments["max_samples"] = config.max_samples
    if config.deepspeed:
        arguments["deepspeed"] = config.deepspeed
    if config.fsdp:
        arguments["fsdp"] = config.fsdp
    arguments.update(config.extra_args)
    if stage == "sdft":
        arguments.update(config.sdft.model_dump())
    return arguments


def write_stage_yaml(arguments: dict[str, Any], output_dir: Path, stage: int | str) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"onesearch_stage{stage}.yaml"
    path.write_text(yaml.safe_dump(arguments, allow_unicode=True, sort_keys=True), encoding="utf-8")
    return path


def llamafactory_cli() -> str:
    candidate = Path(sys.executable).parent / "llamafactory-cli"
    return str(candidate) if candidate.exists() else "llamafactory-cli"


def run_stage(config: TrainingConfig, stage: int, model_path: Path, dataset_dir: Path, output_dir: Path) -> Path:
    """Run one SFT stage with llamafactory-cli; returns its output folder."""
    arguments = stage_arguments(config, stage, model_path, dataset_dir, output_dir)
    yaml_path = write_stage_yaml(arguments, output_dir, stage)
    logger.info("SFT stage %d: %s (datasets %s)", stage, yaml_path, arguments["dataset"])
    result = subprocess.run([llamafactory_cli(), "train", str(yaml_path)], env={**os.environ, "DISABLE_VERSION_CHECK": "1"}, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"SFT stage {stage} failed (exit {result.returncode}); rerun by hand: llamafactory-cli train {yaml_path}")
    return output_dir


def run_progressive(config: TrainingConfig, base_model: Path, dataset_dir: Path, output_root: Path, stages: tuple[int, ...] = STAGES) -> dict[str, str]:
    """Run the stages in order, each from the previous one's output; returns stage -> folder."""
    if not (base_model / "config.json").is_file():
        raise TrainingSetupError(f"base model folder {base_model} has no config.json; pass a local Hugging Face checkpoint")
    outputs: dict[str, str] = {}
    model_path = base_model
    for stage in stages:
        model_path = run_stage(config, stage, model_path, dataset_dir, output_root / f"stage{stage}")
        outputs[f"stage{stage}"] = str(model_path)
    return outputs
