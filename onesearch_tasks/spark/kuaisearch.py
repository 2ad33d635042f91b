"""Load files in the public KuaiSearch JSONL schema into the warehouse, one `ds` partition per call.

All five input files are required, because a day without one of them would silently drop
a whole table. Any file may carry extra fields.

=================  ==============================  =========================
file               warehouse table                 one row per
=================  ==============================  =========================
items.jsonl        items                           catalog item
users.jsonl        users                           user profile
recall.jsonl       search_sessions                 search session
rank.jsonl         rank_events                     ranked (session, item)
relevance.jsonl    relevance_labels (+ items)      labelled (query, title)
=================  ==============================  =========================

Ids become strings, so production ids of any type fit. The relevance file names items by
title only. Such items are keyed ``t`` + the first 16 hex digits of SHA-1(UTF-8 title) and
added to ``items`` with ``id_source = 'title_hash'``. A relevance row that carries an
``item_id`` (the generated demo data does) keeps that id instead. Lines that are not valid JSON or do not fit
the schema go to ``_load_quarantine`` with the table name and reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onesearch_tasks.storage import validate_ds

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

CORRUPT_COLUMN = "_corrupt_record"
QUARANTINE_TABLE = "_load_quarantine"
TITLE_KEY_PREFIX = "t"
TITLE_KEY_HEX_DIGITS = 16
NOT_UTF8_REASON = "line has bytes that are not UTF-8 (shown as U+FFFD); fix the encoding of the file"

SOURCE_FILES: dict[str, str] = {
    "items": "items.jsonl",
    "users": "users.jsonl",
    "search_sessions": "recall.jsonl",
    "rank_events": "rank.jsonl",
    "relevance_labels": "relevance.jsonl",
}

# Spark DDL of each input file, with numeric ids as the public files have them.
INPUT_SCHEMAS: dict[str, str] = {
    "items": (
        "item_id STRING, item_title STRING, brand_id BIGINT, brand_name STRING, seller_id BIGINT, "
        "seller_name STRING, category_level1_id BIGINT, category_level1_name STRING, "
        "category_level2_id BIGINT, category_level2_name STRING, category_level3_id BIGINT, "
        "category_level3_name STRING, attr_value STRING, embedding ARRAY<FLOAT>"
    ),
    "users": (
        "user_id STRING, gender STRING, age_bucket STRING, fre_country STRING, fre_province STRING, fre_city STRING"
    ),
    "search_sessions": (
        "user_id STRING, session_id STRING, impressed_item_ids ARRAY<STRING>, clicked_item_ids ARRAY<STRING>, "
        "purchased_item_ids ARRAY<STRING>, time_index BIGINT, query STRING, split STRING"
    ),
    "rank_events": (
        "user_id STRING, session_id STRING, user_fan_number BIGINT, user_follow_number BIGINT, "
        "time_index BIGINT, search_entrance STRING, recently_clicked_item_ids ARRAY<STRING>, "
        "recently_purchased_item_ids ARRAY<STRING>, query STRING, target_item_id STRING, "
        "target_item_price DOUBLE, is_clicked INT, is_purchased INT, "
        "user_statistical_features STRUCT<user_show_cnt_30d_hist: DOUBLE, user_click_cnt_30d_hist: DOUBLE, "
        "user_order_cnt_30d_hist: DOUBLE, user_gmv_30d_hist: DOUBLE>, "
        "target_item_statistical_features STRUCT<item_show_cnt_30d_hist: DOUBLE, "
        "item_click_cnt_30d_hist: DOUBLE, item_order_cnt_30d_hist: DOUBLE>, split STRING"
    ),
    "relevance_labels": (
        "query STRING, item_id STRING, item_title STRING, brand STRING, seller_name STRING, "
        "attr_value STRING, score INT"
    ),
}


class SourceDataError(ValueError):
    """A source folder or file is missing or unusable."""


@dataclass(frozen=True)
class TableLoadCounts:
    """Rows read from one file and where they went.

    read = loaded - derived + quarantined, where derived counts rows the loader added
    (title-only items taken from the relevance labels).
    """

    table: str
    read: int
    loaded: int
    quarantined: int
    derived: int = 0


def title_item_key(title: str) -> str:
    """Python twin of the Spark expression that keys title-only items."""
    import hashlib

    return TITLE_KEY_PREFIX + hashlib.sha1(title.encode("utf-8")).hexdigest()[:TITLE_KEY_HEX_DIGITS]


def _read_jsonl(spark: "SparkSession", path: Path, table: str) -> "DataFrame":
    schema = f"{INPUT_SCHEMAS[table]}, {CORRUPT_COLUMN} STRING"
    frame = (
        spark.read.schema(schema)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_COLUMN)
        .option("encoding", "UTF-8")
        .json(str(path))
    )
    # Spark refuses queries that touch only the corrupt-record column of an uncached JSON scan.
    return frame.cache()


def _split_corrupt(frame: "DataFrame", table: str) -> tuple["DataFrame", "DataFrame"]:
    from pyspark.sql import functions as F

    # Jackson rejects a line with bytes that are not UTF-8, and Spark keeps such a line in the
    # corrupt-record column byte for byte. The record is stored with those bytes replaced by
    # U+FFFD, so that the quarantine table itself stays readable.
    record = F.col(CORRUPT_COLUMN)
    reason = (
        F.when(F.is_valid_utf8(record), F.lit("line is not valid JSON or does not match the schema"))
        .otherwise(F.lit(NOT_UTF8_REASON))
    )
    bad = frame.where(record.isNotNull()).select(
        F.lit(table).alias("table"),
        reason.alias("reason"),
        F.make_valid_utf8(record).alias("record"),
    )
    good = frame.where(F.col(CORRUPT_COLUMN).isNull()).drop(CORRUPT_COLUMN)
    return good, bad


def _title_key_column(title_column: str):
    from pyspark.sql import functions as F

    return F.concat(F.lit(TITLE_KEY_PREFIX), F.substring(F.sha1(F.col(title_column)), 1, TITLE_KEY_HEX_DIGITS))


def _prepare_relevance(frame: "DataFrame") -> tuple["DataFrame", "DataFrame"]:
    """Fill missing item ids from the title hash; rows without a title go to quarantine."""
    from pyspark.sql import functions as F

    no_title = frame.where(F.col("item_title").isNull() | (F.trim(F.col("item_title")) == "")).select(
        F.lit("relevance_labels").alias("table"),
        F.lit("relevance row has no item_title, so the item cannot be keyed").alias("reason"),
        F.to_json(F.struct(*frame.columns)).alias("record"),
    )
    labelled = frame.where(F.col("item_title").isNotNull() & (F.trim(F.col("item_title")) != "")).withColumn(
        "item_id", F.coalesce(F.col("item_id"), _title_key_column("item_title"))
    )
    return labelled, no_title


def _title_only_items(relevance: "DataFrame", catalog: "DataFrame") -> "DataFrame":
    """Items named only in relevance labels, shaped like catalog rows, one per item id."""
    from pyspark.sql import functions as F

    candidates = relevance.select(
        "item_id",
        "item_title",
        F.col("brand").alias("brand_name"),
        "seller_name",
        "attr_value",
    ).dropDuplicates(["item_id"])
    missing = candidates.join(catalog.select("item_id"), on="item_id", how="left_anti")
    return missing.select(
        "item_id",
        "item_title",
        F.lit(None).cast("bigint").alias("brand_id"),
        "brand_name",
        F.lit(None).cast("bigint").alias("seller_id"),
        "seller_name",
        F.lit(None).cast("bigint").alias("category_level1_id"),
        F.lit(None).cast("string").alias("category_level1_name"),
        F.lit(None).cast("bigint").alias("category_level2_id"),
        F.lit(None).cast("string").alias("category_level2_name"),
        F.lit(None).cast("bigint").alias("category_level3_id"),
        F.lit(None).cast("string").alias("category_level3_name"),
        "attr_value",
        F.lit(None).cast("array<float>").alias("embedding"),
        F.lit("title_hash").alias("id_source"),
    )


def _write_partition(frame: "DataFrame", warehouse: Path, table: str, ds: str) -> int:
    target = warehouse / table / f"ds={ds}"
    frame.write.mode("overwrite").parquet(str(target))
    return frame.sparkSession.read.parquet(str(target)).count()


def load_kuaisearch(spark: "SparkSession", source_dir: Path, warehouse: Path, ds: str) -> list[TableLoadCounts]:
    """Load the five KuaiSearch files from source_dir into warehouse partitions ds=<ds>.

    Re-running for the same ds replaces that partition. Returns per-table counts.
    """
    from pyspark.sql import functions as F

    validate_ds(ds)
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise SourceDataError(f"source folder not found: {source_dir}")
    missing = [name for name in SOURCE_FILES.values() if not (source_dir / name).is_file()]
    if missing:
        raise SourceDataError(
            f"source folder {source_dir} lacks {', '.join(missing)}; it must hold all of "
            f"{', '.join(SOURCE_FILES.values())} (write an empty file for a table with no rows)"
        )

    frames: dict[str, DataFrame] = {}
    quarantined: dict[str, list[DataFrame]] = {}
    read_counts: dict[str, int] = {}
    for table, file_name in SOURCE_FILES.items():
        raw = _read_jsonl(spark, source_dir / file_name, table)
        read_counts[table] = raw.count()
        good, bad = _split_corrupt(raw, table)
        frames[table] = good
        quarantined[table] = [bad]

    relevance, no_title = _prepare_relevance(frames["relevance_labels"])
    frames["relevance_labels"] = relevance
    quarantined["relevance_labels"].append(no_title)

    catalog = frames["items"].withColumn("id_source", F.lit("catalog"))
    title_items = _title_only_items(relevance, catalog).cache()
    derived = {"items": title_items.count()}
    frames["items"] = catalog.unionByName(title_items)

    results: list[TableLoadCounts] = []
    quarantine_frames: list[DataFrame] = []
    for table in SOURCE_FILES:
        loaded = _write_partition(frames[table], warehouse, table, ds)
        bad_count = sum(frame.count() for frame in quarantined[table])
        quarantine_frames.extend(quarantined[table])
        counts = TableLoadCounts(
            table=table,
            read=read_counts[table],
            loaded=loaded,
            quarantined=bad_count,
            derived=derived.get(table, 0),
        )
        results.append(counts)
        logger.info(
            "loaded %s ds=%s: read=%d loaded=%d (derived %d) quarantined=%d",
            table, ds, counts.read, counts.loaded, counts.derived, counts.quarantined,
        )
        if bad_count:
            logger.warning("%d rows of %s went to %s (ds=%s)", bad_count, table, QUARANTINE_TABLE, ds)

    all_bad = quarantine_frames[0]
    for frame in quarantine_frames[1:]:
        all_bad = all_bad.unionByName(frame)
    _write_partition(all_bad, warehouse, QUARANTINE_TABLE, ds)
    for frame in frames.values():
        frame.unpersist()
    return results
