"""Airflow DAG definitions. The only package that imports airflow."""
