"""The daily SID refresh, one function per step: extract, embed, rq, opq, evaluate, publish.

The Airflow DAG and the `onesearch sid ...` commands call these same functions. Steps talk
only through files in the run folder of one data date (see storage.py), and each step
records itself in <run>/manifest.json. The configuration is fixed when `extract` creates
the run: later steps read it from the manifest, so one run never mixes settings.

Files of a run folder (and so of a published version):

=========================  ===============================================================
extract/<name>.parquet     Spark SQL results (queries, items, interactions, ...)
quarantine.parquet         rejected input rows: entity, key, reason, detail, source_row
keys.parquet               one row per key: entity, key, text, content_hash, status,
                           matched_keywords; row i matches row i of every .npy below
embeddings.npy             (n, d) float32 keyword-enhanced vectors
keywords/dictionary.parquet keyword, type, pv, embedding
model/                     RQ codebooks (npy + rq_model.json) and opq.faiss
rq_codes.npy               (n, depth) int64
residuals.npy              (n, d) float32 last-layer residuals
opq_codes.npy              (n, m) int64
sid_items.parquet          key, sid, text, matched_keywords, status (+ sid_queries.parquet)
cluster_stats.json         per-layer cluster sizes
metrics.json               CUR, ICR, collisions, churn, counts in/out/quarantined
=========================  ===============================================================

Key status: ``new`` (not in the reference), ``changed`` (text or embedding differs),
``unchanged``, ``carried`` (absent from today's input but kept: delta mode, or a key
whose row was quarantined today).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from onesearch_tasks.checkpoints import checkpoint
from onesearch_tasks.config import OneSearchConfig
from onesearch_tasks.sid import metrics as sid_metrics
from onesearch_tasks.sid.embedders import Embedder, build_embedder
from onesearch_tasks.sid.keywords import (
    KeywordDictionary,
    KeywordMatcher,
    build_catalog_dictionary,
    fuse_matches,
    read_dictionary_file_cached,
)
from onesearch_tasks.sid.opq import encode_opq, load_opq, save_opq, train_opq
from onesearch_tasks.sid.publish import MANIFEST_FILE, PublishResult, publish_run
from onesearch_tasks.sid.rq import RQModel, RQSettings, check_reference, cluster_statistics, extend_rq, train_rq
from onesearch_tasks.sid.validation import QUARANTINE_COLUMNS, TEXT_WITHOUT_EMBEDDING, quarantine_rows, validate_rows
from onesearch_tasks.storage import (
    StateLayout,
    StorageError,
    atomic_path,
    current_version,
    load_npy,
    make_temp_dir,
    read_json,
    remove_temp_entries,
    run_lock,
    save_npy_atomic,
    validate_ds,
    write_json_atomic,
    write_parquet_atomic,
)

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

ENTITIES = ("items", "queries")
STATUS_NEW, STATUS_CHANGED, STATUS_UNCHANGED, STATUS_CARRIED = "new", "changed", "unchanged", "carried"
REUSED_STATUSES = (STATUS_UNCHANGED, STATUS_CARRIED)
KEY_COLUMNS = ["entity", "key", "text", "content_hash", "status", "matched_keywords"]


class QualityGateError(RuntimeError):
    """The run's metrics fail a configured quality gate; it is not published."""


@dataclass(frozen=True)
class GateOverride:
    """A manual decision to publish a run although its quality gates fail: who and why."""

    by: str
    reason: str

    def __post_init__(self) -> None:
        if not self.reason or not self.reason.strip():
            raise ValueError("overriding the quality gates needs a non-empty reason; pass --reason TEXT (DAG: Param override_reason)")
        if not self.by or not self.by.strip():
            raise ValueError("overriding the quality gates needs the name of the person who decides it")


@dataclass(frozen=True)
class Run:
    """One data date's run folder and the configuration it was created with."""

    layout: StateLayout
    ds: str
    path: Path
    manifest: dict[str, Any]

    @property
    def config(self) -> OneSearchConfig:
        return OneSearchConfig.model_validate(self.manifest["config"])

    @property
    def reference_path(self) -> Path | None:
        version = self.manifest.get("reference_version")
        return self.layout.version_dir(version) if version else None

    @property
    def incremental(self) -> bool:
        return self.config.rq.mode == "incremental" and self.reference_path is not None


def layout_for(config: OneSearchConfig) -> StateLayout:
    return StateLayout(config.home_path)


def warehouse_for(config: OneSearchConfig, layout: StateLayout) -> Path:
    return Path(config.source.warehouse_dir).resolve() if config.source.warehouse_dir else layout.warehouse


def open_run(config: OneSearchConfig, ds: str) -> Run:
    """Open the existing run folder of ds (created by the extract step)."""
    layout = layout_for(config)
    path = layout.run_dir(ds)
    if not path.is_dir():
        raise StorageError(f"no run folder for {ds} at {path}; run `onesearch sid extract --ds {ds}` first")
    return Run(layout, ds, path, read_json(path / MANIFEST_FILE))


STEP_ORDER = ("extract", "embed", "rq", "opq", "evaluate")


def require_step(run: Run, step: str) -> None:
    """Raise StorageError naming the command to run when an earlier step has not finished."""
    for earlier in STEP_ORDER[: STEP_ORDER.index(step)]:
        if earlier not in run.manifest.get("steps", {}):
            raise StorageError(f"step {step!r} needs step {earlier!r} of ds={run.ds} first; run `onesearch sid {earlier} --ds {run.ds}`")


def _finish_step(run: Run, step: str, info: dict[str, Any]) -> None:
    manifest = read_json(run.path / MANIFEST_FILE)
    info = {**info, "finished_at": _now()}
    manifest.setdefault("steps", {})[step] = info
    # A rerun of a step invalidates everything after it.
    if step in STEP_ORDER:
        for later in STEP_ORDER[STEP_ORDER.index(step) + 1 :]:
            manifest["steps"].pop(later, None)
    write_json_atomic(run.path / MANIFEST_FILE, manifest)
    run.manifest.clear()
    run.manifest.update(manifest)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- extract ---------------------------------------------------------------------------------


def run_extract(config: OneSearchConfig, ds: str) -> Run:
    """Create (or replace) the run folder of ds and fill extract/ from Spark SQL."""
    from onesearch_tasks.spark.extract import extract_day
    from onesearch_tasks.spark.session import get_spark

    validate_ds(ds)
    layout = layout_for(config)
    with run_lock(layout, ds):
        # Staging and swap folders of an earlier extract of ds that was killed.
        remove_temp_entries(layout.runs, re.compile(rf"^\.{re.escape(ds)}\.(staging-|tmp-|old-)"), recursive=False)
        staging = make_temp_dir(layout.runs, f".{ds}.staging-")
        try:
            counts = extract_day(get_spark(config), config, warehouse_for(config, layout), ds, staging / "extract")
            if counts["items"] == 0 and config.source.items_partition_mode == "snapshot":
                from onesearch_tasks.spark.extract import ExtractError

                raise ExtractError(
                    f"the items partition ds={ds} is empty, but source.items_partition_mode is 'snapshot', "
                    "so every item would be removed; load the day's catalog, or use 'delta' if the day holds only changes"
                )
            manifest = {
                "ds": ds,
                "run_id": uuid.uuid4().hex,
                "created_at": _now(),
                "config": config.model_dump(mode="json"),
                "reference_version": current_version(layout),
                "steps": {"extract": {"rows": counts, "finished_at": _now()}},
            }
            write_json_atomic(staging / MANIFEST_FILE, manifest)
            with atomic_path(layout.run_dir(ds)) as target:
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    run = open_run(config, ds)
    logger.info("extract ds=%s run=%s reference=%s rows=%s", ds, run.manifest["run_id"], run.manifest["reference_version"], counts)
    return run


# --- embed ----------------------------------------------------------------------------------------


def _read_extract(run: Run, name: str) -> pd.DataFrame:
    import pyarrow.dataset as pads

    path = run.path / "extract" / f"{name}.parquet"
    return _replace_invalid_utf8(pads.dataset(path, format="parquet").to_table(), path).to_pandas()


def _replace_invalid_utf8(table: pa.Table, path: Path) -> pa.Table:
    """Replace bytes that are not UTF-8 in string columns with U+FFFD.

    Spark copies the bytes of a parquet or catalog string column as they are, and pandas
    string operations fail on invalid UTF-8 without naming the row. After the replacement
    validation quarantines the key or text that contains U+FFFD.
    """
    import pyarrow as pa

    for position, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        column = table.column(position)
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = column.cast(pa.binary() if pa.types.is_string(field.type) else pa.large_binary()).to_pylist()
        decoded = [None if value is None else value.decode("utf-8", errors="replace") for value in raw]
        replaced = sum(1 for before, after in zip(raw, decoded) if before is not None and after.encode("utf-8") != before)
        logger.warning("%s: column %s has %d values that are not UTF-8; their invalid bytes became U+FFFD", path, field.name, replaced)
        table = table.set_column(position, field, pa.array(decoded, type=field.type))
    return table


def _input_rows(run: Run) -> dict[str, pd.DataFrame]:
    """Today's rows per entity: columns key, text, embedding, then the extract's other columns.

    The other columns travel along so that a quarantined row keeps its whole source row.
    """
    items = _read_extract(run, "items").rename(columns={"item_id": "key", "item_title": "text"})
    if "embedding" not in items:
        items["embedding"] = None
    queries = _read_extract(run, "queries").rename(columns={"query": "key"})
    queries.insert(1, "text", queries["key"])
    queries["embedding"] = None
    return {"items": items, "queries": queries}


DAMAGED_FOLDER_FIX = (
    "Rerun the step that writes the file for a run folder; for a published version, make an "
    "intact version current with `onesearch sid rollback` and rerun the refresh"
)


@dataclass
class VersionState:
    """Key table and arrays of a run folder or published version, aligned by row."""

    keys: pd.DataFrame
    embeddings: np.ndarray
    rq_codes: np.ndarray | None = None
    residuals: np.ndarray | None = None
    opq_codes: np.ndarray | None = None

    @classmethod
    def load(cls, folder: Path, with_codes: bool = True) -> "VersionState":
        """Read the key table and arrays; raise StorageError naming a missing or unreadable file."""
        import pyarrow as pa

        try:
            keys_path = folder / "keys.parquet"
            if not keys_path.is_file():
                raise StorageError(f"missing file {keys_path}")
            try:
                keys = pd.read_parquet(keys_path)
            except (OSError, pa.ArrowException) as error:
                raise StorageError(f"{keys_path} cannot be read ({error}); the file is truncated or corrupt") from error
            state = cls(keys=keys, embeddings=load_npy(folder / "embeddings.npy"))
            if with_codes:
                state.rq_codes = load_npy(folder / "rq_codes.npy")
                state.residuals = load_npy(folder / "residuals.npy")
                state.opq_codes = load_npy(folder / "opq_codes.npy")
        except StorageError as error:
            raise StorageError(f"{error}. {DAMAGED_FOLDER_FIX}") from error
        if state.embeddings.shape[0] != len(keys):
            raise StorageError(f"{folder}: embeddings.npy has {state.embeddings.shape[0]} rows but keys.parquet {len(keys)}; the folder is corrupt. {DAMAGED_FOLDER_FIX}")
        return state


def _load_reference(run: Run, dim: int) -> VersionState | None:
    """Load the reference version's keys and vectors; raise StorageError when they do not fit dim."""
    if run.reference_path is None:
        return None
    version = run.manifest["reference_version"]
    reference = VersionState.load(run.reference_path, with_codes=False)
    reference_dim = reference.embeddings.shape[1] if reference.embeddings.ndim == 2 else None
    if reference_dim != dim:
        # Keys missing from a delta partition or quarantined today keep the reference's
        # vectors, in full mode too, and those cannot be mixed with vectors of another size.
        raise StorageError(
            f"reference version {version} stores embeddings of shape {reference.embeddings.shape}, but embedding.dim "
            f"is {dim}; set embedding.dim back to {reference_dim}, or build SIDs for the new size under another home folder"
        )
    return reference


def _build_dictionary(run: Run, embedder: Embedder) -> tuple[KeywordDictionary, pd.DataFrame]:
    config = run.config
    rejected_rows: list[dict[str, Any]] = []
    dictionary = build_catalog_dictionary(_read_extract(run, "items"), embedder, config.keywords)
    if run.incremental and (run.reference_path / "keywords" / "dictionary.parquet").is_file():
        previous = KeywordDictionary.from_frame(pd.read_parquet(run.reference_path / "keywords" / "dictionary.parquet"))
        if previous.dim == embedder.dim:
            dictionary = dictionary.merged_with(previous)
    for path in config.keywords.dictionary_files:
        extra, rejected = read_dictionary_file_cached(Path(path), embedder, run.layout.sid_root / "cache" / "keywords")
        dictionary = dictionary.merged_with(extra)
        rejected_rows.extend(vars(line) for line in rejected)
    return dictionary, pd.DataFrame(rejected_rows, columns=["path", "line_number", "reason", "line"])


def _assign_status(kept: pd.DataFrame, reference: pd.DataFrame | None, entity: str) -> pd.DataFrame:
    if reference is None:
        return kept.assign(status=STATUS_NEW)
    previous = reference.loc[reference["entity"] == entity, ["key", "content_hash"]].rename(columns={"content_hash": "reference_hash"})
    merged = kept.merge(previous, on="key", how="left")
    status = np.where(merged["reference_hash"].isna(), STATUS_NEW, np.where(merged["reference_hash"] == merged["content_hash"], STATUS_UNCHANGED, STATUS_CHANGED))
    return merged.drop(columns="reference_hash").assign(status=status)


def run_embed(config: OneSearchConfig, ds: str) -> Run:
    """Validate keys, compute raw and keyword-enhanced vectors, write keys.parquet and embeddings.npy."""
    run = open_run(config, ds)
    require_step(run, "embed")
    config = run.config
    embedder = build_embedder(config.embedding)
    with run_lock(run.layout, ds):
        reference = _load_reference(run, embedder.dim)
        reuse_vectors = run.incremental

        dictionary, rejected = _build_dictionary(run, embedder) if config.keywords.enabled else (KeywordDictionary.empty(embedder.dim), pd.DataFrame())
        matcher = KeywordMatcher(dictionary.keywords)
        frames, quarantines, counts = [], [], {}
        for entity, rows in _input_rows(run).items():
            kept, quarantined = validate_rows(entity, rows, embedder.dim, embedder.signature())
            kept = _assign_status(kept, reference.keys if reference is not None else None, entity)
            kept.insert(0, "entity", entity)
            counts[entity] = {"in": len(rows)}
            frames.append(kept)
            quarantines.append(quarantined)

        keys = pd.concat(frames, ignore_index=True)
        keys, vectors = _vectors_for(keys, reference, reuse_vectors, embedder, dictionary, matcher, config, quarantines)
        keys = _add_carried(keys, reference, config, quarantines)
        keys, vectors = _attach_carried_vectors(keys, vectors, reference)

        quarantine = pd.concat([q for q in quarantines if len(q)], ignore_index=True) if any(len(q) for q in quarantines) else pd.DataFrame(columns=QUARANTINE_COLUMNS)
        for entity in ENTITIES:
            counts[entity]["quarantined"] = int((quarantine["entity"] == entity).sum()) if len(quarantine) else 0
            counts[entity]["processed"] = int(((keys["entity"] == entity) & (keys["status"] != STATUS_CARRIED)).sum())
            counts[entity]["carried"] = int(((keys["entity"] == entity) & (keys["status"] == STATUS_CARRIED)).sum())
            if counts[entity]["in"] != counts[entity]["processed"] + counts[entity]["quarantined"]:
                raise AssertionError(f"{entity}: in != processed + quarantined: {counts[entity]}")

        write_parquet_atomic(run.path / "keys.parquet", keys[KEY_COLUMNS])
        save_npy_atomic(run.path / "embeddings.npy", vectors)
        write_parquet_atomic(run.path / "quarantine.parquet", quarantine[QUARANTINE_COLUMNS])
        (run.path / "keywords").mkdir(exist_ok=True)
        write_parquet_atomic(run.path / "keywords" / "dictionary.parquet", dictionary.to_frame())
        write_parquet_atomic(run.path / "keywords" / "rejected_lines.parquet", rejected if len(rejected) else pd.DataFrame(columns=["path", "line_number", "reason", "line"]))

        status_counts = keys.groupby(["entity", "status"]).size().unstack(fill_value=0).to_dict(orient="index") if len(keys) else {}
        matched_share = float((keys["matched_keywords"].map(len) > 0).mean()) if len(keys) else 0.0
        _finish_step(run, "embed", {
            "counts": counts,
            "status": {entity: {status: int(n) for status, n in row.items()} for entity, row in status_counts.items()},
            "dictionary_keywords": len(dictionary),
            "dictionary_rejected_lines": len(rejected),
            "keys_with_keyword_match": matched_share,
            "embedder": embedder.signature(),
        })
    logger.info("embed ds=%s: counts=%s, %d keywords, %.1f%% of keys matched a keyword", ds, counts, len(dictionary), 100 * matched_share)
    return run


def _vectors_for(keys: pd.DataFrame, reference: VersionState | None, reuse: bool, embedder: Embedder, dictionary: KeywordDictionary, matcher: KeywordMatcher, config: OneSearchConfig, quarantines: list[pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """Fused vectors for today's valid keys; unchanged keys reuse the reference when reuse is set."""
    vectors = np.zeros((len(keys), embedder.dim), dtype=np.float32)
    matched: list[list[str]] = [[] for _ in range(len(keys))]
    compute = np.ones(len(keys), dtype=bool)

    if reuse and reference is not None:
        ref_index = reference.keys.reset_index()[["entity", "key", "index", "matched_keywords"]].rename(columns={"index": "reference_row", "matched_keywords": "reference_keywords"})
        joined = keys[["entity", "key"]].merge(ref_index, on=["entity", "key"], how="left")
        unchanged = (keys["status"] == STATUS_UNCHANGED).to_numpy()
        rows = joined.loc[unchanged, "reference_row"].to_numpy(dtype=np.int64)
        vectors[unchanged] = reference.embeddings[rows]
        for position, words in zip(np.flatnonzero(unchanged), joined.loc[unchanged, "reference_keywords"]):
            matched[position] = list(words)
        compute = ~unchanged

    todo = np.flatnonzero(compute)
    if todo.size:
        subset = keys.iloc[todo]
        given = subset["embedding"].map(lambda value: value is not None).to_numpy()
        raw = np.zeros((todo.size, embedder.dim), dtype=np.float32)
        if given.any():
            raw[given] = np.stack(subset.loc[given, "embedding"].to_list())
            raw[given] /= np.linalg.norm(raw[given], axis=1, keepdims=True)
        if (~given).any():
            raw[~given] = embedder.embed(subset.loc[~given, "text"].tolist())
        match_rows, match_indices = matcher.match_arrays(subset["text"].tolist(), config.keywords.effective_match_processes)
        vectors[todo] = fuse_matches(raw, match_rows, match_indices, dictionary.vectors, config.keywords.raw_weight, in_place=True)
        names = np.asarray(dictionary.keywords, dtype=object)[match_indices]
        bounds = np.searchsorted(match_rows, np.arange(todo.size + 1))
        for position, begin, end in zip(todo.tolist(), bounds[:-1].tolist(), bounds[1:].tolist()):
            if end > begin:
                matched[position] = names[begin:end].tolist()

    keys = keys.assign(matched_keywords=matched)
    empty = np.linalg.norm(vectors, axis=1) == 0
    if empty.any():
        dropped = keys[empty]
        for entity, group in dropped.groupby("entity"):
            # The source row here has the cleaned text and the extract's other columns.
            source = group.drop(columns=["entity", "content_hash", "status", "matched_keywords"])
            quarantines.append(quarantine_rows(entity, source, TEXT_WITHOUT_EMBEDDING, "the text produced an all-zero vector"))
        logger.warning("%d keys produced all-zero vectors and were quarantined", int(empty.sum()))
        keys, vectors = keys[~empty].reset_index(drop=True), vectors[~empty]
    return keys.drop(columns=["embedding"]), vectors


def _add_carried(keys: pd.DataFrame, reference: VersionState | None, config: OneSearchConfig, quarantines: list[pd.DataFrame]) -> pd.DataFrame:
    """Append reference keys that today's input lacks but that must keep their SID."""
    if reference is None:
        return keys
    modes = {"items": config.source.items_partition_mode, "queries": config.source.queries_partition_mode}
    quarantined = pd.concat([q for q in quarantines if len(q)], ignore_index=True) if any(len(q) for q in quarantines) else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    carried_parts = []
    for entity in ENTITIES:
        previous = reference.keys[reference.keys["entity"] == entity].copy()
        previous["reference_row"] = previous.index
        present = set(keys.loc[keys["entity"] == entity, "key"])
        absent = previous[~previous["key"].isin(present)]
        if modes[entity] == "snapshot":
            bad_today = set(quarantined.loc[quarantined["entity"] == entity, "key"])
            absent = absent[absent["key"].isin(bad_today)]
        carried_parts.append(absent.assign(status=STATUS_CARRIED))
    carried = pd.concat(carried_parts, ignore_index=True)
    if not len(carried):
        return keys
    return pd.concat([keys, carried[KEY_COLUMNS + ["reference_row"]]], ignore_index=True)


def _attach_carried_vectors(keys: pd.DataFrame, vectors: np.ndarray, reference: VersionState | None) -> tuple[pd.DataFrame, np.ndarray]:
    """Append the reference vectors of carried keys and sort all keys by (entity, key)."""
    if "reference_row" in keys:
        carried = (keys["status"] == STATUS_CARRIED).to_numpy()
        extra = reference.embeddings[keys.loc[carried, "reference_row"].to_numpy(dtype=np.int64)]
        vectors = np.concatenate([vectors, extra]) if len(extra) else vectors
        keys = keys.drop(columns="reference_row")
    order = np.lexsort((keys["key"].to_numpy(dtype=str), keys["entity"].to_numpy(dtype=str)))
    return keys.iloc[order].reset_index(drop=True), np.ascontiguousarray(vectors[order])


# --- rq -------------------------------------------------------------------------------------------


def rq_settings(config: OneSearchConfig) -> RQSettings:
    rq = config.rq
    return RQSettings(
        k=tuple(rq.k),
        balanced_type=rq.balanced_type,
        normalize_residuals=rq.normalize_residuals,
        niter=rq.niter,
        seed=rq.seed,
        max_points_per_centroid=rq.max_points_per_centroid,
        cap_k=rq.cap_k,
    )


def _reference_rows(keys: pd.DataFrame, reference_keys: pd.DataFrame) -> np.ndarray:
    """Row of each key in the reference key table, -1 where absent."""
    lookup = reference_keys[["entity", "key"]].reset_index().rename(columns={"index": "reference_row"})
    joined = keys[["entity", "key"]].merge(lookup, on=["entity", "key"], how="left")
    return joined["reference_row"].fillna(-1).to_numpy(dtype=np.int64)


def rq_update_kind(run: Run) -> str:
    """Return how this run's RQ model relates to its reference.

    full: no reference. frozen: every layer reused. online: layers after referlayer updated
    with the new and changed keys only (extend_rq). refit: layers after referlayer retrained
    on all keys (rq.refit_later_layers). With frozen and online, reused keys copy their
    codes, residuals and OPQ codes from the reference.
    """
    if not run.incremental:
        return "full"
    rq = run.config.rq
    if rq.effective_referlayer == rq.depth:
        return "frozen"
    return "refit" if rq.refit_later_layers else "online"


def _copies_reference_codes(run: Run) -> bool:
    return rq_update_kind(run) in ("frozen", "online")


def _reused_rows(run: Run, keys: pd.DataFrame, reference: VersionState) -> tuple[np.ndarray, np.ndarray]:
    """(mask of keys whose codes are copied, their reference rows)."""
    rows = _reference_rows(keys, reference.keys)
    reuse = keys["status"].isin(REUSED_STATUSES).to_numpy() & (rows >= 0)
    return reuse, rows[reuse]


def run_rq(config: OneSearchConfig, ds: str) -> Run:
    """Train or reuse RQ codebooks and assign every key; writes model/, rq_codes.npy, residuals.npy."""
    run = open_run(config, ds)
    require_step(run, "rq")
    config = run.config
    settings = rq_settings(config)
    with run_lock(run.layout, ds):
        state = VersionState.load(run.path, with_codes=False)
        vectors = state.embeddings
        update = rq_update_kind(run)
        info: dict[str, Any] = {"mode": "full", "update": update, "referlayer": 0, "unseen_parent_points": 0}
        if update == "full":
            model, codes, residuals = train_rq(vectors, settings)
        else:
            reference_model = RQModel.load(run.reference_path / "model")
            check_reference(reference_model, settings, vectors.shape[1])
            referlayer = config.rq.effective_referlayer
            info.update(mode="incremental", referlayer=referlayer, reference=run.manifest["reference_version"])
            if update == "refit":
                model, codes, residuals = train_rq(vectors, settings, reference_model, referlayer)
            else:
                model, codes, residuals, info_update = _extend_reference(run, state, reference_model, referlayer)
                info.update(info_update)

        model.save(run.path / "model")
        save_npy_atomic(run.path / "rq_codes.npy", codes)
        save_npy_atomic(run.path / "residuals.npy", residuals)
        stats = {entity: cluster_statistics(codes[(state.keys["entity"] == entity).to_numpy()], model) for entity in ENTITIES}
        write_json_atomic(run.path / "cluster_stats.json", stats)
        checkpoint("rq.saved")
        _finish_step(run, "rq", info)
    logger.info("rq ds=%s: %s", ds, info)
    return run


def _extend_reference(run: Run, state: "VersionState", reference_model: RQModel, referlayer: int) -> tuple[RQModel, np.ndarray, np.ndarray, dict[str, Any]]:
    """Copy the codes of reused keys from the reference and encode the rest (see extend_rq)."""
    reference = VersionState.load(run.reference_path)
    reuse, rows = _reused_rows(run, state.keys, reference)
    vectors = state.embeddings
    codes = np.empty((len(state.keys), reference_model.depth), dtype=np.int64)
    residuals = np.empty_like(vectors)
    codes[reuse], residuals[reuse] = reference.rq_codes[rows], reference.residuals[rows]
    model, codes[~reuse], residuals[~reuse], unseen = extend_rq(reference_model, vectors[~reuse], referlayer, reference.rq_codes[rows])
    if unseen:
        logger.warning("%d new keys fall under last-layer parents the reference never saw; they share local code 0 there until a full rebuild", unseen)
    info = {"reused_keys": int(reuse.sum()), "encoded_keys": int((~reuse).sum()), "unseen_parent_points": unseen, "updated_layers": model.stats["updated_layers"]}
    return model, codes, residuals, info


# --- opq ------------------------------------------------------------------------------------------


def run_opq(config: OneSearchConfig, ds: str) -> Run:
    """Train or reuse the OPQ index, encode residuals and write the SID tables."""
    from onesearch_tasks.sid.opq import OPQError, pq_layout

    run = open_run(config, ds)
    require_step(run, "opq")
    config = run.config
    with run_lock(run.layout, ds):
        state = VersionState.load(run.path, with_codes=False)
        rq_codes = load_npy(run.path / "rq_codes.npy")
        residuals = load_npy(run.path / "residuals.npy")
        info: dict[str, Any] = {"m": config.opq.m, "bits": config.opq.bits}
        if _copies_reference_codes(run):
            index = load_opq(run.reference_path / "model", expected_dim=residuals.shape[1])
            if pq_layout(index) != (config.opq.m, config.opq.bits):
                raise OPQError(f"reference OPQ index has (m, bits) = {pq_layout(index)} but this run asks for ({config.opq.m}, {config.opq.bits}); run with mode=full")
            reference = VersionState.load(run.reference_path)
            reuse, rows = _reused_rows(run, state.keys, reference)
            opq_codes = np.empty((len(state.keys), config.opq.m), dtype=np.int64)
            opq_codes[reuse] = reference.opq_codes[rows]
            opq_codes[~reuse] = encode_opq(index, residuals[~reuse])
            info.update(trained=False, reused_keys=int(reuse.sum()), encoded_keys=int((~reuse).sum()))
        else:
            index = train_opq(residuals, config.opq.m, config.opq.bits, config.opq.seed, config.opq.max_train_rows)
            opq_codes = encode_opq(index, residuals)
            info.update(trained=True, encoded_keys=len(state.keys))

        save_opq(index, run.path / "model")
        save_npy_atomic(run.path / "opq_codes.npy", opq_codes)
        sids = sid_metrics.format_sids(rq_codes, opq_codes, config.opq.bits)
        table = state.keys.assign(sid=sids)
        for entity in ENTITIES:
            rows = table[table["entity"] == entity]
            write_parquet_atomic(run.path / f"sid_{entity}.parquet", rows[["key", "sid", "text", "matched_keywords", "status"]])
        checkpoint("opq.saved")
        _finish_step(run, "opq", info)
    logger.info("opq ds=%s: %s", ds, info)
    return run


# --- evaluate -------------------------------------------------------------------------------------


def _sid_table(folder: Path, entity: str) -> pd.DataFrame:
    return pd.read_parquet(folder / f"sid_{entity}.parquet")


def _unknown_interactions(run: Run, item_keys: set[str]) -> dict[str, Any]:
    interactions = _read_extract(run, "interactions")
    if not len(interactions):
        return {"rows": 0, "unknown_item_rows": 0, "unknown_item_share": 0.0, "unknown_item_ids": 0, "examples": []}
    unknown = ~interactions["item_id"].astype("string").isin(item_keys)
    unknown_ids = interactions.loc[unknown, "item_id"].astype("string").dropna().unique()
    return {
        "rows": int(len(interactions)),
        "unknown_item_rows": int(unknown.sum()),
        "unknown_item_share": float(unknown.mean()),
        "unknown_item_ids": int(len(unknown_ids)),
        "examples": sorted(unknown_ids.tolist())[:10],
    }


def compute_metrics(run: Run) -> dict[str, Any]:
    """Metrics of a run folder whose opq step has finished; see sid/metrics.py for definitions."""
    config = run.config
    model = RQModel.load(run.path / "model")
    keys = pd.read_parquet(run.path / "keys.parquet")
    rq_codes = load_npy(run.path / "rq_codes.npy")
    spaces = [model.code_space(layer) for layer in range(model.depth)]
    embed_counts = run.manifest["steps"]["embed"]["counts"]

    rq_step = run.manifest["steps"]["rq"]
    result: dict[str, Any] = {"ds": run.ds, "run_id": run.manifest["run_id"], "mode": rq_step["mode"], "rq_update": rq_step.get("update"), "referlayer": rq_step["referlayer"], "reference_version": run.manifest.get("reference_version"), "entities": {}}
    all_sids: list[str] = []
    reference_keys = pd.read_parquet(run.reference_path / "keys.parquet") if run.reference_path else None
    for entity in ENTITIES:
        table = _sid_table(run.path, entity)
        mask = (keys["entity"] == entity).to_numpy()
        all_sids.extend(table["sid"].tolist())
        entry: dict[str, Any] = {
            **sid_metrics.uniqueness(table["sid"].tolist()),
            "coverage": sid_metrics.coverage(rq_codes[mask], spaces, model.k),
            "counts": embed_counts[entity],
            "status": table["status"].value_counts().to_dict(),
        }
        if run.reference_path:
            previous = _sid_table(run.reference_path, entity)
            unchanged = table[table["status"].isin(REUSED_STATUSES)].merge(previous[["key", "sid"]], on="key", suffixes=("", "_reference"))
            entry["churn"] = sid_metrics.churn(unchanged["sid_reference"].tolist(), unchanged["sid"].tolist())
            entry["new_keys"] = int((table["status"] == STATUS_NEW).sum())
            entry["removed_keys"] = int((~reference_keys.loc[reference_keys["entity"] == entity, "key"].isin(table["key"])).sum())
        else:
            entry["churn"] = sid_metrics.churn([], [])
            entry["new_keys"] = len(table)
            entry["removed_keys"] = 0
        result["entities"][entity] = entry

    distinct = len(set(all_sids))
    result["full_sid_cur"] = distinct / float(np.prod(np.asarray(model.k, dtype=np.float64)))
    result["all_keys"] = sid_metrics.uniqueness(all_sids)
    result["coverage"] = sid_metrics.coverage(rq_codes, spaces, model.k)
    result["unseen_parent_points"] = run.manifest["steps"]["rq"].get("unseen_parent_points", 0)
    result["interactions"] = _unknown_interactions(run, set(_sid_table(run.path, "items")["key"]))
    total_in = sum(embed_counts[entity]["in"] for entity in ENTITIES)
    total_quarantined = sum(embed_counts[entity]["quarantined"] for entity in ENTITIES)
    result["quarantine_share"] = total_quarantined / total_in if total_in else 0.0
    result["k"] = list(model.k)
    result["opq"] = {"m": config.opq.m, "bits": config.opq.bits}
    return result


def check_gates(run: Run, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the failed gates as {metric, value, threshold} dicts (empty when all pass)."""
    gates = run.config.gates
    checks = [
        ("items.icr", metrics["entities"]["items"]["icr"], gates.min_item_icr, "min"),
        ("queries.icr", metrics["entities"]["queries"]["icr"], gates.min_query_icr, "min"),
        ("quarantine_share", metrics["quarantine_share"], gates.max_quarantine_share, "max"),
    ]
    if metrics["mode"] == "incremental":
        for entity in ENTITIES:
            entry = metrics["entities"][entity]
            # A refit retrains later layers on all keys, so churn there is expected, not a fault.
            if metrics.get("rq_update", "frozen" if metrics.get("referlayer") == len(metrics["k"]) else "refit") in ("frozen", "online"):
                checks.append((f"{entity}.churn", entry["churn"]["churn"], gates.max_churn, "max"))
            reference_keys = entry["removed_keys"] + entry["churn"]["unchanged_keys"] + entry["status"].get("changed", 0)
            removed_share = entry["removed_keys"] / reference_keys if reference_keys else 0.0
            checks.append((f"{entity}.removed_share", removed_share, gates.max_removed_share, "max"))
    failures = []
    for name, value, threshold, kind in checks:
        if (kind == "min" and value < threshold) or (kind == "max" and value > threshold):
            failures.append({"metric": name, "value": value, "threshold": threshold, "kind": kind})
    return failures


def run_evaluate(config: OneSearchConfig, ds: str, override: GateOverride | None = None) -> dict[str, Any]:
    """Compute metrics.json and check the quality gates.

    Raises QualityGateError when a gate fails, unless override is given. An override that
    was used is stored with who, why and when in metrics.json and the manifest, and the
    publish step then accepts the run.
    """
    run = open_run(config, ds)
    require_step(run, "evaluate")
    with run_lock(run.layout, ds):
        metrics = compute_metrics(run)
        failures = check_gates(run, metrics)
        metrics["gates"] = {"passed": not failures, "failures": failures}
        if failures and override is not None:
            metrics["gates"]["override"] = {"by": override.by, "reason": override.reason, "at": _now()}
        write_json_atomic(run.path / "metrics.json", metrics)
        _finish_step(run, "evaluate", {"gates": metrics["gates"]})
    _log_metrics(metrics)
    if not failures:
        if override is not None:
            logger.info("quality gates passed for ds=%s; the override by %s was not needed and is not recorded", ds, override.by)
        return metrics
    described = "; ".join(f"{f['metric']}={f['value']:.4f} ({f['kind']} {f['threshold']})" for f in failures)
    if override is None:
        raise QualityGateError(
            f"quality gates failed for ds={ds}: {described}. Run folder: {run.path}. Nothing was published. "
            f"Fix the input and rerun the date, or publish anyway with: onesearch sid evaluate --ds {ds} "
            "--override-gates --reason TEXT, then onesearch sid publish"
        )
    logger.warning("quality gates failed for ds=%s: %s. Overridden by %s, reason: %s. The run may be published.", ds, described, override.by, override.reason)
    return metrics


def _log_metrics(metrics: dict[str, Any]) -> None:
    for entity, entry in metrics["entities"].items():
        logger.info(
            "metrics %s: keys=%d icr=%.4f largest_collision=%d churn=%.4f new=%d removed=%d counts=%s",
            entity, entry["keys"], entry["icr"], entry["largest_collision_group"], entry["churn"]["churn"],
            entry["new_keys"], entry["removed_keys"], entry["counts"],
        )
    for layer in metrics["coverage"]["per_layer"]:
        logger.info("metrics layer %d: CUR=%.4f (%d of %d codes)", layer["layer"], layer["cur"], layer["used"], layer["space"])
    logger.info("metrics full SID CUR=%.6f, all-key ICR=%.4f, interactions with unknown item ids: %d of %d", metrics["full_sid_cur"], metrics["all_keys"]["icr"], metrics["interactions"]["unknown_item_rows"], metrics["interactions"]["rows"])


# --- publish and the whole refresh ----------------------------------------------------------------


def run_publish(config: OneSearchConfig, ds: str, run_id: str | None = None) -> PublishResult:
    layout = layout_for(config)
    with run_lock(layout, ds):
        return publish_run(layout, ds, run_id)


def run_refresh(config: OneSearchConfig, ds: str, override: GateOverride | None = None) -> PublishResult:
    """Run every step for ds in order and publish; the CLI twin of the DAG."""
    run = run_extract(config, ds)
    run_embed(config, ds)
    run_rq(config, ds)
    run_opq(config, ds)
    run_evaluate(config, ds, override)
    return run_publish(config, ds, run.manifest["run_id"])
