"""Daily SID refresh Airflow DAG.

Defined in onesearch_tasks.orchestration.sid_refresh; this file only exposes it to the
scheduler, so parsing stays cheap (no Spark, faiss or numpy import here).
"""

from onesearch_tasks.orchestration.sid_refresh import build_dag

dag = build_dag()

if __name__ == "__main__":
    dag.test()
