"""OneSearch SID and training-data pipeline: the steps that the Airflow DAGs and the `onesearch` CLI run."""

__version__ = "0.1.0"
