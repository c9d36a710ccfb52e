#!/usr/bin/env bash
# The whole offline pipeline against a real local model, then index and rerank:
# SmolLM2-135M-Instruct behind llama-cpp-python's OpenAI-compatible server.
#   scripts/e2e_local_llm.sh            (first run builds llama-cpp-python: ~6 min)
# Env: P4R_DATA_DIR (default: a temp folder), BEAUTY (All_Beauty_5.json.gz path).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
BEAUTY="${BEAUTY:-../shared/data/amazon-2018-all-beauty/All_Beauty_5.json.gz}"
export P4R_DATA_DIR="${P4R_DATA_DIR:-$(mktemp -d)}"
eval "$(scripts/local_llm.sh --background)"
export P4R_LLM__CONCURRENCY=1 P4R_LLM__TIMEOUT=180 P4R_LLM__MAX_TOKENS=400

# A handful of All_Beauty items: identical variant copies collapsed, 3-core, ~60 interactions.
"$BIN"/p4r data prepare -d beauty-mini -s "$BEAUTY" --dedupe-text --kcore 3 \
  --max-interactions 60 --seed 1
"$BIN"/p4r reason all -d beauty-mini || echo "some items failed validation; re-run to retry them"
"$BIN"/p4r index upsert -d beauty-mini
"$BIN"/p4r index status -d beauty-mini
user=$(head -1 "$P4R_DATA_DIR/datasets/beauty-mini/split/test.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["user_id"])')
items=$(python3 -c 'import json,sys; print(",".join(json.loads(l)["item_id"] for l in open(sys.argv[1])))' \
  "$P4R_DATA_DIR/datasets/beauty-mini/personas.jsonl")
"$BIN"/p4r query rerank -d beauty-mini -u "$user" -c "$items" --allow-unknown
