"""Inputs of the training-data builder: one SID version plus the warehouse tables of its day.

The day's tables come from Spark SQL in `sql/training/`, over the same views as the SID
extract. The SIDs, matched keywords and models come from the version folder. Keyword SIDs are
computed here by encoding each dictionary keyword's vector with the version's RQ and OPQ
models, exactly as a query or item would be encoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from onesearch_tasks.config import OneSearchConfig
from onesearch_tasks.sid import metrics as sid_metrics
from onesearch_tasks.sid.opq import encode_opq, load_opq, pq_layout
from onesearch_tasks.sid.rq import RQModel, encode_rq
from onesearch_tasks.storage import StorageError, read_json

logger = logging.getLogger(__name__)

TRAINING_QUERIES = ("sessions", "rank_events", "items", "users", "relevance")
ALL_SOURCE_TABLES = ("items", "search_sessions", "rank_events", "users", "relevance_labels")
REQUIRED_VERSION_FILES = ("sid_items.parquet", "sid_queries.parquet", "keywords/dictionary.parquet", "model/rq_model.json", "model/opq.faiss", "manifest.json")


@dataclass
class TrainingInputs:
    """Everything the task builders read. Item ids, user ids and session ids are strings.

    items: item_id, item_title, category_path ('' when unknown)
    sessions: user_id, session_id, query, time_index, impressed_item_ids, clicked_item_ids,
        purchased_item_ids (lists of str)
    rank_events: user_id, session_id, query, time_index, target_item_id, is_clicked,
        is_purchased, recently_clicked_item_ids, recently_purchased_item_ids, item_shows,
        item_clicks, item_orders
    users: user_id, gender, age_bucket
    relevance: query, item_id, score
    """

    version: str
    ds: str
    item_sids: dict[str, str]
    query_sids: dict[str, str]
    keyword_sids: dict[str, str]
    item_texts: dict[str, str]
    item_keywords: dict[str, list[str]]
    query_keywords: dict[str, list[str]]
    items: pd.DataFrame
    sessions: pd.DataFrame
    rank_events: pd.DataFrame
    users: pd.DataFrame
    relevance: pd.DataFrame
    sid_bits: int
    rq_k: tuple[int, ...]
    balanced_type: int

    def row_counts(self) -> dict[str, int]:
        return {name: int(len(getattr(self, name))) for name in TRAINING_QUERIES}


def check_version_folder(folder: Path) -> None:
    missing = [name for name in REQUIRED_VERSION_FILES if not (folder / name).is_file()]
    if missing:
        raise StorageError(f"SID version folder {folder} is incomplete (missing {', '.join(missing)}); publish a complete version first")


def keyword_sids(folder: Path) -> dict[str, str]:
    """Encode every dictionary keyword of a version with its RQ and OPQ models."""
    dictionary = pd.read_parquet(folder / "keywords" / "dictionary.parquet")
    if not len(dictionary):
        return {}
    vectors = np.ascontiguousarray(np.stack(dictionary["embedding"].to_list()).astype(np.float32))
    model = RQModel.load(folder / "model")
    index = load_opq(folder / "model", expected_dim=model.dim)
    codes, residuals, _ = encode_rq(model, vectors)
    sids = sid_metrics.format_sids(codes, encode_opq(index, residuals), pq_layout(index)[1])
    return dict(zip(dictionary["keyword"].tolist(), sids))


def _as_str_lists(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    for column in columns:
        frame[column] = frame[column].map(lambda values: [str(value) for value in values] if values is not None else [])
    return frame


def load_training_inputs(config: OneSearchConfig, version: str, folder: Path, warehouse: Path) -> TrainingInputs:
    """Read the version's SIDs and run the training SQL for the version's data date."""
    from onesearch_tasks.spark.extract import prepare_sources, run_sql_file
    from onesearch_tasks.spark.session import get_spark

    check_version_folder(folder)
    ds = read_json(folder / "manifest.json")["ds"]
    spark = get_spark(config)
    # Profiles, item counts and relevance tiers all shape the examples, so every table is required.
    prepare_sources(spark, config, warehouse, ds, required=ALL_SOURCE_TABLES)
    frames = {name: run_sql_file(spark, f"training/{name}", ds).toArrow().to_pandas() for name in TRAINING_QUERIES}

    item_table = pd.read_parquet(folder / "sid_items.parquet")
    query_table = pd.read_parquet(folder / "sid_queries.parquet")
    model = RQModel.load(folder / "model")
    bits = pq_layout(load_opq(folder / "model"))[1]

    # A missing id becomes "" (not pandas' "<NA>"), so anonymous sessions never share a user.
    for name in ("sessions", "rank_events", "users"):
        frames[name]["user_id"] = frames[name]["user_id"].astype("string").fillna("")
    for name in ("sessions", "rank_events"):
        frames[name]["session_id"] = frames[name]["session_id"].astype("string").fillna("")
    frames["items"]["category_path"] = frames["items"]["category_path"].fillna("")
    frames["rank_events"]["target_item_id"] = frames["rank_events"]["target_item_id"].astype("string")

    inputs = TrainingInputs(
        version=version,
        ds=ds,
        item_sids=dict(zip(item_table["key"], item_table["sid"])),
        query_sids=dict(zip(query_table["key"], query_table["sid"])),
        keyword_sids=keyword_sids(folder),
        item_texts=dict(zip(item_table["key"], item_table["text"])),
        item_keywords={key: list(words) for key, words in zip(item_table["key"], item_table["matched_keywords"])},
        query_keywords={key: list(words) for key, words in zip(query_table["key"], query_table["matched_keywords"])},
        items=frames["items"],
        sessions=_as_str_lists(frames["sessions"], ("impressed_item_ids", "clicked_item_ids", "purchased_item_ids")),
        rank_events=_as_str_lists(frames["rank_events"], ("recently_clicked_item_ids", "recently_purchased_item_ids")),
        users=frames["users"],
        relevance=frames["relevance"],
        sid_bits=bits,
        rq_k=tuple(model.k),
        balanced_type=model.balanced_type,
    )
    logger.info("training inputs for version %s (ds=%s): %s rows, %d keyword SIDs", version, ds, inputs.row_counts(), len(inputs.keyword_sids))
    return inputs
