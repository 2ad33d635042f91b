"""Build all training data for one SID version and write it under <version>/training_data/.

Output layout::

    training_data/
      dataset_info.json          LLaMA-Factory registry: onesearch_<task>_<split> -> file
      stage1/<task>.<split>.json  alpaca records (instruction, input, output)
      stage2/..., stage3/...
      sdft/personalized_item_sid.<split>.json   teacher `input`, `student_input`, output
      rl/grpo.<split>.jsonl, rl/dpo_listwise.<split>.jsonl
      sid_vocab.json             SID tokens in use and the full code ranges
      stats.json                 examples per task and split, dropped rows with reasons

Splits are by user (session when the user is missing; the entity key for tasks without a
user): bucket = first 8 hex digits of SHA-256("<split_seed>:<key>") / 2**32, test below
test_share, valid below test_share + valid_share, else train. So no user appears in two
splits. The folder is built beside the version and swapped in with one rename, and every
file is written with sorted, deterministic content, so a rerun gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from onesearch_tasks.config import OneSearchConfig
from onesearch_tasks.data.inputs import TrainingInputs, load_training_inputs
from onesearch_tasks.data.rl import RLBuilder
from onesearch_tasks.data.sessions import build_sessions
from onesearch_tasks.data.sft import STAGE_OF_TASK, SFTBuilder, TaskOutput
from onesearch_tasks.data.templates import load_templates
from onesearch_tasks.sid.metrics import sid_letters
from onesearch_tasks.storage import StateLayout, atomic_path, make_temp_dir, read_json, resolve_version, write_json_atomic

logger = logging.getLogger(__name__)

OUTPUT_DIR = "training_data"
SPLITS = ("train", "valid", "test")
DATASET_PREFIX = "onesearch"
SID_TOKEN = re.compile(r"<([a-z])_(\d+)>")
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}


def split_of(key: str, seed: str, valid_share: float, test_share: float) -> str:
    bucket = int(hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()[:8], 16) / float(1 << 32)
    if bucket < test_share:
        return "test"
    if bucket < test_share + valid_share:
        return "valid"
    return "train"


def _task_folder(name: str) -> str:
    if name.startswith("sdft_"):
        return "sdft"
    if name in ("grpo", "dpo_listwise"):
        return "rl"
    return f"stage{STAGE_OF_TASK[name]}"


def _file_name(name: str) -> str:
    return name.removeprefix("sdft_")


def _write_records(path: Path, records: list[dict[str, Any]], jsonl: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        if jsonl:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        else:
            json.dump(records, handle, ensure_ascii=False, indent=1)
            handle.write("\n")


def sid_vocabulary(inputs: TrainingInputs, max_listed: int) -> dict[str, Any]:
    """SID tokens in use (items, queries, keywords) and the code range of each letter."""
    in_use: set[tuple[str, int]] = set()
    for table in (inputs.item_sids, inputs.query_sids, inputs.keyword_sids):
        for sid in table.values():
            in_use.update((letter, int(code)) for letter, code in SID_TOKEN.findall(sid))
    depth = len(inputs.rq_k)
    layer_letters, opq_letter = sid_letters(depth)
    ranges = {letter: inputs.rq_k[layer] for layer, letter in enumerate(layer_letters)}
    if inputs.balanced_type:
        parents = inputs.rq_k[0] * inputs.rq_k[1] if inputs.balanced_type == 1 else inputs.rq_k[1]
        ranges[layer_letters[-1]] = parents * inputs.rq_k[-1]
    opq_positions = max((code >> inputs.sid_bits for letter, code in in_use if letter == opq_letter), default=1) + 1
    ranges[opq_letter] = opq_positions * (1 << inputs.sid_bits)
    listed = {letter: size for letter, size in ranges.items() if size <= max_listed}
    return {
        "tokens_in_use": [f"<{letter}_{code}>" for letter, code in sorted(in_use)],
        "ranges": ranges,
        "all_tokens": [f"<{letter}_{code}>" for letter, size in listed.items() for code in range(size)],
        "unlisted_letters": sorted(set(ranges) - set(listed)),
    }


def build_training_data(config: OneSearchConfig, layout: StateLayout, warehouse: Path, version: str | None = None) -> dict[str, Any]:
    """Build and write the training data of a version ('current' by default); returns stats."""
    name, folder = resolve_version(layout, version)
    settings = config.training_data
    templates = load_templates(settings.language, settings.template_dir)
    inputs = load_training_inputs(config, name, folder, warehouse)
    sessions = build_sessions(inputs, settings.max_history)

    sft = SFTBuilder(inputs, sessions, templates, settings)
    outputs: list[TaskOutput] = sft.build_all()
    outputs.extend(RLBuilder(sft, settings).build())

    staging = make_temp_dir(folder, f".{OUTPUT_DIR}.staging-")
    try:
        dataset_info: dict[str, Any] = {}
        stats: dict[str, Any] = {
            "version": name, "ds": inputs.ds, "language": templates.language, "inputs": inputs.row_counts(),
            "sessions": len(sessions), "tasks": {}, "candidates": {}, "dropped": {},
            "sdft_keyword_pattern": sft.sdft_pattern.pattern,
        }
        for output in outputs:
            by_split: dict[str, list] = {split: [] for split in SPLITS}
            for example in output.examples:
                by_split[split_of(example.split_key, settings.split_seed, settings.valid_share, settings.test_share)].append(example.record)
            jsonl = _task_folder(output.name) == "rl"
            for split, records in by_split.items():
                records.sort(key=lambda record: json.dumps(record, ensure_ascii=False, sort_keys=True))
                relative = f"{_task_folder(output.name)}/{_file_name(output.name)}.{split}.{'jsonl' if jsonl else 'json'}"
                _write_records(staging / relative, records, jsonl)
                if not jsonl:
                    dataset_info[f"{DATASET_PREFIX}_{output.name}_{split}"] = {"file_name": relative, "formatting": "alpaca", "columns": ALPACA_COLUMNS}
            stats["tasks"][output.name] = {split: len(records) for split, records in by_split.items()}
            stats["candidates"][output.name] = output.candidates
            stats["dropped"][output.name] = dict(sorted(output.dropped.items()))
            if output.candidates != len(output.examples) + sum(output.dropped.values()):
                raise AssertionError(f"task {output.name}: candidates do not reconcile")

        write_json_atomic(staging / "dataset_info.json", dataset_info)
        write_json_atomic(staging / "sid_vocab.json", sid_vocabulary(inputs, settings.max_listed_codes_per_layer))
        write_json_atomic(staging / "stats.json", stats)
        with atomic_path(folder / OUTPUT_DIR) as target:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    empty = sorted(task for task, counts in stats["tasks"].items() if not sum(counts.values()))
    logger.info("training data for %s: %s", name, {task: sum(counts.values()) for task, counts in stats["tasks"].items()})
    if empty:
        logger.warning("empty tasks for %s: %s (see stats.json 'dropped' for the reasons)", name, ", ".join(empty))
    return stats


def read_stats(layout: StateLayout, version: str | None = None) -> dict[str, Any]:
    name, folder = resolve_version(layout, version)
    path = folder / OUTPUT_DIR / "stats.json"
    if not path.is_file():
        from onesearch_tasks.storage import StorageError

        raise StorageError(f"no training data for SID version {name}; run `onesearch build-data --version {name}` first")
    return read_json(path)
