#!/usr/bin/env bash
# The one test command (README and .ci/run): installs everything, then runs the suite.
#   scripts/test.sh               the default suite (CPU, tiny synthetic checkpoint, espeak engine, browser)
#   scripts/test.sh -m slow       the full-size checkpoint tests (minutes on CPU)
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/ruff check app  # the lint rules in pyproject.toml; a finding fails the run before any test
.venv/bin/mypy  # type-checks app/ (pyproject.toml [tool.mypy])
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    # pytest's "no tests ran": a selection that matches nothing is a broken run, never a pass.
    echo "error: no tests were collected" >&2
    exit 1
fi
exit "$status"
