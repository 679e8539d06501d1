#!/usr/bin/env bash
# System packages the test suite needs (installed once; a no-op when present).
# Stages that need a browser or a database add their packages here.
set -euo pipefail

# Headless browser for the dashboard test (mlplatform_tests/integration/test_dashboard_browser.py).
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
