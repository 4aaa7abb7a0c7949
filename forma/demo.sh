#!/usr/bin/env bash
# `make demo`: the whole user journey on the bundled support_ticket example. Runs only what exists;
# a step whose issue has not landed says so and stops the demo with its exit status.
set -euo pipefail
FORMA=${FORMA:-.venv/bin/forma}
echo "== base models"
"$FORMA" models list
echo "== ship support_ticket (register -> train -> eval -> gate -> release -> serve)"
"$FORMA" ship support_ticket
