#!/usr/bin/env bash
# CPU training demo: tiny model -> SID vocabulary -> SFT stages 1, 2, 3 -> SDFT, on the
# training data of the demo's current SID version (run `make demo` first; this script
# runs it when var/demo has no version yet). Outputs: var/demo/models/.
set -euo pipefail
cd "$(dirname "$0")/.."

export ONESEARCH_HOME="${ONESEARCH_HOME:-$PWD/var/demo}"
export ONESEARCH_CONFIG="${ONESEARCH_CONFIG:-$PWD/configs/demo.yaml}"
TRAIN_CONFIG="${TRAIN_CONFIG:-$PWD/configs/train_demo.yaml}"
onesearch=".venv/bin/onesearch"

if [[ ! -f "$ONESEARCH_HOME/sid/CURRENT.json" ]]; then
  echo "== No SID version in $ONESEARCH_HOME yet: running the demo first"
  scripts/run_demo.sh
fi
version=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' "$ONESEARCH_HOME/sid/CURRENT.json")
data="$ONESEARCH_HOME/sid/versions/$version/training_data"
if [[ ! -f "$data/stats.json" ]]; then
  echo "== Building training data for $version"
  "$onesearch" --log-level WARNING build-data --version "$version" > /dev/null
fi
models="$ONESEARCH_HOME/models/$version"
rm -rf "$models"

echo "== make-tiny-model (tokenizer trained on $data)"
"$onesearch" --config "$TRAIN_CONFIG" train make-tiny-model --out "$models/tiny" --text "$data"
echo "== extend-vocab"
"$onesearch" --config "$TRAIN_CONFIG" train extend-vocab --base "$models/tiny" --sid-vocab "$data/sid_vocab.json" --out "$models/base"
echo "== SFT stages 1, 2, 3 (YAMLs saved next to each stage's output)"
"$onesearch" --config "$TRAIN_CONFIG" train sft --model "$models/base" --data "$data" --out "$models" --stages 1,2,3 2> "$models.sft.log" || { tail -n 40 "$models.sft.log"; exit 1; }
echo "== SDFT from stage 3"
"$onesearch" --config "$TRAIN_CONFIG" train sdft --model "$models/stage3" --data "$data" --out "$models/sdft" 2> "$models.sdft.log" || { tail -n 40 "$models.sdft.log"; exit 1; }
echo "== Done. Models and stage YAMLs: $models (logs: $models.sft.log, $models.sdft.log)"
