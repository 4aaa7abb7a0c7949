#!/usr/bin/env bash
# `make demo`: register the bundled support_ticket example, ship it on the embedded base model, serve
# it, send three real tickets with curl, print the answers and the eval summary, stop the server.
# Re-running it reuses every finished step (ship is resumable), so a second run takes about a minute.
set -euo pipefail
FORMA=${FORMA:-.venv/bin/forma}
PY=${PY:-.venv/bin/python}
PORT=${FORMA_DEMO_PORT:-8765}
URL="http://127.0.0.1:$PORT"
started=$(date +%s)

echo "== 1. register the bundled support_ticket schema and its 320 pairs"
"$FORMA" register support_ticket --example

echo "== 2. ship: validate -> split -> train -> eval -> gate -> promote"
"$FORMA" ship support_ticket

echo "== 3. serve the live release (open mode: loopback only, no API keys)"
setsid "$FORMA" serve --open --host 127.0.0.1 --port "$PORT" >"${TMPDIR:-/tmp}/forma-demo-serve.log" 2>&1 &
server=$!
trap 'kill -TERM -- -$server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    curl -fs "$URL/readyz" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { echo "server exited; see ${TMPDIR:-/tmp}/forma-demo-serve.log" >&2; exit 1; }
    sleep 1
done
curl -fs "$URL/readyz" >/dev/null || { echo "server not ready after 300 s" >&2; exit 1; }

echo "== 4. three real tickets"
tickets=(
    "Hi team, I was charged twice for my Pulse Earbuds order this month. Please refund the duplicate charge asap, this is really frustrating. - Dana"
    "Hello, since yesterday's update the DataDesk API returns 500 errors on every sync call. Our whole pipeline is down, please treat this as urgent."
    "Just wanted to say the new PhotoSync Pro album view is lovely. Could you tell me how to change the email address on my account? Thanks, Ravi"
)
for ticket in "${tickets[@]}"; do
    echo "> $ticket"
    body=$("$PY" -c 'import json,sys; print(json.dumps({"text": sys.argv[1]}))' "$ticket")
    curl -s -X POST "$URL/v1/extract/support_ticket" -H 'content-type: application/json' -d "$body"
    echo
done

echo "== 5. eval summary of the live release (tuned adapter vs base model prompted with the schema)"
run_dir=$("$PY" -c 'import os,sys; from pathlib import Path; from evals.ledger import live_release; print(live_release(Path(os.environ["FORMA_HOME"]) / "releases", "support_ticket").run_dir)')
sed -n '/^| model/,/^$/p' "$run_dir/eval.md"
echo "full report: $run_dir/eval.html"
echo "== demo finished in $(( $(date +%s) - started )) s"
