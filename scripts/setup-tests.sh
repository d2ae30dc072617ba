#!/usr/bin/env bash
# What the test suite needs beyond the test extras; the README's test command runs it first.
#  1. Debian's Chromium for the browser test (scripts/setup-browser.sh; skipped where it can't).
#  2. The test-only tools of scripts/test-tools.txt in their own virtual environment, .test-tools/,
#     so that their pins never reach the project's environment. Rebuilt only when that file
#     changes. Fails when they cannot be installed (the tests that use them would fail anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-browser.sh
venv=.test-tools
if [ -x "$venv/bin/python" ] && cmp -s scripts/test-tools.txt "$venv/installed.txt"; then
  exit 0
fi
echo "installing the test tools (scripts/test-tools.txt) into $venv/ ..."
"${PYTHON:-python}" -m venv --clear "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/test-tools.txt
cp scripts/test-tools.txt "$venv/installed.txt"
