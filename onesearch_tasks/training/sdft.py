"""Joint self-distillation fine-tuning (SDFT) on top of LLaMA-Factory's SFT machinery.

One model is both teacher and student. The teacher's input contains the item keyword span.
The student's input is the same text with the span removed by `sdft_keyword_pattern`:

    L = CE(student) + w_teacher * CE(teacher) + w_kl * T^2 * KL(p_teacher || p_student)

- KL is taken over output tokens only (label != -100 after the usual one-token shift).
  Teacher and student prompts differ in length, so their output positions are aligned from
  the end of each row.
- Both distributions are softened by temperature T, and the teacher's are detached.
- `joint` mode: the same weights run both forward passes, so CE(teacher) adds gradients
  whenever w_teacher > 0.
- `ema` mode: the teacher is a frozen copy, updated after every optimizer step as
  teacher = d * teacher + (1 - d) * student. No gradient reaches it, and CE(teacher) is
  only logged.

`run_sdft(yaml)` reads one YAML with LLaMA-Factory's own keys plus the `sdft_*` keys. It
reuses LLaMA-Factory's argument parsing, tokenizer and model loading, templates, dataset
pipeline, collator and trainer base class; nothing in LLaMA-Factory is patched. Runs in
the training env.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
SDFT_KEYS = ("use_joint_sdft", "sdft_mode", "sdft_kl_weight", "sdft_distill_temperature", "sdft_teacher_ce_weight", "sdft_ema_decay", "sdft_keyword_pattern")
STUDENT_PREFIX = "student_"


@dataclass(frozen=True)
class SDFTSettings:
    """The sdft_* keys of the stage YAML."""

    use_joint_sdft: bool = True
    sdft_mode: str = "joint"
    sdft_kl_weight: float = 0.1
    sdft_distill_temperature: float = 1.0
    sdft_teacher_ce_weight: float = 1.0
    sdft_ema_decay: float = 0.9
    sdft_keyword_pattern: str | None = None

    def __post_init__(self) -> None:
        if self.sdft_mode not in ("joint", "ema"):
            raise ValueError(f"sdft_mode={self.sdft_mode!r} is invalid; use 'joint' or 'ema'")
        if self.sdft_distill_temperature <= 0:
            raise ValueError(f"sdft_distill_temperature={self.sdft_distill_temperature} must be positive")
        if not 0.0 <= self.sdft_ema_decay <= 1.0:
            raise ValueError(f"sdft_ema_decay={self.sdft_ema_decay} must be in [0, 1]")


# --- loss ------------------------------------------------------------------------------------------


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not IGNORE_INDEX."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)


def aligned_output_logits(student_logits: torch.Tensor, student_labels: torch.Tensor, teacher_logits: torch.Tensor, teacher_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the logits that predict output tokens, aligned from the end of each row.

    Returns two (N, V) tensors, student and teacher, where N is the total number of
    aligned output positions. A row whose output lengths differ keeps its last
    min(len_student, len_teacher) positions.
    """
    student_mask = student_labels[:, 1:] != IGNORE_INDEX
    teacher_mask = teacher_labels[:, 1:] != IGNORE_INDEX
    student_rows, teacher_rows = [], []
    for row in range(student_labels.shape[0]):
        student_positions = torch.nonzero(student_mask[row], as_tuple=False).flatten()
        teacher_positions = torch.nonzero(teacher_mask[row], as_tuple=False).flatten()
        count = min(student_positions.numel(), teacher_positions.numel())
        if count == 0:
            continue
        student_rows.append(student_logits[row, student_positions[-count:]])
        teacher_rows.append(teacher_logits[row, teacher_positions[-count:]])
    if not student_rows:
        empty = student_logits.new_zeros((0, student_logits.shape[-1]))
        return empty, empty
    return torch.cat(student_rows), torch.cat(teacher_rows)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over tokens of KL(softmax(t/T) || softmax(s/T)); the teacher side is detached."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    teacher_log_probs = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1)
    return kl.mean()


def sdft_loss(student_logits: torch.Tensor, student_labels: torch.Tensor, teacher_logits: torch.Tensor, teacher_labels: torch.Tensor, settings: SDFTSettings) -> dict[str, torch.Tensor]:
    """Return {loss, student_ce, teacher_ce, kl}; see the module docstring for the formula."""
    student_ce = shifted_cross_entropy(student_logits, student_labels)
    teacher_ce = shifted_cross_entropy(teacher_logits, teacher_labels)
    student_out, teacher_out = aligned_output_logits(student_logits, student_labels, teacher_logits, teacher_labels)
    temperature = settings.sdft_distill_temperature
    kl = distillation_kl(student_out, teacher_out, temperature)
    loss = student_ce + settings.sdft_kl_weight * temperature**2 * kl
    if settings.sdft_mode == "joint" and settings.sdft_teacher_ce_weight > 0:
        loss = loss + settings.sdft_teacher_ce_weight * teacher_ce
    return {"loss": loss, "student_ce": student_ce.detach(), "teacher_ce": teacher_ce.detach(), "kl": kl.detach()}


def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, parameter by parameter."""
    with torch.no_grad():
        for teacher_param, student_param in zip(teacher.parameters(), student.parameters()):
            teacher_param.mul_(decay).add_(student_param.detach().to(teacher_param.dtype), alpha=1.0 - decay)


# --- data -------------------------------------------------------------------------------------------


def student_records(records: list[dict[str, Any]], pattern: re.Pattern[str]) -> list[dict[str, Any]]:
    """Copy alpaca records with the keyword span removed from `input`; raise if a record has none."""
    students = []
    for index, record in enumerate(records):
        stripped, count = pattern.subn("", record["input"], count=1)
        if count == 0:
            raise ValueError(f"record {index}: sdft_keyword_pattern {pattern.pattern!r} matches nothing in its input {record['input'][:200]!r}")
        students.append({**record, "input": stripped})
    return students


def _dataset_files(dataset_dir: Path, names: list[str]) -> list[tuple[str, Path, dict[str, Any]]]:
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    found = []
    for name in names:
        if name not in info:
            raise ValueError(f"dataset {name!r} is not registered in {dataset_dir / 'dataset_info.json'}")
        found.append((name, dataset_dir / info[name]["file_name"], info[name]))
    return found


def write_student_datasets(dataset_dir: Path, names: list[str], pattern: re.Pattern[str], out_dir: Path) -> list[str]:
    """Write span-free copies of the named datasets plus a dataset_info.json into out_dir."""
    info: dict[str, Any] = {}
    student_names = []
    for name, path, entry in _dataset_files(dataset_dir, names):
        records = json.loads(path.read_text(encoding="utf-8"))
        student_name = f"{name}__student"
        target = out_dir / f"{student_name}.json"
        target.write_text(json.dumps(student_records(records, pattern), ensure_ascii=False), encoding="utf-8")
        info[student_name] = {**entry, "file_name": target.name}
        student_names.append(student_name)
    (out_dir / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")
    return student_names


class PairedCollator:
    """Pad teacher and student halves of each feature with LLaMA-Factory's SFT collator."""

    def __init__(self, base_collator: Any) -> None:
        self.base = base_collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        teacher = [{key: value for key, value in feature.items() if not key.startswith(STUDENT_PREFIX)} for feature in features]
        student = [{key[len(STUDENT_PREFIX):]: value for key, value in feature.items() if key.startswith(STUDENT_PREFIX)} for feature in features]
        batch = dict(self.base(teacher))
        batch.update({STUDENT_PREFIX + key: value for key, value in self.base(student).items()})
        return batch


# --- trainer -------------------------------------------------------------------------------------------


def make_trainer_class():
    """Build the SDFT trainer on LLaMA-Factory's CustomSeq2SeqTrainer (imported lazily)."""
    from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer
    from transformers import TrainerCallback

    class EMACallback(TrainerCallback):
        def __init__(self, trainer: "SDFTTrainer") -> None:
            self.trainer = trainer

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' callback signature
            ema_update(self.trainer.ema_teacher, self.trainer.model, self.trainer.sdft.sdft_ema_decay)

    class SDFTTrainer(CustomSeq2SeqTrainer):
        """CustomSeq2SeqTrainer whose loss is the SDFT loss over paired teacher/student batches."""

        def __init__(self, *args: Any, sdft: SDFTSettings, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sdft = sdft
            self._sdft_sums: dict[str, float] = {"student_ce": 0.0, "teacher_ce": 0.0, "kl": 0.0}
            self._sdft_count = 0
            self.ema_teacher = None
            if sdft.sdft_mode == "ema":
                self.ema_teacher = copy.deepcopy(self.model).eval()
                for parameter in self.ema_teacher.parameters():
                    parameter.requires_grad_(False)
                self.add_callback(EMACallback(self))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001 - transformers' signature
            student = model(input_ids=inputs[STUDENT_PREFIX + "input_ids"], attention_mask=inputs.get(STUDENT_PREFIX + "attention_mask"))
            teacher_kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")}
            if self.ema_teacher is not None:
                with torch.no_grad():
                    teacher = self.ema_teacher(**teacher_kwargs)
            elif self.sdft.sdft_teacher_ce_weight > 0:
                teacher = model(**teacher_kwargs)
            else:
                with torch.no_grad():
                    teacher = model(**teacher_kwargs)
            parts = sdft_loss(student.logits, inputs[STUDENT_PREFIX + "labels"], teacher.logits, inputs["labels"], self.sdft)
            for key in self._sdft_sums:
                self._sdft_sums[key] += float(parts[key])
            self._sdft_count += 1
            return (parts["loss"], student) if return_outputs else parts["loss"]

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if self._sdft_count and "loss" in logs:
                for key, total in self._sdft_sums.items():
                    logs[key] = round(total / self._sdft_count, 6)
                    self._sdft_sums[key] = 0.0
                self._sdft_count = 0
            super().log(logs, *args, **kwargs)

    return SDFTTrainer


# --- entry point ---------------------------------------------------------------------------------------


def split_arguments(arguments: dict[str, Any]) -> tuple[dict[str, Any], SDFTSettings]:
    """Separate the sdft_* keys from LLaMA-Factory's keys."""
    rest = {key: value for key, value in arguments.items() if key not in SDFT_KEYS}
    settings = SDFTSettings(**{key: arguments[key] for key in SDFT_KEYS if key in arguments and arguments[key] is not None})
    return rest, settings


def default_pattern(dataset_dir: Path) -> str:
    stats_path = dataset_dir / "stats.json"
    if stats_path.is_file():
        pattern = json.loads(stats_path.read_text(encoding="utf-8")).get("sdft_keyword_pattern")
        if pattern:
            return pattern
    raise ValueError(f"sdft_keyword_pattern is not set and {stats_path} does not record one; set it in the YAML")


def run_sdft(yaml_path: Path) -> dict[str, Any]:
    """Train with the SDFT loss from one LLaMA-Factory-style YAML; returns the train metrics."""
    import yaml
    from datasets import concatenate_datasets
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask, get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer
    from llamafactory.train.callbacks import LogCallback

    arguments = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8"))
    rest, settings = split_arguments(arguments)
    if not settings.use_joint_sdft:
        raise ValueError(f"{yaml_path} sets use_joint_sdft: false; run it with `llamafactory-cli train` instead")
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(rest)
    training_args.remove_unused_columns = False  # the student_* columns must reach compute_loss

    dataset_dir = Path(data_args.dataset_dir)
    pattern = re.compile(settings.sdft_keyword_pattern or default_pattern(dataset_dir))
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)

    teacher_set = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)["train_dataset"]
    with tempfile.TemporaryDirectory(prefix="onesearch-sdft-") as folder:
        student_names = write_student_datasets(dataset_dir, list(data_args.dataset), pattern, Path(folder))
        student_args = dataclasses.replace(data_args, dataset=student_names, dataset_dir=folder)
        student_set = get_dataset(template, model_args, student_args, training_args, stage="sft", **tokenizer_module)["train_dataset"]
    if len(teacher_set) != len(student_set):
        raise ValueError(f"teacher and student datasets differ in length ({len(teacher_set)} vs {len(student_set)})")
    student_set = student_set.rename_columns({name: STUDENT_PREFIX + name for name in student_set.column_names})
    paired = concatenate_datasets([teacher_set, student_set], axis=1)

    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    collator = SFTDataCollatorWith4DAttentionMask(template=template, model=model, label_pad_token_id=IGNORE_INDEX, compute_dtype=model_args.compute_dtype, **tokenizer_module)
    trainer = make_trainer_class()(
        model=model, args=training_args, finetuning_args=finetuning_args, data_collator=PairedCollator(collator),
        train_dataset=paired, sdft=settings, callbacks=[LogCallback()], **tokenizer_module,
    )
    logger.info("SDFT %s mode: %d pairs, kl_weight=%s, T=%s, teacher_ce_weight=%s", settings.sdft_mode, len(paired), settings.sdft_kl_weight, settings.sdft_distill_temperature, settings.sdft_teacher_ce_weight)
    result = trainer.train()
    trainer.save_model()
    trainer.save_state()
    metrics = dict(result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    return metrics
