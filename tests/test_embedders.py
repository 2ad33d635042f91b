"""Tests for the hashed character n-gram embedder and the embedder factory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onesearch_tasks.config import EmbeddingConfig
from onesearch_tasks.sid import embedders
from onesearch_tasks.sid.embedders import HashingNgramEmbedder, build_embedder, l2_normalize

TEXTS = ["红色连衣裙", "Nike 跑鞋 男款", "无线蓝牙耳机", "iPhone 15 Pro Max 256G", "a"]


def test_hashing_shape_and_dtype() -> None:
    vectors = HashingNgramEmbedder(dim=32).embed(TEXTS)

    assert vectors.shape == (len(TEXTS), 32)
    assert vectors.dtype == np.float32


def test_hashing_unit_norm() -> None:
    vectors = HashingNgramEmbedder(dim=32).embed(TEXTS)

    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_hashing_no_texts() -> None:
    vectors = HashingNgramEmbedder(dim=8).embed([])

    assert vectors.shape == (0, 8)


def test_hashing_deterministic_across_instances() -> None:
    first = HashingNgramEmbedder(dim=64).embed(TEXTS)
    second = HashingNgramEmbedder(dim=64).embed(TEXTS)

    np.testing.assert_array_equal(first, second)


def test_hashing_deterministic_across_processes() -> None:
    # A different PYTHONHASHSEED in the child shows that no salted Python hash() is involved.
    script = (
        "import json, sys\n"
        "from onesearch_tasks.sid.embedders import HashingNgramEmbedder\n"
        "texts = json.loads(sys.argv[1])\n"
        "print(json.dumps(HashingNgramEmbedder(dim=64).embed(texts).tolist()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )

    child = np.asarray(json.loads(result.stdout), dtype=np.float32)

    np.testing.assert_array_equal(child, HashingNgramEmbedder(dim=64).embed(TEXTS))


def test_hashing_row_independent_of_batch() -> None:
    embedder = HashingNgramEmbedder(dim=64)

    batch = embedder.embed(TEXTS)
    single = np.vstack([embedder.embed([text]) for text in TEXTS])

    np.testing.assert_array_equal(batch, single)


def test_hashing_case_insensitive() -> None:
    embedder = HashingNgramEmbedder(dim=64)

    vectors = embedder.embed(["NIKE Air 跑鞋", "nike air 跑鞋"])

    np.testing.assert_array_equal(vectors[0], vectors[1])


def test_hashing_empty_text_zero_row() -> None:
    vectors = HashingNgramEmbedder(dim=16).embed(["", "红色"])

    np.testing.assert_array_equal(vectors[0], np.zeros(16, dtype=np.float32))
    assert np.linalg.norm(vectors[1]) > 0


def test_hashing_similar_chinese_closer() -> None:
    embedder = HashingNgramEmbedder(dim=256)

    dress, dress_summer, earphones = embedder.embed(["红色连衣裙", "红色连衣裙夏季", "无线蓝牙耳机"])

    assert float(dress @ dress_summer) > float(dress @ earphones) + 0.3


def test_hashing_truncates_long_text() -> None:
    embedder = HashingNgramEmbedder(dim=64, max_chars=8)
    prefix = "红色连衣裙夏季新"  # exactly 8 characters

    long_vector, prefix_vector = embedder.embed([prefix + "款女装长裙", prefix])

    np.testing.assert_array_equal(long_vector, prefix_vector)


def test_hashing_truncation_default_width() -> None:
    embedder = HashingNgramEmbedder(dim=64)
    text = "连衣裙" * 30  # 90 characters, default max_chars is 64

    long_vector, prefix_vector = embedder.embed([text, text[:64]])

    np.testing.assert_array_equal(long_vector, prefix_vector)


def test_hashing_chunking_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = HashingNgramEmbedder(dim=32)
    texts = [f"商品{index} 红色" for index in range(11)] + [""]
    whole = embedder.embed(texts)

    monkeypatch.setattr(embedders, "HASH_CHUNK_ROWS", 4)
    chunked = embedder.embed(texts)

    np.testing.assert_array_equal(chunked, whole)


def test_hashing_ngram_range_changes_vectors() -> None:
    unigrams = HashingNgramEmbedder(dim=64, ngram_min=1, ngram_max=1).embed(["红色连衣裙"])
    trigrams = HashingNgramEmbedder(dim=64, ngram_min=1, ngram_max=3).embed(["红色连衣裙"])

    assert not np.array_equal(unigrams, trigrams)


def test_hashing_signature_names_settings() -> None:
    signature = HashingNgramEmbedder(dim=48, ngram_min=2, ngram_max=4, max_chars=32).signature()

    assert signature == "hashing-ngram/v1/dim=48/n=2-4/chars=32"


@pytest.mark.parametrize("dim", [1, 0, -5])
def test_hashing_invalid_dim_raises(dim: int) -> None:
    with pytest.raises(ValueError, match=f"dim={dim}"):
        HashingNgramEmbedder(dim=dim)


@pytest.mark.parametrize(("ngram_min", "ngram_max"), [(0, 2), (3, 2)])
def test_hashing_invalid_ngram_range_raises(ngram_min: int, ngram_max: int) -> None:
    with pytest.raises(ValueError, match="n-gram range"):
        HashingNgramEmbedder(dim=8, ngram_min=ngram_min, ngram_max=ngram_max)


def test_l2_normalize_keeps_zero_rows() -> None:
    vectors = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)

    result = l2_normalize(vectors)

    assert result is vectors
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.0, 0.0]])


def test_build_embedder_hashing() -> None:
    embedder = build_embedder(EmbeddingConfig(kind="hashing", dim=24, ngram_min=1, ngram_max=2, max_chars=16))

    assert isinstance(embedder, HashingNgramEmbedder)
    assert embedder.signature() == "hashing-ngram/v1/dim=24/n=1-2/chars=16"


def test_build_embedder_missing_python(tmp_path: Path) -> None:
    python = tmp_path / "no-env" / "bin" / "python"
    config = EmbeddingConfig(kind="sentence_transformers", dim=8, model_path=str(tmp_path / "model"), python=str(python))
    embedder = build_embedder(config)

    with pytest.raises(FileNotFoundError) as caught:
        embedder.embed(["红色"])

    assert str(python) in str(caught.value)
