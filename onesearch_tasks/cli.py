"""The `onesearch` command line. Every DAG task calls the function behind one of these commands."""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from onesearch_tasks.config import ConfigError, OneSearchConfig, load_config, parse_set_options, run_overrides
from onesearch_tasks.storage import StorageError

logger = logging.getLogger("onesearch")

app = typer.Typer(help="OneSearch SID refresh and training-data pipeline.", no_args_is_help=True, add_completion=False)
sid_app = typer.Typer(help="Build, inspect, publish and roll back Semantic ID versions.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect the training data built from SID versions.", no_args_is_help=True)
app.add_typer(sid_app, name="sid")
app.add_typer(data_app, name="data")


class _State:
    config_path: Optional[Path] = None


STATE = _State()

ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="YAML config file; default $ONESEARCH_CONFIG or configs/default.yaml.")]
DsOption = Annotated[str, typer.Option("--ds", help="Data date, YYYY-MM-DD.")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override one config field, KEY=VALUE (repeatable), e.g. rq.niter=10.")]
VersionOption = Annotated[str, typer.Option("--version", help="SID version id (YYYY-MM-DD.rN) or 'current'.")]


class Mode(str, Enum):
    full = "full"
    incremental = "incremental"


class Kind(str, Enum):
    items = "items"
    queries = "queries"


def _config(overrides: dict | None = None) -> OneSearchConfig:
    return load_config(STATE.config_path, overrides)


@app.callback()
def main_options(
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Python logging level: DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    STATE.config_path = config


# --- data in ----------------------------------------------------------------------------


@app.command("load-kuaisearch")
def load_kuaisearch_command(
    source: Annotated[Path, typer.Option("--source", help="Folder with items/users/recall/rank/relevance .jsonl files.")],
    ds: DsOption,
) -> None:
    """Load KuaiSearch-schema JSONL files into the warehouse partition ds=DATE."""
    from onesearch_tasks.sid.refresh import layout_for, warehouse_for
    from onesearch_tasks.spark.kuaisearch import load_kuaisearch
    from onesearch_tasks.spark.session import get_spark

    config = _config()
    warehouse = warehouse_for(config, layout_for(config))
    counts = load_kuaisearch(get_spark(config), source, warehouse, ds)
    typer.echo(json.dumps({"ds": ds, "warehouse": str(warehouse), "tables": [vars(c) for c in counts]}, indent=2))


@app.command("demo-data")
def demo_data_command(
    out: Annotated[Path, typer.Option("--out", help="Output folder for the five .jsonl files.")],
    items: Annotated[int, typer.Option("--items", help="Number of catalog items.")] = 2000,
    users: Annotated[int, typer.Option("--users", help="Number of users.")] = 300,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same arguments give identical files.")] = 7,
    sessions_per_user: Annotated[int, typer.Option("--sessions-per-user", help="Search sessions per user.")] = 4,
    changed_fraction: Annotated[float, typer.Option("--changed-fraction", help="Share of items whose title changes, in [0, 1).")] = 0.0,
    change_seed: Annotated[int, typer.Option("--change-seed", help="Seed that picks the changed items.")] = 1,
) -> None:
    """Write synthetic KuaiSearch-schema JSONL whose ids join across files."""
    from onesearch_tasks.spark.demo_data import generate_demo_data

    counts = generate_demo_data(out, items, users, seed, sessions_per_user=sessions_per_user, changed_fraction=changed_fraction, change_seed=change_seed)
    typer.echo(json.dumps({"out": str(out), "rows": counts}, indent=2))


# --- SID steps ------------------------------------------------------------------------------


def _run_config(mode, k, balanced_type, referlayer, normalize, opq_m, opq_bits, set_options) -> OneSearchConfig:
    overrides = parse_set_options(set_options or [])
    overrides.update(run_overrides(
        mode=mode.value if mode else None, k=k, balanced_type=balanced_type, referlayer=referlayer,
        normalize_residuals=normalize, opq_m=opq_m, opq_bits=opq_bits,
    ))
    return _config(overrides)


ModeOption = Annotated[Optional[Mode], typer.Option("--mode", help="full: train every layer; incremental: build on the current version.")]
KOption = Annotated[Optional[str], typer.Option("--k", help="Clusters per RQ layer, e.g. 1024-1024-1024.")]
BalancedOption = Annotated[Optional[int], typer.Option("--balanced-type", help="Last layer: 0 standard, 1 per (L1,L2) parent, 2 per L2 parent.")]
ReferlayerOption = Annotated[Optional[int], typer.Option("--referlayer", help="Incremental: layers 1..N keep the reference codebooks; default the depth.")]
NormalizeOption = Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="L2-normalize residuals between layers.")]
OpqMOption = Annotated[Optional[int], typer.Option("--opq-m", help="OPQ sub-quantizers (SID positions after the RQ layers).")]
OpqBitsOption = Annotated[Optional[int], typer.Option("--opq-bits", help="Bits per OPQ code; 8 gives 256 codes.")]
OverrideGatesOption = Annotated[bool, typer.Option("--override-gates", help="Publish even if quality gates fail; needs --reason. Who and why are recorded.")]
ReasonOption = Annotated[Optional[str], typer.Option("--reason", help="Why the quality gates are overridden (required with --override-gates).")]


def _gate_override(override_gates: bool, reason: Optional[str]):
    """Build the GateOverride of --override-gates/--reason, with the OS user as its author."""
    import getpass
    import os

    from onesearch_tasks.sid.refresh import GateOverride

    if not override_gates:
        if reason:
            raise ValueError("--reason is only used with --override-gates; add --override-gates or drop --reason")
        return None
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid, for example in some containers
        user = f"uid {os.getuid()}"
    return GateOverride(by=user, reason=reason or "")


@sid_app.command("refresh")
def refresh_command(
    ds: DsOption,
    mode: ModeOption = None,
    k: KOption = None,
    balanced_type: BalancedOption = None,
    referlayer: ReferlayerOption = None,
    normalize: NormalizeOption = None,
    opq_m: OpqMOption = None,
    opq_bits: OpqBitsOption = None,
    set_options: SetOption = None,
    override_gates: OverrideGatesOption = False,
    reason: ReasonOption = None,
) -> None:
    """Run extract, embed, rq, opq, evaluate and publish for one data date."""
    from onesearch_tasks.sid.refresh import run_refresh

    override = _gate_override(override_gates, reason)
    config = _run_config(mode, k, balanced_type, referlayer, normalize, opq_m, opq_bits, set_options)
    result = run_refresh(config, ds, override)
    typer.echo(json.dumps({"version": result.version, "path": str(result.path), "previous": result.previous}))


@sid_app.command("extract")
def extract_command(
    ds: DsOption,
    mode: ModeOption = None,
    k: KOption = None,
    balanced_type: BalancedOption = None,
    referlayer: ReferlayerOption = None,
    normalize: NormalizeOption = None,
    opq_m: OpqMOption = None,
    opq_bits: OpqBitsOption = None,
    set_options: SetOption = None,
) -> None:
    """Step 1: create the run folder of DATE and pull the day's tables with Spark SQL. The
    run's settings are fixed here; later steps read them from the run's manifest."""
    from onesearch_tasks.sid.refresh import run_extract

    run = run_extract(_run_config(mode, k, balanced_type, referlayer, normalize, opq_m, opq_bits, set_options), ds)
    typer.echo(str(run.path))


def _step(name: str, ds: str) -> None:
    from onesearch_tasks.sid import refresh

    function = {"embed": refresh.run_embed, "rq": refresh.run_rq, "opq": refresh.run_opq}[name]
    typer.echo(str(function(_config(), ds).path))


@sid_app.command("embed")
def embed_command(ds: DsOption) -> None:
    """Step 2: validate keys, embed them and apply keyword enhancement."""
    _step("embed", ds)


@sid_app.command("rq")
def rq_command(ds: DsOption) -> None:
    """Step 3: residual k-means (full, or on top of the reference version)."""
    _step("rq", ds)


@sid_app.command("opq")
def opq_command(ds: DsOption) -> None:
    """Step 4: OPQ codes and the SID tables."""
    _step("opq", ds)


@sid_app.command("evaluate")
def evaluate_command(ds: DsOption, override_gates: OverrideGatesOption = False, reason: ReasonOption = None) -> None:
    """Step 5: metrics and quality gates; exits non-zero when a gate fails, unless
    --override-gates is given."""
    from onesearch_tasks.sid.refresh import run_evaluate

    override = _gate_override(override_gates, reason)
    typer.echo(json.dumps(run_evaluate(_config(), ds, override), indent=2, ensure_ascii=False))


@sid_app.command("publish")
def publish_command(ds: DsOption, run_id: Annotated[Optional[str], typer.Option("--run-id", help="Publish only if the run folder belongs to this run.")] = None) -> None:
    """Step 6: make the finished run of DATE the current version (atomic pointer update)."""
    from onesearch_tasks.sid.refresh import run_publish

    result = run_publish(_config(), ds, run_id)
    typer.echo(json.dumps({"version": result.version, "path": str(result.path), "previous": result.previous}))


# --- published versions --------------------------------------------------------------------


@sid_app.command("export")
def export_command(
    kind: Annotated[Kind, typer.Option("--kind", help="items (key = item_id) or queries (key = query text).")],
    out: Annotated[Path, typer.Option("--out", help="Output TSV path: key<TAB>sid per line, no header.")],
    version: VersionOption = "current",
) -> None:
    """Write the SIDs of one version as TSV."""
    import pandas as pd

    from onesearch_tasks.sid.refresh import layout_for
    from onesearch_tasks.storage import atomic_path, resolve_version

    name, folder = resolve_version(layout_for(_config()), version)
    table = pd.read_parquet(folder / f"sid_{kind.value}.parquet", columns=["key", "sid"])
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", header=False, index=False, lineterminator="\n")
    logger.info("exported %d %s SIDs of version %s to %s", len(table), kind.value, name, out)


@sid_app.command("metrics")
def metrics_command(
    version: VersionOption = "current",
    summary: Annotated[bool, typer.Option("--summary", help="Print one line per entity instead of the full JSON.")] = False,
) -> None:
    """Print the metrics JSON of one version."""
    from onesearch_tasks.sid.refresh import layout_for
    from onesearch_tasks.storage import read_json, resolve_version

    name, folder = resolve_version(layout_for(_config()), version)
    metrics = read_json(folder / "metrics.json")
    if not summary:
        typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))
        return
    typer.echo(f"version {name} ({metrics['mode']}, reference {metrics['reference_version']}), full-SID CUR {metrics['full_sid_cur']:.4f}")
    for entity, entry in metrics["entities"].items():
        counts = entry["counts"]
        typer.echo(
            f"  {entity:8s} keys={entry['keys']:<7d} ICR={entry['icr']:.4f} largest_collision={entry['largest_collision_group']:<3d} "
            f"churn={entry['churn']['churn']:.4f} new={entry['new_keys']:<6d} changed={entry['status'].get('changed', 0):<6d} "
            f"removed={entry['removed_keys']:<6d} "
            f"in={counts['in']} quarantined={counts['quarantined']} carried={counts['carried']}"
        )
    interactions = metrics["interactions"]
    typer.echo(f"  interactions with unknown item ids: {interactions['unknown_item_rows']} of {interactions['rows']}")


@sid_app.command("versions")
def versions_command() -> None:
    """List published versions and the current pointer."""
    from onesearch_tasks.sid.refresh import layout_for
    from onesearch_tasks.storage import read_pointer

    layout = layout_for(_config())
    names = sorted(entry.name for entry in layout.versions.iterdir()) if layout.versions.is_dir() else []
    typer.echo(json.dumps({"pointer": read_pointer(layout), "versions": names}, indent=2))


@sid_app.command("rollback")
def rollback_command() -> None:
    """Point the current version back at the one published before it."""
    from onesearch_tasks.sid.publish import rollback
    from onesearch_tasks.sid.refresh import layout_for

    result = rollback(layout_for(_config()))
    typer.echo(json.dumps({"version": result.version, "previous": result.previous}))


@app.command("opq-encode")
def opq_encode_command(
    input_path: Annotated[Path, typer.Option("--input", help="Parquet file with columns key and embedding (list of floats).")],
    out: Annotated[Path, typer.Option("--out", help="Output TSV: key<TAB>sid.")],
    version: VersionOption = "current",
    residual: Annotated[bool, typer.Option("--residual/--embedding", help="--residual: input vectors are last-layer residuals with an rq_sid column; append OPQ tokens only.")] = False,
) -> None:
    """Encode any key/embedding table with a saved version's models."""
    from onesearch_tasks.sid.encode import encode_table
    from onesearch_tasks.sid.refresh import layout_for
    from onesearch_tasks.storage import resolve_version

    _, folder = resolve_version(layout_for(_config()), version)
    rows = encode_table(folder, input_path, out, residual=residual)
    logger.info("encoded %d rows with version %s into %s", rows, folder.name, out)


# --- training (forwarded to the training env) -------------------------------------------------


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def train_command(ctx: typer.Context) -> None:
    """Run a training command in the training env: make-tiny-model, extend-vocab, sft, sdft.
    `onesearch train --help` lists them."""
    from onesearch_tasks.training.launcher import run_training_command

    config_path = str(STATE.config_path) if STATE.config_path else None
    run_training_command(_config(), list(ctx.args), config_path)


# --- training data -------------------------------------------------------------------------


class Language(str, Enum):
    zh = "zh"
    en = "en"


@app.command("build-data")
def build_data_command(
    version: VersionOption = "current",
    language: Annotated[Optional[Language], typer.Option("--language", help="Prompt template set; default training_data.language.")] = None,
    set_options: SetOption = None,
) -> None:
    """Build SFT (3 stages), self-distillation and RL data for a SID version."""
    from onesearch_tasks.data.builder import build_training_data
    from onesearch_tasks.sid.refresh import layout_for, warehouse_for

    overrides = parse_set_options(set_options or [])
    if language:
        overrides["training_data.language"] = language.value
    config = _config(overrides)
    layout = layout_for(config)
    stats = build_training_data(config, layout, warehouse_for(config, layout), version)
    typer.echo(json.dumps({"version": stats["version"], "tasks": {task: sum(counts.values()) for task, counts in stats["tasks"].items()}}, ensure_ascii=False, indent=2))


@data_app.command("stats")
def data_stats_command(version: VersionOption = "current") -> None:
    """Print the stats JSON of a version's training data (examples per task and split, drops)."""
    from onesearch_tasks.data.builder import read_stats
    from onesearch_tasks.sid.refresh import layout_for

    typer.echo(json.dumps(read_stats(layout_for(_config()), version), indent=2, ensure_ascii=False))


EXPECTED_ERRORS: tuple[type[Exception], ...] = (ConfigError, StorageError, ValueError, FileNotFoundError, RuntimeError)


def main() -> None:
    """Entry point: known failures print one clear line and exit 2 instead of a traceback."""
    try:
        app(standalone_mode=False)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except EXPECTED_ERRORS as error:
        logger.error("%s: %s", type(error).__name__, error)
        sys.exit(2)
    except Exception as error:  # usage errors arrive here with standalone_mode off
        # typer 0.29 raises exceptions of its bundled click copy, so match them by shape.
        if hasattr(error, "show") and isinstance(getattr(error, "exit_code", None), int):
            error.show()
            sys.exit(2 if error.exit_code in (1, 2) else error.exit_code)
        raise


if __name__ == "__main__":
    main()
