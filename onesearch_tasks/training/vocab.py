"""Add SID tokens to a tokenizer and model (`onesearch train extend-vocab`). Training env only.

Every token of sid_vocab.json (`all_tokens`, plus `tokens_in_use` for letters whose range is
too large to list) is added as a special token, so it is never split. The embedding matrix
grows to the new vocabulary size and each new row is set to the mean of the rows that
existed before, a common start for new tokens that keeps their first logits near the
average token's. Output embeddings get the same treatment when they are not tied.
Running it again on its own output adds nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def sid_tokens(sid_vocab_path: Path) -> list[str]:
    if not sid_vocab_path.is_file():
        raise FileNotFoundError(f"SID vocabulary not found: {sid_vocab_path}; build it with `onesearch build-data`")
    vocab = json.loads(sid_vocab_path.read_text(encoding="utf-8"))
    tokens = list(dict.fromkeys([*vocab.get("all_tokens", []), *vocab.get("tokens_in_use", [])]))
    if not tokens:
        raise ValueError(f"{sid_vocab_path} lists no SID tokens")
    return tokens


def extend_vocab(base: Path, sid_vocab_path: Path, out: Path) -> dict:
    """Write base's tokenizer and model with every SID token added to out; returns counts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    known = tokenizer.get_vocab()
    new_tokens = [token for token in sid_tokens(sid_vocab_path) if token not in known]
    old_rows = model.get_input_embeddings().weight.shape[0]

    if new_tokens:
        tokenizer.add_tokens(new_tokens, special_tokens=True)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            embeddings = model.get_input_embeddings().weight
            embeddings[old_rows:] = embeddings[:old_rows].mean(dim=0, keepdim=True)
            output = model.get_output_embeddings()
            if output is not None and output.weight.data_ptr() != embeddings.data_ptr():
                output.weight[old_rows:] = output.weight[:old_rows].mean(dim=0, keepdim=True)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    summary = {"out": str(out), "added_tokens": len(new_tokens), "vocab_size": len(tokenizer), "embedding_rows_before": int(old_rows)}
    logger.info("extend-vocab: %s", summary)
    return summary
