"""Tests for row validation: every bad row goes to quarantine with its documented reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onesearch_tasks.sid.validation import (
    CONTROL_CHARACTERS,
    DUPLICATE_KEY,
    EMBEDDING_DIMENSION,
    EMBEDDING_NOT_FINITE,
    EMBEDDING_ZERO,
    MISSING_KEY,
    MISSING_TEXT,
    QUARANTINE_COLUMNS,
    clean_text,
    content_hash,
    validate_rows,
)

DIM = 4
SIGNATURE = "hashing-ngram/v1/dim=4/n=1-3/chars=64"
GOOD = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)


def frame(rows: list[tuple[object, object, object]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": pd.Series([row[0] for row in rows], dtype=object),
            "text": pd.Series([row[1] for row in rows], dtype=object),
            "embedding": pd.Series([row[2] for row in rows], dtype=object),
        }
    )


def run(rows: list[tuple[object, object, object]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = frame(rows)
    kept, quarantined = validate_rows("items", data, DIM, SIGNATURE)
    assert len(data) == len(kept) + len(quarantined)
    return kept, quarantined


def reasons(quarantined: pd.DataFrame) -> dict[str, str]:
    """Quarantine reason by key."""
    return dict(zip(quarantined["key"], quarantined["reason"]))


# --- one reason per bad row -------------------------------------------------------------------


def test_valid_rows_kept() -> None:
    kept, quarantined = run([("k2", "红色连衣裙", None), ("k1", "", GOOD)])

    assert kept["key"].tolist() == ["k1", "k2"]  # sorted by key
    assert len(quarantined) == 0
    assert list(quarantined.columns) == QUARANTINE_COLUMNS


@pytest.mark.parametrize(
    ("embedding", "reason"),
    [
        (np.ones(3, dtype=np.float32), EMBEDDING_DIMENSION),
        (np.ones(DIM + 1, dtype=np.float32), EMBEDDING_DIMENSION),
        (np.ones((2, 2), dtype=np.float32), EMBEDDING_DIMENSION),
        (np.array([0.1, np.nan, 0.3, 0.4]), EMBEDDING_NOT_FINITE),
        (np.array([0.1, np.inf, 0.3, 0.4]), EMBEDDING_NOT_FINITE),
        (np.array([-np.inf, 0.2, 0.3, 0.4]), EMBEDDING_NOT_FINITE),
        (np.zeros(DIM), EMBEDDING_ZERO),
        ([0.0, 0.0, 0.0, 0.0], EMBEDDING_ZERO),
    ],
)
def test_bad_embedding_quarantined(embedding: object, reason: str) -> None:
    kept, quarantined = run([("bad", "红色", embedding), ("good", "蓝色", GOOD)])

    assert kept["key"].tolist() == ["good"]
    assert reasons(quarantined) == {"bad": reason}


def test_bad_embedding_detail_names_dimension() -> None:
    _, quarantined = run([("bad", "红色", np.ones(3))])

    assert "3" in quarantined.loc[0, "detail"]
    assert f"expected {DIM}" in quarantined.loc[0, "detail"]


@pytest.mark.parametrize("key", ["", "   ", "\\N", None, "NULL", "null"])
def test_missing_key_quarantined(key: object) -> None:
    kept, quarantined = run([(key, "红色", None), ("good", "蓝色", None)])

    assert kept["key"].tolist() == ["good"]
    assert quarantined["reason"].tolist() == [MISSING_KEY]


def test_none_key_shown_as_null() -> None:
    _, quarantined = run([(None, "红色", None)])

    assert quarantined["key"].tolist() == ["<null>"]


@pytest.mark.parametrize("key", ["a\tb", "a\nb", "a\rb", "ab\x00", "a\x7fb"])
def test_control_key_quarantined(key: str) -> None:
    kept, quarantined = run([(key, "红色", None), ("good", "蓝色", None)])

    assert kept["key"].tolist() == ["good"]
    assert reasons(quarantined) == {key: CONTROL_CHARACTERS}


@pytest.mark.parametrize("text", [None, "", "  ", "\t\n"])
def test_missing_text_quarantined(text: object) -> None:
    kept, quarantined = run([("k1", text, None), ("good", "蓝色", None)])

    assert kept["key"].tolist() == ["good"]
    assert reasons(quarantined) == {"k1": MISSING_TEXT}


def test_missing_text_with_embedding_kept() -> None:
    kept, quarantined = run([("k1", None, GOOD)])

    assert kept["key"].tolist() == ["k1"]
    assert kept.loc[0, "text"] == ""
    assert len(quarantined) == 0


def test_each_row_lands_once() -> None:
    rows = [
        ("ok1", "红色", None),
        ("", "红色", None),
        ("a\tb", "红色", None),
        ("notext", None, None),
        ("dim", "红色", np.ones(2)),
        ("nan", "红色", np.array([np.nan, 1.0, 1.0, 1.0])),
        ("zero", "红色", np.zeros(DIM)),
        ("dup", "红色", None),
        ("dup", "蓝色", None),
        ("ok2", "", GOOD),
    ]

    kept, quarantined = run(rows)

    assert sorted(kept["key"]) == ["dup", "ok1", "ok2"]
    assert quarantined["reason"].value_counts().to_dict() == {
        MISSING_KEY: 1,
        CONTROL_CHARACTERS: 1,
        MISSING_TEXT: 1,
        EMBEDDING_DIMENSION: 1,
        EMBEDDING_NOT_FINITE: 1,
        EMBEDDING_ZERO: 1,
        DUPLICATE_KEY: 1,
    }
    assert set(quarantined["entity"]) == {"items"}


def test_all_rows_bad() -> None:
    kept, quarantined = run([("", "红色", None), ("k", None, None)])

    assert len(kept) == 0
    assert len(quarantined) == 2


def test_empty_frame() -> None:
    kept, quarantined = run([])

    assert len(kept) == 0
    assert len(quarantined) == 0


# --- duplicates ---------------------------------------------------------------------------------


def test_duplicate_keeps_one() -> None:
    kept, quarantined = run([("k1", "红色", None), ("k1", "蓝色", None), ("k1", "绿色", GOOD)])

    assert kept["key"].tolist() == ["k1"]
    assert quarantined["reason"].tolist() == [DUPLICATE_KEY, DUPLICATE_KEY]


def test_duplicate_keeps_smallest_hash() -> None:
    texts = ["红色", "蓝色", "绿色"]
    smallest = min(texts, key=lambda text: content_hash(text, None, SIGNATURE))

    kept, _ = run([("k1", text, None) for text in texts])

    assert kept.loc[0, "text"] == smallest


def test_duplicate_choice_order_independent() -> None:
    rows = [("k1", f"文本{index}", None) for index in range(6)] + [("k2", "红色", GOOD), ("k2", "红色", None)]
    rng = np.random.default_rng(0)
    first, _ = run(rows)

    for _ in range(5):
        order = rng.permutation(len(rows))
        shuffled, _ = run([rows[index] for index in order])
        assert shuffled["key"].tolist() == first["key"].tolist()
        assert shuffled["text"].tolist() == first["text"].tolist()
        assert shuffled["content_hash"].tolist() == first["content_hash"].tolist()


def test_identical_duplicates_keep_one() -> None:
    kept, quarantined = run([("k1", "红色", None), ("k1", "红色", None)])

    assert len(kept) == 1
    assert reasons(quarantined) == {"k1": DUPLICATE_KEY}


# --- kept rows -----------------------------------------------------------------------------------


def test_text_control_chars_cleaned() -> None:
    kept, _ = run([("k1", "  红色\t连衣裙\n夏季\x00 ", None)])

    assert kept.loc[0, "text"] == "红色 连衣裙 夏季"


def test_clean_text() -> None:
    assert clean_text("\ta\r\nb\x1f ") == "a  b"


def test_kept_embedding_float32() -> None:
    kept, _ = run([("k1", "红色", [1.0, 2.0, 3.0, 4.0]), ("k2", "蓝色", None)])

    assert kept.loc[0, "embedding"].dtype == np.float32
    np.testing.assert_array_equal(kept.loc[0, "embedding"], [1.0, 2.0, 3.0, 4.0])
    assert kept.loc[1, "embedding"] is None


def test_kept_extra_columns() -> None:
    data = frame([("k1", "红色", None)]).assign(pv=[7])

    kept, _ = validate_rows("queries", data, DIM, SIGNATURE)

    assert kept.loc[0, "pv"] == 7


def test_kept_content_hash_column() -> None:
    kept, _ = run([("k1", "红色", GOOD)])

    assert kept.loc[0, "content_hash"] == content_hash("红色", GOOD, SIGNATURE)


# --- content_hash ---------------------------------------------------------------------------------


def test_content_hash_stable() -> None:
    assert content_hash("红色", GOOD, SIGNATURE) == content_hash("红色", GOOD.copy(), SIGNATURE)


def test_content_hash_text_changes() -> None:
    assert content_hash("红色", None, SIGNATURE) != content_hash("蓝色", None, SIGNATURE)


def test_content_hash_embedding_changes() -> None:
    other = GOOD.copy()
    other[0] += 0.001

    assert content_hash("红色", GOOD, SIGNATURE) != content_hash("红色", other, SIGNATURE)


def test_content_hash_embedding_vs_none() -> None:
    assert content_hash("红色", GOOD, SIGNATURE) != content_hash("红色", None, SIGNATURE)


def test_content_hash_signature_changes() -> None:
    assert content_hash("红色", None, SIGNATURE) != content_hash("红色", None, SIGNATURE + "x")


def test_content_hash_float64_same_as_float32() -> None:
    assert content_hash("红色", GOOD.astype(np.float64), SIGNATURE) == content_hash("红色", GOOD, SIGNATURE)
