"""Tests for the keyword dictionary, Aho-Corasick matching and keyword-fused embeddings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from onesearch_tasks.config import KeywordConfig
from onesearch_tasks.sid.embedders import HashingNgramEmbedder
from onesearch_tasks.sid import keywords as keywords_module
from onesearch_tasks.sid.keywords import (
    EMBEDDING_SEPARATOR,
    KeywordDictionary,
    KeywordDictionaryError,
    KeywordMatcher,
    build_catalog_dictionary,
    format_dictionary_line,
    fuse_embeddings,
    fuse_matches,
    read_dictionary_file,
    read_dictionary_file_cached,
)

DIM = 16


@pytest.fixture
def embedder() -> HashingNgramEmbedder:
    return HashingNgramEmbedder(dim=DIM)


def unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    return array / np.linalg.norm(array)


def emb_field(vector: np.ndarray | list[float]) -> str:
    return EMBEDDING_SEPARATOR.join(str(float(value)) for value in vector)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- KeywordMatcher ---------------------------------------------------------------------


def test_matcher_drops_contained_keyword() -> None:
    matcher = KeywordMatcher(["连衣", "连衣裙"])

    assert matcher.match("夏季连衣裙") == [1]


def test_matcher_keeps_partial_overlaps() -> None:
    # "连衣裙" (positions 0-3) and "衣裙子" (1-4) overlap without one containing the other.
    matcher = KeywordMatcher(["连衣裙", "衣裙子"])

    assert matcher.match("连衣裙子") == [0, 1]


def test_matcher_longest_match_wins() -> None:
    # "裙子" lies inside the kept match "衣裙子" and "连衣" inside "连衣裙", so both are dropped.
    # The two longer matches overlap only partly, so both are kept.
    matcher = KeywordMatcher(["连衣裙", "连衣", "衣裙子", "裙子"])

    assert matcher.match("连衣裙子") == [0, 2]


def test_matcher_latin_case_insensitive() -> None:
    matcher = KeywordMatcher(["Nike", "连衣裙"])

    assert matcher.match("夏季NIKE连衣裙") == [0, 1]
    assert matcher.match("nike连衣裙") == [0, 1]
    assert matcher.match("NiKe") == [0]


def test_matcher_upper_case_keyword() -> None:
    matcher = KeywordMatcher(["IPHONE"])

    assert matcher.match("二手iphone手机") == [0]


def test_matcher_no_match() -> None:
    matcher = KeywordMatcher(["连衣裙", "nike"])

    assert matcher.match("蓝牙耳机") == []


def test_matcher_empty_text() -> None:
    matcher = KeywordMatcher(["连衣裙"])

    assert matcher.match("") == []


def test_matcher_empty_dictionary() -> None:
    matcher = KeywordMatcher([])

    assert matcher.match("连衣裙") == []
    assert matcher.match_many(["a", ""]) == [[], []]


def test_matcher_orders_by_position() -> None:
    # The longest keyword comes last in the text but must not come first in the result.
    matcher = KeywordMatcher(["耳机", "红色", "无线蓝牙"])

    assert matcher.match("红色耳机无线蓝牙") == [1, 0, 2]


def test_matcher_repeated_keyword() -> None:
    matcher = KeywordMatcher(["nike", "ab"])

    assert matcher.match("nike abc nike") == [0, 1, 0]


def test_matcher_match_many() -> None:
    matcher = KeywordMatcher(["红色", "耳机"])

    assert matcher.match_many(["红色耳机", "耳机", "手机"]) == [[0, 1], [1], []]


def naive_match(keywords: list[str], text: str) -> list[int]:
    """Reference rule: every occurrence, minus those inside a longer occurrence, by position."""
    lowered_text = text.lower()
    first_index: dict[str, int] = {}
    for index, keyword in enumerate(keywords):
        first_index.setdefault(keyword.lower(), index)
    spans = []
    for lowered, index in first_index.items():
        start = lowered_text.find(lowered)
        while start >= 0:
            spans.append((start, start + len(lowered), index))
            start = lowered_text.find(lowered, start + 1)
    kept = [span for span in spans if not any(o[0] <= span[0] and span[1] <= o[1] and o[1] - o[0] > span[1] - span[0] for o in spans)]
    return [index for _, _, index in sorted(kept)]


def test_matcher_agrees_with_naive_rule(monkeypatch) -> None:
    # Small alphabet, so keywords overlap, nest and repeat often; small batches cross boundaries.
    monkeypatch.setattr(keywords_module, "MATCH_BATCH_TEXTS", 7)
    rng = np.random.default_rng(5)
    alphabet = list("abcAB红色")
    keywords = sorted({"".join(rng.choice(alphabet, rng.integers(1, 4))) for _ in range(25)})
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 12))) for _ in range(60)]
    matcher = KeywordMatcher(keywords)

    assert matcher.match_many(texts) == [naive_match(keywords, text) for text in texts]


def test_matcher_processes_agree(monkeypatch) -> None:
    monkeypatch.setattr(keywords_module, "PARALLEL_MIN_TEXTS", 10)
    rng = np.random.default_rng(9)
    alphabet = list("ab红色蓝")
    keywords = sorted({"".join(rng.choice(alphabet, rng.integers(1, 4))) for _ in range(20)})
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 10))) for _ in range(101)]
    matcher = KeywordMatcher(keywords)

    serial_rows, serial_indices = matcher.match_arrays(texts)
    parallel_rows, parallel_indices = matcher.match_arrays(texts, processes=2)

    np.testing.assert_array_equal(parallel_rows, serial_rows)
    np.testing.assert_array_equal(parallel_indices, serial_indices)
    assert serial_rows.size > 0


def test_matcher_arrays_sorted_by_row() -> None:
    matcher = KeywordMatcher(["红色", "耳机"])

    rows, indices = matcher.match_arrays(["耳机红色", "", "手机", "红色"])

    assert rows.tolist() == [0, 0, 3]
    assert indices.tolist() == [1, 0, 0]


def test_matcher_skips_nul_keyword() -> None:
    matcher = KeywordMatcher(["a\x00b", "b"])

    assert matcher.match_many(["a", "b"]) == [[], [1]]


# --- fuse_embeddings --------------------------------------------------------------------


def test_fuse_matches_hand_computation() -> None:
    raw = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    keyword_vectors = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)

    fused = fuse_embeddings(raw, [[0, 1], [1]], keyword_vectors, 0.5)

    # Row 0: 0.5 * (1, 0, 0) + 0.5 * (0, 0.5, 0.5) = (0.5, 0.25, 0.25), norm sqrt(0.375).
    row0 = np.array([0.5, 0.25, 0.25]) / math.sqrt(0.375)
    # Row 1: 0.5 * (0, 1, 0) + 0.5 * (0, 0, 1) = (0, 0.5, 0.5).
    row1 = np.array([0.0, 1.0, 1.0]) / math.sqrt(2.0)
    np.testing.assert_allclose(fused[0], row0, rtol=1e-6)
    np.testing.assert_allclose(fused[1], row1, rtol=1e-6)
    assert fused.dtype == np.float32


def test_fuse_unmatched_row_unchanged() -> None:
    # Row 1 is not unit length, so an unnormalized result shows the row was returned as given.
    raw = np.array([[1.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    keyword_vectors = np.array([[0.0, 1.0]], dtype=np.float32)

    fused = fuse_embeddings(raw, [[0], []], keyword_vectors, 0.5)

    np.testing.assert_array_equal(fused[1], raw[1])


def test_fuse_no_matches_at_all() -> None:
    raw = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)

    fused = fuse_embeddings(raw, [[], []], np.zeros((0, 2), dtype=np.float32), 0.5)

    np.testing.assert_array_equal(fused, raw)


def test_fuse_other_raw_weight() -> None:
    raw = np.array([[1.0, 0.0]], dtype=np.float32)
    keyword_vectors = np.array([[0.0, 1.0]], dtype=np.float32)

    fused = fuse_embeddings(raw, [[0]], keyword_vectors, 0.8)

    # 0.8 * (1, 0) + 0.2 * (0, 1) = (0.8, 0.2), norm sqrt(0.68).
    expected = np.array([0.8, 0.2]) / math.sqrt(0.68)
    np.testing.assert_allclose(fused[0], expected, rtol=1e-6)


def test_fuse_raw_weight_one_keeps_raw() -> None:
    raw = np.array([[0.6, 0.8]], dtype=np.float32)
    keyword_vectors = np.array([[1.0, 0.0]], dtype=np.float32)

    fused = fuse_embeddings(raw, [[0]], keyword_vectors, 1.0)

    np.testing.assert_allclose(fused[0], raw[0], rtol=1e-6)


def test_fuse_repeated_index_counts_twice() -> None:
    # A keyword matched twice weighs twice in the mean: mean((0,1), (0,1), (1,0)) = (1/3, 2/3).
    raw = np.array([[1.0, 0.0]], dtype=np.float32)
    keyword_vectors = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)

    fused = fuse_embeddings(raw, [[0, 0, 1]], keyword_vectors, 0.5)

    combined = 0.5 * np.array([1.0, 0.0]) + 0.5 * np.array([1 / 3, 2 / 3])
    np.testing.assert_allclose(fused[0], combined / np.linalg.norm(combined), rtol=1e-6)


def test_fuse_does_not_modify_input() -> None:
    raw = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    keyword_vectors = np.array([[0.6, 0.8]], dtype=np.float32)
    raw_before = raw.copy()
    keywords_before = keyword_vectors.copy()

    fuse_embeddings(raw, [[0], [0]], keyword_vectors, 0.5)

    np.testing.assert_array_equal(raw, raw_before)
    np.testing.assert_array_equal(keyword_vectors, keywords_before)


def test_fuse_length_mismatch_raises() -> None:
    raw = np.zeros((2, 3), dtype=np.float32)

    with pytest.raises(ValueError, match="1 match lists for 2 vectors"):
        fuse_embeddings(raw, [[0]], np.eye(3, dtype=np.float32), 0.5)


def test_fuse_matches_batches_agree(monkeypatch) -> None:
    rng = np.random.default_rng(2)
    raw = rng.standard_normal((9, 4)).astype(np.float32)
    keyword_vectors = rng.standard_normal((5, 4)).astype(np.float32)
    rows = np.array([0, 0, 2, 3, 3, 3, 5, 8], dtype=np.int64)
    indices = np.array([1, 4, 0, 2, 2, 3, 1, 0], dtype=np.int64)
    whole = fuse_matches(raw, rows, indices, keyword_vectors, 0.5)

    monkeypatch.setattr(keywords_module, "FUSE_BATCH_ROWS", 2)
    batched = fuse_matches(raw, rows, indices, keyword_vectors, 0.5)

    np.testing.assert_allclose(batched, whole, rtol=1e-6)


def test_fuse_matches_unsorted_rows_raise() -> None:
    raw = np.eye(2, dtype=np.float32)

    with pytest.raises(ValueError, match="sorted"):
        fuse_matches(raw, np.array([1, 0]), np.array([0, 0]), np.eye(2, dtype=np.float32), 0.5)


# --- build_catalog_dictionary -------------------------------------------------------------


@pytest.fixture
def catalog() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "brand_name": ["Nike", "无品牌", "nike", None],
            "category_level1_name": ["运动/户外", "运动/户外", "服饰", "服饰"],
            "category_level2_name": ["跑鞋", "跑鞋", "连衣裙", None],
            "category_level3_name": [None, None, None, "女装"],
            "attr_value": ["红色,纯棉", "红色，夏季", None, "X"],
        }
    )


def test_catalog_keywords(catalog: pd.DataFrame, embedder: HashingNgramEmbedder) -> None:
    dictionary = build_catalog_dictionary(catalog, embedder, KeywordConfig())

    expected = {"nike", "运动", "户外", "服饰", "跑鞋", "连衣裙", "女装", "红色", "纯棉", "夏季"}
    assert {keyword.lower() for keyword in dictionary.keywords} == expected


def test_catalog_splits_category_names(catalog: pd.DataFrame, embedder: HashingNgramEmbedder) -> None:
    dictionary = build_catalog_dictionary(catalog, embedder, KeywordConfig())

    assert "运动/户外" not in dictionary.keywords
    assert "运动" in dictionary.keywords
    assert "户外" in dictionary.keywords


def test_catalog_excludes_stop_values(catalog: pd.DataFrame, embedder: HashingNgramEmbedder) -> None:
    dictionary = build_catalog_dictionary(catalog, embedder, KeywordConfig())

    assert "无品牌" not in dictionary.keywords


def test_catalog_stop_values_ignore_case(embedder: HashingNgramEmbedder) -> None:
    items = pd.DataFrame({"brand_name": ["UNKNOWN", "Other", "Adidas"]})

    dictionary = build_catalog_dictionary(items, embedder, KeywordConfig())

    assert dictionary.keywords == ["Adidas"]


def test_catalog_min_keyword_chars(catalog: pd.DataFrame, embedder: HashingNgramEmbedder) -> None:
    default = build_catalog_dictionary(catalog, embedder, KeywordConfig())
    three_chars = build_catalog_dictionary(catalog, embedder, KeywordConfig(min_keyword_chars=3))

    assert "X" not in default.keywords
    assert {keyword.lower() for keyword in three_chars.keywords} == {"nike", "连衣裙"}


def test_catalog_pv_counts(catalog: pd.DataFrame, embedder: HashingNgramEmbedder) -> None:
    dictionary = build_catalog_dictionary(catalog, embedder, KeywordConfig())
    pv = {keyword.lower(): int(count) for keyword, count in zip(dictionary.keywords, dictionary.pv)}

    assert pv["nike"] == 2  # "Nike" and "nike" are one keyword
    assert pv["运动"] == 2
    assert pv["服饰"] == 2
    assert pv["红色"] == 2  # split on both "," and the full-width "，"
    assert pv["纯棉"] == 1


def test_catalog_min_pv(catalog: pd.DataFrame, embedder: HashingNgramEmbedder) -> None:
    dictionary = build_catalog_dictionary(catalog, embedder, KeywordConfig(min_pv=2))

    assert sorted(keyword.lower() for keyword in dictionary.keywords) == sorted(["nike", "运动", "户外", "服饰", "跑鞋", "红色"])


def test_catalog_types(catalog: pd.DataFrame, embedder: HashingNgramEmbedder) -> None:
    dictionary = build_catalog_dictionary(catalog, embedder, KeywordConfig())
    types = {keyword.lower(): type_name for keyword, type_name in zip(dictionary.keywords, dictionary.types)}

    assert types["nike"] == "brand"
    assert types["跑鞋"] == "entity"
    assert types["红色"] == "color"
    assert types["夏季"] == "season"


def test_catalog_vectors(catalog: pd.DataFrame, embedder: HashingNgramEmbedder) -> None:
    dictionary = build_catalog_dictionary(catalog, embedder, KeywordConfig())

    assert dictionary.vectors.shape == (len(dictionary), DIM)
    assert dictionary.vectors.dtype == np.float32
    np.testing.assert_allclose(dictionary.vectors, embedder.embed(dictionary.keywords))


def test_catalog_empty_frame(embedder: HashingNgramEmbedder) -> None:
    dictionary = build_catalog_dictionary(pd.DataFrame({"brand_name": pd.Series([], dtype=object)}), embedder, KeywordConfig())

    assert len(dictionary) == 0
    assert dictionary.vectors.shape == (0, DIM)


# --- read_dictionary_file and format_dictionary_line ----------------------------------------


def test_read_valid_lines(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    vector = unit([float(value) for value in range(1, DIM + 1)])
    path = write_lines(
        tmp_path / "dict.tsv",
        [
            f"连衣裙\tentity\t120\t{emb_field(vector)}",
            f"Nike\tBRAND\t7.0\t{emb_field(vector * 3)}",
        ],
    )

    dictionary, rejected = read_dictionary_file(path, embedder)

    assert rejected == []
    assert dictionary.keywords == ["连衣裙", "Nike"]
    assert dictionary.types == ["entity", "brand"]
    assert dictionary.pv.tolist() == [120, 7]
    np.testing.assert_allclose(dictionary.vectors[0], vector, rtol=1e-6)
    # Given vectors are L2-normalized on reading.
    np.testing.assert_allclose(dictionary.vectors[1], vector, rtol=1e-6)


def test_read_empty_emb_uses_embedder(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    path = write_lines(tmp_path / "dict.tsv", ["红色\tcolor\t5\t"])

    dictionary, rejected = read_dictionary_file(path, embedder)

    assert rejected == []
    np.testing.assert_allclose(dictionary.vectors[0], embedder.embed(["红色"])[0], rtol=1e-6)


def test_read_skips_comments_and_blank(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    path = write_lines(tmp_path / "dict.tsv", ["# keyword\ttype\tpv\temb", "", "红色\tcolor\t5\t"])

    dictionary, rejected = read_dictionary_file(path, embedder)

    assert dictionary.keywords == ["红色"]
    assert rejected == []


@pytest.mark.parametrize(
    ("line", "reason_part"),
    [
        ("红色\tcolor\t5", "expected 4 tab-separated fields, found 3"),
        ("红色\tcolor\t5\t\textra", "expected 4 tab-separated fields, found 5"),
        ("红色\tflavour\t5\t", "unknown type 'flavour'"),
        ("红色\tcolor\tmany\t", "pv 'many' is not a number"),
        ("红色\tcolor\t-1\t", "pv -1 is negative"),
        ("\\N\tcolor\t5\t", "empty keyword"),
        ("红色\tcolor\t5\t" + emb_field([1.0, 2.0, 3.0]), "embedding has 3 values, expected 16"),
        ("红色\tcolor\t5\t" + emb_field([float("nan")] + [1.0] * (DIM - 1)), "NaN or inf"),
        ("红色\tcolor\t5\t" + emb_field([float("inf")] + [1.0] * (DIM - 1)), "NaN or inf"),
        ("红色\tcolor\t5\t" + emb_field([0.0] * DIM), "all zeros"),
        ("红色\tcolor\t5\t" + EMBEDDING_SEPARATOR.join(["x"] * DIM), "not a float"),
    ],
)
def test_read_rejects_malformed_line(tmp_path: Path, embedder: HashingNgramEmbedder, line: str, reason_part: str) -> None:
    path = write_lines(tmp_path / "dict.tsv", ["好评\tmarketing\t1\t", line])

    dictionary, rejected = read_dictionary_file(path, embedder)

    assert dictionary.keywords == ["好评"]
    assert len(rejected) == 1
    assert reason_part in rejected[0].reason
    assert rejected[0].line_number == 2
    assert rejected[0].path == str(path)


@pytest.mark.parametrize("pv", ["inf", "1e400"])
def test_read_rejects_infinite_pv(tmp_path: Path, embedder: HashingNgramEmbedder, pv: str) -> None:
    path = write_lines(tmp_path / "dict.tsv", ["好评\tmarketing\t1\t", f"红色\tcolor\t{pv}\t"])

    dictionary, rejected = read_dictionary_file(path, embedder)

    assert dictionary.keywords == ["好评"]
    assert len(rejected) == 1
    assert "pv" in rejected[0].reason


def test_read_rejects_negative_fraction_pv(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    path = write_lines(tmp_path / "dict.tsv", ["红色\tcolor\t-0.5\t"])

    _, rejected = read_dictionary_file(path, embedder)

    assert len(rejected) == 1


def test_read_missing_file_raises(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    missing = tmp_path / "absent.tsv"

    with pytest.raises(KeywordDictionaryError, match="absent.tsv"):
        read_dictionary_file(missing, embedder)


def test_read_non_utf8_line_rejected(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    path = tmp_path / "gbk.tsv"
    path.write_bytes("好评\tmarketing\t1\t\n".encode("utf-8") + "红色\tcolor\t5\t\n".encode("gbk"))

    dictionary, rejected = read_dictionary_file(path, embedder)

    assert dictionary.keywords == ["好评"]
    assert [line.line_number for line in rejected] == [2]
    assert "not valid UTF-8" in rejected[0].reason


def test_format_line_round_trip(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    vector = embedder.embed(["纯棉 T恤"])[0]
    line = format_dictionary_line("纯棉 T恤", "material", 42, vector)
    path = write_lines(tmp_path / "dict.tsv", [line])

    dictionary, rejected = read_dictionary_file(path, embedder)

    assert rejected == []
    assert dictionary.keywords == ["纯棉 T恤"]
    assert dictionary.types == ["material"]
    assert dictionary.pv.tolist() == [42]
    np.testing.assert_allclose(dictionary.vectors[0], vector, rtol=1e-6, atol=1e-7)


def test_format_line_fields() -> None:
    line = format_dictionary_line("红色", "color", 3, np.array([0.5, -0.25], dtype=np.float32))

    assert line.split("\t") == ["红色", "color", "3", "0.5\x02-0.25"]


# --- KeywordDictionary.merged_with ---------------------------------------------------------


def make_dictionary(keywords: list[str], pv: list[int], start: float) -> KeywordDictionary:
    vectors = np.full((len(keywords), 2), start, dtype=np.float32) + np.arange(len(keywords), dtype=np.float32)[:, None]
    return KeywordDictionary(list(keywords), ["entity"] * len(keywords), np.asarray(pv, dtype=np.int64), vectors)


def test_merge_higher_pv_wins() -> None:
    base = make_dictionary(["Nike", "红色"], [5, 1], start=1.0)
    extra = make_dictionary(["NIKE", "夏季"], [9, 2], start=10.0)

    merged = base.merged_with(extra)
    by_lower = {keyword.lower(): index for index, keyword in enumerate(merged.keywords)}

    assert len(merged) == 3
    assert merged.keywords[by_lower["nike"]] == "NIKE"
    assert int(merged.pv[by_lower["nike"]]) == 9
    np.testing.assert_array_equal(merged.vectors[by_lower["nike"]], extra.vectors[0])


def test_merge_lower_pv_loses() -> None:
    base = make_dictionary(["Nike"], [9], start=1.0)
    extra = make_dictionary(["nike"], [5], start=10.0)

    merged = base.merged_with(extra)

    assert merged.keywords == ["Nike"]
    assert merged.pv.tolist() == [9]
    np.testing.assert_array_equal(merged.vectors[0], base.vectors[0])


def test_merge_tie_keeps_self() -> None:
    base = make_dictionary(["Nike"], [5], start=1.0)
    extra = make_dictionary(["NIKE"], [5], start=10.0)

    merged = base.merged_with(extra)

    assert merged.keywords == ["Nike"]


def test_merge_with_empty() -> None:
    base = make_dictionary(["红色", "夏季"], [1, 2], start=1.0)

    merged = KeywordDictionary.empty(2).merged_with(base)

    assert sorted(merged.keywords) == sorted(base.keywords)
    assert merged.vectors.shape == (2, 2)


def test_merge_dimension_mismatch_raises() -> None:
    base = make_dictionary(["红色"], [1], start=1.0)
    other = KeywordDictionary(["夏季"], ["season"], np.array([1], dtype=np.int64), np.ones((1, 3), dtype=np.float32))

    with pytest.raises(KeywordDictionaryError, match="dimension 2 and 3"):
        base.merged_with(other)


def test_frame_round_trip() -> None:
    base = make_dictionary(["红色", "夏季"], [1, 2], start=1.0)

    restored = KeywordDictionary.from_frame(base.to_frame())

    assert restored.keywords == base.keywords
    assert restored.types == base.types
    np.testing.assert_array_equal(restored.pv, base.pv)
    np.testing.assert_array_equal(restored.vectors, base.vectors)


def test_read_bad_value_keeps_other_vectors(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    # One unparsable value sends the block to the per-line parser; the good lines keep their vectors.
    vectors = [unit([float(row + column + 1) for column in range(DIM)]) for row in range(3)]
    lines = [f"词{row}\tentity\t1\t{emb_field(vector)}" for row, vector in enumerate(vectors)]
    lines.insert(1, "坏词\tentity\t1\t" + EMBEDDING_SEPARATOR.join(["0.5"] * (DIM - 1) + ["x"]))
    path = write_lines(tmp_path / "dict.tsv", lines)

    dictionary, rejected = read_dictionary_file(path, embedder)

    assert dictionary.keywords == ["词0", "词1", "词2"]
    np.testing.assert_allclose(dictionary.vectors, np.stack(vectors), rtol=1e-6)
    assert [line.line_number for line in rejected] == [2]
    assert "not a float" in rejected[0].reason


def test_fuse_matches_in_place_writes_raw() -> None:
    raw = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    keyword_vectors = np.array([[0.6, 0.8]], dtype=np.float32)
    expected = fuse_matches(raw, np.array([1]), np.array([0]), keyword_vectors, 0.5)

    result = fuse_matches(raw, np.array([1]), np.array([0]), keyword_vectors, 0.5, in_place=True)

    assert result is raw
    np.testing.assert_allclose(raw, expected, rtol=1e-6)



def test_cached_read_matches_parse(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    lines = ["红色\tcolor\t5\t", "坏\tflavour\t1\t", f"蓝色\tcolor\t2\t{emb_field(unit([1.0] * DIM))}"]
    first_path = write_lines(tmp_path / "a.tsv", lines)
    second_path = write_lines(tmp_path / "b.tsv", lines)
    cache = tmp_path / "cache"

    parsed, parsed_rejected = read_dictionary_file(first_path, embedder)
    missed, _ = read_dictionary_file_cached(first_path, embedder, cache)
    hit, hit_rejected = read_dictionary_file_cached(second_path, embedder, cache)

    assert len(list(cache.iterdir())) == 1
    for dictionary in (missed, hit):
        assert dictionary.keywords == parsed.keywords
        assert dictionary.types == parsed.types
        assert dictionary.pv.tolist() == parsed.pv.tolist()
        np.testing.assert_array_equal(dictionary.vectors, parsed.vectors)
    assert [line.line_number for line in hit_rejected] == [line.line_number for line in parsed_rejected]
    assert hit_rejected[0].path == str(second_path)


def test_cached_read_rebuilds_corrupt_entry(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    path = write_lines(tmp_path / "a.tsv", ["红色\tcolor\t5\t"])
    cache = tmp_path / "cache"
    read_dictionary_file_cached(path, embedder, cache)
    entry = next(cache.iterdir())
    (entry / "vectors.npy").write_bytes(b"not an array")

    dictionary, _ = read_dictionary_file_cached(path, embedder, cache)

    assert dictionary.keywords == ["红色"]
    assert dictionary.vectors.shape == (1, DIM)


def test_cached_read_keeps_recent_entries(tmp_path: Path, embedder: HashingNgramEmbedder) -> None:
    cache = tmp_path / "cache"
    for number in range(keywords_module.DICTIONARY_CACHE_ENTRIES + 2):
        path = write_lines(tmp_path / f"d{number}.tsv", [f"词{number}\tentity\t1\t"])
        read_dictionary_file_cached(path, embedder, cache)

    assert len(list(cache.iterdir())) == keywords_module.DICTIONARY_CACHE_ENTRIES
