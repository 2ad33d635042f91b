"""Manually triggered training Airflow DAG (SFT stages and self-distillation).

Defined in onesearch_tasks.orchestration.training; this file only exposes it to the
scheduler, so parsing stays cheap (no torch, Spark or numpy import here).
"""

from onesearch_tasks.orchestration.training import build_dag

dag = build_dag()

if __name__ == "__main__":
    dag.test()
