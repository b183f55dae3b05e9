#!/usr/bin/env bash
# Runs the notifications example's back end on http://127.0.0.1:8080: builds
# the TypeScript client when it is not built yet, installs the example's one
# dependency (ws, for Node.js 20), and serves the page, the tokens and the
# jobs. Start broker.sh first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
client="$here/../../clients/typescript"
if [ ! -f "$client/dist/index.js" ]; then
    (cd "$client" && npm ci --no-audit --no-fund && npm run build)
fi
if [ ! -d "$here/node_modules/ws" ]; then
    (cd "$here" && npm ci --no-audit --no-fund)
fi
[ -s "$here/.token-secret" ] || { echo "app.sh: start broker.sh first (it makes the token secret)" >&2; exit 1; }
exec node "$here/server.mjs" "$@"
