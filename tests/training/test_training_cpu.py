"""Tiny model, SID vocabulary, three SFT stages and SDFT on CPU, on data built by the real
pipeline (the Airflow env's CLI builds a SID version and its training data first)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from onesearch_tasks.config import load_config
from onesearch_tasks.training.sdft import run_sdft
from onesearch_tasks.training.stages import run_progressive, stage_arguments, write_stage_yaml
from onesearch_tasks.training.tiny_model import make_tiny_model
from onesearch_tasks.training.vocab import extend_vocab

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_ENV_CLI = REPO_ROOT / ".venv" / "bin" / "onesearch"
DS = "2025-06-01"
STEPS_PER_STAGE = 3


def _pipeline(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run([str(AIRFLOW_ENV_CLI), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    if not AIRFLOW_ENV_CLI.exists():
        pytest.skip(f"the Airflow env CLI {AIRFLOW_ENV_CLI} is missing; run `make setup` first")
    root = tmp_path_factory.mktemp("training")
    config_path = root / "config.yaml"
    tree = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    tree.update(home=str(root / "home"))
    tree["rq"]["mode"] = "full"
    tree["training"] = {"max_steps": STEPS_PER_STAGE, "per_device_train_batch_size": 4, "cutoff_len": 256, "learning_rate": 1e-3, "logging_steps": 1, "max_samples": 64}
    config_path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    env = {"ONESEARCH_CONFIG": str(config_path), "ONESEARCH_HOME": str(root / "home")}
    _pipeline(["demo-data", "--out", str(root / "source"), "--items", "400", "--users", "80", "--seed", "5"], env)
    _pipeline(["load-kuaisearch", "--source", str(root / "source"), "--ds", DS], env)
    _pipeline(["sid", "refresh", "--ds", DS], env)
    _pipeline(["build-data"], env)
    version = json.loads((root / "home" / "sid" / "CURRENT.json").read_text())["version"]
    data = root / "home" / "sid" / "versions" / version / "training_data"
    config = load_config(config_path)
    tiny = root / "tiny"
    make_tiny_model(tiny, [data])
    return SimpleNamespace(root=root, data=data, config=config, tiny=tiny, env=env, config_path=config_path)


def _losses(output_dir: Path) -> list[float]:
    lines = (output_dir / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


def test_tiny_model_is_small(workspace):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(workspace.tiny)
    tokenizer = AutoTokenizer.from_pretrained(workspace.tiny)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token is not None
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False)


def test_extend_vocab_adds_sid_tokens_once(workspace):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = extend_vocab(workspace.tiny, workspace.data / "sid_vocab.json", workspace.root / "sid-model")
    second = extend_vocab(workspace.root / "sid-model", workspace.data / "sid_vocab.json", workspace.root / "sid-model-again")
    assert first["added_tokens"] > 0
    assert second["added_tokens"] == 0
    tokenizer = AutoTokenizer.from_pretrained(workspace.root / "sid-model")
    assert tokenizer.tokenize("<a_1><b_2><c_3><d_4><d_260>") == ["<a_1>", "<b_2>", "<c_3>", "<d_4>", "<d_260>"]
    model = AutoModelForCausalLM.from_pretrained(workspace.root / "sid-model")
    weights = model.get_input_embeddings().weight
    old_rows = first["embedding_rows_before"]
    assert weights.shape[0] == len(tokenizer)
    assert float((weights[old_rows] - weights[:old_rows].mean(dim=0)).abs().max()) < 1e-5


def test_three_stages_then_sdft(workspace):
    model = workspace.root / "sid-model"
    if not model.exists():
        extend_vocab(workspace.tiny, workspace.data / "sid_vocab.json", model)
    outputs = run_progressive(workspace.config.training, model, workspace.data, workspace.root / "runs")
    for stage in ("stage1", "stage2", "stage3"):
        folder = Path(outputs[stage])
        assert (folder / "model.safetensors").is_file(), stage
        assert (folder / f"onesearch_{stage}.yaml").is_file(), stage
        assert len(_losses(folder)) == STEPS_PER_STAGE, stage
    stage2_yaml = yaml.safe_load((workspace.root / "runs" / "stage2" / "onesearch_stage2.yaml").read_text())
    assert stage2_yaml["model_name_or_path"] == outputs["stage1"]

    out = workspace.root / "runs" / "sdft"
    yaml_path = write_stage_yaml(stage_arguments(workspace.config.training, "sdft", Path(outputs["stage3"]), workspace.data, out), out, "sdft")
    metrics = run_sdft(yaml_path)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    step_logs = [entry for entry in history if "loss" in entry]
    assert metrics["train_loss"] > 0
    assert (out / "model.safetensors").is_file()
    assert len(step_logs) == STEPS_PER_STAGE
    assert all({"student_ce", "teacher_ce", "kl"} <= set(entry) for entry in step_logs)


def test_sdft_ema_mode_runs(workspace):
    model = workspace.root / "sid-model"
    if not model.exists():
        extend_vocab(workspace.tiny, workspace.data / "sid_vocab.json", model)
    out = workspace.root / "ema"
    arguments = stage_arguments(workspace.config.training, "sdft", model, workspace.data, out)
    arguments.update(sdft_mode="ema", sdft_ema_decay=0.5)
    metrics = run_sdft(write_stage_yaml(arguments, out, "sdft"))
    assert metrics["train_loss"] > 0


def test_overfit_twenty_examples(workspace):
    """Loss on a 20-example set, repeated for many epochs, falls clearly."""
    model = workspace.root / "sid-model"
    if not model.exists():
        extend_vocab(workspace.tiny, workspace.data / "sid_vocab.json", model)
    training = workspace.config.training.model_copy(update={
        "max_samples": 20, "max_steps": -1, "num_train_epochs": 25.0, "learning_rate": 5e-3,
        "per_device_train_batch_size": 4, "stage_tasks": {3: ["personalized_item_sid"]},
    })
    out = run_progressive(training, model, workspace.data, workspace.root / "overfit", stages=(3,))["stage3"]
    losses = _losses(Path(out))
    assert len(losses) > 50
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5


def test_missing_training_data_is_clear(workspace, tmp_path):
    from onesearch_tasks.training.stages import TrainingSetupError

    with pytest.raises(TrainingSetupError, match="has no stats.json"):
        run_progressive(workspace.config.training, workspace.tiny, tmp_path, tmp_path / "out")


def test_cli_forwards_to_training_env(workspace):
    result = subprocess.run(
        [str(AIRFLOW_ENV_CLI), "train", "extend-vocab", "--base", str(workspace.tiny), "--sid-vocab", str(workspace.data / "sid_vocab.json"), "--out", str(workspace.root / "cli-model")],
        env={**os.environ, **workspace.env}, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["added_tokens"] > 0
