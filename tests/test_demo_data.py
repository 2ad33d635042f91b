"""Tests for the synthetic KuaiSearch-schema data generator."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from onesearch_tasks.spark import demo_data
from onesearch_tasks.spark.demo_data import ATTRIBUTE_VOCABULARY, CATEGORY_TREE, generate_demo_data

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "kuaisearch-demo"
EXTRA_FIELDS = {"items.jsonl": ["attr_value"], "relevance.jsonl": ["item_id"]}
N_ITEMS = 300
N_USERS = 40
EXPECTED_ATTRIBUTE_TYPES = {
    "entity", "modifier", "brand", "material", "style", "function", "location", "audience", "color",
    "scene", "specifications", "price", "model", "anchor", "series", "marketing", "season", "pattern",
}


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def json_type(value: Any) -> str:
    """Name the JSON type of a value, with element types for lists and key types for objects."""
    if isinstance(value, list):
        return "list[" + ",".join(sorted({json_type(element) for element in value})) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{json_type(element)}" for key, element in value.items()) + "}"
    return type(value).__name__


def field_types(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Collect the JSON types per field, treating an empty list as compatible with any list."""
    types: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        for key, value in row.items():
            if value == []:
                continue
            types[key].add(json_type(value))
    return dict(types)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out_dir = tmp_path_factory.mktemp("demo")
    counts = generate_demo_data(out_dir, N_ITEMS, N_USERS, seed=7)
    return out_dir, counts


@pytest.fixture(scope="module")
def tables(generated: tuple[Path, dict[str, int]]) -> dict[str, list[dict[str, Any]]]:
    out_dir, _ = generated
    return {name: read_rows(out_dir / name) for name in demo_data.FILE_NAMES}


def files_bytes(out_dir: Path) -> dict[str, bytes]:
    return {name: (out_dir / name).read_bytes() for name in demo_data.FILE_NAMES}


@pytest.mark.parametrize("file_name", demo_data.FILE_NAMES)
def test_field_names_match_reference(tables: dict[str, list[dict[str, Any]]], file_name: str) -> None:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference files not found in {REFERENCE_DIR}")
    reference = read_rows(REFERENCE_DIR / file_name)
    expected = list(reference[0]) + EXTRA_FIELDS.get(file_name, [])
    for row in tables[file_name]:
        assert list(row) == expected


@pytest.mark.parametrize("file_name", demo_data.FILE_NAMES)
def test_field_types_match_reference(tables: dict[str, list[dict[str, Any]]], file_name: str) -> None:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference files not found in {REFERENCE_DIR}")
    reference_types = field_types(read_rows(REFERENCE_DIR / file_name))
    generated_types = field_types(tables[file_name])
    for field, types in reference_types.items():
        assert generated_types[field] == types, field
    for field in EXTRA_FIELDS.get(file_name, []):
        assert generated_types[field] == {"int" if field == "item_id" else "str"}


def test_row_counts_returned(generated: tuple[Path, dict[str, int]], tables: dict[str, list[dict[str, Any]]]) -> None:
    _, counts = generated
    assert set(counts) == set(demo_data.FILE_NAMES)
    for name, rows in tables.items():
        assert counts[name] == len(rows), name
    assert counts["items.jsonl"] == N_ITEMS
    assert counts["users.jsonl"] == N_USERS
    assert counts["recall.jsonl"] == N_USERS * 4


def test_ids_join(tables: dict[str, list[dict[str, Any]]]) -> None:
    item_ids = {row["item_id"] for row in tables["items.jsonl"]}
    user_ids = {row["user_id"] for row in tables["users.jsonl"]}
    assert len(item_ids) == N_ITEMS
    assert len(user_ids) == N_USERS
    for row in tables["recall.jsonl"]:
        assert row["user_id"] in user_ids
        assert set(row["impressed_item_ids"]) <= item_ids
    for row in tables["rank.jsonl"]:
        assert row["user_id"] in user_ids
        assert row["target_item_id"] in item_ids
        assert set(row["recently_clicked_item_ids"]) <= item_ids
        assert set(row["recently_purchased_item_ids"]) <= item_ids
    for row in tables["relevance.jsonl"]:
        assert row["item_id"] in item_ids


def test_recall_subsets(tables: dict[str, list[dict[str, Any]]]) -> None:
    for row in tables["recall.jsonl"]:
        impressed = row["impressed_item_ids"]
        assert len(impressed) == len(set(impressed)), row["session_id"]
        assert set(row["clicked_item_ids"]) <= set(impressed), row["session_id"]
        assert set(row["purchased_item_ids"]) <= set(row["clicked_item_ids"]), row["session_id"]


def test_recall_has_clicks_and_purchases(tables: dict[str, list[dict[str, Any]]]) -> None:
    assert any(row["clicked_item_ids"] for row in tables["recall.jsonl"])
    assert any(row["purchased_item_ids"] for row in tables["recall.jsonl"])


def test_time_index_increases(tables: dict[str, list[dict[str, Any]]]) -> None:
    times: dict[int, list[int]] = defaultdict(list)
    for row in tables["recall.jsonl"]:
        times[row["user_id"]].append(row["time_index"])
    for user_id, user_times in times.items():
        assert all(a < b for a, b in zip(user_times, user_times[1:])), user_id
    splits = {row["split"] for row in tables["recall.jsonl"]}
    assert splits <= {"train", "valid", "test"}


def test_rank_matches_recall(tables: dict[str, list[dict[str, Any]]]) -> None:
    sessions = {row["session_id"]: row for row in tables["recall.jsonl"]}
    for row in tables["rank.jsonl"]:
        session = sessions[row["session_id"]]
        target = row["target_item_id"]
        assert row["user_id"] == session["user_id"]
        assert row["query"] == session["query"]
        assert row["time_index"] == session["time_index"]
        assert row["split"] == session["split"]
        assert target in session["impressed_item_ids"]
        assert row["is_clicked"] == int(target in session["clicked_item_ids"])
        assert row["is_purchased"] == int(target in session["purchased_item_ids"])


def test_rank_history_is_earlier_clicks(tables: dict[str, list[dict[str, Any]]]) -> None:
    clicked: dict[int, list[int]] = defaultdict(list)
    purchased: dict[int, list[int]] = defaultdict(list)
    expected: dict[int, tuple[list[int], list[int]]] = {}
    for row in tables["recall.jsonl"]:
        user_id = row["user_id"]
        expected[row["session_id"]] = (clicked[user_id][-20:], purchased[user_id][-20:])
        clicked[user_id].extend(row["clicked_item_ids"])
        purchased[user_id].extend(row["purchased_item_ids"])
    for row in tables["rank.jsonl"]:
        expected_clicked, expected_purchased = expected[row["session_id"]]
        assert row["recently_clicked_item_ids"] == expected_clicked
        assert row["recently_purchased_item_ids"] == expected_purchased


def test_rank_statistics_consistent(tables: dict[str, list[dict[str, Any]]]) -> None:
    for row in tables["rank.jsonl"]:
        item = row["target_item_statistical_features"]
        user = row["user_statistical_features"]
        assert 0 <= item["item_click_cnt_30d_hist"] <= item["item_show_cnt_30d_hist"]
        assert 0 <= item["item_order_cnt_30d_hist"] <= item["item_click_cnt_30d_hist"]
        assert 0 <= user["user_click_cnt_30d_hist"] <= user["user_show_cnt_30d_hist"]
        assert 0 <= user["user_order_cnt_30d_hist"] <= user["user_click_cnt_30d_hist"]
        assert user["user_gmv_30d_hist"] >= 0
        assert row["target_item_price"] > 0


def test_relevance_titles_match_catalog(tables: dict[str, list[dict[str, Any]]]) -> None:
    catalog = {row["item_id"]: row for row in tables["items.jsonl"]}
    for row in tables["relevance.jsonl"]:
        item = catalog[row["item_id"]]
        assert row["item_title"] == item["item_title"]
        assert row["brand"] == item["brand_name"]
        assert row["seller_name"] == item["seller_name"]
        assert row["attr_value"] == item["attr_value"]


def test_relevance_queries_from_recall(tables: dict[str, list[dict[str, Any]]]) -> None:
    queries = {row["query"] for row in tables["recall.jsonl"]}
    relevance_queries = {row["query"] for row in tables["relevance.jsonl"]}
    assert relevance_queries <= queries
    assert {row["score"] for row in tables["relevance.jsonl"]} <= {0, 1, 2, 3}


def test_relevance_pairs_unique(tables: dict[str, list[dict[str, Any]]]) -> None:
    pairs = [(row["query"], row["item_id"]) for row in tables["relevance.jsonl"]]
    assert len(pairs) == len(set(pairs))


def leaf_of_query(query: str) -> tuple[str, str, str]:
    """Return the (level 1, level 2, level 3) names of the longest product noun in the query."""
    matches = [
        (len(noun), (level1, level2, level3))
        for level1, level2s in CATEGORY_TREE.items()
        for level2, level3s in level2s.items()
        for level3, nouns in level3s.items()
        for noun in nouns
        if noun in query
    ]
    assert matches, query
    return max(matches)[1]


def test_relevance_score_follows_categories(tables: dict[str, list[dict[str, Any]]]) -> None:
    catalog = {row["item_id"]: row for row in tables["items.jsonl"]}
    scores_seen = set()
    for row in tables["relevance.jsonl"]:
        item = catalog[row["item_id"]]
        query_leaf = leaf_of_query(row["query"])
        item_leaf = (item["category_level1_name"], item["category_level2_name"], item["category_level3_name"])
        score = row["score"]
        scores_seen.add(score)
        if item_leaf == query_leaf:
            assert score in (2, 3), row
        elif item_leaf[0] == query_leaf[0]:
            assert score == 1, row
        else:
            assert score == 0, row
        if score == 3:
            attribute_words = item["attr_value"].split(",")[2:] + [item["brand_name"]]
            assert any(word in row["query"] for word in attribute_words), row
    assert scores_seen == {0, 1, 2, 3}


def test_titles_contain_attribute_words(tables: dict[str, list[dict[str, Any]]]) -> None:
    not_in_title = set(ATTRIBUTE_VOCABULARY["location"]) | set(ATTRIBUTE_VOCABULARY["price"]) | {"无品牌"}
    for row in tables["items.jsonl"]:
        words = row["attr_value"].split(",")
        assert words[0] == row["brand_name"]
        for word in words:
            if word not in not_in_title:
                assert word in row["item_title"], (word, row["item_title"])


def test_deterministic(tmp_path: Path) -> None:
    generate_demo_data(tmp_path / "a", 120, 15, seed=3)
    generate_demo_data(tmp_path / "b", 120, 15, seed=3)
    assert files_bytes(tmp_path / "a") == files_bytes(tmp_path / "b")


def test_seed_changes_output(tmp_path: Path) -> None:
    generate_demo_data(tmp_path / "a", 120, 15, seed=3)
    generate_demo_data(tmp_path / "b", 120, 15, seed=4)
    assert (tmp_path / "a" / "items.jsonl").read_bytes() != (tmp_path / "b" / "items.jsonl").read_bytes()


def test_items_prefix_stable(tmp_path: Path) -> None:
    generate_demo_data(tmp_path / "small", 300, 10)
    generate_demo_data(tmp_path / "large", 330, 12)
    small = (tmp_path / "small" / "items.jsonl").read_text(encoding="utf-8").splitlines()
    large = (tmp_path / "large" / "items.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(large) == 330
    assert large[:300] == small
    small_users = (tmp_path / "small" / "users.jsonl").read_text(encoding="utf-8").splitlines()
    large_users = (tmp_path / "large" / "users.jsonl").read_text(encoding="utf-8").splitlines()
    assert large_users[:10] == small_users


def test_prefix_stable_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_data, "ITEM_BLOCK_SIZE", 128)
    monkeypatch.setattr(demo_data, "USER_BLOCK_SIZE", 4)
    generate_demo_data(tmp_path / "small", 300, 10, changed_fraction=0.2)
    generate_demo_data(tmp_path / "large", 330, 13, changed_fraction=0.2)
    for name, prefix in (("items.jsonl", 300), ("users.jsonl", 10)):
        small = (tmp_path / "small" / name).read_text(encoding="utf-8").splitlines()
        large = (tmp_path / "large" / name).read_text(encoding="utf-8").splitlines()
        assert large[:prefix] == small, name


def test_changed_fraction_retitles_share(tmp_path: Path) -> None:
    n_items = 1000
    fraction = 0.3
    generate_demo_data(tmp_path / "base", n_items, 20)
    generate_demo_data(tmp_path / "next", n_items, 20, changed_fraction=fraction, change_seed=5)
    base = read_rows(tmp_path / "base" / "items.jsonl")
    changed = read_rows(tmp_path / "next" / "items.jsonl")
    retitled = 0
    for old, new in zip(base, changed, strict=True):
        retitled += old["item_title"] != new["item_title"]
        assert {**old, "item_title": None} == {**new, "item_title": None}
    assert abs(retitled / n_items - fraction) < 0.05
    for name in ("users.jsonl", "recall.jsonl", "rank.jsonl"):
        assert (tmp_path / "base" / name).read_bytes() == (tmp_path / "next" / name).read_bytes(), name


def test_changed_titles_add_marketing_word(tmp_path: Path) -> None:
    generate_demo_data(tmp_path / "base", 200, 5)
    generate_demo_data(tmp_path / "next", 200, 5, changed_fraction=0.5)
    base = read_rows(tmp_path / "base" / "items.jsonl")
    changed = read_rows(tmp_path / "next" / "items.jsonl")
    marketing = ATTRIBUTE_VOCABULARY["marketing"]
    retitled = 0
    for old, new in zip(base, changed, strict=True):
        if old["item_title"] != new["item_title"]:
            retitled += 1
            prefix = new["item_title"][: len(new["item_title"]) - len(old["item_title"])]
            assert new["item_title"].endswith(old["item_title"])
            assert prefix.startswith("【")
            assert prefix.endswith("】")
            assert prefix[1:-1] in marketing
    assert retitled > 0


def test_change_seed_picks_items(tmp_path: Path) -> None:
    generate_demo_data(tmp_path / "a", 200, 5, changed_fraction=0.5, change_seed=1)
    generate_demo_data(tmp_path / "b", 200, 5, changed_fraction=0.5, change_seed=2)
    assert (tmp_path / "a" / "items.jsonl").read_bytes() != (tmp_path / "b" / "items.jsonl").read_bytes()


def test_attribute_vocabulary_complete() -> None:
    assert set(ATTRIBUTE_VOCABULARY) == EXPECTED_ATTRIBUTE_TYPES
    for name, values in ATTRIBUTE_VOCABULARY.items():
        assert len(values) > 0, name
        for value in values:
            assert isinstance(value, str), (name, value)
            assert value, name


def test_attribute_values_unique() -> None:
    all_values = [value for values in ATTRIBUTE_VOCABULARY.values() for value in values]
    assert len(all_values) == len(set(all_values))


def test_category_tree_shape() -> None:
    assert len(CATEGORY_TREE) >= 10
    for level1, level2s in CATEGORY_TREE.items():
        assert level2s, level1
        for level2, level3s in level2s.items():
            assert level3s, level2
            for level3, nouns in level3s.items():
                assert nouns, level3
    for level1 in CATEGORY_TREE:
        assert level1 in demo_data.LEVEL1_BRANDS
        assert level1 in demo_data.LEVEL1_MEDIAN_PRICE_FEN


def test_creates_nested_out_dir(tmp_path: Path) -> None:
    out_dir = tmp_path / "a" / "b"
    counts = generate_demo_data(out_dir, 1, 1, sessions_per_user=1)
    assert counts["items.jsonl"] == 1
    assert counts["recall.jsonl"] == 1
    assert (out_dir / "relevance.jsonl").stat().st_size > 0


@pytest.mark.parametrize(
    ("arguments", "keywords", "name"),
    [
        ((0, 5), {}, "n_items"),
        ((-3, 5), {}, "n_items"),
        ((5, 0), {}, "n_users"),
        ((5, 5), {"sessions_per_user": 0}, "sessions_per_user"),
        ((5, 5), {"sessions_per_user": demo_data.MAX_SESSIONS_PER_USER + 1}, "sessions_per_user"),
        ((5, 5), {"changed_fraction": -0.1}, "changed_fraction"),
        ((5, 5), {"changed_fraction": 1.0}, "changed_fraction"),
        ((5, 5), {"changed_fraction": float("nan")}, "changed_fraction"),
        ((5, 5, -1), {}, "seed"),
        ((5, 5), {"change_seed": -1}, "change_seed"),
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, arguments: tuple, keywords: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        generate_demo_data(tmp_path, *arguments, **keywords)
    assert not (tmp_path / "items.jsonl").exists()


def test_non_integer_count_raises(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="n_items"):
        generate_demo_data(tmp_path, 2.5, 5)  # type: ignore[arg-type]
