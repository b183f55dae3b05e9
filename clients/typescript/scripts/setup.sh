#!/usr/bin/env bash
# Installs what the TypeScript client and the project's browser tests need on a
# fresh Debian machine: the package's devDependencies (npm ci, from the
# committed package-lock.json), the notifications example's dependencies
# (npm ci in examples/notifications) and Debian's chromium, which playwright-core
# drives (playwright's own browser download cannot be used: only the package
# registries are reachable). Safe to run again: each step is skipped or is a
# no-op when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup.sh: installing Debian's nodejs and npm" >&2
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends nodejs npm
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "setup.sh: Node.js 20 or newer is needed, found $(node --version)" >&2
    exit 1
fi

# npm ci installs exactly what package-lock.json pins; it replaces
# node_modules each time, so running it again gives the same result.
npm ci --no-audit --no-fund

# The notifications example (run end to end by the browser tests) has its own
# lock file: ws, and this package linked as `corebus`.
(cd ../../examples/notifications && npm ci --no-audit --no-fund)

if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y --no-install-recommends chromium; then
        $sudo apt-get update
        $sudo apt-get install -y --no-install-recommends chromium
    fi
fi

echo "setup.sh: node $(node --version), $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium missing')"
