"""Run the `sql/` queries for one data date and write their results into a run folder.

Each query reads logical views (`items`, `users`, ...). `register_source_views` maps them
to physical tables: parquet folders under the warehouse (embedded mode) or catalog tables
(production), so the SQL files never change between the two.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from onesearch_tasks.config import REPO_ROOT, OneSearchConfig
from onesearch_tasks.storage import atomic_path, validate_ds

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

SQL_DIR = REPO_ROOT / "sql"
# Output name -> SQL file stem. Outputs land in <run>/extract/<name>.parquet/.
EXTRACT_QUERIES: dict[str, str] = {
    "queries": "queries",
    "items": "items",
    "interactions": "interactions",
    "user_profiles": "user_profiles",
    "relevance_labels": "relevance_labels",
}
# Tables whose day partition must exist. Every source table is on the list: without one,
# the day would silently lose that table's queries, interactions or profiles, and building
# training data for the version would fail later on the same missing partition.
REQUIRED_PARTITIONS = ("items", "search_sessions", "rank_events", "users", "relevance_labels")
# Columns the items view always exposes, added as NULL when the physical table lacks them.
OPTIONAL_ITEM_COLUMNS: dict[str, str] = {
    "attr_value": "STRING",
    "id_source": "STRING",
    "brand_name": "STRING",
    "seller_name": "STRING",
    "category_level1_name": "STRING",
    "category_level2_name": "STRING",
    "category_level3_name": "STRING",
}


class ExtractError(RuntimeError):
    """A source table or partition is missing."""


def _physical_frame(spark: "SparkSession", config: OneSearchConfig, warehouse: Path, logical: str) -> "DataFrame":
    physical = getattr(config.source.tables, logical)
    if config.source.kind == "catalog":
        return spark.table(physical)
    path = warehouse / physical
    if not path.is_dir():
        raise ExtractError(
            f"table {logical!r} not found: no folder {path}. Load data first, for example "
            f"`onesearch load-kuaisearch --source DIR --ds DATE`, or fix source.tables.{logical}"
        )
    if not any(path.glob("ds=*")):
        raise ExtractError(f"table {logical!r} at {path} has no ds=... partitions; load at least one day into it")
    return spark.read.parquet(str(path))


def _normalize_items(frame: "DataFrame", embedding_column: str) -> "DataFrame":
    from pyspark.sql import functions as F

    columns = set(frame.columns)
    for name, sql_type in OPTIONAL_ITEM_COLUMNS.items():
        if name not in columns:
            frame = frame.withColumn(name, F.lit(None).cast(sql_type))
    if embedding_column in columns and embedding_column != "embedding":
        frame = frame.withColumnRenamed(embedding_column, "embedding")
    elif embedding_column not in columns:
        frame = frame.withColumn("embedding", F.lit(None).cast("array<float>"))
    return frame.withColumn("item_id", F.col("item_id").cast("string"))


def register_source_views(spark: "SparkSession", config: OneSearchConfig, warehouse: Path) -> None:
    """Create or replace the temp views the SQL files read."""
    for logical in type(config.source.tables).model_fields:
        frame = _physical_frame(spark, config, warehouse, logical)
        if logical == "items":
            frame = _normalize_items(frame, config.source.embedding_column)
        frame.createOrReplaceTempView(logical)


def prepare_sources(spark: "SparkSession", config: OneSearchConfig, warehouse: Path, ds: str, required: tuple[str, ...] = REQUIRED_PARTITIONS) -> None:
    """Check the day's required partitions and register the views, in the order that gives
    the clearest error: embedded partitions are plain folders and are checked first."""
    if config.source.kind == "embedded":
        check_partitions(spark, config, warehouse, ds, required)
        register_source_views(spark, config, warehouse)
    else:
        register_source_views(spark, config, warehouse)
        check_partitions(spark, config, warehouse, ds, required)


def check_partitions(spark: "SparkSession", config: OneSearchConfig, warehouse: Path, ds: str, required: tuple[str, ...] = REQUIRED_PARTITIONS) -> None:
    """Raise ExtractError when a required table has no partition for ds."""
    for logical in required:
        physical = getattr(config.source.tables, logical)
        if config.source.kind == "embedded":
            if not (warehouse / physical).is_dir():
                raise ExtractError(
                    f"table {logical!r} not found: no folder {warehouse / physical}. Load data first, for example "
                    f"`onesearch load-kuaisearch --source DIR --ds {ds}`, or fix source.tables.{logical}"
                )
            present = (warehouse / physical / f"ds={ds}").is_dir()
        else:
            present = spark.sql(f"SELECT 1 FROM {logical} WHERE ds = :ds LIMIT 1", args={"ds": ds}).count() > 0
        if not present:
            raise ExtractError(
                f"missing partition ds={ds} in table {logical!r} ({physical}); load that day "
                f"(onesearch load-kuaisearch --source DIR --ds {ds}) or pick a date that has data"
            )


def run_sql_file(spark: "SparkSession", stem: str, ds: str) -> "DataFrame":
    path = SQL_DIR / f"{stem}.sql"
    if not path.is_file():
        raise ExtractError(f"SQL file not found: {path}")
    return spark.sql(path.read_text(encoding="utf-8"), args={"ds": ds})


def extract_day(spark: "SparkSession", config: OneSearchConfig, warehouse: Path, ds: str, out_dir: Path) -> dict[str, int]:
    """Run every extract query for ds and write <out_dir>/<name>.parquet. Returns row counts."""
    import pyarrow.dataset as pads

    validate_ds(ds)
    prepare_sources(spark, config, warehouse, ds)

    counts: dict[str, int] = {}
    for name, stem in EXTRACT_QUERIES.items():
        frame = run_sql_file(spark, stem, ds)
        target = out_dir / f"{name}.parquet"
        with atomic_path(target) as tmp:
            frame.write.mode("overwrite").parquet(str(tmp))
        counts[name] = pads.dataset(target, format="parquet").count_rows()
        logger.info("extract %s ds=%s: %d rows -> %s", name, ds, counts[name], target)
    return counts
