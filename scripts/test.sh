#!/usr/bin/env bash
# Sets up a virtualenv with the test extras and runs the whole suite.
# Needs redis-server and nginx on PATH (.ci/run installs them with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
