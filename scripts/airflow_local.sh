#!/usr/bin/env bash
# Serve the DAGs of this repository on this machine: the Airflow 3 API server (UI at
# http://127.0.0.1:8080), scheduler, DAG processor and triggerer, with the settings of
# scripts/airflow_env.sh. Every listening port is bound to 127.0.0.1: the API server gets
# --host 127.0.0.1, and the scheduler and triggerer run without their log servers, which
# Airflow 3.3 binds to every interface. Task logs are read from local files instead.
# Stop with Ctrl-C; the script stops the four processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/airflow_env.sh
mkdir -p "$AIRFLOW_HOME"

airflow db migrate > "$AIRFLOW_HOME/db-migrate.log"

pids=()
stop_all() { kill "${pids[@]}" 2> /dev/null || true; }
trap stop_all EXIT INT TERM

airflow api-server --host 127.0.0.1 --port "${AIRFLOW__API__PORT:-8080}" &
pids+=($!)
airflow scheduler --skip-serve-logs &
pids+=($!)
airflow dag-processor &
pids+=($!)
airflow triggerer --skip-serve-logs &
pids+=($!)

echo "Airflow UI: http://127.0.0.1:${AIRFLOW__API__PORT:-8080} (log in as a user of simple_auth_manager_users;"
echo "passwords: $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated)"
# Exit, and so stop the others, as soon as one component exits.
wait -n
