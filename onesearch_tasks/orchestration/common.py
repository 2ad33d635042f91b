"""Pieces shared by the OneSearch DAGs: the DAG defaults and fail-fast task errors."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from airflow.sdk import DAG, Param

START_DATE = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
OWNER = "onesearch"


def onesearch_dag(dag_id: str, *, schedule: Any, params: dict[str, Param], tags: list[str], doc_md: str | None, retries: int, retry_delay: dt.timedelta) -> DAG:
    """Create a DAG with the project's defaults: no catch-up and one active run at a time."""
    return DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        params=params,
        tags=tags,
        doc_md=doc_md,
        default_args={"retries": retries, "retry_delay": retry_delay, "owner": OWNER},
    )


def fail_fast(function):
    """Run a step; errors that a retry cannot fix fail the task at once, without retries.

    Bad configuration, missing data, invalid input and failed quality gates raise
    AirflowFailException; a held lock and unexpected errors keep the task's retries.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from onesearch_tasks.storage import LockedError

        try:
            return function(*args, **kwargs)
        except LockedError:
            raise
        except (ValueError, FileNotFoundError) as error:
            raise AirflowFailException(f"{type(error).__name__}: {error}") from error
        except RuntimeError as error:
            if type(error).__module__.startswith("onesearch_tasks"):
                raise AirflowFailException(f"{type(error).__name__}: {error}") from error
            raise

    return wrapper
