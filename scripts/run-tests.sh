#!/usr/bin/env bash
# Runs every test level in one pytest session so the integration tests share one real stack,
# which the session starts (and stops) itself through the project's launcher.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# The architecture's import rules first (pyproject.toml [tool.importlinter]): production code
# never imports devtools/, services sit on the core, no cycles between the core's packages.
.venv/bin/lint-imports
# Lint (pyproject.toml [tool.ruff]): pyflakes, pycodestyle, import order, bugbear, pyupgrade.
.venv/bin/ruff check .
# Types (pyproject.toml [tool.mypy]): the production tree, --strict on the core's packages.
.venv/bin/mypy
status=0
.venv/bin/python -m pytest -p no:cacheprovider "$@" || status=$?
if [ $status -ne 0 ] && [ "${CI:-}" = "true" ]; then
  echo "--- service logs (last lines) ---"
  .venv/bin/fleet stack logs -n 30 || true
fi
exit $status
