"""Spark access: the session, the SQL runner over the source tables, and the KuaiSearch loader."""
