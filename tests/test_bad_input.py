"""Bad input through the real refresh: Spark load and extract, embed, RQ, OPQ, gates, publish.

Each case ends in one of two ways. Either the row lands in the run's quarantine.parquet with
a reason and its source row, the counts reconcile (in = processed + quarantined) and the
run publishes. Or a fatal error names the value and the fix, and CURRENT.json stays as it
was. The data is generated (300 items) and RQ uses k=4-4-4, so the module stays small.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import read_jsonl, write_config, write_jsonl
from onesearch_tasks.config import OneSearchConfig, load_config
from onesearch_tasks.sid.keywords import EMBEDDING_SEPARATOR
from onesearch_tasks.sid.opq import OPQError, save_opq, train_opq
from onesearch_tasks.sid.refresh import layout_for, run_embed, run_extract, run_refresh, warehouse_for
from onesearch_tasks.sid.rq import RQError
from onesearch_tasks.spark.demo_data import generate_demo_data
from onesearch_tasks.spark.extract import ExtractError
from onesearch_tasks.spark.kuaisearch import NOT_UTF8_REASON, QUARANTINE_TABLE, load_kuaisearch
from onesearch_tasks.spark.session import get_spark
from onesearch_tasks.storage import StorageError, current_version, read_json

pytestmark = pytest.mark.spark

BASE_DS = "2025-03-01"
BAD_DS = "2025-03-02"
EMPTY_DS = "2025-03-03"
PARTIAL_DS = "2025-03-04"
NEVER_LOADED_DS = "2025-03-30"
ITEMS, USERS, SEED = 300, 40, 5
DIM = 32
# Settings of every config in this module: small k, and a quarantine gate that lets the
# bad-rows day (about 20 bad rows of about 500) publish.
OVERRIDES = {"rq": {"k": "4-4-4"}, "gates": {"max_quarantine_share": 0.2}}
LONG_TITLE_CHARS = 100_000
LONG_QUERY = "查" * 2_000


def make_config(path: Path, home: Path, **sections: dict) -> OneSearchConfig:
    merged = {name: dict(values) for name, values in OVERRIDES.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return load_config(write_config(path, home, **merged))


def copy_source(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def pointer_state(layout) -> tuple[bytes, list[str]]:
    """CURRENT.json bytes and the published version names, to show that nothing was published."""
    versions = sorted(entry.name for entry in layout.versions.iterdir())
    return layout.pointer.read_bytes(), versions


def vector(seed: int) -> list[float]:
    return np.random.default_rng(seed).normal(size=DIM).round(4).tolist()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Generated data loaded for BASE_DS and published once: the reference of later runs."""
    root = tmp_path_factory.mktemp("bad_input")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ONESEARCH_HOME", raising=False)
        patch.delenv("ONESEARCH_CONFIG", raising=False)
        source = root / "source"
        generate_demo_data(source, ITEMS, USERS, seed=SEED)
        config = make_config(root / "config.yaml", root / "home")
        layout = layout_for(config)
        spark = get_spark(config)
        warehouse = warehouse_for(config, layout)
        load_kuaisearch(spark, source, warehouse, BASE_DS)
        first = run_refresh(config, BASE_DS)
        yield SimpleNamespace(root=root, source=source, config=config, layout=layout, spark=spark, warehouse=warehouse, first=first)


# --- bad rows: quarantined with a reason, the run still publishes --------------------------------

# (key as read, fields of the JSONL row, reason, text in the detail)
ITEM_ROWS: list[tuple[str, dict, str, str]] = [
    ("91000001", {"item_title": "坏行维度", "embedding": [0.5] * 8}, "embedding_dimension_mismatch", f"embedding_dimension_mismatch:8; expected {DIM}"),
    ("91000002", {"item_title": "坏行非数", "embedding": [float("nan")] + [0.1] * (DIM - 1)}, "embedding_not_finite", "finite"),
    ("91000003", {"item_title": "坏行无穷", "embedding": [float("inf")] + [0.1] * (DIM - 1)}, "embedding_not_finite", "finite"),
    ("91000004", {"item_title": "坏行全零", "embedding": [0.0] * DIM}, "embedding_all_zero", "non-zero"),
    ("", {"item_title": "坏行空串编号"}, "missing_key", "null, empty or \\N"),
    ("\\N", {"item_title": "坏行空值编号"}, "missing_key", "null, empty or \\N"),
    ("<null>", {"item_title": "坏行没有编号"}, "missing_key", "null, empty or \\N"),
    ("9100\t0006", {"item_title": "坏行制表符"}, "control_characters_in_key", "tab, newline"),
    ("91000007\n", {"item_title": "坏行换行"}, "control_characters_in_key", "tab, newline"),
    ("91000008\x01", {"item_title": "坏行控制字符"}, "control_characters_in_key", "control character"),
    ("91000010", {"item_title": "长" * LONG_TITLE_CHARS}, "text_too_long", f"{LONG_TITLE_CHARS} characters"),
]
DUPLICATE_KEY = "91000005"
DUPLICATE_VECTORS = (vector(1), vector(2))
CLEANED_KEY = "91000009"
# Rows written straight into the items table as parquet: (key bytes, title bytes).
RAW_BYTE_ROWS = [(b"9100\xff0013", "坏行坏编号".encode()), (b"91000012", "坏行".encode() + b"\xff\xfe")]
RAW_KEY_AS_READ = "9100\ufffd0013"
JSONL_BAD_BYTES_LINE = b'{"item_id": "91000011", "item_title": "\xe5\x9d\x8f\xff\xfe"}\n'
BAD_QUERIES: list[tuple[str | None, str, str]] = [
    ("\\N", "missing_key", "null, empty or \\N"),
    ("", "missing_key", "null, empty or \\N"),
    (None, "missing_key", "null, empty or \\N"),
    ("红色\t连衣裙", "control_characters_in_key", "tab, newline"),
    (LONG_QUERY, "text_too_long", f"{len(LONG_QUERY)} characters"),
]
UNKNOWN_ITEM_IDS = ("99999991", "99999992")


def _jsonl_item(template: dict, key: str, fields: dict) -> dict:
    row = {**template, **fields}
    if key == "<null>":
        row.pop("item_id")
    else:
        row["item_id"] = key
    return row


def _append_raw_items(spark, warehouse: Path, ds: str) -> None:
    """Append items whose id or title contains bytes that are not UTF-8, as a catalog table could."""
    from pyspark.sql import functions as F

    partition = warehouse / "items" / f"ds={ds}"
    table = spark.read.parquet(str(partition))
    template = spark.createDataFrame(table.limit(1).collect(), schema=table.schema)
    rows = None
    for key, title in RAW_BYTE_ROWS:
        row = template.withColumn("item_id", F.unhex(F.lit(key.hex())).cast("string"))
        row = row.withColumn("item_title", F.unhex(F.lit(title.hex())).cast("string"))
        rows = row if rows is None else rows.unionByName(row)
    rows.write.mode("append").parquet(str(partition))


@pytest.fixture(scope="module")
def bad_day(base):
    """BAD_DS: the catalog plus every bad row, loaded with the KuaiSearch loader and refreshed once."""
    source = copy_source(base.source, base.root / "bad-source")
    items = read_jsonl(source / "items.jsonl")
    template = {key: value for key, value in items[0].items() if key != "embedding"}
    extra = [_jsonl_item(template, key, fields) for key, fields, _, _ in ITEM_ROWS]
    extra += [{**template, "item_id": DUPLICATE_KEY, "item_title": "坏行重复编号", "embedding": given} for given in DUPLICATE_VECTORS]
    extra.append({**template, "item_id": CLEANED_KEY, "item_title": "红色\t连衣裙\n夏季"})
    write_jsonl(source / "items.jsonl", items + extra)
    with open(source / "items.jsonl", "ab") as handle:
        handle.write(JSONL_BAD_BYTES_LINE)

    sessions = read_jsonl(source / "recall.jsonl")
    session = sessions[0]
    added = [{**session, "session_id": 990_000 + number, "query": query} for number, (query, _, _) in enumerate(BAD_QUERIES)]
    unknown = UNKNOWN_ITEM_IDS[1]
    added.append({**session, "session_id": 990_100, "impressed_item_ids": [unknown], "clicked_item_ids": [unknown], "purchased_item_ids": []})
    write_jsonl(source / "recall.jsonl", sessions + added)
    ranks = read_jsonl(source / "rank.jsonl")
    write_jsonl(source / "rank.jsonl", ranks + [{**ranks[0], "session_id": 990_200, "target_item_id": UNKNOWN_ITEM_IDS[0]}])

    loaded = {counts.table: counts for counts in load_kuaisearch(base.spark, source, base.warehouse, BAD_DS)}
    _append_raw_items(base.spark, base.warehouse, BAD_DS)
    result = run_refresh(base.config, BAD_DS)
    return SimpleNamespace(
        result=result,
        loaded=loaded,
        quarantine=pd.read_parquet(result.path / "quarantine.parquet"),
        manifest=read_json(result.path / "manifest.json"),
        metrics=read_json(result.path / "metrics.json"),
    )


def _quarantined(bad_day, entity: str, key: str) -> pd.DataFrame:
    frame = bad_day.quarantine
    return frame[(frame["entity"] == entity) & (frame["key"] == key)]


@pytest.mark.parametrize(("key", "fields", "reason", "detail"), ITEM_ROWS, ids=[case[2] + "-" + str(number) for number, case in enumerate(ITEM_ROWS)])
def test_bad_item_row_quarantined(bad_day, key, fields, reason, detail):
    rows = _quarantined(bad_day, "items", key)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["reason"] == reason
    assert detail in row["detail"]
    title_start = json.dumps(fields["item_title"], ensure_ascii=False)[:40]
    assert title_start in row["source_row"]


@pytest.mark.parametrize("name", ["NaN", "Infinity"])
def test_non_finite_source_row_kept(bad_day, name):
    key = "91000002" if name == "NaN" else "91000003"
    source_row = _quarantined(bad_day, "items", key).iloc[0]["source_row"]
    assert f"[{name}, 0.1" in source_row


def test_long_title_source_row_cut(bad_day):
    source_row = _quarantined(bad_day, "items", "91000010").iloc[0]["source_row"]
    assert source_row.startswith('{"key": "91000010", "text": "长长')
    assert len(source_row) == 2_000


def test_duplicate_key_quarantines_one(bad_day):
    rows = _quarantined(bad_day, "items", DUPLICATE_KEY)
    assert len(rows) == 1
    assert rows.iloc[0]["reason"] == "duplicate_key"
    assert "text or embedding differs" in rows.iloc[0]["detail"]
    quarantined_vector = json.loads(rows.iloc[0]["source_row"])["embedding"]
    assert any(np.allclose(quarantined_vector, given, atol=1e-6) for given in DUPLICATE_VECTORS)


def test_duplicate_key_keeps_sid(bad_day):
    sids = pd.read_parquet(bad_day.result.path / "sid_items.parquet")
    assert (sids["key"] == DUPLICATE_KEY).sum() == 1


def test_title_control_chars_cleaned(bad_day):
    sids = pd.read_parquet(bad_day.result.path / "sid_items.parquet").set_index("key")
    assert sids.loc[CLEANED_KEY, "text"] == "红色 连衣裙 夏季"
    assert len(_quarantined(bad_day, "items", CLEANED_KEY)) == 0


@pytest.mark.parametrize(("key", "field"), [(RAW_KEY_AS_READ, "key"), ("91000012", "text")])
def test_table_invalid_utf8_quarantined(bad_day, key, field):
    rows = _quarantined(bad_day, "items", key)
    assert len(rows) == 1
    assert rows.iloc[0]["reason"] == "invalid_utf8"
    assert f"{field} contains U+FFFD" in rows.iloc[0]["detail"]
    assert "坏行" in rows.iloc[0]["source_row"]


def test_jsonl_invalid_utf8_load_quarantined(bad_day, base):
    load_quarantine = pd.read_parquet(base.warehouse / QUARANTINE_TABLE / f"ds={BAD_DS}")
    rows = load_quarantine[load_quarantine["record"].str.contains('"item_id": "91000011"', regex=False)]
    assert len(rows) == 1
    assert rows.iloc[0]["reason"] == NOT_UTF8_REASON
    assert "\ufffd" in rows.iloc[0]["record"]
    items = bad_day.loaded["items"]
    assert items.read == items.loaded - items.derived + items.quarantined


@pytest.mark.parametrize(("query", "reason", "detail"), BAD_QUERIES, ids=[case[1] + "-" + str(number) for number, case in enumerate(BAD_QUERIES)])
def test_bad_query_quarantined(bad_day, query, reason, detail):
    key = "<null>" if query is None else query
    rows = _quarantined(bad_day, "queries", key)
    assert len(rows) == 1
    assert rows.iloc[0]["reason"] == reason
    assert detail in rows.iloc[0]["detail"]
    assert json.dumps(query, ensure_ascii=False)[:40] in rows.iloc[0]["source_row"]


@pytest.mark.parametrize("entity", ["items", "queries"])
def test_bad_day_counts_reconcile(bad_day, entity):
    counts = bad_day.manifest["steps"]["embed"]["counts"][entity]
    assert counts["in"] == counts["processed"] + counts["quarantined"]
    assert counts["quarantined"] == int((bad_day.quarantine["entity"] == entity).sum())
    assert bad_day.metrics["entities"][entity]["counts"] == counts


def test_bad_day_items_in_matches_load(bad_day):
    counts = bad_day.manifest["steps"]["embed"]["counts"]["items"]
    assert counts["in"] == bad_day.loaded["items"].loaded + len(RAW_BYTE_ROWS)


def test_bad_day_published(bad_day, base):
    assert current_version(base.layout) == bad_day.result.version
    assert bad_day.result.previous == base.first.version


def test_unjoined_ids_counted(bad_day):
    interactions = bad_day.metrics["interactions"]
    assert interactions["unknown_item_rows"] == len(UNKNOWN_ITEM_IDS)
    assert interactions["unknown_item_ids"] == len(UNKNOWN_ITEM_IDS)
    assert sorted(interactions["examples"]) == sorted(UNKNOWN_ITEM_IDS)


# --- missing and empty days ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_day(base):
    """EMPTY_DS: every partition exists and contains no rows."""
    source = copy_source(base.source, base.root / "empty-source")
    for path in source.glob("*.jsonl"):
        path.write_text("", encoding="utf-8")
    load_kuaisearch(base.spark, source, base.warehouse, EMPTY_DS)
    return EMPTY_DS


def test_empty_snapshot_day_rejected(base, empty_day):
    before = pointer_state(base.layout)
    with pytest.raises(ExtractError, match=rf"items partition ds={empty_day} is empty.*use 'delta'"):
        run_refresh(base.config, empty_day)
    assert pointer_state(base.layout) == before


def test_empty_delta_day_carries_keys(base, empty_day, tmp_path):
    config = make_config(tmp_path / "config.yaml", base.config.home_path, source={"items_partition_mode": "delta"})
    reference = current_version(base.layout)
    result = run_refresh(config, empty_day)
    metrics = read_json(result.path / "metrics.json")
    before = pd.read_parquet(base.layout.version_dir(reference) / "sid_items.parquet")
    after = pd.read_parquet(result.path / "sid_items.parquet")
    assert metrics["entities"]["items"]["counts"] == {"in": 0, "processed": 0, "quarantined": 0, "carried": len(before)}
    assert after.set_index("key")["sid"].sort_index().equals(before.set_index("key")["sid"].sort_index())
    assert set(after["status"]) == {"carried"}


def test_never_loaded_day_rejected(base):
    before = pointer_state(base.layout)
    with pytest.raises(ExtractError, match=rf"missing partition ds={NEVER_LOADED_DS} in table 'items'.*load-kuaisearch"):
        run_refresh(base.config, NEVER_LOADED_DS)
    assert pointer_state(base.layout) == before


@pytest.fixture(scope="module")
def partial_day(base):
    """PARTIAL_DS: a complete day; each test moves one table's partition aside and back."""
    load_kuaisearch(base.spark, base.source, base.warehouse, PARTIAL_DS)
    return PARTIAL_DS


@pytest.mark.parametrize("table", ["search_sessions", "rank_events", "users", "relevance_labels"])
def test_missing_partition_rejected(base, partial_day, table, tmp_path):
    partition = base.warehouse / table / f"ds={partial_day}"
    shutil.move(partition, tmp_path / "partition")
    before = pointer_state(base.layout)
    try:
        with pytest.raises(ExtractError, match=rf"missing partition ds={partial_day} in table '{table}'.*load that day"):
            run_refresh(base.config, partial_day)
    finally:
        shutil.move(tmp_path / "partition", partition)
    assert pointer_state(base.layout) == before


# --- keyword dictionary files ----------------------------------------------------------------------

GOOD_KEYWORD_LINES = ["坏行测试词\tentity\t10\t", "红裙子测试\tcolor\t5\t" + EMBEDDING_SEPARATOR.join(["0.1"] * DIM)]
BAD_KEYWORD_LINES = [
    ("只有两列\tentity", "expected 4 tab-separated fields, found 2"),
    ("坏类型\tnotatype\t3\t", "unknown type 'notatype'"),
    ("坏数字\tbrand\tabc\t", "pv 'abc' is not a number"),
    ("短向量\tbrand\t3\t0.1" + EMBEDDING_SEPARATOR + "0.2", f"embedding has 2 values, expected {DIM}"),
    ("非有限\tbrand\t3\t" + EMBEDDING_SEPARATOR.join(["nan"] + ["0.1"] * (DIM - 1)), "embedding contains NaN or inf"),
]


def test_dictionary_bad_lines_rejected(base, tmp_path):
    path = tmp_path / "keywords.tsv"
    lines = ["# test dictionary", *GOOD_KEYWORD_LINES, *(line for line, _ in BAD_KEYWORD_LINES)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = make_config(tmp_path / "config.yaml", base.config.home_path, keywords={"dictionary_files": [str(path)]})

    result = run_refresh(config, BASE_DS)

    rejected = pd.read_parquet(result.path / "keywords" / "rejected_lines.parquet")
    assert rejected["line_number"].tolist() == list(range(len(GOOD_KEYWORD_LINES) + 2, len(lines) + 1))
    for (line, reason), (_, row) in zip(BAD_KEYWORD_LINES, rejected.iterrows()):
        assert reason in row["reason"], line
        assert row["line"] == line
    dictionary = set(pd.read_parquet(result.path / "keywords" / "dictionary.parquet")["keyword"])
    accepted = [line.split("\t")[0] for line in GOOD_KEYWORD_LINES]
    assert set(accepted) <= dictionary
    assert len(lines) - 1 == len(accepted) + len(rejected)
    assert read_json(result.path / "manifest.json")["steps"]["embed"]["dictionary_rejected_lines"] == len(BAD_KEYWORD_LINES)
    assert current_version(base.layout) == result.version


def test_dictionary_non_utf8_line_rejected(base, tmp_path):
    path = tmp_path / "keywords.tsv"
    path.write_bytes(GOOD_KEYWORD_LINES[0].encode() + b"\n\xff\xfe\tbrand\t3\t\n")
    config = make_config(tmp_path / "config.yaml", base.config.home_path, keywords={"dictionary_files": [str(path)]})

    result = run_refresh(config, BASE_DS)

    rejected = pd.read_parquet(result.path / "keywords" / "rejected_lines.parquet")
    assert rejected["line_number"].tolist() == [2]
    assert "UTF-8" in rejected.iloc[0]["reason"]


# --- reference versions that cannot be used ---------------------------------------------------------


@pytest.fixture
def copied_home(base, tmp_path):
    """A copy of the module's SID state (not its warehouse), free to damage."""
    home = tmp_path / "home"
    shutil.copytree(base.layout.sid_root, home / "sid", ignore=shutil.ignore_patterns("locks", "runs"))

    def configure(**sections: dict) -> OneSearchConfig:
        source = {"warehouse_dir": str(base.warehouse), **sections.pop("source", {})}
        return make_config(tmp_path / "config.yaml", home, source=source, **sections)

    return configure


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_last_embedding(path: Path) -> None:
    np.save(path, np.load(path)[:-1])


DAMAGES: list[tuple[str, Callable[[Path], None], str]] = [
    ("model/rq_model.json", Path.unlink, r"has no rq_model\.json; it is incomplete, rebuild with mode=full"),
    ("model/rq_model.json", _truncate, r"RQ model meta .*rq_model\.json is corrupt .*rebuild with mode=full"),
    ("model/rq_codebook_1.npy", Path.unlink, r"missing RQ codebook .*rq_codebook_1\.npy.*rebuild with mode=full"),
    ("model/rq_codebook_2.npy", _truncate, r"corrupt RQ codebook .*rq_codebook_2\.npy.*rebuild with mode=full"),
    ("model/opq.faiss", Path.unlink, r"OPQ index not found: .*opq\.faiss; rebuild the version with mode=full"),
    ("model/opq.faiss", _truncate, r"OPQ index .*opq\.faiss cannot be read .*rebuild the version with mode=full"),
    ("keys.parquet", _truncate, r"keys\.parquet cannot be read .*onesearch sid rollback"),
    ("embeddings.npy", _truncate, r"embeddings\.npy cannot be read .*onesearch sid rollback"),
    ("embeddings.npy", _drop_last_embedding, r"embeddings\.npy has \d+ rows but keys\.parquet \d+; the folder is corrupt.*rollback"),
    ("rq_codes.npy", _truncate, r"rq_codes\.npy cannot be read .*onesearch sid rollback"),
]


@pytest.mark.parametrize(("name", "damage", "message"), DAMAGES, ids=[f"{name}-{damage.__name__.strip('_')}" for name, damage, _ in DAMAGES])
def test_damaged_reference_rejected(copied_home, name, damage, message):
    config = copied_home()
    layout = layout_for(config)
    damage(layout.version_dir(current_version(layout)) / name)
    before = pointer_state(layout)
    with pytest.raises(StorageError, match=message):
        run_refresh(config, BASE_DS)
    assert pointer_state(layout) == before


def test_reference_other_k_rejected(copied_home):
    config = copied_home(rq={"k": "8-8-8"})
    layout = layout_for(config)
    before = pointer_state(layout)
    with pytest.raises(RQError, match=r"reference model has k=4-4-4 but this run asks for k=8-8-8; run with mode=full"):
        run_refresh(config, BASE_DS)
    assert pointer_state(layout) == before


def test_reference_other_dim_rejected(copied_home):
    config = copied_home(embedding={"dim": 16})
    layout = layout_for(config)
    before = pointer_state(layout)
    run_extract(config, BASE_DS)
    with pytest.raises(StorageError, match=rf"stores embeddings of shape \(\d+, {DIM}\), but embedding\.dim is 16; set embedding\.dim back to {DIM}"):
        run_embed(config, BASE_DS)
    assert pointer_state(layout) == before


def test_reference_opq_other_dim_rejected(copied_home):
    config = copied_home()
    layout = layout_for(config)
    residuals = np.random.default_rng(0).normal(size=(512, 16)).astype(np.float32)
    save_opq(train_opq(residuals, config.opq.m, config.opq.bits), layout.version_dir(current_version(layout)) / "model")
    before = pointer_state(layout)
    with pytest.raises(OPQError, match=rf"has dimension 16 but the embeddings have {DIM}; rebuild with mode=full"):
        run_refresh(config, BASE_DS)
    assert pointer_state(layout) == before


def test_reference_codebook_rows_rejected(copied_home):
    config = copied_home()
    layout = layout_for(config)
    codebook = layout.version_dir(current_version(layout)) / "model" / "rq_codebook_1.npy"
    np.save(codebook, np.concatenate([np.load(codebook)] * 2))
    before = pointer_state(layout)
    with pytest.raises(StorageError, match=r"rq_codebook_1\.npy has 8 rows.*k=4"):
        run_refresh(config, BASE_DS)
    assert pointer_state(layout) == before
