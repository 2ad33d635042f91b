"""Encode a key/embedding table with the models of a saved SID version (`onesearch opq-encode`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from onesearch_tasks.sid import metrics as sid_metrics
from onesearch_tasks.sid.opq import encode_opq, load_opq, pq_layout
from onesearch_tasks.sid.rq import RQModel, encode_rq
from onesearch_tasks.storage import atomic_path

logger = logging.getLogger(__name__)


def _vectors(table: pd.DataFrame, dim: int, path: Path) -> np.ndarray:
    lengths = table["embedding"].map(lambda value: -1 if value is None else len(value))
    wrong = lengths != dim
    if wrong.any():
        first = table.loc[wrong].iloc[0]
        raise ValueError(f"{path}: {int(wrong.sum())} rows have an embedding that is not {dim} floats (first: key {first['key']!r}, length {lengths[wrong].iloc[0]}); fix them or drop them")
    vectors = np.stack(table["embedding"].to_list()).astype(np.float32)
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"{path}: embeddings contain NaN or inf; fix those rows")
    return vectors


def encode_table(version_dir: Path, input_path: Path, out_path: Path, residual: bool = False) -> int:
    """Write key<TAB>sid for every row of input_path (parquet: key, embedding[, rq_sid]).

    residual=False: embeddings are final (keyword-enhanced) vectors; RQ then OPQ run.
    residual=True: embeddings are last-layer residuals and rq_sid holds the RQ tokens;
    only the OPQ tokens are computed and appended.
    Returns the number of rows written.
    """
    if not input_path.is_file():
        raise FileNotFoundError(f"input table not found: {input_path}")
    table = pd.read_parquet(input_path)
    needed = {"key", "embedding"} | ({"rq_sid"} if residual else set())
    missing = needed - set(table.columns)
    if missing:
        raise ValueError(f"{input_path} lacks columns {sorted(missing)}; expected {sorted(needed)}")

    index = load_opq(version_dir / "model")
    _, bits = pq_layout(index)
    vectors = _vectors(table, index.d, input_path)
    if residual:
        opq_codes = encode_opq(index, vectors)
        opq_only = sid_metrics.format_sids(np.zeros((len(table), 0), dtype=np.int64), opq_codes, bits)
        # With zero RQ layers the OPQ letter is 'a'; re-letter it after the given RQ tokens.
        depth = RQModel.load(version_dir / "model").depth
        _, opq_letter = sid_metrics.sid_letters(depth)
        sids = [rq + tokens.replace("<a_", f"<{opq_letter}_") for rq, tokens in zip(table["rq_sid"], opq_only)]
    else:
        model = RQModel.load(version_dir / "model")
        codes, residuals, unseen = encode_rq(model, vectors)
        if unseen:
            logger.warning("%d rows fall under last-layer parents that the model never saw", unseen)
        sids = sid_metrics.format_sids(codes, encode_opq(index, residuals), bits)

    with atomic_path(out_path) as tmp:
        pd.DataFrame({"key": table["key"], "sid": sids}).to_csv(tmp, sep="\t", header=False, index=False, lineterminator="\n")
    return len(table)
