"""Training-data Airflow DAG, started by each published SID version.

Defined in onesearch_tasks.orchestration.training_data; this file only exposes it to the
scheduler, so parsing stays cheap (no Spark, faiss or numpy import here).
"""

from onesearch_tasks.orchestration.training_data import build_dag

dag = build_dag()

if __name__ == "__main__":
    dag.test()
