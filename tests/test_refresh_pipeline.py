"""The daily refresh on the public KuaiSearch demo with real Spark and faiss: a full build,
an incremental day two, a referlayer retrain, bad input and failing gates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import CHANGED_ITEMS, NEW_ITEMS, REMOVED_ITEMS, SID_PATTERN, make_day_two, read_jsonl, write_config, write_jsonl
from onesearch_tasks.config import load_config
from onesearch_tasks.sid.refresh import QualityGateError, layout_for, run_embed, run_extract, run_refresh, run_rq, warehouse_for
from onesearch_tasks.sid.rq import RQError
from onesearch_tasks.spark.extract import ExtractError
from onesearch_tasks.spark.kuaisearch import load_kuaisearch, title_item_key
from onesearch_tasks.spark.session import get_spark
from onesearch_tasks.storage import current_version, read_json

pytestmark = pytest.mark.spark

DAY1, DAY2, DAY3, DAY4 = "2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, kuaisearch_demo):
    """Run day one (full) and day two (incremental) once for the whole module."""
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ONESEARCH_HOME", raising=False)
        patch.delenv("ONESEARCH_CONFIG", raising=False)
        config_path = write_config(root / "config.yaml", root / "home")
        config = load_config(config_path)
        layout = layout_for(config)
        spark = get_spark(config)
        warehouse = warehouse_for(config, layout)

        load_kuaisearch(spark, kuaisearch_demo, warehouse, DAY1)
        first = run_refresh(config, DAY1)

        day_two_dir = root / "day2"
        edits = make_day_two(kuaisearch_demo, day_two_dir)
        load_kuaisearch(spark, day_two_dir, warehouse, DAY2)
        second = run_refresh(config, DAY2)

        yield SimpleNamespace(
            root=root, config_path=config_path, config=config, layout=layout, spark=spark,
            warehouse=warehouse, first=first, second=second, edits=edits, day_two_dir=day_two_dir,
        )


def _sids(version_path: Path, entity: str) -> pd.DataFrame:
    return pd.read_parquet(version_path / f"sid_{entity}.parquet")


def _metrics(version_path: Path) -> dict:
    return read_json(version_path / "metrics.json")


# --- day one: every key gets a SID --------------------------------------------------------------


def test_catalog_items_all_get_sids(pipeline, kuaisearch_demo):
    sids = _sids(pipeline.first.path, "items").set_index("key")["sid"]
    catalog_ids = [str(row["item_id"]) for row in read_jsonl(kuaisearch_demo / "items.jsonl")]
    assert set(catalog_ids) <= set(sids.index)
    assert all(re.match(SID_PATTERN, sids[item_id]) for item_id in catalog_ids)


def test_relevance_titles_get_title_keyed_sids(pipeline, kuaisearch_demo):
    sids = _sids(pipeline.first.path, "items").set_index("key")
    for row in read_jsonl(kuaisearch_demo / "relevance.jsonl"):
        key = title_item_key(row["item_title"])
        assert key in sids.index, row["item_title"]
        assert sids.loc[key, "text"] == row["item_title"].strip()


def test_queries_from_every_log_get_sids(pipeline, kuaisearch_demo):
    keys = set(_sids(pipeline.first.path, "queries")["key"])
    for file_name in ("recall.jsonl", "rank.jsonl", "relevance.jsonl"):
        queries = {row["query"] for row in read_jsonl(kuaisearch_demo / file_name)}
        assert queries <= keys, file_name


def test_unknown_interaction_items_counted(pipeline, kuaisearch_demo):
    catalog = {str(row["item_id"]) for row in read_jsonl(kuaisearch_demo / "items.jsonl")}
    expected_rows = 0
    for row in read_jsonl(kuaisearch_demo / "recall.jsonl"):
        items = set(map(str, row["impressed_item_ids"] + row["clicked_item_ids"] + row["purchased_item_ids"]))
        expected_rows += len(items - catalog)
    expected_rows += sum(str(row["target_item_id"]) not in catalog for row in read_jsonl(kuaisearch_demo / "rank.jsonl"))
    interactions = _metrics(pipeline.first.path)["interactions"]
    assert interactions["unknown_item_rows"] == expected_rows
    assert interactions["unknown_item_rows"] > 0


def test_day_one_counts_reconcile(pipeline, kuaisearch_demo):
    metrics = _metrics(pipeline.first.path)
    titles = {row["item_title"] for row in read_jsonl(kuaisearch_demo / "relevance.jsonl")}
    catalog_rows = len(read_jsonl(kuaisearch_demo / "items.jsonl"))
    items = metrics["entities"]["items"]["counts"]
    assert items["in"] == catalog_rows + len(titles)
    for entity in ("items", "queries"):
        counts = metrics["entities"][entity]["counts"]
        assert counts["in"] == counts["processed"] + counts["quarantined"], entity
        assert metrics["entities"][entity]["keys"] == counts["processed"] + counts["carried"], entity


def test_day_one_is_full_with_high_icr(pipeline):
    metrics = _metrics(pipeline.first.path)
    assert metrics["mode"] == "full"
    assert metrics["entities"]["items"]["icr"] >= 0.9
    assert metrics["gates"]["passed"]


# --- day two: incremental on top of day one --------------------------------------------------------


def test_day_two_is_current_and_incremental(pipeline):
    metrics = _metrics(pipeline.second.path)
    assert current_version(pipeline.layout) == pipeline.second.version
    assert metrics["mode"] == "incremental"
    assert metrics["reference_version"] == pipeline.first.version


def test_unchanged_keys_keep_sids(pipeline):
    for entity in ("items", "queries"):
        before = _sids(pipeline.first.path, entity).set_index("key")["sid"]
        after = _sids(pipeline.second.path, entity)
        unchanged = after[after["status"] == "unchanged"].set_index("key")["sid"]
        assert len(unchanged) > 0, entity
        assert (before.loc[unchanged.index] == unchanged).all(), entity
        assert _metrics(pipeline.second.path)["entities"][entity]["churn"]["churn"] == 0.0


def test_new_changed_removed_items_reported(pipeline):
    after = _sids(pipeline.second.path, "items").set_index("key")
    metrics = _metrics(pipeline.second.path)["entities"]["items"]
    assert sorted(after.index[after["status"] == "new"]) == sorted(pipeline.edits["new"])
    assert sorted(after.index[after["status"] == "changed"]) == sorted(pipeline.edits["changed"])
    assert metrics["new_keys"] == NEW_ITEMS
    assert metrics["removed_keys"] == REMOVED_ITEMS
    assert not set(pipeline.edits["removed"]) & set(after.index)
    assert all(re.match(SID_PATTERN, after.loc[key, "sid"]) for key in pipeline.edits["new"])
    assert metrics["status"]["changed"] == CHANGED_ITEMS


def test_day_two_reuses_frozen_codebooks(pipeline):
    for name in ("rq_codebook_1.npy", "rq_codebook_2.npy", "rq_codebook_3.npy"):
        before = np.load(pipeline.first.path / "model" / name)
        after = np.load(pipeline.second.path / "model" / name)
        assert np.array_equal(before, after), name
    assert (pipeline.first.path / "model" / "opq.faiss").read_bytes() == (pipeline.second.path / "model" / "opq.faiss").read_bytes()


def test_referlayer_updates_online(pipeline, tmp_path):
    config = load_config(write_config(tmp_path / "config.yaml", pipeline.config.home_path, rq={"referlayer": 2}))
    day_three_dir = tmp_path / "day3"
    make_day_two(pipeline.day_two_dir, day_three_dir)
    load_kuaisearch(pipeline.spark, day_three_dir, pipeline.warehouse, DAY3)
    third = run_refresh(config, DAY3)
    metrics = _metrics(third.path)
    rq_step = read_json(third.path / "manifest.json")["steps"]["rq"]
    for name in ("rq_codebook_1.npy", "rq_codebook_2.npy"):
        assert np.array_equal(np.load(pipeline.second.path / "model" / name), np.load(third.path / "model" / name)), name
    assert not np.array_equal(np.load(pipeline.second.path / "model" / "rq_codebook_3.npy"), np.load(third.path / "model" / "rq_codebook_3.npy"))
    assert metrics["rq_update"] == "online"
    assert rq_step["updated_layers"] == [3]
    assert rq_step["encoded_keys"] < rq_step["reused_keys"]
    assert metrics["entities"]["items"]["churn"]["churn"] == 0.0
    assert metrics["entities"]["items"]["churn"]["unchanged_keys"] > 0


def test_refit_retrains_later_layers(pipeline, tmp_path):
    rq = {"referlayer": 2, "refit_later_layers": True}
    config = load_config(write_config(tmp_path / "config.yaml", pipeline.config.home_path, rq=rq, gates={"max_churn": 1.0}))
    load_kuaisearch(pipeline.spark, pipeline.day_two_dir, pipeline.warehouse, DAY4)
    fourth = run_refresh(config, DAY4)
    metrics = _metrics(fourth.path)
    reference_model = pipeline.layout.version_dir(fourth.previous) / "model"
    for name in ("rq_codebook_1.npy", "rq_codebook_2.npy"):
        assert np.array_equal(np.load(reference_model / name), np.load(fourth.path / "model" / name)), name
    assert metrics["mode"] == "incremental"
    assert metrics["rq_update"] == "refit"
    assert 0.0 <= metrics["entities"]["items"]["churn"]["churn"] <= 1.0
    assert metrics["entities"]["items"]["churn"]["unchanged_keys"] > 0


# --- bad input, missing data, gates ----------------------------------------------------------------


def test_bad_rows_quarantined_with_reasons(pipeline, kuaisearch_demo, tmp_path):
    source = tmp_path / "bad"
    make_day_two(kuaisearch_demo, source)
    items = read_jsonl(source / "items.jsonl")
    template = dict(items[0])
    bad_rows = [
        {**template, "item_id": "\\N", "item_title": "空键商品"},
        {**template, "item_id": 88_000_001, "item_title": "维度错误", "embedding": [0.5, 0.5]},
        {**template, "item_id": items[1]["item_id"], "item_title": "重复的商品编号"},
        {**template, "item_id": 88_000_002, "item_title": "全零向量", "embedding": [0.0] * 32},
    ]
    write_jsonl(source / "items.jsonl", items + bad_rows)
    with open(source / "items.jsonl", "a", encoding="utf-8") as handle:
        handle.write("{this line is not json\n")
    counts = {c.table: c for c in load_kuaisearch(pipeline.spark, source, pipeline.warehouse, "2025-02-01")}
    assert counts["items"].quarantined == 1

    config = load_config(pipeline.config_path)
    run_extract(config, "2025-02-01")
    run = run_embed(config, "2025-02-01")
    quarantine = pd.read_parquet(run.path / "quarantine.parquet")
    reasons = dict(zip(quarantine["key"], quarantine["reason"]))
    assert reasons["\\N"] == "missing_key"
    assert reasons["88000001"] == "embedding_dimension_mismatch"
    assert reasons["88000002"] == "embedding_all_zero"
    assert reasons[str(items[1]["item_id"])] == "duplicate_key"
    item_counts = run.manifest["steps"]["embed"]["counts"]["items"]
    assert item_counts["in"] == item_counts["processed"] + item_counts["quarantined"]
    assert item_counts["quarantined"] == 4


def test_empty_snapshot_refused(pipeline, kuaisearch_demo, tmp_path):
    source = tmp_path / "empty-items"
    make_day_two(kuaisearch_demo, source)
    (source / "items.jsonl").write_text("")
    (source / "relevance.jsonl").write_text("")
    load_kuaisearch(pipeline.spark, source, pipeline.warehouse, "2025-02-02")
    with pytest.raises(ExtractError, match="items partition ds=2025-02-02 is empty"):
        run_extract(load_config(pipeline.config_path), "2025-02-02")


def test_mass_removal_fails_gate(pipeline, kuaisearch_demo, tmp_path):
    source = tmp_path / "half"
    make_day_two(kuaisearch_demo, source)
    items = read_jsonl(source / "items.jsonl")
    write_jsonl(source / "items.jsonl", items[: len(items) // 3])
    load_kuaisearch(pipeline.spark, source, pipeline.warehouse, "2025-02-03")
    before = current_version(pipeline.layout)
    with pytest.raises(QualityGateError, match=r"items\.removed_share="):
        run_refresh(load_config(pipeline.config_path), "2025-02-03")
    assert current_version(pipeline.layout) == before


def test_missing_partition_is_clear_error(pipeline):
    with pytest.raises(ExtractError, match=r"missing partition ds=2031-05-05 in table 'items'"):
        run_extract(load_config(pipeline.config_path), "2031-05-05")


def test_k_larger_than_rows_names_layer(pipeline, tmp_path):
    config = load_config(write_config(tmp_path / "config.yaml", pipeline.config.home_path, rq={"k": "5000-8-8", "mode": "full"}))
    run_extract(config, DAY2)
    run_embed(config, DAY2)
    with pytest.raises(RQError, match=r"RQ layer 1: k=5000 is larger than the \d+ rows"):
        run_rq(config, DAY2)


def test_failed_gate_keeps_previous_version(pipeline, tmp_path):
    before = current_version(pipeline.layout)
    config = load_config(write_config(
        tmp_path / "config.yaml", pipeline.config.home_path,
        rq={"k": "2-2-2", "mode": "full"}, opq={"bits": 1}, gates={"min_item_icr": 0.9},
    ))
    with pytest.raises(QualityGateError, match=r"items\.icr=.*\(min 0\.9\).*Run folder: .*2025-01-02.*Nothing was published"):
        run_refresh(config, DAY2)
    assert current_version(pipeline.layout) == before
    manifest = json.loads((pipeline.layout.run_dir(DAY2) / "manifest.json").read_text())
    assert manifest["steps"]["evaluate"]["gates"]["passed"] is False
