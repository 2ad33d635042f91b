#!/usr/bin/env bash
# The main job on the embedded default: generate two days of joined KuaiSearch-style data,
# then run the real `onesearch_sid_refresh` DAG with `airflow dags test` on SQLite for each
# day. Day 1 has no published version, so it builds the SIDs from scratch. Day 2 adds and
# changes a few items and runs incrementally on top of day 1. Then the training-data DAG
# builds the SFT, self-distillation and RL data of the day-2 version. State: var/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

export ONESEARCH_HOME="${ONESEARCH_HOME:-$PWD/var/demo}"
export ONESEARCH_CONFIG="${ONESEARCH_CONFIG:-$PWD/configs/demo.yaml}"
source scripts/airflow_env.sh

DEMO_ITEMS=${DEMO_ITEMS:-3000}
DEMO_NEW_ITEMS=${DEMO_NEW_ITEMS:-60}
DEMO_USERS=${DEMO_USERS:-400}
DAY1=2025-01-01
DAY2=2025-01-02
source_root="$ONESEARCH_HOME/source"

echo "== Resetting demo state in $ONESEARCH_HOME"
rm -rf "$ONESEARCH_HOME"
mkdir -p "$source_root"

echo "== Generating day 1 ($DEMO_ITEMS items) and day 2 ($DEMO_NEW_ITEMS new items, 1% changed titles)"
onesearch --log-level WARNING demo-data --out "$source_root/$DAY1" --items "$DEMO_ITEMS" --users "$DEMO_USERS" --seed 7 > /dev/null
onesearch --log-level WARNING demo-data --out "$source_root/$DAY2" --items $((DEMO_ITEMS + DEMO_NEW_ITEMS)) --users "$DEMO_USERS" --seed 7 --changed-fraction 0.01 > /dev/null

echo "== Creating the Airflow metadata database (SQLite) in $AIRFLOW_HOME"
airflow db migrate > "$ONESEARCH_HOME/airflow-db-migrate.log" 2>&1

for day in "$DAY1" "$DAY2"; do
  echo "== airflow dags test onesearch_sid_refresh $day (log: $ONESEARCH_HOME/dag-$day.log)"
  if ! airflow dags test onesearch_sid_refresh "$day" -c "{\"source_dir\": \"$source_root/$day\"}" > "$ONESEARCH_HOME/dag-$day.log" 2>&1; then
    echo "DAG run for $day failed; last lines of its log:" >&2
    tail -n 40 "$ONESEARCH_HOME/dag-$day.log" >&2
    exit 1
  fi
  onesearch --log-level WARNING sid metrics --summary
done

echo "== airflow dags test onesearch_training_data $DAY2 (log: $ONESEARCH_HOME/training-data-$DAY2.log)"
if ! airflow dags test onesearch_training_data "$DAY2" > "$ONESEARCH_HOME/training-data-$DAY2.log" 2>&1; then
  echo "training-data DAG run failed; last lines of its log:" >&2
  tail -n 40 "$ONESEARCH_HOME/training-data-$DAY2.log" >&2
  exit 1
fi
onesearch --log-level WARNING data stats | python3 -c 'import json, sys; stats = json.load(sys.stdin); print("\n".join(f"  {task:28s} {sum(counts.values()):6d} examples" for task, counts in stats["tasks"].items()))'

echo "== Published versions"
onesearch --log-level WARNING sid versions
onesearch --log-level WARNING sid export --kind items --out "$ONESEARCH_HOME/items_sid.tsv"
onesearch --log-level WARNING sid export --kind queries --out "$ONESEARCH_HOME/queries_sid.tsv"
echo "== First item SIDs ($ONESEARCH_HOME/items_sid.tsv)"
head -n 3 "$ONESEARCH_HOME/items_sid.tsv"
echo "== Full metrics: ONESEARCH_HOME=$ONESEARCH_HOME .venv/bin/onesearch sid metrics"
