"""
### OneSearch training data (`onesearch_training_data`)

Runs whenever `onesearch_sid_refresh` publishes a SID version (the Asset
`onesearch_sid_version`), and can be triggered by hand with a `version` Param. It rebuilds,
under `<version>/training_data/`:

- LLaMA-Factory alpaca JSON for the three SFT stages, registered in `dataset_info.json`;
- self-distillation pairs (teacher input with the item keyword span, student input without);
- GRPO and listwise DPO JSONL;
- the SID token vocabulary and `stats.json` (examples per task and split, dropped rows).

The task calls the same function as `onesearch build-data --version V`. Rebuilding a
version replaces only its `training_data/` folder and gives byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task

from onesearch_tasks.config import load_config
from onesearch_tasks.orchestration.common import fail_fast, onesearch_dag
from onesearch_tasks.orchestration.sid_refresh import SID_VERSION_ASSET

logger = logging.getLogger(__name__)

DAG_ID = "onesearch_training_data"
TASK_RETRIES = 2
RETRY_DELAY = dt.timedelta(minutes=5)
TAGS = ["onesearch", "training-data", "spark"]

PARAMS: dict[str, Param] = {
    "version": Param(None, type=["null", "string"], pattern=r"^(current|\d{4}-\d{2}-\d{2}\.r\d+)$", description="SID version (YYYY-MM-DD.rN) or 'current'. Empty: the version in the triggering Asset event, else the current one."),
    "language": Param(None, type=["null", "string"], enum=[None, "zh", "en"], description="Prompt template set. Empty: training_data.language of the config."),
}


def requested_version(context: Any) -> str:
    """The version Param, else the newest triggering Asset event's version, else 'current'."""
    if context["params"].get("version"):
        return context["params"]["version"]
    events = context.get("triggering_asset_events") or {}
    for asset_events in events.values():
        for event in reversed(list(asset_events)):
            version = (event.extra or {}).get("version")
            if version:
                return version
    return "current"


def build_dag() -> DAG:
    with onesearch_dag(DAG_ID, schedule=[SID_VERSION_ASSET], params=PARAMS, tags=TAGS, doc_md=__doc__, retries=TASK_RETRIES, retry_delay=RETRY_DELAY) as dag:

        @task
        @fail_fast
        def build_data() -> dict[str, Any]:
            """Build every dataset of the version and log the example counts."""
            from onesearch_tasks.data.builder import build_training_data
            from onesearch_tasks.sid.refresh import layout_for, warehouse_for

            context = get_current_context()
            language = context["params"].get("language")
            config = load_config(overrides={"training_data.language": language} if language else None)
            layout = layout_for(config)
            version = requested_version(context)
            logger.info("building training data for SID version %s", version)
            stats = build_training_data(config, layout, warehouse_for(config, layout), version)
            return {"version": stats["version"], "tasks": {name: sum(counts.values()) for name, counts in stats["tasks"].items()}}

        build_data()

    return dag
