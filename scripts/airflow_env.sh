# Source this file to point Airflow at this repository with a local SQLite metadata
# database under $ONESEARCH_HOME/airflow. Used by the demo and the tests.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ONESEARCH_HOME="${ONESEARCH_HOME:-$repo_root/var}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ONESEARCH_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$repo_root/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$repo_root/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
# Small parallelism and loopback-only servers for anything started from this shell.
export AIRFLOW__CORE__PARALLELISM=4
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST=127.0.0.1
# Airflow 3.3 has no host setting for the log servers of the scheduler and the triggerer:
# they listen on every interface. scripts/airflow_local.sh starts both with
# --skip-serve-logs, and `airflow standalone` should not be used for that reason.
# The UI and the REST API require a login. The simple auth manager creates the users of
# simple_auth_manager_users (default admin:admin, user name and role) and writes their
# generated passwords to $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False
export SPARK_LOCAL_IP=127.0.0.1
export PATH="$repo_root/.venv/bin:$PATH"
