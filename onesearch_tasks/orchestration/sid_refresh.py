"""
### OneSearch daily SID refresh (`onesearch_sid_refresh`)

Pulls one day of query and item logs with Spark SQL (`sql/`), embeds and keyword-enhances
every query and item, quantizes them with residual k-means (RQ) and OPQ, checks quality
and publishes a new Semantic ID (SID) version. By default each run builds on the current
version: its codebooks stay frozen, unchanged keys keep their SIDs exactly, and only new
or changed keys are encoded. Trigger with `mode=full` to retrain everything.

**Data date**: the `ds` Param if set, else the run's logical date. The scheduled run for
the interval starting on day D processes partition `ds=D`. Runs triggered from the UI or
API have no logical date and use the date of `dag_run.run_after`.

**Tasks**: extract → embed (with keyword enhancement) → rq → opq → evaluate → publish.
They share files in the run folder `$ONESEARCH_HOME/sid/runs/<ds>/`; XCom carries only the
date and run id. `evaluate` fails the run when a quality gate fails, and then nothing is
published, unless the run was triggered with `override_gates=true` and a non-empty
`override_reason`. Then the run is published anyway, and the triggering user and the
reason are logged as a WARNING and stored in the version's `metrics.json`,
`manifest.json` and `version.json`. `publish` emits the Asset `onesearch_sid_version`, which starts the training-data
DAG.

Each task calls the same function as `onesearch sid <step> --ds DATE`, so any step can be
rerun by hand from a shell.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, get_current_context, task

from onesearch_tasks.config import load_config, run_overrides
from onesearch_tasks.orchestration.common import fail_fast, onesearch_dag

logger = logging.getLogger(__name__)

DAG_ID = "onesearch_sid_refresh"
SID_VERSION_ASSET = Asset(name="onesearch_sid_version", uri="x-onesearch://sid/current")
SCHEDULE = CronDataIntervalTimetable("0 0 * * *", timezone="UTC")
TASK_RETRIES = 2
RETRY_DELAY = dt.timedelta(minutes=5)
TAGS = ["onesearch", "sid", "spark", "faiss"]

PARAMS: dict[str, Param] = {
    "ds": Param(None, type=["null", "string"], pattern=r"^\d{4}-\d{2}-\d{2}$", description="Data date YYYY-MM-DD; empty: the logical date, or run_after for manual runs."),
    "mode": Param(None, type=["null", "string"], enum=[None, "full", "incremental"], description="full retrains every layer; incremental builds on the current version. Empty: the config's rq.mode."),
    "k": Param(None, type=["null", "string"], pattern=r"^\d+(-\d+)*$", description="Clusters per RQ layer, e.g. 1024-1024-1024. Empty: the config's rq.k."),
    "balanced_type": Param(None, type=["null", "integer"], enum=[None, 0, 1, 2], description="Last layer: 0 standard, 1 per (L1,L2) parent, 2 per L2 parent."),
    "referlayer": Param(None, type=["null", "integer"], minimum=0, maximum=8, description="Incremental: layers 1..N keep the reference codebooks. Empty: the depth (retrain nothing)."),
    "normalize_residuals": Param(None, type=["null", "boolean"], description="L2-normalize residuals between RQ layers."),
    "opq_m": Param(None, type=["null", "integer"], minimum=1, maximum=16, description="OPQ sub-quantizers."),
    "opq_bits": Param(None, type=["null", "integer"], minimum=1, maximum=16, description="Bits per OPQ code (8 gives 256 codes)."),
    "items_partition_mode": Param(None, type=["null", "string"], enum=[None, "snapshot", "delta"], description="snapshot: the day holds the whole catalog; delta: only new and changed items."),
    "queries_partition_mode": Param(None, type=["null", "string"], enum=[None, "snapshot", "delta"], description="Same as items_partition_mode, for queries."),
    "source_dir": Param(None, type=["null", "string"], description="Optional folder of KuaiSearch-schema JSONL files, loaded into the day's warehouse partition before the extract."),
    "override_gates": Param(False, type="boolean", description="Publish even if quality gates fail. Needs override_reason; the triggering user and the reason are recorded."),
    "override_reason": Param(None, type=["null", "string"], description="Why the quality gates are overridden (required when override_gates is true)."),
}
OVERRIDE_PARAMS = ("mode", "k", "balanced_type", "referlayer", "normalize_residuals", "opq_m", "opq_bits", "items_partition_mode", "queries_partition_mode")


def data_date(context: Any) -> str:
    """Return the run's data date as YYYY-MM-DD (see the DAG docs for the order of sources)."""
    from onesearch_tasks.storage import validate_ds

    requested = context["params"].get("ds")
    if requested:
        return validate_ds(requested)
    logical = context.get("logical_date")
    if logical is not None:
        return logical.date().isoformat()
    return context["dag_run"].run_after.date().isoformat()


def gate_override(context: Any):
    """Return the GateOverride requested by the override Params, or None."""
    from onesearch_tasks.sid.refresh import GateOverride

    params = context["params"]
    reason = params.get("override_reason")
    if not params.get("override_gates"):
        if reason:
            raise ValueError("Param override_reason is set but override_gates is false; set override_gates to true or clear the reason")
        return None
    dag_run = context["dag_run"]
    # Scheduled runs have no triggering user. Airflow 3.3 sets it for runs triggered from
    # the UI or REST API, by `airflow dags trigger`, and to "dag_test" in `airflow dags test`.
    user = getattr(dag_run, "triggering_user_name", None) or f"unknown user (run {dag_run.run_id})"
    return GateOverride(by=user, reason=reason or "")


def run_config(context: Any):
    params = context["params"]
    return load_config(overrides=run_overrides(**{name: params.get(name) for name in OVERRIDE_PARAMS}))


def build_dag() -> DAG:
    with onesearch_dag(DAG_ID, schedule=SCHEDULE, params=PARAMS, tags=TAGS, doc_md=__doc__, retries=TASK_RETRIES, retry_delay=RETRY_DELAY) as dag:

        @task
        @fail_fast
        def extract() -> dict[str, str]:
            """Load source_dir if given, then run the day's Spark SQL into a fresh run folder."""
            from onesearch_tasks.sid.refresh import layout_for, run_extract, warehouse_for

            context = get_current_context()
            config = run_config(context)
            ds = data_date(context)
            gate_override(context)  # reject an incomplete override before any work
            source_dir = context["params"].get("source_dir")
            if source_dir:
                from pathlib import Path

                from onesearch_tasks.spark.kuaisearch import load_kuaisearch
                from onesearch_tasks.spark.session import get_spark

                logger.info("loading %s into the warehouse for ds=%s", source_dir, ds)
                load_kuaisearch(get_spark(config), Path(source_dir), warehouse_for(config, layout_for(config)), ds)
            run = run_extract(config, ds)
            return {"ds": ds, "run_id": run.manifest["run_id"]}

        @task
        @fail_fast
        def embed(run: dict[str, str]) -> dict[str, str]:
            """Validate keys, embed them and apply keyword enhancement."""
            from onesearch_tasks.sid.refresh import run_embed

            run_embed(run_config(get_current_context()), run["ds"])
            return run

        @task
        @fail_fast
        def rq(run: dict[str, str]) -> dict[str, str]:
            """Residual k-means: assign with frozen codebooks, or retrain layers after referlayer."""
            from onesearch_tasks.sid.refresh import run_rq

            run_rq(run_config(get_current_context()), run["ds"])
            return run

        @task
        @fail_fast
        def opq(run: dict[str, str]) -> dict[str, str]:
            """OPQ codes and the SID tables."""
            from onesearch_tasks.sid.refresh import run_opq

            run_opq(run_config(get_current_context()), run["ds"])
            return run

        @task
        @fail_fast
        def evaluate(run: dict[str, str]) -> dict[str, str]:
            """Metrics and quality gates; a failed gate fails the task and blocks publishing
            unless the override Params are set."""
            from onesearch_tasks.sid.refresh import run_evaluate

            context = get_current_context()
            run_evaluate(run_config(context), run["ds"], gate_override(context))
            return run

        @task(outlets=[SID_VERSION_ASSET])
        @fail_fast
        def publish(run: dict[str, str]) -> dict[str, Any]:
            """Atomically make the run the current SID version and emit the Asset event."""
            from onesearch_tasks.sid.refresh import run_publish

            context = get_current_context()
            result = run_publish(run_config(context), run["ds"], run["run_id"])
            extra = {"version": result.version, "path": str(result.path), "ds": run["ds"], "previous": result.previous}
            context["outlet_events"][SID_VERSION_ASSET].extra = extra
            logger.info("published %s", extra)
            return extra

        extracted = extract()

        embedded = embed(extracted)

        quantized = rq(embedded)

        encoded = opq(quantized)

        evaluated = evaluate(encoded)

        publish(evaluated)

    return dag
