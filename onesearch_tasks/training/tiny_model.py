"""A tiny, randomly initialised Qwen2 model with its own byte-level BPE tokenizer.

Built offline from local text (training-data JSON or KuaiSearch-style JSONL), for tests and
the CPU demo. Real training passes any local Hugging Face checkpoint instead. The tokenizer
uses Qwen's ChatML special tokens, so LLaMA-Factory's `qwen` template works unchanged.
Runs in the training env.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
CHAT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")
# ChatML, as Qwen2 models use: <|im_start|>role\ncontent<|im_end|>\n per message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEXT_FIELDS = ("instruction", "input", "output", "student_input", "prompt", "item_title", "query")
MAX_TEXT_FILES = 200


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model; the defaults give a few hundred thousand parameters."""

    vocab_size: int = 2000
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    seed: int = 0


def iter_texts(sources: list[Path]) -> Iterator[str]:
    """Yield text fields from .json (list of records) and .jsonl files under the sources."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files.extend(sorted(path for path in source.rglob("*") if path.suffix in (".json", ".jsonl")))
        elif source.is_file():
            files.append(source)
        else:
            raise FileNotFoundError(f"text source not found: {source}")
    for path in files[:MAX_TEXT_FILES]:
        if path.name in ("dataset_info.json", "stats.json"):
            continue
        text = path.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
        if isinstance(records, dict):
            records = [records]
        for record in records:
            if not isinstance(record, dict):
                continue
            for field in TEXT_FIELDS:
                value = record.get(field)
                if isinstance(value, str) and value:
                    yield value


def train_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("no text to train the tokenizer on; pass --text with training-data or JSONL files")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, *CHAT_SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=list(CHAT_SPECIAL_TOKENS),
        padding_side="right",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def make_tiny_model(out_dir: Path, text_sources: list[Path], spec: TinyModelSpec = TinyModelSpec()) -> dict:
    """Write tokenizer and model to out_dir; return a summary with the parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    texts = list(iter_texts(text_sources))
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    torch.manual_seed(spec.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    summary = {"out": str(out_dir), "texts": len(texts), "vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters())}
    logger.info("tiny model written: %s", summary)
    return summary
