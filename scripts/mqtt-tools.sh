#!/usr/bin/env bash
# Installs the MQTT clients the interoperability test runs
# (broker/tests/mqtt_interop.rs): Debian's mosquitto-clients (mosquitto_pub,
# mosquitto_sub) and Eclipse Paho for Python (paho-mqtt, from PyPI) in a
# virtual environment of the project's own, .venv-mqtt. Safe to run again:
# each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi

if ! command -v mosquitto_sub >/dev/null || ! command -v mosquitto_pub >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y --no-install-recommends mosquitto-clients; then
        $sudo apt-get update
        $sudo apt-get install -y --no-install-recommends mosquitto-clients
    fi
fi

if ! .venv-mqtt/bin/python -c 'import paho.mqtt' 2>/dev/null; then
    python3 -m venv .venv-mqtt
    .venv-mqtt/bin/pip install --quiet --disable-pip-version-check 'paho-mqtt>=2.1,<3'
fi

echo "mqtt-tools.sh: $(mosquitto_sub --help | sed -n 2p), paho-mqtt $(.venv-mqtt/bin/python -c 'import paho.mqtt; print(paho.mqtt.__version__)')"
