#!/usr/bin/env bash
# Installs what the platform needs on a fresh Debian machine, idempotently:
#   - Debian packages: Mosquitto (the MQTT broker) and its clients, a Java 17 JDK and Maven (service jars, the Flink sinks)
#   - a virtualenv in .venv with the project, PyFlink and the test tools
# Usage: scripts/bootstrap.sh   (run as root, or with the Debian packages already installed)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

need_apt=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)  # the benchmarks' load driver
# A JDK, not only a JRE: the Flink sinks in java/flink-fleet are compiled on first start.
command -v javac >/dev/null || need_apt+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || need_apt+=(maven)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${need_apt[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}"
  else
    echo "bootstrap: please install: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
fi
# Debian starts a system-wide Mosquitto on 1883 where systemd runs; ours uses its own ports,
# so that one is harmless and left alone.

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PY -V)"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages (first run takes a minute or two)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[flink,test]"
  rm -f .venv/.installed-* && touch "$stamp"
fi
echo "bootstrap: ready ($(.venv/bin/python -V), $(java -version 2>&1 | head -1), $(PATH=$PATH:/usr/sbin mosquitto -h 2>/dev/null | head -1))"
