"""Typed project configuration, loaded from one YAML file.

The file is named by ``$ONESEARCH_CONFIG`` (default ``configs/default.yaml`` in the
repository). Single fields can be overridden with dotted keys, which is how the CLI's
``--set`` option and the DAG Params change one value without a new file::

    cfg = load_config(overrides={"rq.k": "8-8-8", "rq.mode": "full"})

This module imports only pydantic and yaml, so DAG files can use it at parse time.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "default.yaml"
DEFAULT_HOME = REPO_ROOT / "var"
CONFIG_ENV_VAR = "ONESEARCH_CONFIG"
HOME_ENV_VAR = "ONESEARCH_HOME"

_K_PATTERN = re.compile(r"^\d+(-\d+)*$")


class ConfigError(ValueError):
    """Invalid configuration file or override."""


def _compiled_pattern(value: str | None, name: str) -> str | None:
    if value is None:
        return value
    try:
        re.compile(value)
    except re.error as error:
        raise ValueError(f"{name}={value!r} is not a valid regular expression: {error}") from error
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Section):
    """Spark session settings. The embedded default is a local session bound to loopback."""

    master: str = "local[*]"
    app_name: str = "onesearch"
    # Extra `spark.*` settings passed to the session builder as-is.
    conf: dict[str, str] = Field(default_factory=dict)


class TablesConfig(_Section):
    """Logical table name -> physical table. In embedded mode the physical name is a
    folder under the warehouse; in catalog mode it is a Spark catalog table name."""

    items: str = "items"
    users: str = "users"
    search_sessions: str = "search_sessions"
    rank_events: str = "rank_events"
    relevance_labels: str = "relevance_labels"


PartitionMode = Literal["snapshot", "delta"]


class SourceConfig(_Section):
    """Source tables of the daily logs and the meaning of a day's partition.

    ``snapshot``: the partition is the full set of keys, so keys missing from it are removed.
    ``delta``: the partition holds only new and changed rows, so missing keys keep their SIDs.
    """

    kind: Literal["embedded", "catalog"] = "embedded"
    # Embedded mode only: folder of parquet tables; null means $ONESEARCH_HOME/warehouse.
    warehouse_dir: str | None = None
    tables: TablesConfig = Field(default_factory=TablesConfig)
    items_partition_mode: PartitionMode = "snapshot"
    queries_partition_mode: PartitionMode = "delta"
    # Name of an array<float> column in the items table that carries precomputed embeddings.
    embedding_column: str = "embedding"


class EmbeddingConfig(_Section):
    """Embedder used when a row carries no embedding column value."""

    kind: Literal["hashing", "sentence_transformers"] = "hashing"
    dim: int = Field(64, ge=2, le=8192)
    ngram_min: int = Field(1, ge=1, le=8)
    ngram_max: int = Field(3, ge=1, le=8)
    # Characters beyond this are ignored by the hashing embedder.
    max_chars: int = Field(64, ge=4, le=1024)
    # sentence_transformers only: a local model folder and the Python that can import it.
    model_path: str | None = None
    python: str | None = None
    batch_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "EmbeddingConfig":
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"embedding.ngram_min={self.ngram_min} is larger than ngram_max={self.ngram_max}")
        if self.kind == "sentence_transformers" and not self.model_path:
            raise ValueError("embedding.kind=sentence_transformers needs embedding.model_path (a local model folder)")
        return self


class KeywordConfig(_Section):
    """Keyword dictionary and enhancement settings."""

    enabled: bool = True
    # Extra dictionaries in the `keyword \\t type \\t pv \\t emb` format (emb floats joined by \\x02).
    dictionary_files: list[str] = Field(default_factory=list)
    min_keyword_chars: int = Field(2, ge=1)
    min_pv: int = Field(1, ge=0)
    # Catalog values that carry no meaning and would match everywhere.
    stop_values: list[str] = Field(
        default_factory=lambda: ["无品牌", "其他", "其他/other", "other", "unknown", "否", "是", "通用", "无", "不限"]
    )
    # Weight of the raw vector in fused = normalize(w * raw + (1 - w) * mean(keyword vectors)).
    raw_weight: float = Field(0.5, ge=0.0, le=1.0)
    # Forked processes for keyword matching on 50,000 texts or more: 0 means one per CPU
    # core (at most 8), 1 matches in the task's own process.
    match_processes: int = Field(0, ge=0)

    @property
    def effective_match_processes(self) -> int:
        return self.match_processes or (os.cpu_count() or 1)


class RQConfig(_Section):
    """Residual k-means settings.

    ``referlayer``: layers 1..referlayer reuse the reference model's codebooks. Null means
    the depth, so nothing changes. Later layers are updated online with the new and changed
    keys only, and unchanged keys keep their SIDs. With ``refit_later_layers`` they are
    retrained on all keys instead. That costs as much as a full build of those layers and
    may change any key's SID.
    """

    mode: Literal["full", "incremental"] = "incremental"
    k: tuple[int, ...] = (1024, 1024, 1024)
    balanced_type: Literal[0, 1, 2] = 0
    referlayer: int | None = None
    refit_later_layers: bool = False
    normalize_residuals: bool = False
    # faiss trains each layer on at most k * max_points_per_centroid sampled rows. On the
    # 1M-key benchmark, 6 iterations on 1024 rows per centroid cost less than faiss's usual
    # 25 on 256 and gave a higher ICR than plain k-means on all rows (benchmarks/README.md).
    niter: int = Field(6, ge=1)
    seed: int = 1234
    max_points_per_centroid: int = Field(1024, ge=1)
    # When k exceeds the rows a layer clusters: false raises, true lowers k to the row count and logs it.
    cap_k: bool = False

    @field_validator("k", mode="before")
    @classmethod
    def _parse_k(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, str):
            if not _K_PATTERN.match(value):
                raise ValueError(f"rq.k={value!r} is not of the form '1024-1024-1024'")
            return tuple(int(part) for part in value.split("-"))
        return value

    @model_validator(mode="after")
    def _check(self) -> "RQConfig":
        if not self.k or any(k < 1 for k in self.k):
            raise ValueError(f"rq.k={self.k} must list one or more cluster counts, each at least 1")
        if len(self.k) > 8:
            raise ValueError(f"rq.k={self.k} has {len(self.k)} layers; at most 8 are supported")
        if self.balanced_type == 1 and len(self.k) < 3:
            raise ValueError("rq.balanced_type=1 needs at least 3 layers (parents are (L1, L2) pairs)")
        if self.balanced_type == 2 and len(self.k) < 2:
            raise ValueError("rq.balanced_type=2 needs at least 2 layers (parents are L2 codes)")
        if self.referlayer is not None and not 0 <= self.referlayer <= len(self.k):
            raise ValueError(f"rq.referlayer={self.referlayer} must be between 0 and the depth {len(self.k)}")
        return self

    @property
    def depth(self) -> int:
        return len(self.k)

    @property
    def effective_referlayer(self) -> int:
        return self.depth if self.referlayer is None else self.referlayer


class OPQConfig(_Section):
    """faiss ``OPQ{m},IVF1,PQ{m}x{bits}`` settings (inner-product metric)."""

    m: int = Field(2, ge=1, le=16)
    bits: int = Field(8, ge=1, le=16)
    seed: int = 1234
    # Rows sampled for OPQ training; the rest are only encoded. Inside, faiss 1.15 samples
    # again: at most 65,536 rows for the rotation and 256 per centroid for each PQ k-means.
    max_train_rows: int = Field(1_000_000, ge=1)


class GateConfig(_Section):
    """Quality gates checked before publishing. A failed gate fails the run."""

    min_item_icr: float = Field(0.0, ge=0.0, le=1.0)
    min_query_icr: float = Field(0.0, ge=0.0, le=1.0)
    # Share of unchanged keys whose SID changed; applies to incremental runs only.
    max_churn: float = Field(0.0, ge=0.0, le=1.0)
    # Share of input rows sent to quarantine.
    max_quarantine_share: float = Field(0.05, ge=0.0, le=1.0)
    # Share of the reference version's keys that a run may remove (per entity, incremental runs).
    max_removed_share: float = Field(0.2, ge=0.0, le=1.0)


class TrainingDataConfig(_Section):
    """Training-data builder settings (SFT stages, self-distillation pairs, RL data)."""

    # Prompt language: the template file <template_dir>/<language>.yaml.
    language: Literal["zh", "en"] = "zh"
    # Folder of template files; null means the templates shipped in onesearch_tasks/data/templates.
    template_dir: str | None = None
    valid_share: float = Field(0.05, ge=0.0, lt=1.0)
    test_share: float = Field(0.05, ge=0.0, lt=1.0)
    # Salt of the hash that assigns split buckets; change it to draw a new split.
    split_seed: str = "onesearch-split-v1"
    # Salt of the user-id hash written instead of raw user ids.
    user_salt: str = "onesearch-user-v1"
    max_history: int = Field(5, ge=1, le=50)
    max_personal_keywords: int = Field(5, ge=1, le=5)
    max_query_keywords: int = Field(10, ge=1)
    # Relevance labels at or above this tier also count as query-item pairs in stage 2.
    min_pair_relevance: int = Field(2, ge=0, le=3)
    # Listwise DPO negatives per example; relevance at or below this tier makes an item a negative.
    dpo_negatives: int = Field(4, ge=1)
    dpo_max_negative_relevance: int = Field(1, ge=0, le=3)
    # Smoothed CTR = (clicks + prior_ctr * prior_strength) / (shows + prior_strength).
    ctr_prior: float = Field(0.05, ge=0.0, le=1.0)
    ctr_prior_strength: float = Field(20.0, gt=0.0)
    # Regex that removes the keyword span from a teacher input; null: the template file's pattern.
    sdft_keyword_pattern: str | None = None
    # The token vocabulary lists every code of a layer only when the layer has at most this many.
    max_listed_codes_per_layer: int = Field(1 << 20, ge=1)

    @field_validator("sdft_keyword_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        return _compiled_pattern(value, "training_data.sdft_keyword_pattern")

    @model_validator(mode="after")
    def _check(self) -> "TrainingDataConfig":
        if self.valid_share + self.test_share >= 1.0:
            raise ValueError(f"training_data.valid_share + test_share = {self.valid_share + self.test_share} leaves no training data")
        return self


class SDFTConfig(_Section):
    """Joint self-distillation; the keys keep LLaMA-Factory-style names for the stage YAML."""

    use_joint_sdft: bool = True
    sdft_mode: Literal["joint", "ema"] = "joint"
    sdft_kl_weight: float = Field(0.1, ge=0.0)
    sdft_distill_temperature: float = Field(1.0, gt=0.0)
    sdft_teacher_ce_weight: float = Field(1.0, ge=0.0)
    sdft_ema_decay: float = Field(0.9, ge=0.0, le=1.0)
    # Regex that removes the keyword span from teacher inputs; null: the template file's pattern.
    sdft_keyword_pattern: str | None = None

    @field_validator("sdft_keyword_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        return _compiled_pattern(value, "training.sdft.sdft_keyword_pattern")


class TrainingConfig(_Section):
    """Progressive SFT and SDFT settings; rendered into one LLaMA-Factory YAML per stage."""

    # Python of the training env; null means .venv-train/bin/python in the repository.
    python: str | None = None
    # Local Hugging Face checkpoint of the base model; null means `onesearch train make-tiny-model` output.
    base_model: str | None = None
    template: str = "qwen"
    cutoff_len: int = Field(512, ge=16)
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0.0)
    num_train_epochs: float = Field(1.0, gt=0.0)
    # Positive: stop each stage after this many optimizer steps (overrides epochs).
    max_steps: int = -1
    max_samples: int | None = None
    # null: bf16 exactly when a CUDA GPU is present.
    bf16: bool | None = None
    deepspeed: str | None = None
    fsdp: str | None = None
    logging_steps: int = Field(10, ge=1)
    # Training-data task names per SFT stage; the `train` split of each is used.
    stage_tasks: dict[int, list[str]] = Field(default_factory=lambda: {
        1: ["query_to_sid", "sid_to_query", "item_to_sid", "sid_to_item", "item_to_category", "query_to_category",
            "item_sid_to_category", "query_to_keywords", "query_sid_to_keyword_sid", "personalized_keywords",
            "personalized_keyword_sid"],
        2: ["query_to_item", "item_to_query", "query_sid_to_item_sid", "item_sid_to_query_sid"],
        3: ["personalized_item_sid"],
    })
    # Other LLaMA-Factory keys, passed through to every stage YAML unchanged.
    extra_args: dict[str, Any] = Field(default_factory=dict)
    sdft: SDFTConfig = Field(default_factory=SDFTConfig)


class OneSearchConfig(_Section):
    """The whole configuration. ``home`` is the state folder (null: $ONESEARCH_HOME or var/)."""

    home: str | None = None
    spark: SparkConfig = Field(default_factory=SparkConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    keywords: KeywordConfig = Field(default_factory=KeywordConfig)
    rq: RQConfig = Field(default_factory=RQConfig)
    opq: OPQConfig = Field(default_factory=OPQConfig)
    gates: GateConfig = Field(default_factory=GateConfig)
    training_data: TrainingDataConfig = Field(default_factory=TrainingDataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @property
    def home_path(self) -> Path:
        """State folder: $ONESEARCH_HOME wins over the file's `home`, then var/ in the repo."""
        env_home = os.environ.get(HOME_ENV_VAR)
        if env_home:
            return Path(env_home).expanduser().resolve()
        if self.home:
            return Path(self.home).expanduser().resolve()
        return DEFAULT_HOME


def _set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted_key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _parse_override_value(raw: str) -> Any:
    """Parse a `--set key=value` value as YAML, so `true`, `3` and `[a, b]` get their types."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def parse_set_options(pairs: list[str]) -> dict[str, Any]:
    """Turn CLI `key=value` strings into an override mapping."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid --set {pair!r}: expected KEY=VALUE, for example rq.k=8-8-8")
        overrides[key.strip()] = _parse_override_value(raw)
    return overrides


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> OneSearchConfig:
    """Load the YAML file (argument, then $ONESEARCH_CONFIG, then the default) and apply overrides.

    Raises ConfigError naming the file and the invalid field.
    """
    config_path = Path(path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)
    if not config_path.is_absolute() and not config_path.exists():
        config_path = REPO_ROOT / config_path
    if not config_path.exists():
        raise ConfigError(f"config file not found: {config_path} (set {CONFIG_ENV_VAR} or pass --config)")

    with config_path.open(encoding="utf-8") as handle:
        tree = yaml.safe_load(handle) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {config_path} must hold a mapping at the top level")

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        _set_dotted(tree, key, value)

    try:
        config = OneSearchConfig.model_validate(tree)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" + (f" (got {item['input']!r})" if item["type"] != "missing" else "")
            for item in error.errors()
        )
        source = f"{config_path} with overrides {overrides}" if overrides else str(config_path)
        raise ConfigError(f"invalid configuration ({source}): {problems}") from error
    logger.debug("loaded config %s with overrides %s", config_path, overrides)
    return config


# Run settings that the CLI flags and the DAG Params may override, by name -> dotted key.
RUN_OVERRIDE_KEYS: dict[str, str] = {
    "mode": "rq.mode",
    "k": "rq.k",
    "balanced_type": "rq.balanced_type",
    "referlayer": "rq.referlayer",
    "normalize_residuals": "rq.normalize_residuals",
    "opq_m": "opq.m",
    "opq_bits": "opq.bits",
    "items_partition_mode": "source.items_partition_mode",
    "queries_partition_mode": "source.queries_partition_mode",
}


def run_overrides(**values: Any) -> dict[str, Any]:
    """Map run-setting names (see RUN_OVERRIDE_KEYS) to dotted overrides, skipping None."""
    unknown = set(values) - set(RUN_OVERRIDE_KEYS)
    if unknown:
        raise ConfigError(f"unknown run settings {sorted(unknown)}; known: {sorted(RUN_OVERRIDE_KEYS)}")
    return {RUN_OVERRIDE_KEYS[name]: value for name, value in values.items() if value is not None}
