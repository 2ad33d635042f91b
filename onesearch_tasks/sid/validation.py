"""Row checks before embedding: bad rows go to quarantine with a reason, never silently away.

Every input row ends in exactly one of the two returned frames, so
len(input) == len(kept) + len(quarantined) always holds.

Columns of a quarantine frame (and of a run's quarantine.parquet):

==========  =================================================================================
entity      items or queries
key         the key as read, ``<null>`` for a null key
reason      one of the reason constants below
detail      what is wrong with the row, with the value or limit involved
source_row  the input row as JSON (key, text, embedding and the extract's other columns),
            cut at SOURCE_ROW_MAX_CHARS characters
==========  =================================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# Quarantine reasons.
MISSING_KEY = "missing_key"
CONTROL_CHARACTERS = "control_characters_in_key"
MISSING_TEXT = "missing_text"
INVALID_UTF8 = "invalid_utf8"
TEXT_TOO_LONG = "text_too_long"
EMBEDDING_DIMENSION = "embedding_dimension_mismatch"
EMBEDDING_NOT_FINITE = "embedding_not_finite"
EMBEDDING_ZERO = "embedding_all_zero"
DUPLICATE_KEY = "duplicate_key"
TEXT_WITHOUT_EMBEDDING = "text_has_no_embedding"

# Hive and Spark write SQL NULL as \N in text exports; such a key is missing, not a key.
NULL_MARKERS = frozenset({"\\N", "null", "NULL", "None"})
CONTROL_PATTERN = re.compile(r"[\x00-\x1f\x7f]")
# The extract reader replaces bytes that are not UTF-8 in string columns with U+FFFD (the
# KuaiSearch loader sends such JSONL lines to its own load quarantine instead). A key or text
# that contains U+FFFD no longer matches the source value, so the row is quarantined.
REPLACEMENT_CHARACTER = "\ufffd"
# Titles and queries are short (the longest in the public KuaiSearch demo has 85
# characters). A longer text is a description or junk pasted into the field, and it would
# not fit a training prompt (training.cutoff_len, 512 tokens by default).
MAX_TEXT_CHARS = 1_000
SOURCE_ROW_MAX_CHARS = 2_000
QUARANTINE_COLUMNS = ["entity", "key", "reason", "detail", "source_row"]


def clean_text(text: str) -> str:
    """Replace control characters (tabs, newlines, ...) in a text with spaces and trim it."""
    return CONTROL_PATTERN.sub(" ", text).strip()


def content_hash(text: str, embedding: np.ndarray | None, signature: str) -> str:
    """Hash of what decides a key's vector: its text, its given embedding and the embedder."""
    digest = hashlib.sha1()
    digest.update(signature.encode("utf-8"))
    digest.update(b"\x1f")
    digest.update(text.encode("utf-8", errors="surrogatepass"))
    if embedding is not None:
        digest.update(b"\x1e")
        digest.update(np.ascontiguousarray(embedding, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def source_row_json(row: dict[str, Any]) -> str:
    """Return a row as JSON, cut at SOURCE_ROW_MAX_CHARS characters. NaN and inf appear as NaN and Infinity."""
    text = json.dumps(row, ensure_ascii=False, default=_json_value)
    return text if len(text) <= SOURCE_ROW_MAX_CHARS else text[: SOURCE_ROW_MAX_CHARS - 3] + "..."


def quarantine_rows(entity: str, rows: pd.DataFrame, reason: str, detail: str | pd.Series) -> pd.DataFrame:
    """Build quarantine rows (QUARANTINE_COLUMNS) for the given input rows."""
    return pd.DataFrame({
        "entity": entity,
        "key": rows["key"].astype("string").fillna("<null>").to_numpy(dtype=object),
        "reason": reason,
        "detail": detail if isinstance(detail, str) else detail.to_numpy(dtype=object),
        "source_row": [source_row_json(row) for row in rows.to_dict(orient="records")],
    }, columns=QUARANTINE_COLUMNS)


def _embedding_problem(value: object, dim: int) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    vector = np.asarray(value, dtype=np.float64)
    if vector.ndim != 1 or vector.shape[0] != dim:
        return f"{EMBEDDING_DIMENSION}:{vector.shape[0] if vector.ndim == 1 else vector.shape}"
    if not np.all(np.isfinite(vector)):
        return EMBEDDING_NOT_FINITE
    if not np.any(vector):
        return EMBEDDING_ZERO
    return None


def _text_problems(keys: pd.Series, texts: pd.Series) -> pd.DataFrame:
    """Return the reason and detail for rows whose key or text contains U+FFFD or whose text is too long."""
    bad_key = keys.str.contains(REPLACEMENT_CHARACTER, regex=False)
    bad_text = texts.str.contains(REPLACEMENT_CHARACTER, regex=False)
    lengths = texts.str.len()
    reason = pd.Series(pd.NA, index=keys.index, dtype="string")
    detail = pd.Series(pd.NA, index=keys.index, dtype="string")
    too_long = lengths > MAX_TEXT_CHARS
    reason[too_long] = TEXT_TOO_LONG
    detail[too_long] = lengths[too_long].map(
        lambda length: f"text has {length} characters, more than the limit of {MAX_TEXT_CHARS}; fix the title or query in the source table"
    )
    for mask, field in ((bad_text, "text"), (bad_key, "key")):
        reason[mask] = INVALID_UTF8
        detail[mask] = (
            f"{field} contains U+FFFD, which replaces bytes that are not UTF-8 in the source; "
            "fix the encoding of the source table or file"
        )
    return pd.DataFrame({"reason": reason, "detail": detail})


def _duplicate_details(frame: pd.DataFrame, duplicate: pd.Series) -> pd.Series:
    """Return details that name the kept row's content hash and whether the quarantined row differs from it."""
    kept_hash = frame["content_hash"].where(~duplicate).ffill()
    same = frame["content_hash"] == kept_hash
    return pd.Series(
        [
            f"another row with this key was kept (content hash {kept[:12]}); this row is "
            + ("identical" if is_same else f"different (content hash {own[:12]}): its text or embedding differs")
            for kept, own, is_same in zip(kept_hash[duplicate], frame.loc[duplicate, "content_hash"], same[duplicate])
        ],
        index=frame.index[duplicate],
        dtype=object,
    )


def validate_rows(entity: str, frame: pd.DataFrame, dim: int, signature: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check rows with columns key, text, embedding (array or None) plus any extra columns.

    Returns (kept, quarantined). kept is sorted by key, has cleaned text, a float32
    `embedding` (or None) and a `content_hash` column; quarantined has QUARANTINE_COLUMNS,
    with the row as given in `source_row`. Duplicate keys keep the row with the smallest
    content hash, so the choice does not depend on input order.
    """
    quarantined: list[pd.DataFrame] = []
    frame = frame.reset_index(drop=True)
    original = frame

    keys = frame["key"].astype("string")
    missing = keys.isna() | keys.str.strip().eq("") | keys.isin(NULL_MARKERS)
    quarantined.append(quarantine_rows(entity, original[missing], MISSING_KEY, "key is null, empty or \\N"))
    frame, keys = frame[~missing], keys[~missing]

    control = keys.str.contains(CONTROL_PATTERN.pattern, regex=True).to_numpy(dtype=bool)
    quarantined.append(quarantine_rows(entity, original.loc[frame.index[control]], CONTROL_CHARACTERS, "key contains tab, newline or another control character"))
    frame, keys = frame[~control], keys[~control]

    texts = frame["text"].astype("string").fillna("").map(clean_text)
    problems = _text_problems(keys, texts)
    bad_text = problems["reason"].notna().to_numpy(dtype=bool)
    for reason, group in problems[bad_text].groupby("reason"):
        quarantined.append(quarantine_rows(entity, original.loc[group.index], reason, group["detail"]))
    frame, texts = frame[~bad_text], texts[~bad_text]

    no_text = texts.eq("") & frame["embedding"].isna()
    quarantined.append(quarantine_rows(entity, original.loc[frame.index[no_text]], MISSING_TEXT, "no text and no embedding"))
    frame = frame[~no_text].assign(text=texts[~no_text])

    problems = frame["embedding"].map(lambda value: _embedding_problem(value, dim))
    bad_embedding = problems.notna()
    if bad_embedding.any():
        reasons = problems[bad_embedding].str.split(":").str[0]
        for reason in reasons.unique():
            rows = bad_embedding & problems.str.startswith(reason).fillna(False)
            detail = problems[rows].map(lambda text: f"embedding problem: {text}; expected {dim} finite, non-zero values")
            quarantined.append(quarantine_rows(entity, original.loc[frame.index[rows]], reason, detail))
    frame = frame[~bad_embedding]

    embeddings = [None if value is None or (isinstance(value, float) and np.isnan(value)) else np.asarray(value, dtype=np.float32) for value in frame["embedding"]]
    frame = frame.assign(embedding=embeddings)
    frame = frame.assign(content_hash=[content_hash(text, emb, signature) for text, emb in zip(frame["text"], frame["embedding"])])

    frame = frame.sort_values(["key", "content_hash"], kind="stable")
    duplicate = frame["key"].duplicated(keep="first")
    quarantined.append(quarantine_rows(entity, original.loc[frame.index[duplicate]], DUPLICATE_KEY, _duplicate_details(frame, duplicate)))
    kept = frame[~duplicate].reset_index(drop=True)

    quarantine = pd.concat([part for part in quarantined if len(part)], ignore_index=True) if any(len(part) for part in quarantined) else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    if len(quarantine):
        logger.warning("%s: %d rows quarantined: %s", entity, len(quarantine), quarantine["reason"].value_counts().to_dict())
    return kept, quarantine
