"""SparkSession factory. The embedded default is `local[*]` bound to 127.0.0.1 with the UI off."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from onesearch_tasks.config import OneSearchConfig

if TYPE_CHECKING:
    import warnings

    # pyspark 4.2 warns about pandas 3 at import; the pipeline hands Spark no pandas objects.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

# Settings every session gets; `spark.conf` in the config file can override them.
BASE_SPARK_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    # Keep `ds` a string: partition folders are named ds=YYYY-MM-DD and SQL compares strings.
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.default.parallelism": "4",
    "spark.ui.showConsoleProgress": "false",
}
# Added only for local masters, so no port of the embedded session listens beyond loopback.
LOCAL_SPARK_CONF: dict[str, str] = {
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.memory": "2g",
}


def get_spark(config: OneSearchConfig) -> "SparkSession":
    """Return the process-wide SparkSession, creating it from config on first use."""
    from pyspark.sql import SparkSession

    master = config.spark.master
    settings = dict(BASE_SPARK_CONF)
    if master.startswith("local"):
        settings.update(LOCAL_SPARK_CONF)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings.update(config.spark.conf)

    builder = SparkSession.builder.master(master).appName(config.spark.app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    logger.info("Spark session ready: master=%s version=%s", master, session.version)
    return session
