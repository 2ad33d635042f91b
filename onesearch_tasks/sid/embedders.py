"""Text embedders for queries, items and keywords.

Two kinds, chosen by `embedding.kind`:

- ``hashing`` (default): hashed character n-grams. Each n-gram of the lower-cased text
  (n from ngram_min to ngram_max, at most max_chars characters) is hashed to one of `dim`
  buckets with a ±1 sign (the hashing trick), and the row is L2-normalized. Deterministic
  across processes and machines, needs no download, and works for Chinese because it
  looks at characters, not words.
- ``sentence_transformers``: a model loaded from a local folder. It runs in a separate
  Python (`embedding.python`, default the training env) because SID code never imports
  torch.

Rows come back float32, shape (n, dim), L2-normalized; an empty text gives a zero row,
which callers quarantine.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from onesearch_tasks.config import REPO_ROOT, EmbeddingConfig

logger = logging.getLogger(__name__)

HASH_CHUNK_ROWS = 32_768
# 64-bit mixing constants of SplitMix64 (Steele et al., "Fast splittable pseudorandom
# number generators", 2014) and the FNV-1a 64-bit prime.
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = 0x9E3779B97F4A7C15
_UINT64_MASK = (1 << 64) - 1
DEFAULT_TRAINING_PYTHON = REPO_ROOT / ".venv-train" / "bin" / "python"


class Embedder(Protocol):
    dim: int

    def signature(self) -> str:
        """Identify the model and settings; a change means stored vectors are stale."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 vectors of shape (len(texts), dim), L2-normalized."""
        ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Normalize rows to unit length in place and return them; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


def _splitmix(values: np.ndarray) -> np.ndarray:
    values = values ^ (values >> np.uint64(30))
    values = values * _MIX_1
    values = values ^ (values >> np.uint64(27))
    values = values * _MIX_2
    return values ^ (values >> np.uint64(31))


class HashingNgramEmbedder:
    """Hashed character n-gram embedder; see the module docstring."""

    def __init__(self, dim: int, ngram_min: int = 1, ngram_max: int = 3, max_chars: int = 64) -> None:
        if dim < 2:
            raise ValueError(f"embedding dim={dim} is too small; use at least 2")
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"invalid n-gram range {ngram_min}..{ngram_max}")
        self.dim = dim
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self.max_chars = max_chars

    def signature(self) -> str:
        return f"hashing-ngram/v1/dim={self.dim}/n={self.ngram_min}-{self.ngram_max}/chars={self.max_chars}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), HASH_CHUNK_ROWS):
            chunk = texts[start : start + HASH_CHUNK_ROWS]
            out[start : start + len(chunk)] = self._embed_chunk(chunk)
        return l2_normalize(out)

    def _embed_chunk(self, texts: Sequence[str]) -> np.ndarray:
        rows = len(texts)
        width = self.max_chars
        # A fixed-width numpy unicode array is UCS-4 and zero-padded, so a view as uint32
        # gives code points with 0 past the end of each text. Longer texts are cut.
        lowered = np.array([text.lower() for text in texts], dtype=f"<U{width}")
        code_points = lowered.view(np.uint32).reshape(rows, width).astype(np.uint64)
        present = code_points != 0
        row_base = (np.arange(rows, dtype=np.int64) * self.dim)[:, None]
        totals = np.zeros(rows * self.dim, dtype=np.float64)

        for n in range(self.ngram_min, min(self.ngram_max, width) + 1):
            positions = width - n + 1
            seed = np.uint64((_GOLDEN * n) & _UINT64_MASK)
            hashes = np.full((rows, positions), seed, dtype=np.uint64)
            for offset in range(n):
                hashes = (hashes ^ code_points[:, offset : offset + positions]) * _FNV_PRIME
            hashes = _splitmix(hashes)
            valid = present[:, n - 1 : n - 1 + positions]
            buckets = (hashes % np.uint64(self.dim)).astype(np.int64) + row_base
            signs = np.where((hashes >> np.uint64(63)) == 1, 1.0, -1.0)
            totals += np.bincount(buckets[valid], weights=signs[valid], minlength=rows * self.dim)
        return totals.reshape(rows, self.dim).astype(np.float32)


class SentenceTransformerEmbedder:
    """Embed with a local sentence-transformers model, run in the training env's Python."""

    def __init__(self, model_path: str, dim: int, python: str | None = None, batch_size: int = 256) -> None:
        self.model_path = model_path
        self.dim = dim
        self.python = python or str(DEFAULT_TRAINING_PYTHON)
        self.batch_size = batch_size

    def signature(self) -> str:
        return f"sentence-transformers/{Path(self.model_path).resolve()}/dim={self.dim}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not Path(self.python).exists():
            raise FileNotFoundError(
                f"embedding.python {self.python} not found; build the training env (make train-env) "
                "or point embedding.python at a Python with sentence-transformers installed"
            )
        with tempfile.TemporaryDirectory(prefix="onesearch-embed-") as folder:
            texts_path = Path(folder) / "texts.json"
            vectors_path = Path(folder) / "vectors.npy"
            texts_path.write_text(json.dumps(list(texts), ensure_ascii=False), encoding="utf-8")
            command = [
                self.python, "-m", "onesearch_tasks.training.embed_worker",
                "--model", self.model_path,
                "--texts", str(texts_path),
                "--out", str(vectors_path),
                "--batch-size", str(self.batch_size),
            ]
            logger.info("embedding %d texts with %s", len(texts), self.model_path)
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"embedding worker failed ({result.returncode}): {result.stderr[-2000:]}")
            vectors = np.load(vectors_path, allow_pickle=False).astype(np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(
                f"model {self.model_path} returned vectors of shape {vectors.shape}, expected "
                f"({len(texts)}, {self.dim}); set embedding.dim to the model's dimension"
            )
        return l2_normalize(vectors)


def build_embedder(config: EmbeddingConfig) -> Embedder:
    if config.kind == "hashing":
        return HashingNgramEmbedder(config.dim, config.ngram_min, config.ngram_max, config.max_chars)
    assert config.model_path is not None  # enforced by EmbeddingConfig
    return SentenceTransformerEmbedder(config.model_path, config.dim, config.python, config.batch_size)
