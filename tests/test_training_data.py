"""Training data built from real SID versions: the public KuaiSearch demo (ids do not join)
and generated data whose ids join, checked against the source tables."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import read_jsonl, run_cli, write_config
from onesearch_tasks.config import load_config
from onesearch_tasks.data.builder import OUTPUT_DIR, build_training_data, read_stats
from onesearch_tasks.data.sessions import user_token
from onesearch_tasks.data.templates import TemplateError
from onesearch_tasks.sid.refresh import layout_for, run_refresh, warehouse_for
from onesearch_tasks.spark.demo_data import generate_demo_data
from onesearch_tasks.spark.extract import ExtractError
from onesearch_tasks.spark.kuaisearch import load_kuaisearch
from onesearch_tasks.spark.session import get_spark
from onesearch_tasks.storage import StorageError

pytestmark = pytest.mark.spark

DS = "2025-05-01"
SFT_TASKS = (
    "query_to_sid", "sid_to_query", "item_to_sid", "sid_to_item", "item_to_category", "query_to_category",
    "item_sid_to_category", "query_to_keywords", "query_sid_to_keyword_sid", "personalized_keywords",
    "personalized_keyword_sid", "query_to_item", "item_to_query", "query_sid_to_item_sid",
    "item_sid_to_query_sid", "personalized_item_sid",
)
ALL_TASKS = (*SFT_TASKS, "sdft_personalized_item_sid", "grpo", "dpo_listwise")


def _build(root: Path, source: Path, **sections) -> SimpleNamespace:
    config = load_config(write_config(root / "config.yaml", root / "home", **sections))
    layout = layout_for(config)
    warehouse = warehouse_for(config, layout)
    load_kuaisearch(get_spark(config), source, warehouse, DS)
    published = run_refresh(config, DS)
    stats = build_training_data(config, layout, warehouse)
    return SimpleNamespace(config=config, layout=layout, warehouse=warehouse, version=published, stats=stats, source=source,
                           folder=published.path / OUTPUT_DIR, root=root)


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ONESEARCH_HOME", raising=False)
        patch.delenv("ONESEARCH_CONFIG", raising=False)
        yield tmp_path_factory


@pytest.fixture(scope="module")
def kuaisearch(isolated, kuaisearch_demo):
    return _build(isolated.mktemp("kuaisearch"), kuaisearch_demo, rq={"mode": "full"})


@pytest.fixture(scope="module")
def generated(isolated):
    root = isolated.mktemp("generated")
    generate_demo_data(root / "source", n_items=600, n_users=120, seed=3)
    return _build(root, root / "source", rq={"mode": "full"})


def _records(folder: Path, task: str) -> list[dict]:
    """All splits of one task, as dicts."""
    records = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name in ("dataset_info.json", "sid_vocab.json", "stats.json"):
            continue
        stem = path.name.split(".")[0]
        folder_name = path.parent.name
        name = f"sdft_{stem}" if folder_name == "sdft" else stem
        if name != task:
            continue
        if path.suffix == ".jsonl":
            records.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
        else:
            records.extend(json.loads(path.read_text(encoding="utf-8")))
    return records


def _sid_table(run, entity: str) -> dict[str, str]:
    table = pd.read_parquet(run.version.path / f"sid_{entity}.parquet")
    return dict(zip(table["key"], table["sid"]))


# --- public KuaiSearch demo (ids do not join) -------------------------------------------------------


def test_kuaisearch_supported_tasks_non_empty(kuaisearch):
    totals = {task: sum(counts.values()) for task, counts in kuaisearch.stats["tasks"].items()}
    for task in ("item_to_sid", "sid_to_item", "item_to_category", "query_to_sid", "query_to_item", "query_sid_to_item_sid"):
        assert totals[task] > 0, task


def test_kuaisearch_empty_tasks_explained(kuaisearch):
    for task, counts in kuaisearch.stats["tasks"].items():
        if sum(counts.values()) == 0:
            assert kuaisearch.stats["dropped"][task], f"{task} is empty without a recorded reason"


def test_kuaisearch_relevance_pairs_present(kuaisearch):
    relevant = {(row["query"], row["item_title"]) for row in read_jsonl(kuaisearch.source / "relevance.jsonl") if row["score"] >= 2}
    records = _records(kuaisearch.folder, "query_to_item")
    pairs = {(re.match(r"搜索词：<(.*)>$", record["input"]).group(1), record["output"]) for record in records}
    assert relevant <= pairs


def test_kuaisearch_counts_reconcile(kuaisearch):
    stats = kuaisearch.stats
    for task in ALL_TASKS:
        emitted = sum(stats["tasks"][task].values())
        assert stats["candidates"][task] == emitted + sum(stats["dropped"][task].values()), task


# --- generated data (ids join) -------------------------------------------------------------------------


def test_generated_every_task_non_empty(generated):
    for task in ALL_TASKS:
        assert sum(generated.stats["tasks"][task].values()) > 0, task


def test_data_stats_cli_prints_task_map(generated):
    result = run_cli(["data", "stats"], {"ONESEARCH_CONFIG": str(generated.root / "config.yaml"), "ONESEARCH_HOME": str(generated.root / "home")})
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["tasks"]["item_to_sid"]["train"] > 0
    assert set(stats["tasks"]["grpo"]) == {"train", "valid", "test"}


def test_item_sid_examples_match_sid_table(generated):
    sids = _sid_table(generated, "items")
    by_title = {}
    for row in read_jsonl(generated.source / "items.jsonl"):
        by_title.setdefault(row["item_title"], set()).add(sids[str(row["item_id"])])
    for record in _records(generated.folder, "item_to_sid")[:200]:
        title = re.match(r"商品标题：<(.*)>$", record["input"]).group(1)
        assert record["output"] in by_title[title]


def test_item_category_matches_catalog(generated):
    paths = {}
    for row in read_jsonl(generated.source / "items.jsonl"):
        levels = [row["category_level1_name"], row["category_level2_name"], row["category_level3_name"]]
        paths.setdefault(row["item_title"], set()).add("/".join(name for name in levels if name and name.upper() != "UNKNOWN"))
    for record in _records(generated.folder, "item_to_category")[:200]:
        title = re.match(r"商品标题：<(.*)>$", record["input"]).group(1)
        assert record["output"] in paths[title]


def test_query_category_is_majority(generated):
    category = {}
    for row in read_jsonl(generated.source / "items.jsonl"):
        levels = [row["category_level1_name"], row["category_level2_name"], row["category_level3_name"]]
        category[str(row["item_id"])] = "/".join(name for name in levels if name and name.upper() != "UNKNOWN")
    votes: dict[str, Counter] = defaultdict(Counter)
    positives: dict[tuple, set] = defaultdict(set)
    for row in read_jsonl(generated.source / "recall.jsonl"):
        positives[(str(row["user_id"]), str(row["session_id"]), row["query"])] |= set(map(str, row["clicked_item_ids"] + row["purchased_item_ids"]))
    for row in read_jsonl(generated.source / "rank.jsonl"):
        if row["is_clicked"] or row["is_purchased"]:
            positives[(str(row["user_id"]), str(row["session_id"]), row["query"])].add(str(row["target_item_id"]))
    for (_, _, query), items in positives.items():
        for item in items:
            votes[query][category[item]] += 1
    records = _records(generated.folder, "query_to_category")
    assert records
    for record in records:
        query = re.match(r"搜索词：<(.*)>$", record["input"]).group(1)
        best = min(votes[query].items(), key=lambda item: (-item[1], item[0]))[0]
        assert record["output"] == best, query


def test_stage3_targets_are_session_positives(generated):
    item_sids = _sid_table(generated, "items")
    query_sids = _sid_table(generated, "queries")
    positives_by_query: dict[str, set] = defaultdict(set)
    for row in read_jsonl(generated.source / "recall.jsonl"):
        positives_by_query[row["query"]] |= {item_sids[str(item)] for item in row["clicked_item_ids"] + row["purchased_item_ids"]}
    for row in read_jsonl(generated.source / "rank.jsonl"):
        if row["is_clicked"] or row["is_purchased"]:
            positives_by_query[row["query"]].add(item_sids[str(row["target_item_id"])])
    for record in _records(generated.folder, "personalized_item_sid"):
        match = re.match(r"搜索词：<(.*?)>，语义ID：(\S+?)；", record["input"])
        query, query_sid = match.group(1), match.group(2)
        assert query_sids[query] == query_sid
        assert record["output"] in positives_by_query[query]


def test_grpo_candidates_purchased_first(generated):
    for record in _records(generated.folder, "grpo"):
        orders = record["order_sids"]
        assert record["ground_truth_candidates"][: len(orders)] == orders
        assert set(record["ground_truth_candidates"]) == set(orders) | set(record["click_sids"])
        assert all(0.0 <= value <= 1.0 for value in record["ctr"].values())
        assert all(tier in (0, 1, 2, 3) for tier in record["relevance"].values())


def test_dpo_chosen_beats_rejected(generated):
    records = _records(generated.folder, "dpo_listwise")
    assert records
    for record in records:
        assert record["chosen"] not in record["rejected"]
        assert all(record["chosen_score"] > score for score in record["rejected_scores"])
        assert len(record["rejected"]) <= generated.config.training_data.dpo_negatives


def test_sdft_pattern_strips_teacher_to_student(generated):
    pattern = re.compile(generated.stats["sdft_keyword_pattern"])
    records = _records(generated.folder, "sdft_personalized_item_sid")
    assert records
    for record in records:
        assert record["input"] != record["student_input"]
        assert pattern.sub("", record["input"], count=1) == record["student_input"]


def test_no_user_in_two_splits(generated):
    splits_of_user: dict[str, set] = defaultdict(set)
    for path in (generated.folder / "rl").glob("*.jsonl"):
        split = path.name.split(".")[1]
        for line in path.read_text(encoding="utf-8").splitlines():
            splits_of_user[json.loads(line)["user"]].add(split)
    assert splits_of_user
    assert all(len(splits) == 1 for splits in splits_of_user.values())


def test_user_ids_never_raw(generated):
    raw_ids = {str(row["user_id"]) for row in read_jsonl(generated.source / "users.jsonl")}
    salt = generated.config.training_data.user_salt
    for path in (generated.folder / "rl").glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            assert record["user"] not in raw_ids
            assert record["user"].startswith("u_")
    assert user_token("17", salt) != user_token("17", salt + "x")
    for path in generated.folder.rglob("*.json*"):
        assert '"user_id"' not in path.read_text(encoding="utf-8"), path


def test_dataset_info_files_exist(generated):
    info = json.loads((generated.folder / "dataset_info.json").read_text(encoding="utf-8"))
    assert "onesearch_personalized_item_sid_train" in info
    for name, entry in info.items():
        assert (generated.folder / entry["file_name"]).is_file(), name
        assert entry["formatting"] == "alpaca"


def test_vocab_covers_every_sid_token(generated):
    vocab = json.loads((generated.folder / "sid_vocab.json").read_text(encoding="utf-8"))
    in_use = set(vocab["tokens_in_use"])
    seen = set()
    for path in generated.folder.rglob("*.json*"):
        if path.name != "sid_vocab.json":
            seen |= set(re.findall(r"<[a-z]_\d+>", path.read_text(encoding="utf-8")))
    assert seen <= in_use
    assert in_use <= set(vocab["all_tokens"])
    assert vocab["ranges"]["a"] == 8


def test_rebuild_is_byte_identical(generated):
    def digest() -> dict[str, str]:
        return {str(path.relative_to(generated.folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(generated.folder.rglob("*")) if path.is_file()}

    before = digest()
    sid_files_before = hashlib.sha256((generated.version.path / "sid_items.parquet").read_bytes()).hexdigest()
    build_training_data(generated.config, generated.layout, generated.warehouse, generated.version.version)
    assert digest() == before
    assert hashlib.sha256((generated.version.path / "sid_items.parquet").read_bytes()).hexdigest() == sid_files_before


def test_english_templates_selectable(generated, tmp_path):
    config = load_config(write_config(tmp_path / "config.yaml", generated.root / "home", training_data={"language": "en"}))
    stats = build_training_data(config, generated.layout, generated.warehouse)
    assert stats["language"] == "en"
    record = _records(generated.folder, "query_to_sid")[0]
    assert record["instruction"] == "Map the search query to its semantic ID."
    build_training_data(generated.config, generated.layout, generated.warehouse)


# --- bad input ---------------------------------------------------------------------------------------------


def test_unknown_version_is_clear(generated):
    with pytest.raises(StorageError, match="SID version '2030-01-01.r1' not found"):
        build_training_data(generated.config, generated.layout, generated.warehouse, "2030-01-01.r1")


def test_missing_partition_is_clear(generated, tmp_path):
    import shutil

    warehouse = tmp_path / "warehouse"
    shutil.copytree(generated.warehouse, warehouse)
    shutil.rmtree(warehouse / "search_sessions" / f"ds={DS}")
    with pytest.raises(ExtractError, match=f"missing partition ds={DS} in table 'search_sessions'"):
        build_training_data(generated.config, generated.layout, warehouse)


def test_missing_optional_partition_is_clear(generated, tmp_path):
    import shutil

    warehouse = tmp_path / "warehouse"
    shutil.copytree(generated.warehouse, warehouse)
    shutil.rmtree(warehouse / "rank_events" / f"ds={DS}")
    with pytest.raises(ExtractError, match=f"missing partition ds={DS} in table 'rank_events'"):
        build_training_data(generated.config, generated.layout, warehouse)


def test_anonymous_sessions_stay_apart(generated):
    from onesearch_tasks.data.sessions import Session, _attach_history

    sessions = [Session(user_id="", session_id=str(index), query=f"q{index}", time_index=index, clicked=["1"]) for index in range(3)]
    _attach_history(sessions, max_history=5)
    assert all(session.recent_queries == [] for session in sessions)
    assert len({session.split_key for session in sessions}) == 3
    assert user_token("", "salt") == ""


def test_missing_table_is_clear(generated, tmp_path):
    import shutil

    warehouse = tmp_path / "warehouse"
    shutil.copytree(generated.warehouse, warehouse)
    shutil.rmtree(warehouse / "users")
    with pytest.raises(ExtractError, match="table 'users' not found"):
        build_training_data(generated.config, generated.layout, warehouse)


def test_bad_template_is_clear(generated, tmp_path):
    import shutil

    import yaml

    from onesearch_tasks.data.templates import DEFAULT_TEMPLATE_DIR

    folder = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATE_DIR, folder)
    tree = yaml.safe_load((folder / "zh.yaml").read_text(encoding="utf-8"))
    tree["tasks"]["item_to_sid"]["output"] = "{item_sidd}"
    (folder / "zh.yaml").write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    config = load_config(write_config(tmp_path / "config.yaml", generated.root / "home", training_data={"template_dir": str(folder)}))
    with pytest.raises(TemplateError, match=r"item_to_sid.*item_sidd"):
        build_training_data(config, generated.layout, generated.warehouse)


def test_stats_before_build_is_clear(kuaisearch, tmp_path):
    from onesearch_tasks.storage import StateLayout

    with pytest.raises(StorageError):
        read_stats(StateLayout(tmp_path / "nothing"))
