"""Row checks before embedding: bad rows go to quarantine with a reason, never silently away.

Every input row ends in exactly one of the two returned frames, so
len(input) == len(kept) + len(quarantined) always holds.
"""

from __future__ import annotations

import hashlib
import logging
import re

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# Quarantine reasons.
MISSING_KEY = "missing_key"
CONTROL_CHARACTERS = "control_characters_in_key"
MISSING_TEXT = "missing_text"
EMBEDDING_DIMENSION = "embedding_dimension_mismatch"
EMBEDDING_NOT_FINITE = "embedding_not_finite"
EMBEDDING_ZERO = "embedding_all_zero"
DUPLICATE_KEY = "duplicate_key"
TEXT_WITHOUT_EMBEDDING = "text_has_no_embedding"

# Hive and Spark write SQL NULL as \N in text exports; such a key is missing, not a key.
NULL_MARKERS = frozenset({"\\N", "null", "NULL", "None"})
CONTROL_PATTERN = re.compile(r"[\x00-\x1f\x7f]")
QUARANTINE_COLUMNS = ["entity", "key", "reason", "detail"]


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


def _quarantine_rows(entity: str, keys: pd.Series, reason: str, detail: str | pd.Series) -> pd.DataFrame:
    return pd.DataFrame({
        "entity": entity,
        "key": keys.astype("string").fillna("<null>").to_numpy(dtype=object),
        "reason": reason,
        "detail": detail if isinstance(detail, str) else detail.to_numpy(dtype=object),
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


def validate_rows(entity: str, frame: pd.DataFrame, dim: int, signature: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check rows with columns key, text, embedding (array or None) plus any extra columns.

    Returns (kept, quarantined). kept is sorted by key, has cleaned text, a float32
    `embedding` (or None) and a `content_hash` column; quarantined has QUARANTINE_COLUMNS.
    Duplicate keys keep the row with the smallest content hash, so the choice does not
    depend on input order.
    """
    quarantined: list[pd.DataFrame] = []
    frame = frame.reset_index(drop=True)

    keys = frame["key"].astype("string")
    missing = keys.isna() | keys.str.strip().eq("") | keys.isin(NULL_MARKERS)
    quarantined.append(_quarantine_rows(entity, keys[missing], MISSING_KEY, "key is null, empty or \\N"))
    frame, keys = frame[~missing], keys[~missing]

    control = keys.str.contains(CONTROL_PATTERN.pattern, regex=True)
    quarantined.append(_quarantine_rows(entity, keys[control], CONTROL_CHARACTERS, "key contains tab, newline or another control character"))
    frame = frame[~control.to_numpy(dtype=bool)]

    texts = frame["text"].astype("string").fillna("").map(clean_text)
    no_text = texts.eq("") & frame["embedding"].isna()
    quarantined.append(_quarantine_rows(entity, frame.loc[no_text, "key"], MISSING_TEXT, "no text and no embedding"))
    frame = frame[~no_text].assign(text=texts[~no_text])

    problems = frame["embedding"].map(lambda value: _embedding_problem(value, dim))
    bad_embedding = problems.notna()
    if bad_embedding.any():
        reasons = problems[bad_embedding].str.split(":").str[0]
        for reason in reasons.unique():
            rows = bad_embedding & problems.str.startswith(reason).fillna(False)
            detail = problems[rows].map(lambda text: f"embedding problem: {text}; expected {dim} finite, non-zero values")
            quarantined.append(_quarantine_rows(entity, frame.loc[rows, "key"], reason, detail))
    frame = frame[~bad_embedding]

    embeddings = [None if value is None or (isinstance(value, float) and np.isnan(value)) else np.asarray(value, dtype=np.float32) for value in frame["embedding"]]
    frame = frame.assign(embedding=embeddings)
    frame = frame.assign(content_hash=[content_hash(text, emb, signature) for text, emb in zip(frame["text"], frame["embedding"])])

    frame = frame.sort_values(["key", "content_hash"], kind="stable")
    duplicate = frame["key"].duplicated(keep="first")
    quarantined.append(_quarantine_rows(entity, frame.loc[duplicate, "key"], DUPLICATE_KEY, "another row with this key was kept"))
    kept = frame[~duplicate].reset_index(drop=True)

    quarantine = pd.concat([part for part in quarantined if len(part)], ignore_index=True) if any(len(part) for part in quarantined) else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    if len(quarantine):
        logger.warning("%s: %d rows quarantined: %s", entity, len(quarantine), quarantine["reason"].value_counts().to_dict())
    return kept, quarantine
