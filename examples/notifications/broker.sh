#!/usr/bin/env bash
# Runs the broker for the notifications example: the native listener on
# 127.0.0.1:7400, the browser listener on 127.0.0.1:7401 for pages from
# http://127.0.0.1:8080 (where app.sh serves the example), and a token
# secret shared with the back end (made on first use, owner-only, never
# committed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secret="$here/.token-secret"
if [ ! -s "$secret" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret")
fi
export COREBUS_TOKEN_SECRET_FILE="$secret"
cd "$here/../.."
exec cargo run --release -p corebus -- serve --config "$here/corebus.toml" "$@"
